"""How close is a fine-tune's fitted noise model to the truth? (issue 33: the held-out check and pseudo-clean lean on it)

    OMP_NUM_THREADS=1 python benchmarks/noise_fit.py      # writes benchmarks/results/noise_fit.md

A self-supervised fine-tune fits a Poisson-Gaussian noise model (variance = gain x signal + offset) to its noisy
data: Stein's estimate of the held-out error needs it, and pseudo-clean noises its targets with it. Here the fit
(``selfsupervised.fit_noise_model``: the data's finest diagonal detail over 2x2 windows, the smoother half of each
intensity bin, the starting model's output as the signal) is compared with

- the truth: the squared difference between the noisy image and its clean reference, binned and fitted the same
  way. For W2S the reference is the 400-frame average mapped onto the noisy file's intensity scale by least
  squares (the files were stretched one by one); it carries a 400th of the frame's noise and any drift between
  frames, so its "truth" is a hair high;
- the fit used before (``residual``): the starting model's squared residual, binned, each bin divided by
  (1 - 2 x its mean divergence) — a denoiser's residual also holds the detail it removed, so it runs high.

Images: ``camera`` (skimage, the 256x256 crop of ``tests/training/test_keep_best.py``) with Gaussian noise of
sigma 25/255, the same with Poisson noise of 30 photons at white plus Gaussian 0.02, and the 30 noisy frames of
W2S fields 031-040 (the fine-tune benchmark's training fields). Reported: each fit's variance at the image's mean
intensity, relative to the truth's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FIELDS = range(31, 41)


def binned_line(signal: torch.Tensor, squared: torch.Tensor, weights_by=None) -> tuple[float, float]:
    """Least-squares line through the mean of ``squared`` in 16 equal-width bins of ``signal`` (0.1-99.9 %),
    weighted by the square root of each bin's count; ``weights_by``: a per-bin divisor of the mean."""
    s, r2 = signal.flatten().double(), squared.flatten().double()
    d = None if weights_by is None else weights_by.flatten().double()
    lo, hi = (float(q) for q in torch.quantile(s[:: max(1, s.numel() // 2**20)], torch.tensor([0.001, 0.999],
                                                                                               dtype=s.dtype)))
    centres, values, weights = [], [], []
    for a, b in zip(np.linspace(lo, hi, 17)[:-1], np.linspace(lo, hi, 17)[1:]):
        inside = (s >= a) & (s <= b)
        n = int(inside.sum())
        if n >= 16:
            scale = 1.0 if d is None else 1 - 2 * min(float(d[inside].mean()), 0.45)
            centres.append(float(s[inside].mean()))
            values.append(float(r2[inside].mean()) / scale)
            weights.append(n**0.5)
    x, v, w = (torch.tensor(t, dtype=torch.float64) for t in (centres, values, weights))
    design = torch.stack([x, torch.ones_like(x)], 1) * w[:, None]
    gain, offset = (float(c) for c in torch.linalg.lstsq(design, (v * w)[:, None]).solution.flatten())
    return gain, offset


def fits(model, noisy: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """Variance at the mean intensity of the truth, the current fit and the residual fit."""
    from napari_vdir.training import selfsupervised

    y = torch.from_numpy(noisy.astype(np.float32))[None, None]
    x = torch.from_numpy(clean.astype(np.float32))[None, None]
    with torch.no_grad():
        signal, follows = selfsupervised.divergence_map(model, y, torch.Generator().manual_seed(7))
    level = float(x.mean())
    out = {}
    for name, (gain, offset) in {
        "truth": binned_line(x, (y - x) ** 2),
        "fit": selfsupervised.fit_noise_model(y, signal),
        "residual": binned_line(signal, (y - signal) ** 2, follows),
    }.items():
        out[name] = gain * level + offset
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--w2s", type=Path, default=None, help="the W2S folder (eval_w2s.W2S)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "noise_fit.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    from skimage import data

    import eval_w2s
    from napari_vdir.core.io import read_image
    from napari_vdir.core.models import resolve_model
    from napari_vdir.core.weights import load_weights

    args.w2s = args.w2s or eval_w2s.W2S
    model, _ = load_weights(resolve_model("denoise-gray", "denoise", 1))
    model.eval()
    camera = data.camera()[96:352, 96:352].astype(np.float64) / 255
    rng = np.random.default_rng(0)
    rows = [("camera, Gaussian sigma 25/255", fits(model, camera + rng.normal(0, 25 / 255, camera.shape), camera)),
            ("camera, Poisson 30 photons + Gaussian 0.02",
             fits(model, rng.poisson(camera * 30) / 30 + rng.normal(0, 0.02, camera.shape), camera))]
    for fov in FIELDS:
        for channel in range(eval_w2s.CHANNELS):
            key, noisy_path, clean_path = eval_w2s.w2s_paths(args.w2s, fov, channel)
            noisy = read_image(noisy_path).astype(np.float64)
            reference = eval_w2s.affine_match(read_image(clean_path).astype(np.float64), noisy)
            rows.append((f"W2S {key}", fits(model, noisy / 255, reference / 255)))
    w2s = np.array([[r["fit"] / r["truth"] - 1, r["residual"] / r["truth"] - 1] for name, r in rows
                    if name.startswith("W2S")]) * 100
    lines = ["# Fitted noise models against the truth (`benchmarks/noise_fit.py`)", "",
             "Command: `OMP_NUM_THREADS=1 python benchmarks/noise_fit.py`", "",
             "Noise variance at each image's mean intensity (0-1 scale). `fit`: `selfsupervised.fit_noise_model` "
             "(finest diagonal detail, smoother half of each intensity bin; the start `denoise-gray` gives the "
             "signal); `residual`: the fit used before (the start's residual, divergence-corrected); `truth`: from "
             "the clean reference (see the script's docstring).", "",
             f"W2S fields {FIELDS.start:03d}-{FIELDS.stop - 1:03d} ({len(w2s)} frames): fit {w2s[:, 0].mean():+.1f} % "
             f"on average (from {w2s[:, 0].min():+.1f} to {w2s[:, 0].max():+.1f} %), residual "
             f"{w2s[:, 1].mean():+.1f} % ({w2s[:, 1].min():+.1f} to {w2s[:, 1].max():+.1f} %).", "",
             "| image | truth | fit | residual |", "|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['truth']:.6f} | {r['fit']:.6f} ({r['fit'] / r['truth'] - 1:+.1%}) | "
                     f"{r['residual']:.6f} ({r['residual'] / r['truth'] - 1:+.1%}) |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
