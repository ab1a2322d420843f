"""``napari_vdir.restore`` — the one public entry point for restoring arrays."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_vdir.core import degradations as deg
from napari_vdir.core.devices import device_label, select_device
from napari_vdir.core.inference import PlaneRestorer, cached_model
from napari_vdir.core.models import resolve_model
from napari_vdir.core.tasks import ESTIMATES, check_task
from napari_vdir.core.weights import ModelInfo

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
    backend: str = "torch"       # where the network ran: "torch" or "onnxruntime"


@dataclass
class Layout:
    """Where the spatial and channel axes of the caller's array are, and whether the last channel is alpha.

    Rules (``channel_axis=None``, the default): with 3+ dimensions a last axis of length 3 is RGB,
    of length 4 RGBA (as napari reads them) and of length 2 two channels; anything else has no
    channel axis. ``channel_axis=False`` means no channel axis; an int names it (length 3: RGB,
    other lengths: channels). ``alpha``: None = only an auto-detected last axis of 4 is RGBA;
    True = the last channel is alpha (2 channels: gray + alpha, 4: RGBA); False = never.
    Alpha is carried over unchanged; 3 colour channels go through the colour model together,
    any other number one by one through the gray model.
    """

    channel_axis: int | None
    ndim: int
    alpha: bool = False

    @classmethod
    def of(cls, shape: tuple[int, ...], channel_axis: int | None | bool = None, alpha: bool | None = None) -> Layout:
        ndim = len(shape)
        if alpha is not None and not isinstance(alpha, (bool, np.bool_)):
            raise TypeError(f"alpha must be None, True or False, got {alpha!r}")
        if channel_axis is False:  # explicitly no channel axis, e.g. a gray stack whose last axis is 3 long
            if alpha:
                raise ValueError("alpha=True needs a channel axis; give channel_axis")
            return cls(None, ndim)
        if channel_axis is True or not (channel_axis is None or isinstance(channel_axis, (int, np.integer))):
            raise TypeError(f"channel_axis must be None, False or an axis number, got {channel_axis!r}")
        if channel_axis is not None:
            channel_axis = int(channel_axis)
            if not -ndim <= channel_axis < ndim:
                raise ValueError(f"channel_axis={channel_axis} is out of range for a {ndim}-D array")
            channel_axis %= ndim
            if ndim < 3:
                raise ValueError("an image with a channel axis needs at least 3 dimensions")
            if channel_axis >= ndim - 2 and channel_axis != ndim - 1:
                raise ValueError(f"channel_axis={channel_axis}: the channel axis must be the last axis or come "
                                 "before the two spatial axes")
            detected = False
        elif ndim >= 3 and shape[-1] in (2, 3, 4):
            channel_axis, detected = ndim - 1, True  # (..., H, W, 3) is RGB, (..., 4) RGBA, as napari assumes
        else:
            if alpha:
                raise ValueError(f"alpha=True needs a channel axis; shape {tuple(shape)} has none "
                                 "(give channel_axis)")
            return cls(None, ndim)
        n = shape[channel_axis]
        if alpha is None:
            alpha = detected and n == 4
        elif alpha and n not in (2, 4):
            raise ValueError(f"alpha=True needs 2 (gray + alpha) or 4 (RGBA) channels on channel_axis, got {n}")
        return cls(channel_axis, ndim, bool(alpha))

    def to_planes(self, a):
        """-> (P, H, W, C) with C the channel count (1 when there is no channel axis), alpha included."""
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

    def colour_channels(self, shape) -> int:
        """Channels that are restored (alpha excluded)."""
        n = 1 if self.channel_axis is None else shape[self.channel_axis]
        return n - self.alpha

    def per_channel(self, shape) -> bool:
        """True when the colour channels are restored (and normalised) one by one."""
        return self.colour_channels(shape) != 3 and self.channel_axis is not None

    def colour_part(self, a):
        """``a`` without its alpha channel (a view for numpy, lazy for dask)."""
        if not self.alpha:
            return a
        index = [slice(None)] * a.ndim
        index[self.channel_axis] = slice(0, a.shape[self.channel_axis] - 1)
        return a[tuple(index)]


EXACT_FLOAT64_INTEGERS = 2 ** 53


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
    if np.issubdtype(dt, np.integer) and dt.itemsize == 8 and int(image.max()) > EXACT_FLOAT64_INTEGERS:
        raise ValueError(f"{dt} values above 2^53 cannot be restored exactly (float64 cannot hold them); "
                         "rescale the data or convert it to float64 first")


FLOAT_SCALE = (-3.0, 4.0)  # floats taken as [0, 1] intensity: beyond this, far more than noise around [0, 1]


def float_span_off_scale(image) -> tuple[float, float] | None:
    """``(min, max)`` of a float image when it lies far outside the [0, 1] intensity that floats are taken
    as (:data:`FLOAT_SCALE`), else None (also for integer data). ``restore`` warns about such an image when
    no ``intensity_range`` is given; training refuses it (it would learn the wrong scale, or diverge)."""
    if not np.issubdtype(np.dtype(image.dtype), np.floating):
        return None
    lo, hi = float(np.min(image)), float(np.max(image))
    return (lo, hi) if lo < FLOAT_SCALE[0] or hi > FLOAT_SCALE[1] else None


INTENSITY_MODES = ("auto", "minmax")


@dataclass
class Intensity:
    """Maps the caller's values to the model's [0, 1] intensity and back.

    ``low``/``high`` are floats (one range) or (C,) arrays (one per channel, along the last axis).
    The mapping and its inverse are computed in float64; integers come back rounded and clipped to
    the dtype's limits only (``clip=True``: to [low, high], the ``"minmax"`` mode), floats unclipped.
    """

    dtype: np.dtype
    low: float | np.ndarray = 0.0
    high: float | np.ndarray = 1.0
    clip: bool = False

    @classmethod
    def of(cls, image, intensity_range=None, layout: Layout | None = None) -> Intensity:
        """The mapping ``restore`` uses for ``image`` (numpy or dask); see :func:`resolve_range`."""
        layout = layout if layout is not None else Layout(None, image.ndim)
        dt = np.dtype(image.dtype)
        rng = resolve_range(image, intensity_range, layout)
        if rng is None:
            return cls(dt, 0.0, 255.0) if dt == np.uint8 else cls(dt)
        rng = np.asarray(rng, dtype=np.float64)
        low, high = (float(rng[0]), float(rng[1])) if rng.ndim == 1 else (rng[:, 0].copy(), rng[:, 1].copy())
        high = np.where(np.asarray(high) > low, high, np.asarray(low) + 1.0)  # constant data: any span
        high = float(high) if np.ndim(high) == 0 else high
        return cls(dt, low, high, clip=isinstance(intensity_range, str) and intensity_range == "minmax")

    @property
    def identity(self) -> bool:
        return np.ndim(self.low) == 0 and self.low == 0.0 and self.high == 1.0

    @property
    def span(self):
        return np.asarray(self.high, dtype=np.float64) - np.asarray(self.low, dtype=np.float64)

    @property
    def _work(self):
        """float32 is exact enough for 8/16-bit data (every value representable, 2^-24 relative error);
        wider types (int32/int64, float64) are mapped in float64."""
        return np.float32 if self.dtype.itemsize <= 2 else np.float64

    def forward(self, a: np.ndarray, precise: bool = False) -> np.ndarray:
        """Model intensity: float32 for the network, or (``precise``) in the working precision."""
        if self.identity:
            return a.astype(self._work if precise else np.float32)
        w = self._work
        x = (a.astype(w) - np.asarray(self.low).astype(w)) / self.span.astype(w)
        return x if precise else x.astype(np.float32, copy=False)

    @property
    def wide(self) -> bool:
        """More bits than the network's float32 input holds (32/64-bit integers, float64)."""
        return self._work == np.float64

    def inverse(self, a: np.ndarray) -> np.ndarray:
        if self.identity and not np.issubdtype(self.dtype, np.integer):
            v = a
        else:
            w = self._work
            v = a.astype(w) * self.span.astype(w) + np.asarray(self.low).astype(w)
        if np.issubdtype(self.dtype, np.integer):
            lo, hi = _integer_bounds(self.dtype)
            v = np.rint(v)
            if self.clip:
                v = np.clip(v, np.maximum(self.low, lo), np.minimum(self.high, hi))
            return np.clip(v, lo, hi).astype(self.dtype)
        if self.dtype.itemsize < 4:  # float16: keep inside its finite range
            top = float(np.finfo(self.dtype).max)
            v = np.clip(v, -top, top)
        return v.astype(self.dtype)


