"""``napari_vdir.restore`` — the one public entry point for restoring arrays."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import degradations as deg
from .devices import device_label, select_device
from .inference import PlaneRestorer, cached_model
from .tasks import ESTIMATES, check_task
from .weights import ModelInfo, resolve_model

STEER_NOISE_SIGMA = 15.0  # 0-255 scale: the "more degraded" copy used by `strength`


@dataclass
class Restoration:
    """What ``restore(..., details=True)`` returns."""

    image: np.ndarray
    latent: np.ndarray           # mu of c: leading axes + (4, ceil(H/4), ceil(W/4)) per plane
    estimate: dict               # name -> float (one plane) or array over the leading axes, user units
    uncertainty: np.ndarray | None
    device: str
    model: ModelInfo


@dataclass
class Layout:
    """Where the spatial and channel axes of the caller's array are."""

    channel_axis: int | None
    ndim: int

    @classmethod
    def of(cls, shape: tuple[int, ...], channel_axis: int | None) -> Layout:
        ndim = len(shape)
        if channel_axis is False:  # explicitly no channel axis, e.g. a gray stack whose last axis is 3 long
            return cls(None, ndim)
        if channel_axis is not None:
            if not -ndim <= channel_axis < ndim:
                raise ValueError(f"channel_axis={channel_axis} is out of range for a {ndim}-D array")
            channel_axis %= ndim
            if ndim < 3:
                raise ValueError("an image with a channel axis needs at least 3 dimensions")
            if channel_axis >= ndim - 2 and channel_axis != ndim - 1:
                raise ValueError("the channel axis must be the last axis or come before the two spatial axes")
        elif ndim >= 3 and shape[-1] == 3:
            channel_axis = ndim - 1  # (..., H, W, 3) is RGB, as napari assumes
        return cls(channel_axis, ndim)

    def to_planes(self, a):
        """-> (P, H, W, C) with C the channel count (1 when there is no channel axis)."""
        if self.channel_axis is None:
            a = a[..., None]
        else:
            a = np.moveaxis(a, self.channel_axis, -1)
        lead = a.shape[:-3]
        return a.reshape(-1, *a.shape[-3:]), lead

    def from_planes(self, planes, lead):
        a = planes.reshape(*lead, *planes.shape[1:])
        if self.channel_axis is None:
            return a[..., 0]
        return np.moveaxis(a, -1, self.channel_axis)


def check_image(image: np.ndarray) -> None:
    """Reject what cannot be restored, with a message the user can act on."""
    dt = image.dtype
    if dt == np.bool_ or np.issubdtype(dt, np.complexfloating) or not (np.issubdtype(dt, np.number)):
        raise TypeError(f"unsupported dtype {dt}: give uint8, uint16 (or another integer type) or float data")
    if image.size == 0:
        raise ValueError(f"the image is empty (shape {image.shape})")
    if image.ndim < 2:
        raise ValueError(f"need at least a 2-D image, got shape {image.shape}")
    if np.issubdtype(dt, np.floating) and not np.isfinite(image).all():
        raise ValueError("the image contains NaN or inf values; replace them (e.g. np.nan_to_num) first")
    if np.issubdtype(dt, np.signedinteger) and image.min() < 0:
        raise ValueError(f"signed integer image ({dt}) has negative values; shift or rescale it to >= 0 first")


@dataclass
class Intensity:
    """Maps the caller's values to the model's [0, 1] intensity and back.

    uint8: /255. Other integer types (uint16 microscopy): the data's own [min, max] maps to [0, 1]
    and back, so the result keeps the input's intensity range. Floats: taken as [0, 1] intensity
    as they are (values a little outside are valid noisy input) and returned unclipped.
    """

    dtype: np.dtype
    low: float = 0.0
    high: float = 1.0

    @classmethod
    def of(cls, image, intensity_range=None) -> Intensity:
        dt = np.dtype(image.dtype)
        if dt == np.uint8:
            return cls(dt, 0.0, 255.0)
        if np.issubdtype(dt, np.integer):
            low, high = intensity_range if intensity_range is not None else (float(image.min()), float(image.max()))
            return cls(dt, float(low), float(high) if high > low else float(low) + 1.0)
        return cls(dt)

    def forward(self, a: np.ndarray) -> np.ndarray:
        return ((a.astype(np.float32) - self.low) / (self.high - self.low)).astype(np.float32)

    def inverse(self, a: np.ndarray) -> np.ndarray:
        if np.issubdtype(self.dtype, np.integer):
            v = np.rint(a * (self.high - self.low) + self.low)
            return np.clip(v, self.low, self.high).astype(self.dtype)
        return a.astype(self.dtype)


