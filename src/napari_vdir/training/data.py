"""Training data: clean images held in memory, random patches, on-the-fly degradation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import degradations as deg
from ..io import list_images, read_image
from .config import Recipe

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def as_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8/uint16 image -> float32 (H, W, channels) in [0, 1]; colour to gray by BT.601 luma."""
    if image.dtype == np.uint8:
        x = image.astype(np.float32) / 255.0
    elif np.issubdtype(image.dtype, np.integer):
        x = image.astype(np.float32) / float(max(image.max(), 1))
    else:
        x = np.clip(image.astype(np.float32), 0, 1)
    if x.ndim == 2:
        x = x[..., None]
    if x.shape[-1] == channels:
        return x
    if channels == 1:
        return (x[..., :3] @ LUMA)[..., None]
    return np.repeat(x[..., :1], 3, axis=-1)


def planes_of(path: Path) -> list[np.ndarray]:
    """A file's 2-D planes (gray or RGB); multi-page stacks give one entry per page."""
    image = read_image(path)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3):
        return [image]
    return [p for p in image.reshape(-1, *image.shape[-2:])]


def load_folder(folder: str | Path, channels: int, exclude=(), min_size: int = 0) -> list[tuple[str, np.ndarray]]:
    out = []
    for path in list_images(folder):
        if path.name in exclude:
            continue
        for k, plane in enumerate(planes_of(path)):
            x = as_channels(plane, channels)
            if min(x.shape[:2]) >= min_size:
                out.append((f"{path.name}#{k}", x))
    if not out:
        raise ValueError(f"{folder}: no usable images (PNG/JPEG/TIFF, at least {min_size} px on each side)")
    return out


@dataclass
class Batch:
    degraded: torch.Tensor
    clean: torch.Tensor
    estimate_target: torch.Tensor | None  # (N, dims) in training units, or None when unknown


def augment(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flip/rot90 variants (k in 0..7)."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


class PatchSampler:
    """Random aligned patches from clean images (and their degraded twins when paired)."""

    def __init__(self, clean: list[np.ndarray], patch: int, device, degraded: list[np.ndarray] | None = None,
                 scale: int = 1):
        self.scale = scale
        self.patch = patch
        self.clean = [torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).to(device) for x in clean]
        self.degraded = None if degraded is None else [
            torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).to(device) for x in degraded]

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(clean patches of size patch*scale, degraded patches of size patch or None)."""
        s, p = self.scale, self.patch
        idx = torch.randint(len(self.clean), (n,), generator=generator).tolist()
        clean, degraded = [], []
        for i in idx:
            h, w = self.clean[i].shape[-2:]
            top = int(torch.randint(0, (h - p * s) // s + 1, (1,), generator=generator)) * s
            left = int(torch.randint(0, (w - p * s) // s + 1, (1,), generator=generator)) * s
            k = int(torch.randint(0, 8, (1,), generator=generator))
            clean.append(augment(self.clean[i][:, top:top + p * s, left:left + p * s], k))
            if self.degraded is not None:
                t, l_ = top // s, left // s
                degraded.append(augment(self.degraded[i][:, t:t + p, l_:l_ + p], k))
        return torch.stack(clean), (torch.stack(degraded) if degraded else None)


def degrade(clean: torch.Tensor, recipe: Recipe, generator: torch.Generator, cpu_generator: torch.Generator) -> Batch:
    """Apply the recipe's synthetic degradation; returns what the model sees and what it must give back."""
    kind = recipe.degradation
    n = clean.shape[0]
    if kind == "awgn":
        sigma = deg.uniform(n, *deg.SIGMA_RANGE, generator, clean.device)
        return Batch(deg.add_gaussian_noise(clean, sigma, generator), clean, (sigma / 255.0)[:, None])
    if kind == "poisson":
        noisy, equivalent = deg.random_poisson_gaussian(clean, generator)
        return Batch(noisy, clean, (equivalent / 255.0)[:, None])
    if kind == "awgn+poisson":
        half = n // 2
        a = degrade(clean[:half], recipe.model_copy(update={"degradation": "awgn"}), generator, cpu_generator)
        b = degrade(clean[half:], recipe.model_copy(update={"degradation": "poisson"}), generator, cpu_generator)
        return Batch(torch.cat([a.degraded, b.degraded]), clean,
                     torch.cat([a.estimate_target, b.estimate_target]))
    if kind == "camera":
        noisy = deg.add_camera_noise(clean, generator)
        # a third of the photos are also JPEG-saved, as phones and cameras do
        saved = torch.rand(n, generator=cpu_generator) < 1 / 3
        if saved.any():
            q = torch.randint(60, 96, (int(saved.sum()),), generator=cpu_generator).tolist()
            noisy[saved.to(noisy.device)] = deg.jpeg_batch(noisy[saved.to(noisy.device)], q)
        return Batch(noisy, clean, None)
    if kind == "blur":
        kernels, params = deg.random_kernels(n, recipe.scale, cpu_generator, clean.device)
        return Batch(deg.blur_decimate(clean, kernels, recipe.scale), clean, params)
    if kind == "jpeg":
        decoded, quality = deg.random_jpeg(clean, cpu_generator)
        return Batch(decoded, clean, quality[:, None])
    raise ValueError(f"unknown degradation {kind!r}")


def center_crop(x: np.ndarray, size: int, multiple: int) -> np.ndarray:
    h, w = x.shape[:2]
    ch = min(size, h) // multiple * multiple
    cw = min(size, w) // multiple * multiple
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[top:top + ch, left:left + cw]


def validation_set(recipe: Recipe, device) -> list[Batch]:
    """A fixed, seeded set of degraded crops from the validation folder."""
    if recipe.data.val is None:
        return []
    s = recipe.scale or 1
    images = load_folder(recipe.data.val, recipe.channels)[: recipe.data.val_images]
    g = torch.Generator().manual_seed(1234)
    out = []
    for _, x in images:
        clean = torch.from_numpy(np.ascontiguousarray(center_crop(x, recipe.data.val_crop * s, 4 * s).transpose(2, 0, 1)))[None]
        batch = degrade(clean, recipe, g, g)
        out.append(Batch(batch.degraded.to(device), batch.clean.to(device),
                         None if batch.estimate_target is None else batch.estimate_target.to(device)))
    return out
