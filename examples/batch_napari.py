"""Restore every image layer of a (hidden) napari viewer with the plugin's own code, and save the results.

This runs the same path as the Restore (VDIR) dock (``napari_vdir.plugin.layers.restore_layer`` + ``add_or_update``),
so layer names, dtypes, scale and translate match what the dock produces. It needs a display for Qt; on a server run it under Xvfb, e.g.::

    xvfb-run -a python examples/batch_napari.py images/*.tif --task denoise --out restored/
    xvfb-run -a python examples/batch_napari.py --sample noisy_photo --latent --out restored/
    xvfb-run -a python examples/batch_napari.py lowres.png --task sr --scale 4 --out restored/

Each output is written as ``<out>/<layer name> [<task>].tif`` (and ``... latent c.tif`` with
``--latent``); the estimated degradation is printed per layer.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

SAMPLES = ("noisy_photo", "noisy_gray", "low_resolution", "jpeg_damaged")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="*", type=Path, help="image files napari can open (TIFF, PNG, ...)")
    p.add_argument("--sample", action="append", choices=SAMPLES, default=[],
                   help="also load one of the plugin's sample images (repeatable)")
    p.add_argument("--task", default="denoise", choices=("denoise", "real-denoise", "sr", "jpeg"))
    p.add_argument("--scale", type=int, default=None, help="2 or 4 for --task sr (default 2)")
    p.add_argument("--model", default=None, help="shipped model name or .safetensors path (default: shipped)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--latent", action="store_true", help="also save the latent c (4 x H/4 x W/4 per plane)")
    p.add_argument("--out", type=Path, default=Path("restored"))
    args = p.parse_args(argv)
    if not args.inputs and not args.sample:
        p.error("give image files and/or --sample NAME")
    if args.task == "sr" and args.scale is None:
        args.scale = 2
    return args


def safe_filename(name: str) -> str:
    return re.sub(r"[^\w\-\[\]. ]+", "_", name).strip() or "layer"


def main(argv=None) -> list[Path]:
    import napari
    import tifffile
    from napari.layers import Image

    from napari_vdir.plugin.layers import add_or_update, restore_layer

    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=False)
    written = []
    try:
        for path in args.inputs:
            viewer.open(path)
        for key in args.sample:
            viewer.open_sample("napari-vdir", key)
        inputs = [layer for layer in viewer.layers if isinstance(layer, Image)]
        for layer in inputs:
            res = restore_layer(layer, args.task, scale=args.scale, model=args.model, device=args.device,
                                latent=args.latent, strength=args.strength)
            for data, meta, _ in res.layers:
                add_or_update(viewer, (data, meta, "image"))
                target = args.out / f"{safe_filename(meta['name'])}.tif"
                tifffile.imwrite(target, data, photometric="rgb" if meta.get("rgb") else "minisblack")
                written.append(target)
            print(f"{layer.name}: {res.summary()} [{res.model} on {res.device}] -> {args.out}")
    finally:
        viewer.close()
    return written


if __name__ == "__main__":
    main()