def _integer_bounds(dtype) -> tuple[float, float]:
    """The dtype's limits as float64 values that cast back without overflow (2^63 - 1 is not one)."""
    info = np.iinfo(dtype)
    hi = float(info.max)
    if int(hi) > info.max:
        hi = float(np.nextafter(hi, 0.0))
    return float(info.min), hi


def resolve_range(image, intensity_range, layout: Layout):
    """The intensity range ``restore`` uses: None (uint8 /255, floats as they are), ``(low, high)``, or a
    ``(C, 2)`` array with one range per colour channel (alpha excluded).

    ``intensity_range``: None = the default (``"auto"`` for integer data other than uint8), ``"auto"`` =
    :func:`napari_vdir.core.intensity.robust_range` of the whole array (per channel when channels are
    restored one by one, joint for RGB), ``"minmax"`` = the data's min and max (and results clipped to
    them), or explicit ``(low, high)`` / per-channel ``[(low, high), ...]`` with finite ``high > low``.
    Works on numpy and dask arrays alike (dask: block by block), so both paths agree.
    """
    from napari_vdir.core.intensity import robust_range

    dt = np.dtype(image.dtype)
    if intensity_range is None:
        if dt == np.uint8 or not np.issubdtype(dt, np.integer):
            return None
        intensity_range = "auto"
    if isinstance(intensity_range, str):
        if intensity_range not in INTENSITY_MODES:
            raise ValueError(f"intensity_range must be None, 'auto', 'minmax' or (low, high), got {intensity_range!r}")
        percentiles = (0.0, 100.0) if intensity_range == "minmax" else None
        colour = layout.colour_part(image)
        axis = layout.channel_axis if layout.per_channel(image.shape) else None
        kwargs = {} if percentiles is None else {"percentiles": percentiles}
        return robust_range(colour, channel_axis=axis, **kwargs)
    return check_range(intensity_range, layout.colour_channels(image.shape))