def _steer_degradation(task: str):
    """A more degraded copy of a plane, for `strength` (its latent says "restore harder")."""
    def more(plane: torch.Tensor) -> torch.Tensor:
        if task == "jpeg":
            img = plane.permute(1, 2, 0).numpy()
            dec = deg.jpeg_roundtrip(img[..., 0] if img.shape[-1] == 1 else img, 10)
            return torch.from_numpy(dec.reshape(img.shape)).permute(2, 0, 1)
        g = torch.Generator().manual_seed(12345)
        return deg.add_gaussian_noise(plane[None], torch.tensor([STEER_NOISE_SIGMA]), g)[0]
    return more


def restore(image, task: str, *, scale: int | None = None, model: str | Path | None = None,
            channel_axis: int | None | bool = None, device="auto", tile_size: int | None = None,
            ensemble: bool = False, samples: int = 1, details: bool = False, progress=None, cancel=None,
            precision: str = "auto", strength: float = 1.0, intensity_range=None, seed: int = 0):
    """Restore an image (or an nD stack, plane by plane) with VDIR.

    Parameters
    ----------
    image : array-like or dask array
        2-D gray, RGB ``(H, W, 3)``, or a stack with leading axes (Z, T, ...) and an optional
        ``channel_axis``. A last axis of length 3 is taken as RGB unless ``channel_axis=False``.
        A dask array gives back a lazy dask array.
    task : {"denoise", "real-denoise", "sr", "jpeg"}
    scale : 2 or 4, for ``task="sr"``.
    model : shipped model name or path to a ``.safetensors`` weights file (default: the task's shipped model).
    device : "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "mps".
    tile_size : output tile size in pixels; None chooses by memory. Tiles overlap by the receptive field.
    ensemble : average the 8 flips/rotations (x8 self-ensemble).
    samples : average this many draws c ~ q(c|y) (1 = deterministic c = mu).
    details : return a :class:`Restoration` with the latent, the degradation estimate and uncertainty.
    progress : ``progress(done, total)`` called after every tile.
    cancel : callable or ``threading.Event``; checked before every tile, raises ``RestorationCancelled``.
    precision : "auto" (bf16 autocast on CPUs that support it, AMP on GPUs) or "float32".
    strength : 1 = the plain result; > 1 restores harder (smoother), < 1 more gently. It moves the latent
        c towards (or away from) that of a more degraded copy of the image.
    intensity_range : (low, high) used to normalise integer data instead of the data's own min/max.

    Returns the restored array in the input's layout and dtype (x scale spatially for "sr"),
    or a :class:`Restoration` when ``details=True``.
    """
    model_scale = check_task(task, scale)
    if _is_dask(image):
        if details:
            raise ValueError("details=True is not available for dask arrays; restore a numpy array instead")
        from .lazy import restore_dask

        return restore_dask(image, task, scale=scale, model=model, channel_axis=channel_axis, device=device,
                            tile_size=tile_size, ensemble=ensemble, samples=samples, precision=precision,
                            strength=strength, intensity_range=intensity_range, seed=seed)
    if not isinstance(image, np.ndarray):
        image = np.asarray(image)
    check_image(image)
    layout = Layout.of(image.shape, channel_axis)
    planes, lead = layout.to_planes(image)
    p, h, w, c = planes.shape
    intensity = Intensity.of(image, intensity_range)
    if np.issubdtype(image.dtype, np.floating):
        lo, hi = float(np.min(image)), float(np.max(image))
        if lo < -3.0 or hi > 4.0:  # far beyond what noise around [0, 1] explains
            warnings.warn(f"float image spans [{lo:.3g}, {hi:.3g}]; floats are taken as [0, 1] intensity — "
                          "rescale the data to [0, 1] for a meaningful result", stacklevel=2)

    dev = select_device(device)
    channels = 3 if c == 3 else 1
    path = resolve_model(model, task, channels, model_scale)
    net, info = cached_model(str(path), str(dev), path.stat().st_mtime)
    if info.task != task or info.scale != model_scale:
        raise ValueError(f"{path.name} is a {info.task} model (x{info.scale}); it cannot do {task!r}"
                         + (f" x{model_scale}" if task == "sr" else ""))
    if channels == 3 and info.channels != 3:
        raise ValueError(f"{path.name} is a gray model; it cannot restore a colour image")
    replicate = channels == 1 and info.channels == 3  # gray data through a colour model
    groups = [slice(i, i + 1) for i in range(c)] if channels == 1 else [slice(0, 3)]

    runner = PlaneRestorer(net, dev, precision=precision, tile_size=tile_size, ensemble=ensemble,
                           samples=samples, strength=strength, seed=seed, progress=progress, cancel=cancel)
    runner.total = p * len(groups) * runner.count_steps(h, w)
    steer = _steer_degradation(task) if strength != 1.0 else None
    s = model_scale
    # Each plane goes back to the input's dtype as soon as it is done, so a large uint8/uint16 stack
    # never has a float32 copy of the whole result beside it.
    out = np.empty((p, h * s, w * s, c), dtype=intensity.dtype)
    hq, wq = (h + 3) // 4, (w + 3) // 4
    latents = np.empty((p, len(groups), 4, hq, wq), dtype=np.float32) if details else None
    est_fields = ESTIMATES[task] if info.arch.estimate_dims else ()
    estimates = np.full((p, len(groups), len(est_fields)), np.nan, dtype=np.float64)
    uncert = np.empty(out.shape, dtype=np.float32) if samples > 1 else None
    for i in range(p):
        normalised = intensity.forward(planes[i])
        restored = np.empty((h * s, w * s, c), dtype=np.float32)
        for j, g in enumerate(groups):
            x = torch.from_numpy(np.ascontiguousarray(normalised[..., g].transpose(2, 0, 1)))
            if replicate:
                x = x.expand(3, -1, -1).contiguous()
            res = runner.restore_plane(x, steer)
            img = res.image.mean(0, keepdim=True) if replicate else res.image
            restored[..., g] = img.permute(1, 2, 0).numpy()
            if latents is not None:
                latents[i, j] = res.latent.numpy()
            if res.estimate is not None:
                estimates[i, j] = res.estimate.numpy()
            if uncert is not None:
                u = res.uncertainty.mean(0, keepdim=True) if replicate else res.uncertainty
                uncert[i, ..., g] = u.permute(1, 2, 0).numpy()
        out[i] = intensity.inverse(restored)

    result = layout.from_planes(out, lead)
    if not details:
        return result
    latent = latents[:, 0] if len(groups) == 1 else latents
    latent = latent.reshape(*lead, *latent.shape[1:])
    estimate = {}
    for k, f in enumerate(est_fields):
        values = estimates[:, :, k].mean(axis=1) * f.unit_scale
        estimate[f.name] = float(values[0]) if not lead else values.reshape(lead)
    if task == "denoise" and np.issubdtype(intensity.dtype, np.integer) and intensity.dtype != np.uint8:
        estimate["noise_sigma_data_units"] = _scaled(estimate.get("noise_sigma"), (intensity.high - intensity.low) / 255.0)
    uncertainty = None
    if uncert is not None:
        uncertainty = layout.from_planes(uncert * (intensity.high - intensity.low), lead)
    return Restoration(result, latent, estimate, uncertainty, device_label(dev), info)


def _scaled(value, factor):
    if value is None:
        return None
    return value * factor if isinstance(value, float) else np.asarray(value) * factor


def _is_dask(a) -> bool:
    return type(a).__module__.startswith("dask.") and hasattr(a, "map_blocks")
