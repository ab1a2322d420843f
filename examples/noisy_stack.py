"""Write a generated noisy fluorescence-like Z-stack, to try self-supervised fine-tuning without data of your own.

    python examples/noisy_stack.py my_noisy/          # my_noisy/stack.tif, (20, 256, 256) uint16, and its clean twin

Cells are Gaussian blobs on a dim background; the noise is Poisson (about 12 photons at the brightest cell)
plus Gaussian read noise, on a 100-count camera offset: what a widefield microscope at low light records.
The clean stack is written to `<folder>_clean/` for measuring only; fine-tuning never reads it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def cells(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    image = np.full((size, size), 0.05)
    for _ in range(count):
        cy, cx = rng.uniform(0, size, 2)
        radius = rng.uniform(3, 12)
        image += rng.uniform(0.2, 0.6) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    return np.clip(image, 0, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--planes", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--photons", type=float, default=12.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import tifffile

    rng = np.random.default_rng(args.seed)
    clean = np.stack([cells(rng, args.size, args.size // 8) for _ in range(args.planes)])
    noisy = rng.poisson(clean * args.photons) / args.photons + rng.normal(0, 0.03, clean.shape)
    counts = 4000.0  # camera counts per unit intensity
    for folder, stack in ((args.folder, noisy), (args.folder.with_name(args.folder.name + "_clean"), clean)):
        folder.mkdir(parents=True, exist_ok=True)
        data = np.clip(np.rint(stack * counts + 100), 0, 65535).astype(np.uint16)
        tifffile.imwrite(folder / "stack.tif", data, photometric="minisblack")
    print(f"wrote {args.folder / 'stack.tif'} {noisy.shape} uint16 (clean twin in {args.folder.name}_clean/)")


if __name__ == "__main__":
    main()
