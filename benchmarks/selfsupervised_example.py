"""The "No clean images?" example of docs/fine-tuning.md, scored: the generated noisy stack, the shipped gray denoiser, and
the self-supervised fine-tunes made by its command, with a fine-tune's defaults (Neighbor2Neighbor) and with VARIANTS
of them (3e-4, the rate docs/fine-tuning.md suggests for data far from anything the start has seen; only the biases;
pseudo-clean); the clean twin is used for scoring only.

    python benchmarks/selfsupervised_example.py     # writes benchmarks/results/selfsupervised_example.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "selfsupervised_example.md"
TRAIN = ["--task", "denoise", "--data", "my_noisy/", "--self-supervised", "--init", "denoise-gray",
         "--steps", "300", "--patch", "96", "--batch", "8", "--quiet"]
# besides the defaults (Neighbor2Neighbor, every parameter at 3e-5: config.FINETUNE_NOISY): 3e-4, for data far from
# what the start model has seen, only the biases (docs/fine-tuning.md), and pseudo-clean at its own defaults (1e-5,
# no decoder term)
VARIANTS = (("--lr", "3e-4"), ("--adapt", "biases"), ("--self-supervised", "pseudo-clean"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import tifffile
    import torch

    import napari_vdir

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run = dict(cwd=tmp, check=True)
        subprocess.run([sys.executable, str(ROOT / "examples" / "noisy_stack.py"), "my_noisy/"], **run)
        minutes, models = {}, {}
        for k, extra in enumerate(((), *VARIANTS)):
            t0 = time.perf_counter()
            out = "runs/my-microscope" + (f"-{k}" if extra else "")
            subprocess.run([sys.executable, "-m", "napari_vdir.training", *TRAIN, "--out", out, *extra, "--threads",
                            str(args.threads)], **run)
            minutes[extra] = (time.perf_counter() - t0) / 60
            models[extra] = Path(tmp) / out / "denoise.safetensors"
        noisy = tifffile.imread(Path(tmp) / "my_noisy" / "stack.tif")
        clean = tifffile.imread(Path(tmp) / "my_noisy_clean" / "stack.tif").astype(np.float64)
        peak = clean.max() - clean.min()

        def psnr(a):
            return 10 * np.log10(peak**2 / np.mean((a.astype(np.float64) - clean) ** 2))

        rows = [("noisy stack", psnr(noisy), ""),
                ("shipped denoise-gray", psnr(napari_vdir.restore(noisy, "denoise")), "")]
        for extra, model in models.items():
            what = "the defaults" if not extra else "`" + " ".join(extra) + "`"
            rows.append((f"fine-tuned on the noisy stack (300 steps, {what})",
                         psnr(napari_vdir.restore(noisy, "denoise", model=model)), f"{minutes[extra]:.1f}"))
    lines = ["# Self-supervised fine-tune of the README example", "",
             f"Written by `python benchmarks/selfsupervised_example.py --threads {args.threads}`: "
             "`python examples/noisy_stack.py my_noisy/`, then `python -m napari_vdir.training "
             + " ".join(TRAIN) + " --out runs/my-microscope` and the same with each variant's flags, scored "
             "against the generated clean twin (PSNR over the 20-plane uint16 stack, peak = its clean range).", "",
             "| | PSNR (dB) | wall minutes |", "|---|---|---|"]
    lines += [f"| {name} | {value:.2f} | {wall} |" for name, value, wall in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
