"""Validation PSNR of colour denoisers on all of Val20, per noise level: the decision set for issue 15's backbone.

    python benchmarks/val20_levels.py NAME=WEIGHTS [NAME=WEIGHTS ...] --out benchmarks/results/val20_levels.md

The trainer's validation number (8 crops of Val20, one draw of the clean-inclusive ranges each) mixes noise levels
and clean crops, so one clean crop at ~50 dB moves the mean by more than any trunk does. This scores whole Val20
images at fixed levels instead — AWGN σ 15, 30, 50 (seed 3000 + image index, not clipped, like the evaluation's
AWGN rows) and clean in — with ``napari_vdir.restore`` (blind, default precision). Val20 is the training recipes'
validation set: choosing between models on it is allowed, on the test sets it is not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LEVELS = (15, 30, 50, "clean")


def score(weights: Path, images: list[np.ndarray]) -> dict:
    from skimage.metrics import peak_signal_noise_ratio

    from napari_vdir import restore

    results = {}
    for level in LEVELS:
        values = []
        for i, clean in enumerate(images):
            if level == "clean":
                x = clean
            else:
                rng = np.random.default_rng(3000 + i)
                x = (clean + rng.normal(0, level / 255, clean.shape)).astype(np.float32)
            out = np.clip(np.asarray(restore(x, "denoise", model=weights, device="cpu"), np.float64), 0, 1)
            values.append(float(peak_signal_noise_ratio(clean.astype(np.float64), out, data_range=1)))
        results[level] = statistics.fmean(values)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="NAME=WEIGHTS (a weights file or a shipped model name)")
    p.add_argument("--val", type=Path, default=REPO.parent / "shared" / "datasets" / "Val20")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="markdown report (default: print only)")
    args = p.parse_args(argv)
    import torch

    from napari_vdir.training.data import load_folder

    torch.set_num_threads(args.threads)
    images = [x for _, x in load_folder(args.val, 3)]
    rows = []
    for spec in args.models:
        name, _, weights = spec.partition("=")
        result = score(Path(weights) if Path(weights).is_file() else weights, images)
        rows.append((name, weights, result))
        print(name, {k: round(v, 3) for k, v in result.items()}, flush=True)
    lines = ["# Val20 PSNR per noise level (`benchmarks/val20_levels.py`)", "",
             "Command: `python benchmarks/val20_levels.py " + " ".join(args.models)
             + (f" --out {args.out}" if args.out else "") + "`", "",
             f"All {len(images)} Val20 images, whole; AWGN seed 3000 + i, not clipped; `clean` = restore(clean) vs "
             f"clean; blind `napari_vdir.restore`, default precision; {time.strftime('%Y-%m-%d %H:%M %Z')}.", "",
             "| model | weights | " + " | ".join(f"σ{lv}" if lv != "clean" else "clean in" for lv in LEVELS)
             + " | mean of σ15–50 |", "|---|---|" + "---|" * (len(LEVELS) + 1)]
    for name, weights, result in rows:
        noisy = statistics.fmean(result[lv] for lv in LEVELS if lv != "clean")
        lines.append(f"| {name} | `{weights}` | " + " | ".join(f"{result[lv]:.2f}" for lv in LEVELS)
                     + f" | {noisy:.2f} |")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
