"""How much can ten CPU-minutes of adaptation gain on W2S at all? (issue 33's payback target, in context)

    OMP_NUM_THREADS=1 python benchmarks/w2s_headroom.py --minutes 10     # writes benchmarks/results/w2s_headroom.md

Issue 33 asks a self-supervised fine-tune of ``denoise-gray`` for +0.4 dB (affine-matched PSNR) on W2S fields
021-030 after 10 CPU-minutes and +0.8 dB after 60. ``finetune_w2s.py`` measures what our fine-tune reaches; this
script measures what bounds it, on the same scored fields, one thread:

- ``strength``: the shipped model restoring harder or more gently (``restore(strength=...)``), no training;
- ``variance-stabilised``: the shipped model run inside a generalised Anscombe transform whose Poisson-Gaussian
  parameters are fitted to each noisy image itself (``selfsupervised.fit_noise_model``, as the fine-tune fits
  them), so the noise it sees has one level everywhere, as in its AWGN training; no training;
- ``supervised``: the shipped model fine-tuned with CLEAN targets — the noisy frames of fields 001-020 paired with
  their 400-frame averages, each average mapped onto its frame's intensity scale by least squares (the files were
  stretched one by one) — for the same CPU-minutes, at the fine-tune-on-pairs defaults (lr 1e-4 after a 100-step
  warm-up; ``training.config.FINETUNE_PAIRS``), patch 64, batch 8. No user of the Fine-tune dock has these
  targets: a noisy-only method's gradient can at best match this one's, so its gain bounds what ten minutes of
  our fine-tune could buy with the same network and optimiser.

Scored fields are never trained on. Training fields 001-020 are W2S's own "train" side (the self-supervised
benchmark trains on 031-040 noisy frames; scoring is the same).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

STRENGTHS = (0.8, 1.2, 1.5, 2.0)


def variance_stabilised(model, noisy: np.ndarray) -> np.ndarray:
    """``noisy`` (uint8) restored by the shipped ``model`` inside a generalised Anscombe transform fitted to it:
    z = 2/g sqrt(g y + 3/8 g^2 + o) has unit variance where var(y) = g x + o; z is scaled into [0, 1] for the
    model, restored, and mapped back by the algebraic inverse with its first-order bias term (g^2 / 4)."""
    import torch

    import napari_vdir
    from napari_vdir.training import selfsupervised

    y = noisy.astype(np.float32) / 255
    yt = torch.from_numpy(y)[None, None]
    with torch.no_grad():
        signal, follows = selfsupervised.divergence_map(model, yt, torch.Generator().manual_seed(7))
    gain, offset = selfsupervised.fit_noise_model(yt, signal, follows)
    g = max(gain, 1e-6)
    z = 2 / g * np.sqrt(np.maximum(g * y + 3 / 8 * g * g + offset, 0))
    lo, hi = float(z.min()), float(z.max())
    restored = napari_vdir.restore(((z - lo) / (hi - lo)).astype(np.float32), "denoise", model="denoise-gray")
    fz = restored * (hi - lo) + lo
    x = ((g * fz / 2) ** 2 + g * g / 4 - 3 / 8 * g * g - offset) / g
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def make_pairs(folder: Path, fields) -> None:
    """Noisy frames and their intensity-matched 400-frame averages as paired 8-bit files."""
    import tifffile

    import eval_w2s as ev

    for sub in ("clean", "noisy"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for key, noisy, clean in ev.validation_pairs(ev.W2S, fields):
        matched = ev.affine_match(clean, noisy.astype(np.float64))
        tifffile.imwrite(folder / "clean" / f"{key}.tif", np.round(matched).astype(np.uint8))
        tifffile.imwrite(folder / "noisy" / f"{key}.tif", noisy.astype(np.uint8))


def supervised_command(folder: Path, minutes: float) -> list[str]:
    return [sys.executable, "-m", "napari_vdir.training", "--task", "denoise", "--channels", "1",
            "--data", str(folder / "clean"), "--degraded", str(folder / "noisy"), "--init", "denoise-gray",
            "--patch", "64", "--batch", "8", "--steps", "100000", "--time-budget", f"{minutes:g}",
            "--budget-clock", "cpu", "--threads", "1", "--val-every", "300", "--out", str(folder / "run"),
            "--quiet"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="CPU-minutes of supervised fine-tuning (10)")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "w2s-headroom",
                   help="pairs and the supervised run (reused when its weights exist)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "w2s_headroom.md")
    args = p.parse_args(argv)

    import torch

    import eval_w2s as ev
    import finetune_w2s as fw
    from napari_vdir.core.models import find_model
    from napari_vdir.core.weights import load_weights

    if not (ev.W2S / "noisy").is_dir():
        raise SystemExit(f"error: no W2S data at {ev.W2S}")
    torch.set_num_threads(1)
    pairs = ev.validation_pairs(ev.W2S, range(21, 31))
    rows = []

    def add(label, outputs):
        s = fw.scores(outputs, pairs)
        rows.append((label, s))
        print(f"{label}: matched {s['matched']:.2f}", flush=True)

    import napari_vdir

    add("noisy input", [n for _, n, _ in pairs])
    add("denoise-gray, no training", fw.restore_all("denoise-gray", pairs))
    for s in STRENGTHS:
        add(f"denoise-gray, strength {s:g}",
            [napari_vdir.restore(n, "denoise", model="denoise-gray", strength=s) for _, n, _ in pairs])
    model, _ = load_weights(find_model("denoise-gray"))
    add("denoise-gray in a variance-stabilising transform fitted to each image",
        [variance_stabilised(model.eval(), n) for _, n, _ in pairs])

    weights = args.work / "run" / "denoise.safetensors"
    command = supervised_command(args.work, args.minutes)
    if not weights.is_file():
        make_pairs(args.work, range(1, 21))
        t = time.process_time()
        subprocess.run(command, check=True)
        print(f"supervised run: {time.process_time() - t:.0f} CPU-s in this process", flush=True)
    add(f"denoise-gray fine-tuned on CLEAN pairs (fields 001-020), {args.minutes:g} CPU-min",
        fw.restore_all(weights, pairs))

    start = rows[1][1]["matched"]
    lines = [
        "# W2S headroom: what bounds a 10-minute fine-tune (`benchmarks/w2s_headroom.py`)", "",
        f"Command: `OMP_NUM_THREADS=1 python benchmarks/w2s_headroom.py --minutes {args.minutes:g}"
        + (f" --work {args.work.resolve().relative_to(REPO)}" if args.work.resolve() != (REPO / "runs" / "w2s-headroom")
           else "") + "`", "",
        "Scored: W2S fields 021-030 (30 whole 512² images) against their 400-frame averages, as "
        "`finetune_w2s.py` scores; affine-matched PSNR (plain PSNR · SSIM of the matched result). "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {fw.machine()}; one thread.", "",
        "| what | matched PSNR (plain · SSIM) | vs shipped |", "|---|---|---|"]
    for label, s in rows:
        lines.append(f"| {label} | {s['matched']:.2f} ({s['plain']:.2f} · {s['ssim']:.3f}) | "
                     f"{s['matched'] - start:+.2f} |")
    lines += ["", "Supervised run: `" + " ".join(["python"] + command[1:]).replace(str(REPO) + "/", "") + "`"
              " (pairs written by this script into the work folder first).", "",
              "Reading: the supervised row is what the same network, optimiser and CPU-minutes buy with the "
              "clean targets no user has; a noisy target is that clean target plus noise, so a self-supervised "
              "fine-tune's gain (`finetune_w2s.md`) is not expected to pass it at equal CPU-minutes. The two rows without training show how much of the gap is the noise's "
              "signal dependence (variance-stabilised) or the model's strength, which training would fix "
              "first.", ""]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
