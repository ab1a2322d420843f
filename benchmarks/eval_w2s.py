"""Denoising of real widefield fluorescence: W2S validation fields 031-040 (30 images), noisy frame vs the
400-frame average.

    python benchmarks/eval_w2s.py --model shipped=denoise-gray --model nb2nb=PATH ...   # writes results/w2s.md

Figures per method, all against the 400-frame average:
- **PSNR after intensity matching** (the headline, first column): the least-squares a*x + b of the result onto
  the reference, per image, before the PSNR (the normalisation used by CARE, Weigert et al. 2018, for
  microscopy; ``affine_match``, also used by finetune_w2s.py). It is needed here because the
  8-bit files of W2S were contrast-stretched one by one: every noisy and every average has ~0.18 % of its pixels
  at 0 and at 255 (an auto-contrast with 0.35 % saturation), so the noisy frame and its average sit on different
  intensity scales (fitted slope ~1.3), a difference no method trained on noisy images can learn. This script
  measures and prints that too (`saturated` columns).
- **PSNR**, plain (what the dataset gives), beside it.
- **PSNR after the dataset's auto-contrast**: the result stretched the way the references were made (its own
  0.175 / 99.825 percentiles to 0 / 255, i.e. 0.35 % of the pixels saturated, split between both ends), a map that
  needs no reference. The stretch explains the gap: with it, the plain PSNR of every method rises by ~7 dB.

Baselines: the noisy frame, and a Gaussian blur with the best sigma per image (an oracle: sigma picked against the
reference). Fine-tuned models are never chosen by these numbers; they are the end of their recipe's schedule.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

import napari_vdir
from napari_vdir.core.io import read_image

RESULTS = Path(__file__).resolve().parent / "results" / "w2s.md"
BLUR_SIGMAS = (0.75, 1.0, 1.5, 2.0, 3.0)
W2S = Path(__file__).resolve().parents[1].parent / "shared/datasets/W2S"  # the W2S folder beside the repository
VALIDATION_FIELDS = range(31, 41)
CHANNELS = 3  # stains per field of view: three gray images, not RGB


def psnr(a: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - ref) ** 2)))


def affine_match(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``a`` mapped onto ``ref`` by the least-squares scale and offset (clipped to the 8-bit range), as CARE
    (Weigert et al. 2018) and CSBDeep normalise a prediction before comparing it with its reference."""
    x = a.astype(np.float64).ravel()
    design = np.stack([x, np.ones_like(x)], 1)
    coef = np.linalg.lstsq(design, np.asarray(ref, np.float64).ravel(), rcond=None)[0]
    return np.clip(design @ coef, 0, 255).reshape(np.shape(ref))


def matched_psnr(a: np.ndarray, ref: np.ndarray) -> float:
    """PSNR after the least-squares affine map of ``a`` onto ``ref`` (:func:`affine_match`)."""
    return psnr(affine_match(a, ref), ref)


def auto_contrast(a: np.ndarray, saturated: float = 0.35) -> np.ndarray:
    """``a`` stretched to 0-255 by its own percentiles, ``saturated`` % of its pixels clipped (half at each end)."""
    low, high = np.percentile(a.astype(np.float64), [saturated / 2, 100 - saturated / 2])
    return np.clip((a - low) / max(high - low, 1e-9) * 255.0, 0, 255)


def scores(a: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(plain, intensities matched, auto-contrasted) PSNR of ``a`` against ``ref``."""
    return psnr(a, ref), matched_psnr(a, ref), psnr(auto_contrast(a), ref)


def w2s_paths(root: Path, fov: int, channel: int) -> tuple[str, Path, Path]:
    """(key, noisy frame, 400-frame average) of one field of view (1-40) and stain (0-2) of W2S."""
    key = f"{fov:03d}_{channel}"
    return key, root / "noisy" / f"input_avg1_{key}.tif", root / "clean" / f"target_avg400_{key}.tif"


def validation_pairs(root: Path, fields=VALIDATION_FIELDS) -> list[tuple[str, np.ndarray, np.ndarray]]:
    pairs = []
    for fov in fields:
        for channel in range(CHANNELS):
            key, noisy, clean = w2s_paths(root, fov, channel)
            pairs.append((key, read_image(noisy), read_image(clean).astype(np.float64)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--w2s", type=Path, default=W2S)
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=MODEL",
                        help="a shipped model name or weights file, with the label for the table (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pairs = validation_pairs(args.w2s)
    methods: dict[str, list[tuple[float, float, float]]] = {"noisy input": [], "Gaussian blur, best sigma (oracle)": []}
    saturation = []
    for _, noisy, clean in pairs:
        methods["noisy input"].append(scores(noisy, clean))
        blurred = [gaussian_filter(noisy.astype(np.float64), s) for s in BLUR_SIGMAS]
        best = max(blurred, key=lambda b: psnr(b, clean))
        methods["Gaussian blur, best sigma (oracle)"].append(scores(best, clean))
        saturation.append(((noisy == 0).mean(), (noisy == 255).mean(), (clean == 0).mean(), (clean == 255).mean()))
    seconds = {}
    for spec in args.model:
        label, _, model = spec.partition("=")
        model = model or label
        t0 = time.perf_counter()
        methods[label] = [scores(napari_vdir.restore(noisy, "denoise", model=model), clean) for _, noisy, clean in pairs]
        seconds[label] = time.perf_counter() - t0
    sat = np.mean(saturation, axis=0) * 100
    lines = [
        "# W2S widefield fluorescence: validation fields 031-040 (30 images, 512^2, 8-bit)",
        "",
        "Written by `python benchmarks/eval_w2s.py " + " ".join(f"--model {shlex.quote(m)}" for m in args.model)
        + f" --threads {args.threads}` on {platform.processor() or platform.machine()}.",
        "Mean over the 30 images; 'matched' (the headline: the files were contrast-stretched one by one, so plain PSNR",
        "rewards only methods that saw the clean files) = PSNR after the least-squares affine intensity map onto the",
        "reference;",
        "'auto-contrasted' = PSNR after stretching the result as the dataset stretched its references (own 0.175 /",
        "99.825 percentiles to 0 / 255; no reference needed).",
        "",
        "| method | PSNR, intensities matched (dB) | plain PSNR (dB) | PSNR, auto-contrasted (dB) |",
        "|---|---|---|---|",
    ]
    for label, rows in methods.items():
        s = np.array(rows)
        lines.append(f"| {label} | {s[:, 1].mean():.2f} | {s[:, 0].mean():.2f} | {s[:, 2].mean():.2f} |")
    lines += ["", f"Pixels at 0 / 255, mean over the files: noisy {sat[0]:.2f} % / {sat[1]:.2f} %, "
              f"400-frame averages {sat[2]:.2f} % / {sat[3]:.2f} % (each file contrast-stretched on its own).", ""]
    if seconds:
        lines.append("Wall time for the 30 images: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {label: {key: [round(v, 4) for v in values] for (key, _, _), values in zip(pairs, rows, strict=True)}
         for label, rows in methods.items()}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
