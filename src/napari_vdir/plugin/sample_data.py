"""Sample data made at run time from images bundled with scikit-image, degraded with the
project's own degradations (the ones the models were trained on). Nothing is downloaded.

Each function takes an optional ``size`` (crop to the centre ``size x size``) so tests stay fast.
"""

from __future__ import annotations

import numpy as np

SEED = 0


def _crop(image: np.ndarray, size: int | None) -> np.ndarray:
    if size is None:
        return image
    h, w = image.shape[:2]
    top, left = max((h - size) // 2, 0), max((w - size) // 2, 0)
    return image[top:top + size, left:left + size]


def _nchw(image_u8: np.ndarray):
    import torch

    x = torch.from_numpy(image_u8.astype(np.float32) / 255.0)
    return (x.permute(2, 0, 1) if x.ndim == 3 else x[None])[None]


def _u8(x) -> np.ndarray:
    a = x[0].permute(1, 2, 0).numpy() if x.shape[1] == 3 else x[0, 0].numpy()
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def noisy_photo(size: int | None = None) -> list[tuple]:
    """skimage astronaut with additive white Gaussian noise, σ = 25 (0-255), uint8 RGB."""
    from skimage import data

    from napari_vdir.core.degradations import noisy_u8

    noisy = noisy_u8(_crop(data.astronaut(), size), 25.0, SEED)
    return [(noisy, {"name": "astronaut (noise σ=25)", "rgb": True}, "image")]


def noisy_gray(size: int | None = None) -> list[tuple]:
    """skimage camera as a fluorescence-like uint16 image: Poisson (30 photons at full scale)
    plus Gaussian read noise (σ 5 of 255), offset 100 and ~12-bit range, 0.1 µm pixels."""
    import torch
    from skimage import data

    from napari_vdir.core.degradations import add_poisson_gaussian

    clean = _nchw(_crop(data.camera(), size))
    noisy, _ = add_poisson_gaussian(clean, torch.tensor([30.0]), torch.tensor([5.0]),
                                    torch.Generator().manual_seed(SEED))
    counts = np.clip(np.rint(noisy[0, 0].numpy() * 4000.0 + 100.0), 0, 65535).astype(np.uint16)
    meta = {"name": "camera (uint16, Poisson-Gaussian)", "scale": (0.1, 0.1), "units": ("micrometer", "micrometer"),
            "axis_labels": ("y", "x"), "colormap": "gray"}
    return [(counts, meta, "image")]


def low_resolution(size: int | None = None) -> list[tuple]:
    """skimage chelsea blurred with an isotropic Gaussian (σ 1.6 px) and decimated x2, uint8 RGB."""
    import torch
    from skimage import data

    from napari_vdir.core.degradations import blur_decimate, gaussian_kernel

    clean = _nchw(_crop(data.chelsea(), None if size is None else 2 * size))
    kernel = torch.from_numpy(gaussian_kernel(1.6, 1.6, 0.0)).float()[None]
    return [(_u8(blur_decimate(clean, kernel, 2)), {"name": "chelsea (blurred, x2 smaller)", "rgb": True}, "image")]


def jpeg_damaged(size: int | None = None) -> list[tuple]:
    """skimage coffee saved as JPEG at quality 15, uint8 RGB."""
    from skimage import data

    from napari_vdir.core.degradations import jpeg_roundtrip

    clean = _crop(data.coffee(), size).astype(np.float32) / 255.0
    damaged = np.clip(np.rint(jpeg_roundtrip(clean, 15) * 255.0), 0, 255).astype(np.uint8)
    return [(damaged, {"name": "coffee (JPEG quality 15)", "rgb": True}, "image")]