def check_range(intensity_range, channels: int):
    """Validate an explicit ``(low, high)`` or ``[(low, high), ...]`` (one per channel)."""
    try:
        rng = np.asarray(intensity_range, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"intensity_range must be None, 'auto', 'minmax' or (low, high) numbers, "
                        f"got {intensity_range!r}") from err
    if rng.shape not in ((2,), (channels, 2)):
        raise ValueError(f"intensity_range must be (low, high) or one (low, high) per channel ({channels}), "
                         f"got shape {rng.shape}")
    if not np.isfinite(rng).all() or not (rng[..., 1] > rng[..., 0]).all():
        raise ValueError(f"intensity_range needs finite values with high > low, got {intensity_range!r}")
    return (float(rng[0]), float(rng[1])) if rng.ndim == 1 else rng


def check_options(*, tile_size, ensemble, samples, details, progress, cancel, precision, strength, seed) -> int:
    """Refuse option values that cannot be meant, with what is allowed; returns the seed to use."""
    from napari_vdir.core.devices import fast_dtype

    def whole(name, value):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name}={value!r}: {name} must be a whole number")
        return int(value)

    if tile_size is not None and whole("tile_size", tile_size) < 16:
        raise ValueError(f"tile_size={tile_size}: tile_size must be at least 16 pixels (or None: automatic)")
    if whole("samples", samples) < 1:
        raise ValueError(f"samples={samples}: samples must be at least 1")
    for name, value in (("ensemble", ensemble), ("details", details)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be None or a callable progress(done, total), got {progress!r}")
    if cancel is not None and not (callable(cancel) or hasattr(cancel, "is_set")):
        raise TypeError(f"cancel must be None, a threading.Event or a callable, got {cancel!r}")
    fast_dtype(torch.device("cpu"), precision)  # raises for an unknown precision
    if isinstance(strength, (bool, np.bool_)) or not isinstance(strength, (int, float, np.integer, np.floating)):
        raise TypeError(f"strength={strength!r}: strength must be a number (1: plain result)")
    if not (np.isfinite(strength) and 0.0 <= float(strength) <= MAX_STRENGTH):
        raise ValueError(f"strength={strength}: strength must be a finite number from 0 to {MAX_STRENGTH:g} "
                         "(1: plain result, > 1 harder, < 1 gentler)")
    if seed is None:  # a fresh random seed: independent Monte-Carlo draws on every call
        return int(np.random.SeedSequence().entropy % (2 ** 63))
    if whole("seed", seed) < 0 or int(seed) >= 2 ** 63:
        raise ValueError(f"seed={seed}: seed must be None (random) or a whole number from 0 to 2^63 - 1")
    return int(seed)


MAX_STRENGTH = 4.0


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
            channel_axis: int | None | bool = None, alpha: bool | None = None, device="auto",
            tile_size: int | None = None, ensemble: bool = False, samples: int = 1, details: bool = False,
            progress=None, cancel=None, precision: str = "auto", strength: float = 1.0, intensity_range=None,
            seed: int | None = 0, backend: str = "auto"):
    """Restore an image (or an nD stack, plane by plane) with VDIR.

    Parameters
    ----------
    image : array-like or dask array
        2-D gray, RGB ``(H, W, 3)``, RGBA ``(H, W, 4)`` (alpha kept unchanged), ``(H, W, 2)`` two channels,
        or a stack with leading axes (Z, T, ...) and an optional ``channel_axis``. A dask array gives back
        a lazy dask array.
    task : {"denoise", "real-denoise", "sr", "jpeg"}
    scale : 2 or 4, for ``task="sr"``.
    model : shipped model name or path to a ``.safetensors`` weights file (default: the task's shipped model).
    channel_axis : None (default rule: a last axis of 3 is RGB, of 4 RGBA, of 2 two channels), False (no
        channel axis, e.g. a gray stack 3 pixels wide), or the axis (last, or before the two spatial axes).
        3 channels go through the colour model; any other number one by one through the gray model.
    alpha : None (only an auto-detected last axis of 4 is RGBA), True (the last channel is alpha: gray +
        alpha or RGBA) or False (no alpha). Alpha is returned unchanged (repeated x scale for "sr").
    device : "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:N", "mps" or a ``torch.device``.
    tile_size : output tile size in pixels (>= 16); None chooses by memory. Tiles overlap by the receptive field.
    ensemble : average the 8 flips/rotations (x8 self-ensemble).
    samples : average this many draws c ~ q(c|y) (1 = deterministic c = mu).
    details : return a :class:`Restoration` with the latent, the degradation estimate and uncertainty.
    progress : ``progress(done, total)`` called after every tile.
    cancel : callable or ``threading.Event``; checked before every tile and between the network's blocks,
        raises ``RestorationCancelled``.
    precision : "auto" (bf16 autocast on CPUs that support it, AMP on GPUs), "float32", "bfloat16", "float16".
    strength : from 0 to 4; 1 = the plain result; > 1 restores harder (smoother), < 1 more gently. It moves
        the latent c towards (or away from) that of a more degraded copy of the image.
    intensity_range : how values map to the model's [0, 1] intensity. None: uint8 / 255, other integers
        ``"auto"``, floats as they are. ``"auto"``: the 0.1-99.9 percentile range of the whole array
        (:func:`napari_vdir.core.intensity.robust_range`; per channel when channels are restored one by one),
        mapped back exactly, values outside it kept. ``"minmax"``: the data's min and max (results
        clipped to them). ``(low, high)`` or one ``(low, high)`` per channel: fixed.
    seed : random seed of the Monte-Carlo draws (``samples > 1``); None draws a fresh one.
    backend : "auto" (ONNX Runtime, the fastest exact path, where the CPU would otherwise run torch in
        float32 and onnxruntime is installed; torch's bf16 path where ``precision`` resolves to bf16),
        "torch" or "onnxruntime" (CPU, float32). See :mod:`napari_vdir.core.backends`.

    Returns the restored array in the input's layout and dtype (x scale spatially for "sr"),
    or a :class:`Restoration` when ``details=True``.
    """
    model_scale = check_task(task, scale)
    seed = check_options(tile_size=tile_size, ensemble=ensemble, samples=samples, details=details,
                         progress=progress, cancel=cancel, precision=precision, strength=strength, seed=seed)
    dev = select_device(device)
    from napari_vdir.core.backends import resolve_backend, select

    resolve_backend(backend, dev, precision)  # refuses impossible combinations before any work
    if _is_dask(image):
        if details:
            raise ValueError("details=True is not available for dask arrays; restore a numpy array instead")
        from napari_vdir.core.lazy import restore_dask

        return restore_dask(image, task, scale=scale, model=model, channel_axis=channel_axis, alpha=alpha,
                            device=device, tile_size=tile_size, ensemble=ensemble, samples=samples,
                            precision=precision, strength=strength, intensity_range=intensity_range, seed=seed,
                            backend=backend)
    if not isinstance(image, np.ndarray):
        image = np.asarray(image)
    check_image(image)
    layout = Layout.of(image.shape, channel_axis, alpha)
    intensity = Intensity.of(image, intensity_range, layout)
    planes, lead = layout.to_planes(image)
    p, h, w, c_all = planes.shape
    c = c_all - layout.alpha  # colour channels; alpha (the last one) is carried over
    if intensity.identity and (span := float_span_off_scale(image)) is not None:
        warnings.warn(f"float image spans [{span[0]:.3g}, {span[1]:.3g}]; floats are taken as [0, 1] intensity — "
                      "rescale the data to [0, 1] or pass intensity_range='auto'", stacklevel=2)

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
    runner_net, used_backend, run_precision = select(net, path, dev, backend, precision)

    runner = PlaneRestorer(runner_net, dev, precision=run_precision, tile_size=tile_size, ensemble=ensemble,
                           samples=samples, strength=strength, seed=seed, progress=progress, cancel=cancel)
    runner.total = p * len(groups) * runner.count_steps(h, w)
    steer = _steer_degradation(task) if strength != 1.0 else None
    s = model_scale
    # Each plane goes back to the input's dtype as soon as it is done, so a large uint8/uint16 stack
    # never has a float32 copy of the whole result beside it.
    out = np.empty((p, h * s, w * s, c_all), dtype=intensity.dtype)
    hq, wq = (h + 3) // 4, (w + 3) // 4
    latents = np.empty((p, len(groups), 4, hq, wq), dtype=np.float32) if details else None
    est_fields = ESTIMATES[task] if info.arch.estimate_dims else ()
    estimates = np.full((p, len(groups), len(est_fields)), np.nan, dtype=np.float64)
    uncert = np.zeros((p, h * s, w * s, c_all), dtype=np.float32) if samples > 1 else None
    for i in range(p):
        normalised = intensity.forward(planes[i, ..., :c])
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
        if intensity.wide and s == 1:
            # float32 holds 24 bits: wider data gets the network's change added to its exact value, so
            # what the network leaves alone comes back bit for bit
            restored = intensity.forward(planes[i, ..., :c], precise=True) + (restored - normalised)
        out[i, ..., :c] = intensity.inverse(restored)
        if layout.alpha:
            a = planes[i, ..., c:]
            out[i, ..., c:] = np.repeat(np.repeat(a, s, axis=0), s, axis=1) if s > 1 else a

    result = layout.from_planes(out, lead)
    if not details:
        return result
    latent = latents[:, 0] if len(groups) == 1 else latents
    latent = latent.reshape(*lead, *latent.shape[1:])
    estimate = {}
    for k, f in enumerate(est_fields):
        values = estimates[:, :, k].mean(axis=1) * f.unit_scale
        estimate[f.name] = float(values[0]) if not lead else values.reshape(lead)
    if "noise_sigma" in estimate and intensity.dtype != np.uint8:
        # EST(c) reads sigma on the model's 0-255 scale of the normalised intensity; in data units it is
        # sigma / 255 x the span each group was normalised by (per channel: its own span)
        k = [f.name for f in est_fields].index("noise_sigma")
        span = np.broadcast_to(intensity.span, (len(groups),)) if np.ndim(intensity.span) else intensity.span
        values = (estimates[:, :, k] * span).mean(axis=1)
        estimate["noise_sigma_data_units"] = float(values[0]) if not lead else values.reshape(lead)
    uncertainty = None
    if uncert is not None:
        uncert[..., :c] *= np.asarray(intensity.span, dtype=np.float32)
        uncertainty = layout.from_planes(uncert, lead)
    return Restoration(result, latent, estimate, uncertainty, device_label(dev), info, used_backend)


def _is_dask(a) -> bool:
    return type(a).__module__.startswith("dask.") and hasattr(a, "map_blocks")
