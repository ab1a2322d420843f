"""One restore request: the options, validated once (:class:`RestoreOptions`), and :func:`prepare`, which resolves
the model, device, backend, layout and intensity of one image once.

Every way into the model builds a :class:`RestoreOptions` and goes through :func:`prepare`:
:func:`napari_vdir.restore`, the command line, the dask path (:mod:`napari_vdir.core.lazy`), the plugin's docks
and npe2 commands (:func:`napari_vdir.plugin.layers.restore_layer`). A bad option is refused when the options
are built, before any image is read, with one message (:mod:`napari_vdir.core.errors`) that the command line
shows in its own words.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_vdir.core import degradations as deg
from napari_vdir.core.devices import check_device, device_label, fast_dtype, select_device
from napari_vdir.core.errors import OptionTypeError, OptionValueError
from napari_vdir.core.inference import PlaneRestorer, cached_model
from napari_vdir.core.intensity import IntensityPlan, check_intensity_range, float_span_off_scale, plan_intensity
from napari_vdir.core.layout import Layout, check_image, check_layout_options
from napari_vdir.core.tasks import ESTIMATES, check_task
from napari_vdir.core.models import resolve_model
from napari_vdir.core.weights import ModelInfo

MAX_STRENGTH = 4.0
MIN_TILE = 16
BACKENDS = ("auto", "torch", "onnxruntime")
STEER_NOISE_SIGMA = 15.0  # 0-255 scale: the "more degraded" copy used by `strength`


@dataclass(frozen=True, eq=False)
class RestoreOptions:
    """Everything :func:`napari_vdir.restore` takes besides the image, checked when it is built.

    The fields are ``restore``'s keywords (see its docstring) plus two the plugin sets: ``rgb`` (napari's
    ``layer.rgb``: True, False, or None for ``restore``'s own rule, :class:`~napari_vdir.core.layout.Layout`)
    and ``intensity_hint`` (a layer's contrast limits, for ``intensity_range="layer"``). ``seed=None`` is
    replaced by a fresh random seed here, once.
    """

    task: str
    scale: int | None = None
    model: str | Path | None = None
    channel_axis: int | None | bool = None
    alpha: bool | None = None
    device: Any = "auto"
    tile_size: int | None = None
    ensemble: bool = False
    samples: int = 1
    details: bool = False
    progress: Any = None
    cancel: Any = None
    precision: str = "auto"
    strength: float = 1.0
    intensity_range: Any = None
    seed: int | None = 0
    backend: str = "auto"
    rgb: bool | None = None
    intensity_hint: tuple | None = None
    model_scale: int = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "model_scale", check_task(self.task, self.scale))
        check_layout_options(self.channel_axis, self.alpha)
        check_device(self.device)
        fast_dtype(torch.device("cpu"), self.precision)  # raises for an unknown precision
        if self.tile_size is not None and _whole("tile_size", self.tile_size) < MIN_TILE:
            raise OptionValueError("tile_size", f"{{tile_size=}}: {{tile_size}} must be at least {MIN_TILE} pixels "
                                   "(default: chosen by memory)", self.tile_size)
        if _whole("samples", self.samples) < 1:
            raise OptionValueError("samples", "{samples=}: {samples} must be at least 1", self.samples)
        for name in ("ensemble", "details"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise OptionTypeError(name, f"{{{name}}} must be True or False, got {{value}}", value)
        if self.progress is not None and not callable(self.progress):
            raise OptionTypeError("progress", "{progress} must be None or a callable progress(done, total), "
                                  "got {value}", self.progress)
        if self.cancel is not None and not (callable(self.cancel) or hasattr(self.cancel, "is_set")):
            raise OptionTypeError("cancel", "{cancel} must be None, a threading.Event or a callable, got {value}",
                                  self.cancel)
        strength = self.strength
        if isinstance(strength, (bool, np.bool_)) or not isinstance(strength, (int, float, np.integer, np.floating)):
            raise OptionTypeError("strength", "{strength=}: {strength} must be a number (1: plain result)", strength)
        if not (np.isfinite(strength) and 0.0 <= float(strength) <= MAX_STRENGTH):
            raise OptionValueError("strength", f"{{strength=}}: {{strength}} must be a finite number from 0 to "
                                   f"{MAX_STRENGTH:g} (1: plain result, > 1 harder, < 1 gentler)", strength)
        check_intensity_range(self.intensity_range)
        if not isinstance(self.backend, str) or self.backend not in BACKENDS:
            raise OptionValueError("backend", "{backend} must be {choices}, got {value}", self.backend, BACKENDS)
        if self.rgb is not None and not isinstance(self.rgb, (bool, np.bool_)):
            raise OptionTypeError("rgb", "{rgb} must be None, True or False, got {value}", self.rgb)
        object.__setattr__(self, "seed", _seed(self.seed))

    def replace(self, **changes) -> RestoreOptions:
        """A copy with ``changes`` (checked as these were)."""
        return dataclasses.replace(self, **changes)


def _whole(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise OptionTypeError(name, f"{{{name}=}}: {{{name}}} must be a whole number", value)
    return int(value)


def _seed(seed) -> int:
    if seed is None:  # a fresh random seed: independent Monte-Carlo draws on every call
        return int(np.random.SeedSequence().entropy % (2 ** 63))
    if _whole("seed", seed) < 0 or int(seed) >= 2 ** 63:
        raise OptionValueError("seed", "{seed=}: {seed} must be None (random) or a whole number from 0 to "
                               "2^63 - 1", seed)
    return int(seed)


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
class Prepared:
    """One image with everything resolved: what :meth:`run` (numpy) or :func:`napari_vdir.core.lazy.restore_dask`
    (dask) restores. ``intensity.data`` is the image as it goes to the model (far outliers clipped in the
    ``"layer"`` mode)."""

    options: RestoreOptions
    layout: Layout
    intensity: IntensityPlan
    path: Path
    info: ModelInfo
    net: Any
    device: torch.device
    backend: str
    lazy: bool

    @property
    def image(self):
        return self.intensity.data

    def run(self):
        """Restore the (numpy) image plane by plane; the result in its layout and dtype, or a Restoration."""
        from napari_vdir.core.backends import select

        o, layout, intensity = self.options, self.layout, self.intensity.mapping
        planes, lead = layout.to_planes(self.image)
        p, h, w, c_all = planes.shape
        c = c_all - layout.alpha  # colour channels; alpha (the last one) is carried over
        replicate = not layout.colour and self.info.channels == 3  # gray data through a colour model
        groups = [slice(0, 3)] if layout.colour else [slice(i, i + 1) for i in range(c)]
        runner_net, used_backend, run_precision = select(self.net, self.path, self.device, o.backend, o.precision)
        runner = PlaneRestorer(runner_net, self.device, precision=run_precision, tile_size=o.tile_size,
                               ensemble=o.ensemble, samples=o.samples, strength=o.strength, seed=o.seed,
                               progress=o.progress, cancel=o.cancel)
        runner.total = p * len(groups) * runner.count_steps(h, w)
        steer = _steer_degradation(o.task) if o.strength != 1.0 else None
        s = o.model_scale
        # Each plane goes back to the input's dtype as soon as it is done, so a large uint8/uint16 stack
        # never has a float32 copy of the whole result beside it.
        out = np.empty((p, h * s, w * s, c_all), dtype=intensity.dtype)
        hq, wq = (h + 3) // 4, (w + 3) // 4
        latents = np.empty((p, len(groups), 4, hq, wq), dtype=np.float32) if o.details else None
        est_fields = ESTIMATES[o.task] if self.info.arch.estimate_dims else ()
        estimates = np.full((p, len(groups), len(est_fields)), np.nan, dtype=np.float64)
        uncert = np.zeros((p, h * s, w * s, c_all), dtype=np.float32) if o.samples > 1 else None
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
        if not o.details:
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
        return Restoration(result, latent, estimate, uncertainty, device_label(self.device), self.info,
                           used_backend)


def prepare(image, options: RestoreOptions, *, sample=None) -> Prepared:
    """Resolve everything ``options`` leave open for ``image`` (numpy, array-like or dask), once: the device and
    backend, the layout (:class:`~napari_vdir.core.layout.Layout`), the intensity (the one policy,
    :func:`~napari_vdir.core.intensity.plan_intensity`; ``sample``: where a ``"layer"`` range of lazy data is
    read) and the model, checked against the task and the image's channels."""
    from napari_vdir.core.backends import resolve_backend

    device = select_device(options.device)
    backend = resolve_backend(options.backend, device, options.precision)  # impossible combinations, before work
    lazy = is_dask(image)
    if lazy:
        if options.details:
            raise OptionValueError("details", "{details=True} is not available for dask arrays; restore a numpy "
                                   "array instead", True)
    else:
        image = image if isinstance(image, np.ndarray) else np.asarray(image)
        check_image(image)
    layout = Layout.of(image.shape, options.channel_axis, options.alpha, options.rgb)
    plan = plan_intensity(image, layout, options.intensity_range, hint=options.intensity_hint, sample=sample)
    if not lazy and plan.mapping.identity and (span := float_span_off_scale(image)) is not None:
        warnings.warn(f"float image spans [{span[0]:.3g}, {span[1]:.3g}]; floats are taken as [0, 1] intensity — "
                      "rescale the data to [0, 1] or pass intensity_range='auto'", stacklevel=3)
    path = resolve_model(options.model, options.task, layout.model_channels, options.model_scale)
    # a lazy image is restored block by block where it is computed; here the network only gives its margins
    net, info = cached_model(str(path), "cpu" if lazy else str(device), path.stat().st_mtime)
    task, scale, name = options.task, options.model_scale, path.name.replace("{", "{{").replace("}", "}}")
    if info.task != task or info.scale != scale:
        wanted = repr(task) + (f" x{scale}" if task == "sr" else "")
        raise OptionValueError("model", f"{name} is a {info.task} model (x{info.scale}); it cannot do {wanted}", path)
    if layout.colour and info.channels != 3:
        raise OptionValueError("model", f"{name} is a gray model; it cannot restore a colour image", path)
    return Prepared(options, layout, plan, path, info, net, device, backend, lazy)


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


def is_dask(a) -> bool:
    return type(a).__module__.startswith("dask.") and hasattr(a, "map_blocks")
