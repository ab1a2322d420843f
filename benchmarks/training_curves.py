"""How far each shipped model's training has come, stage by stage, from the committed training logs.

    python benchmarks/training_curves.py --out benchmarks/results/training_curves.md

Every shipped CPU model was trained in stages (each recipe's header names them): a stage starts from the previous
stage's weights, restarts the learning rate and anneals it over its budget. The trainer validates the starting
weights first (step 0) under the stage's own recipe, so within a stage "start" and "end" are the same
measurement: the first 8 Val20 crops with one seeded draw of the recipe's degradation — a noisy number (one
draw mixes levels; ±0.1-0.2 dB between neighbouring validations), hence "end" is the mean of the last three
validations. A stage that still gains after the previous stage flattened out means the model has not converged:
more compute would still pay. Numbers are not comparable between models or with the evaluation tables.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_backbone import read_curve  # noqa: E402  (the trainer's log.csv, read once for both reports)

REPO = Path(__file__).resolve().parents[1]
LOGS = REPO / "training" / "logs"

# shipped model -> its stages' logs, oldest first (as the recipes' headers name them)
CHAINS = {
    "denoise-rgb": ("probe-unshuffle-fast", "denoise-rgb", "denoise-rgb-unshuffle-stage3",
                    "denoise-rgb-unshuffle-stage4", "denoise-rgb-varied-stage5"),
    "denoise-gray": ("denoise-gray", "denoise-gray-unshuffle-stage2", "denoise-gray-varied-stage3"),
    "real-denoise-rgb": ("real-denoise-rgb-from-denoise", "real-denoise-rgb-varied-stage2"),
    "jpeg-rgb": ("jpeg-rgb-from-denoise", "jpeg-rgb-from-denoise-stage2", "jpeg-rgb-from-denoise-stage3",
                 "jpeg-rgb-varied-stage4"),
    "jpeg-gray": ("jpeg-gray-from-denoise", "jpeg-gray-varied-stage2"),
    "sr-x2-rgb": ("sr-x2-rgb-mix-stage1", "sr-x2-rgb-mix-stage2", "sr-x2-rgb-varied"),
    "sr-x4-rgb": ("sr-x4-rgb-mix", "sr-x4-rgb-mix-stage2", "sr-x4-rgb-varied"),
}
TAIL = 3  # validations averaged for a stage's end


def stage_summary(log: Path) -> dict:
    rows = read_curve(log)
    if len(rows) < TAIL + 1 or rows[0]["step"] != 0:
        raise SystemExit(f"{log}: needs the step-0 validation and at least {TAIL} more")
    psnr = [r["val_psnr"] for r in rows]
    third = max(1, (len(rows) - 1) // 3)
    middle, last = statistics.fmean(psnr[1:][-2 * third:-third]), statistics.fmean(psnr[1:][-third:])
    start, end = psnr[0], statistics.fmean(psnr[-TAIL:])
    return {"steps": rows[-1]["step"], "minutes": rows[-1]["seconds"] / 60, "start": start, "end": end,
            "gain": end - start, "late": last - middle}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="markdown report (default: print)")
    args = p.parse_args(argv)
    lines = ["# Training curves of the shipped models, stage by stage (`benchmarks/training_curves.py`)", "",
             "Command: `python benchmarks/training_curves.py" + (f" --out {args.out}" if args.out else "") + "`; "
             + time.strftime("%Y-%m-%d %H:%M %Z") + ".", "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             "`late` = mean of the last third of a stage's validations minus the mean of the third before it "
             "(positive: still rising at the end of the stage, although its learning rate was annealing).", "",
             "| model | stage | log | steps | training minutes | Val20 start | Val20 end (last 3) | gain (dB) "
             "| late (dB) |", "|---|---|---|---|---|---|---|---|---|"]
    for model, logs in CHAINS.items():
        for i, name in enumerate(logs, 1):
            s = stage_summary(LOGS / f"{name}.csv")
            lines.append(f"| {model} | {i} | `training/logs/{name}.csv` | {s['steps']:,} | {s['minutes']:.0f} | "
                         f"{s['start']:.2f} | {s['end']:.2f} | {s['gain']:+.2f} | {s['late']:+.2f} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
