"""Validation PSNR of denoisers and JPEG restorers on all of Val20, per degradation level: issue 15's decision set.

    python benchmarks/val20_levels.py NAME=WEIGHTS [NAME=WEIGHTS ...] --out benchmarks/results/val20_levels.md
    python benchmarks/val20_levels.py --channels 1 NAME=WEIGHTS ... --out benchmarks/results/val20_levels-denoise-gray.md
    python benchmarks/val20_levels.py --task jpeg NAME=WEIGHTS ... --out benchmarks/results/val20_levels-jpeg-rgb.md
    python benchmarks/val20_levels.py --task sr --scale 2 NAME=WEIGHTS ... --out benchmarks/results/val20_levels-sr-x2.md
    python benchmarks/val20_levels.py --task sr --scale 2 --levels g2.0 NAME=WEIGHTS ...     # the paper's protocol

The trainer's validation number (8 crops of Val20, one draw of the clean-inclusive ranges each) mixes noise levels
and clean crops, so one clean crop at ~50 dB moves the mean by more than any trunk does. This scores whole Val20
images at fixed levels instead — AWGN σ 15, 30, 50 (seed 3000 + image index, not clipped, like the evaluation's
AWGN rows) or JPEG quality 10, 30, 90, 95 (Pillow, 4:2:0 for colour, like the evaluation's JPEG rows), and clean in —
with ``napari_vdir.restore`` (blind, default precision); ``--channels 1`` scores gray models on Val20's luma.
``--task sr`` scores SR models (issue 14) on the evaluation's real-world low-res settings (MATLAB bicubic, area,
Pillow bicubic) and the pixel-centred Gaussian one, made from Val20 as ``benchmarks/evaluate.py`` makes them from the
test sets, Y-PSNR with ``scale`` pixels shaved; ``input`` is then the bicubic upscale. ``--levels`` scores other
levels instead (for SR any of the evaluation's settings, e.g. ``g2.0``: the paper's protocol, for the ``-paper``
models).
Val20 is the training recipes' validation set: choosing between models on it is allowed, on the test sets it is not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LEVELS = {"denoise": (15, 30, 50, "clean"), "jpeg": (10, 30, 90, 95, "clean"),
          "sr": ("matlab", "area", "pillow", "g2.0-centred")}
LABEL = {"denoise": "σ{}", "jpeg": "q{}", "sr": "{}"}


def degrade(clean: np.ndarray, task: str, level: int, i: int) -> np.ndarray:
    """Val20 image ``i`` at one fixed level: AWGN of σ ``level`` / 255 or a JPEG of quality ``level``."""
    from napari_vdir.core.degradations import jpeg_roundtrip

    if task == "jpeg":
        return jpeg_roundtrip(clean[..., 0] if clean.shape[-1] == 1 else clean, level).reshape(clean.shape)
    rng = np.random.default_rng(3000 + i)
    return (clean + rng.normal(0, level / 255, clean.shape)).astype(np.float32)


def sr_psnr(weights, images: list[np.ndarray], scale: int, level: str) -> float:
    """Mean Y-PSNR of an SR model (``input``: the bicubic upscale) on Val20 at one evaluation setting."""
    import evaluate

    setting = evaluate.Setting("Val20", f"x{scale}_{level}")
    method = "bicubic" if weights == "input" else "ours"
    upscale = evaluate.make_methods(setting, [method], {("sr", scale, 3): weights})[method]
    values = []
    for i, clean in enumerate(images):
        ref, lr = evaluate.degrade(setting, clean.astype(np.float64), i)
        out = np.clip(np.asarray(upscale(lr, ref.shape), np.float64), 0, 1)
        values.append(evaluate.score(setting, ref, out)["psnr"])
    return statistics.fmean(values)


def score(weights: Path, images: list[np.ndarray], task: str, scale: int = 2, levels=None) -> dict:
    from skimage.metrics import peak_signal_noise_ratio

    from napari_vdir import restore

    levels = levels or LEVELS[task]
    if task == "sr":
        return {level: sr_psnr(weights, images, scale, level) for level in levels}
    results = {}
    for level in levels:
        values = []
        for i, clean in enumerate(images):
            x = clean if level == "clean" else degrade(clean, task, level, i)
            x = x[..., 0] if x.shape[-1] == 1 else x
            out = x if weights == "input" else restore(x, task, model=weights, device="cpu")
            out = np.clip(np.asarray(out, np.float64), 0, 1)
            out = out.reshape(clean.shape)
            values.append(float(peak_signal_noise_ratio(clean.astype(np.float64), out, data_range=1)))
        results[level] = statistics.fmean(values)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="NAME=WEIGHTS (a weights file, a shipped model name, or `input`: "
                   "the degraded image itself, the no-restoration baseline)")
    p.add_argument("--val", nargs="+", default=[str(REPO.parent / "shared" / "datasets" / "Val20")],
                   help="the validation images: folders, files or glob patterns (default: all of Val20)")
    p.add_argument("--task", choices=sorted(LEVELS), default="denoise")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1: gray models, on Val20's luma")
    p.add_argument("--scale", type=int, choices=(2, 4), default=2, help="SR scale (--task sr)")
    p.add_argument("--levels", help="comma-separated levels to score instead of the task's: AWGN σ or JPEG quality "
                   "numbers or `clean`; for --task sr evaluation settings without the scale, e.g. g2.0,g2.0-centred")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="markdown report (default: print only)")
    args = p.parse_args(argv)
    levels = LEVELS[args.task]
    if args.levels:
        try:
            levels = tuple(lv if args.task == "sr" or lv == "clean" else int(lv) for lv in args.levels.split(","))
        except ValueError:
            p.error(f"--levels of --task {args.task} are whole numbers or `clean`, got {args.levels}")
    import torch

    from napari_vdir.training.data import load_folder

    torch.set_num_threads(args.threads)
    images = [x for _, x in load_folder(args.val, args.channels)]
    rows = []
    for spec in args.models:
        name, _, weights = spec.partition("=")
        result = score(Path(weights) if Path(weights).is_file() else weights, images, args.task, args.scale, levels)
        rows.append((name, weights, result))
        print(name, {k: round(v, 3) for k, v in result.items()}, flush=True)
    flags = "".join(f" --{k} {getattr(args, k)}" for k, default in (("task", "denoise"), ("channels", 3))
                    if getattr(args, k) != default) + (f" --scale {args.scale}" if args.task == "sr" else "")
    flags += f" --levels {args.levels}" if args.levels else ""
    flags += (" --val " + " ".join(args.val)) if args.val != p.get_default("val") else ""
    what = {"denoise": "AWGN seed 3000 + i, not clipped", "jpeg": "Pillow JPEG, 4:2:0 for colour",
            "sr": f"x{args.scale} low-res made as benchmarks/evaluate.py makes it, Y-PSNR, {args.scale} px shaved, "
                  "`input` = bicubic upscale"}[args.task]
    degraded_levels = [lv for lv in levels if lv != "clean"]
    lines = [f"# Val20 PSNR per {args.task} level, {args.channels}-channel models (`benchmarks/val20_levels.py`)", "",
             "Command: `python benchmarks/val20_levels.py " + " ".join(args.models) + flags
             + (f" --out {args.out}" if args.out else "") + "`", "",
             (f"All {len(images)} Val20 images" if args.val == p.get_default("val") else
              f"{len(images)} images ({' '.join(Path(v).name for v in args.val)})")
             + f", whole{' (luma)' if args.channels == 1 else ''}; {what}; "
             + ("`clean` = restore(clean) vs clean; " if "clean" in levels else "")
             + f"blind `napari_vdir.restore`, default precision; {time.strftime('%Y-%m-%d %H:%M %Z')}.", "",
             "| model | weights | " + " | ".join(LABEL[args.task].format(lv) if lv != "clean" else "clean in"
                                                for lv in levels)
             + f" | mean of {LABEL[args.task].format(degraded_levels[0])}–{degraded_levels[-1]} |",
             "|---|---|" + "---|" * (len(levels) + 1)]
    for name, weights, result in rows:
        degraded = statistics.fmean(result[lv] for lv in degraded_levels)
        lines.append(f"| {name} | `{weights}` | " + " | ".join(f"{result[lv]:.2f}" for lv in levels)
                     + f" | {degraded:.2f} |")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
