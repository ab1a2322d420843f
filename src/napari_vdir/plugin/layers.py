"""Restore a napari image layer and build the output layers, without any Qt.

The dock widgets (``_widget.py``) and headless scripts (``examples/batch_napari.py``) both go
through :func:`restore_layer` and :func:`add_or_update`, so what a script gets is exactly what
the widgets show.

Geometry (napari puts the centre of data pixel ``i`` at world ``i * scale + translate``):

* Super-resolution follows the project's pixel-centred grid (``degradations.PIXEL_GRID``): high-res
  pixel ``j`` has its centre at low-res coordinate ``(j + 0.5) / s - 0.5``
  (``degradations.sampling_origin``), so the s x s high-res pixels of low-res pixel ``i`` tile exactly the
  area it covers. The output divides the spatial scale by ``s`` and moves the translate by
  ``-(s - 1) / (2 s)`` input pixels (:func:`sr_geometry`): the output's outer edges meet the input's.
  Models trained on the paper's direct decimation (recipe degradation ``blur``, the corner grid) draw
  low-res pixel ``i`` as high-res pixel ``s * i``; their output keeps the input's translate.
* Latent c: cell ``i`` of the 1/4-resolution latent summarises input pixels ``4i .. 4i+3``, whose
  centre is ``4i + 1.5``. Scale ``4 * scale`` and translate ``translate + 1.5 * scale`` put the cell
  centre there. Its 4 channels become the *first* axis of the layer, so the leading (Z/T) axes stay
  right-aligned with the input's in the viewer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_vdir.core.intensity import padded_range

CHANNEL_LABELS = ("c", "ch", "channel", "channels")


def output_name(layer_name: str, task: str, plane: tuple[int, ...] | None = None) -> str:
    """``"<name> [task]"``; a single plane of a stack adds ``" (plane 5)"`` so it never replaces the
    whole-stack result (nor another plane's)."""
    name = f"{layer_name} [{task}]"
    if plane:
        name += f" (plane {', '.join(str(int(i)) for i in plane)})"
    return name


def latent_name(layer_name: str, task: str, plane: tuple[int, ...] | None = None) -> str:
    return f"{output_name(layer_name, task, plane)} latent c"


def uncertainty_name(layer_name: str, task: str, plane: tuple[int, ...] | None = None) -> str:
    return f"{output_name(layer_name, task, plane)} uncertainty"


@dataclass(frozen=True)
class LayerSnapshot:
    """Everything a restoration needs from an image layer, read on the main thread.

    The worker thread only ever sees this: it never touches the napari layer (nor any Qt object).
    ``data`` is the layer's own full-resolution array (level 0 of a multiscale layer; not copied:
    numpy, dask, zarr or any array-like); ``overview`` the smallest level of a multiscale layer.
    """

    name: str
    data: Any
    rgb: bool
    scale: tuple
    translate: tuple
    rotate: np.ndarray
    shear: np.ndarray
    affine: np.ndarray
    units: tuple
    axis_labels: tuple
    contrast_limits: tuple
    gamma: float = 1.0
    colormap: Any = "gray"
    blending: str = "translucent"
    opacity: float = 1.0
    overview: Any = None

    @property
    def ndim(self) -> int:
        return len(self.data.shape)

    @property
    def lazy(self) -> bool:
        """Not a numpy array: dask, zarr, a multiscale level... read plane by plane, never whole."""
        return not isinstance(self.data, np.ndarray)


def snapshot(layer) -> LayerSnapshot:
    """Read an image layer into a :class:`LayerSnapshot` (call on the main thread); checks the layer."""
    if isinstance(layer, LayerSnapshot):  # the worker's input: no napari needed (restore_layer runs without it)
        return layer
    from napari.layers import Image

    if not isinstance(layer, Image):
        kind = type(layer).__name__ if layer is not None else "nothing"
        raise TypeError(f"choose an image layer (got {kind})")
    data = layer.data[0] if layer.multiscale else layer.data
    overview = layer.data[-1] if layer.multiscale else None
    if int(np.prod(data.shape)) == 0:
        raise ValueError(f"layer {layer.name!r} is empty (shape {tuple(data.shape)})")
    spatial_ndim = 3 if layer.rgb else 2
    if len(data.shape) < spatial_ndim:
        raise ValueError(f"layer {layer.name!r} has shape {tuple(data.shape)}; need at least 2 spatial axes")
    return LayerSnapshot(
        name=layer.name, data=data, rgb=bool(layer.rgb), scale=tuple(float(v) for v in layer.scale),
        translate=tuple(float(v) for v in layer.translate), rotate=np.array(layer.rotate),
        shear=np.array(layer.shear), affine=np.array(layer.affine.affine_matrix),
        units=tuple(str(u) for u in layer.units), axis_labels=tuple(str(a) for a in layer.axis_labels),
        contrast_limits=tuple(float(v) for v in layer.contrast_limits), gamma=float(layer.gamma),
        colormap=layer.colormap, blending=str(layer.blending), opacity=float(layer.opacity), overview=overview)


def image_layers(viewer) -> list:
    """The viewer's image layers, top of the layer list first (as napari shows them): what the docks offer."""
    from napari.layers import Image

    return [layer for layer in reversed(viewer.layers) if isinstance(layer, Image)]


def channel_choices(layer) -> list[tuple[str, int | None]]:
    """(label, axis) of each axis of ``layer`` that can hold its channels, after ("none", None); an RGB layer's
    channels are its colours, and something that is not an image layer has none."""
    choices = [("none", None)]
    try:
        snap = snapshot(layer)
    except (TypeError, ValueError):
        return choices
    if snap.rgb:
        return [("RGB colours", None)]
    for axis in range(snap.ndim):
        try:
            check_channel_axis(snap, axis)
        except ValueError:
            continue
        choices.append((f"axis {axis} ({snap.axis_labels[axis]}, {snap.data.shape[axis]})", axis))
    return choices


def models_for(task: str, scale: int | None) -> list[str]:
    """The names of the models that restore ``task`` (and, for SR, ``scale``): shipped, then the user's."""
    from napari_vdir.core.models import list_user_models, shipped_models
    from napari_vdir.core.weights import WeightsError, read_info

    names = []
    candidates = dict(shipped_models())
    for name, path in list_user_models().items():
        candidates.setdefault(name, path)
    for name, path in candidates.items():
        try:
            info = read_info(path)
        except WeightsError:
            continue
        if info.task == task and (scale is None or info.scale == scale):
            names.append(name)
    return names


def device_choices() -> list[str]:
    """The devices a restoration can be asked to run on here: auto and cpu, then cuda and mps where torch has them."""
    import torch

    choices = ["auto", "cpu"]
    if torch.cuda.is_available():
        choices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        choices.append("mps")
    return choices


def chosen_model(model, task: str, scale: int | None, task_label: str | None = None) -> tuple:
    """(``restore_layer``'s ``model``, ``task``, ``scale``) for the model chosen for ``task``: None (auto: the shipped
    model for the task and the layer's colours), a model's name (shipped or the user's) or a weights file (a
    ``Path``). Raises ``ValueError`` when there is no such file, or the model restores another task."""
    from pathlib import Path

    from napari_vdir.core.models import resolve_model
    from napari_vdir.core.weights import read_info

    if model is None:
        return None, task, scale
    if isinstance(model, Path):
        path = model
        if not path.is_file():
            raise ValueError("choose a .safetensors weights file")
    else:
        path = resolve_model(model, task, 1, scale or 1)
    info = read_info(path)
    check_model_task(path, info, task, task_label)
    return str(path), info.task, (info.scale if info.task == "sr" else None)


def check_model_task(path, info, task: str, task_label: str | None = None) -> None:
    """Raise ``ValueError`` when the model at ``path`` (its ``ModelInfo`` ``info``) restores another task than
    ``task`` (named ``task_label`` to the user)."""
    from pathlib import Path

    if info.task != task:
        raise ValueError(f"{Path(path).name} is a {info.task!r} model; the task chosen is {task_label or task}")


# ---------------------------------------------------------------------------- axes

def check_channel_axis(snap: LayerSnapshot, channel_axis) -> int | None:
    """A valid channel axis (non-negative, by the core's rule, :func:`napari_vdir.core.layout.check_channel_axis`)
    or None; RGB layers have their colour axis already."""
    from napari_vdir.core.layout import check_channel_axis as check_axis, check_layout_options

    if channel_axis is None or channel_axis is False or snap.rgb:
        return None
    check_layout_options(channel_axis, None)
    return check_axis(snap.ndim, channel_axis)


def guess_channel_axis(snap: LayerSnapshot) -> int | None:
    """The axis labelled ``c``/``ch``/``channel`` (any case), else the core's rule for a layer that is not RGB
    (a last axis of length 2 or 4; length 3 is RGB, which napari's ``layer.rgb`` decides); None when there is
    no channel axis."""
    if snap.rgb or snap.ndim < 3:
        return None
    for axis, label in enumerate(snap.axis_labels):
        if str(label).strip().lower() in CHANNEL_LABELS:
            try:
                return check_channel_axis(snap, axis)
            except ValueError:
                return None
    return layer_layout(snap, None).channel_axis


def layer_layout(snap: LayerSnapshot, channel_axis: int | None):
    """The core's :class:`~napari_vdir.core.layout.Layout` of the layer: napari's ``layer.rgb`` decides colour;
    ``channel_axis`` None on a layer that is not RGB takes a last axis of 2 or 4 as channels."""
    from napari_vdir.core.layout import Layout

    return Layout.of(tuple(snap.data.shape), channel_axis, rgb=snap.rgb)


def spatial_axes(snap: LayerSnapshot, channel_axis: int | None) -> tuple[int, int]:
    ndim = snap.ndim
    return (ndim - 3, ndim - 2) if snap.rgb or channel_axis == ndim - 1 else (ndim - 2, ndim - 1)


def plane_axes(snap: LayerSnapshot, channel_axis: int | None) -> tuple[int, ...]:
    """The axes one browses (Z, T, ...): neither image axes nor the channel/colour axis."""
    skip = set(spatial_axes(snap, channel_axis)) | {channel_axis}
    if snap.rgb:
        skip.add(snap.ndim - 1)
    return tuple(a for a in range(snap.ndim) if a not in skip)


def current_plane(layer, world_point, channel_axis: int | None = None) -> tuple[int, ...]:
    """Indices, along the layer's plane axes (:func:`plane_axes`), of the viewer's current position."""
    snap = snapshot(layer)
    axes = plane_axes(snap, check_channel_axis(snap, channel_axis))
    if not axes:
        return ()
    pos = np.asarray(layer.world_to_data(world_point), dtype=float)
    return tuple(int(np.clip(round(pos[a]), 0, snap.data.shape[a] - 1)) for a in axes)


def _plane_index(snap: LayerSnapshot, axes: tuple[int, ...], plane) -> tuple:
    """Index that keeps every axis (size 1 on the plane axes)."""
    index = [slice(None)] * snap.ndim
    for axis, i in zip(axes, plane, strict=True):
        if not 0 <= int(i) < snap.data.shape[axis]:
            raise ValueError(f"plane index {i} is outside axis {axis} (length {snap.data.shape[axis]})")
        index[axis] = slice(int(i), int(i) + 1)
    return tuple(index)


# ---------------------------------------------------------------------------- intensities

def layer_intensity_range(snap: LayerSnapshot, channel_axis: int | None, sample=None):
    """The layer's range before its margins, by the one intensity policy's ``"layer"`` mode
    (:func:`napari_vdir.core.intensity.layer_range`, the layer's contrast limits as the hint).

    It is read from the whole array for numpy layers, from the smallest level of a multiscale layer, and
    otherwise (dask, zarr) from ``sample`` — the plane being restored or shown — so lazy data is never read whole.
    """
    from napari_vdir.core.intensity import layer_range

    if sample is None:
        sample = snap.overview if snap.overview is not None else snap.data
    layout = layer_layout(snap, False if channel_axis is None else channel_axis)
    return layer_range(snap.data, layout, hint=snap.contrast_limits, sample=sample)


def prepare_for_model(data, layer_range, rgb: bool, channel_axis: int | None):
    """``(data, range)`` as the ``"layer"`` policy prepares a layer for the model (restoring or fine-tuning):
    ``layer_range`` (:func:`layer_intensity_range`) padded (:func:`napari_vdir.core.intensity.padded_range`), and
    ``data`` with far outliers clipped to it (:func:`napari_vdir.core.intensity.clip_far_outliers`; an RGBA
    layer's alpha is left as it is). A None range (uint8) leaves ``data`` unchanged."""
    from napari_vdir.core.intensity import clip_far_outliers
    from napari_vdir.core.layout import Layout

    rng = padded_range(layer_range)
    if rng is None:
        return data, None
    layout = Layout.of(tuple(data.shape), False if channel_axis is None else channel_axis, rgb=rgb)
    return clip_far_outliers(data, rng, layout), rng


# ---------------------------------------------------------------------------- results

@dataclass
class LayerRestoration:
    """Result of :func:`restore_layer`: layer-data tuples ready for :func:`add_or_update`."""

    layers: list = field(default_factory=list)   # [(data, meta, "image"), ...]; output first
    estimate: dict = field(default_factory=dict)
    device: str = ""
    model: str = ""
    task: str = ""
    # companion layers (latent c, uncertainty) of an earlier run that this run did not produce: they
    # no longer describe the output and are removed from the viewer
    stale: list = field(default_factory=list)
    data_units: bool = True      # the estimate is also given in the layer's units (not uint8 / 255)
    range_span: float | None = None  # width of the one intensity range the layer was mapped by (before margins)
    lazy: bool = False           # the output is computed plane by plane when napari shows it
    backend: str = ""

    def summary(self) -> str:
        if self.lazy:
            return "restored lazily: each plane is computed when you view it (no estimate)"
        return describe_estimate(self.task, self.estimate, self.data_units, self.range_span)


def describe_estimate(task: str, estimate: dict, data_units: bool = False, range_span: float | None = None) -> str:
    """One line for the dock, e.g. 'estimated noise σ ≈ 24.8 (of 255)' or, for data that is not 8-bit,
    'estimated noise σ ≈ 41.3 in the layer's units (1.4 % of its intensity range)' (the percentage only
    where one range, ``range_span`` wide, was used)."""
    def value(key):
        v = estimate.get(key)
        if v is None:
            return None
        v = np.asarray(v, dtype=float)
        return float(np.nanmean(v)) if v.size else None

    planes = next((np.asarray(v).size for v in estimate.values() if np.ndim(v)), 1)
    suffix = f" (mean of {planes} planes)" if planes > 1 else ""
    if task == "denoise" and value("noise_sigma") is not None:
        sigma = value("noise_sigma")
        if data_units and value("noise_sigma_data_units") is not None:
            text = f"estimated noise σ ≈ {value('noise_sigma_data_units'):.3g} in the layer's units"
            if range_span:
                text += f" ({100 * value('noise_sigma_data_units') / range_span:.1f} % of its intensity range)"
            return text + suffix
        return f"estimated noise σ ≈ {sigma:.1f} (of 255)" + suffix
    if task == "sr" and value("blur_sigma_major") is not None:
        return (f"estimated blur width σ ≈ {value('blur_sigma_major'):.2f} × {value('blur_sigma_minor'):.2f} "
                f"HR pixels" + suffix)
    if task == "jpeg" and value("jpeg_quality") is not None:
        return f"estimated JPEG quality ≈ {value('jpeg_quality'):.0f}" + suffix
    return "no degradation estimate for this model"


def restore_layer(layer, task: str, *, scale: int | None = None, model=None, device="auto",
                  plane: tuple[int, ...] | None = None, channel_axis="auto", intensity_range="layer",
                  range_plane: tuple[int, ...] | None = None, tile_size: int | None = None,
                  ensemble: bool = False, samples: int = 1, latent: bool = False, uncertainty: bool = False,
                  strength: float = 1.0, progress=None, cancel=None) -> LayerRestoration:
    """Restore an image layer (or its :class:`LayerSnapshot`) through the core's one request, as
    :func:`napari_vdir.restore` does (:class:`~napari_vdir.core.request.RestoreOptions`, ``prepare``).

    ``plane``: indices along the plane axes (:func:`plane_axes`, e.g. from :func:`current_plane`) to restore
    only that plane — it is the only part of the data that is read; None restores the whole stack. A plane
    keeps its axes (size 1), translated to where it sits, so it overlays the input.
    ``channel_axis``: "auto" (:func:`guess_channel_axis`), None or an axis; each channel is restored and
    normalised on its own. ``intensity_range``: "layer" (the one intensity policy's mode for layers, the layer's
    contrast limits as its hint: :func:`layer_intensity_range`) or anything ``restore`` accepts.
    ``range_plane``: for lazy (dask/zarr) layers, the plane the robust range is read from in a whole-stack
    run (default: the middle one), so that a plane run and a stack run from the same position agree.
    Lazy layers restored whole give a lazy result (each plane computed when napari shows it; no latent,
    uncertainty or estimate); numpy layers and single planes are computed here.
    """
    from napari_vdir.core.devices import device_label
    from napari_vdir.core.request import RestoreOptions, prepare

    snap = snapshot(layer)
    if channel_axis == "auto":
        channel_axis = guess_channel_axis(snap)
    ch = check_channel_axis(snap, channel_axis)
    rgb = snap.rgb
    axes = plane_axes(snap, ch)
    spatial = spatial_axes(snap, ch)
    plane = tuple(int(i) for i in plane) if plane is not None and axes else None
    if plane is not None and len(plane) != len(axes):
        raise ValueError(f"plane {plane} needs one index per plane axis {axes}")

    lazy_whole = snap.lazy and plane is None
    if plane is not None:
        sub = np.asarray(snap.data[_plane_index(snap, axes, plane)])  # reads this plane only
    elif snap.lazy:
        sub = _as_dask(snap.data, axes)
    else:
        sub = snap.data
    layer_mode = isinstance(intensity_range, str) and intensity_range == "layer"
    # napari already decided whether the layer is RGB: the core never guesses from a length-3 axis
    options = RestoreOptions(task, scale=scale, model=model, channel_axis=False if ch is None else ch, rgb=rgb,
                             device=device, tile_size=tile_size, ensemble=ensemble, samples=samples,
                             strength=strength, intensity_range=intensity_range, intensity_hint=snap.contrast_limits,
                             details=not lazy_whole, progress=progress, cancel=cancel)
    job = prepare(sub, options, sample=_range_sample(snap, sub, axes, plane, range_plane) if layer_mode else None)
    if lazy_whole:
        from napari_vdir.core.lazy import restore_dask

        image, res = restore_dask(job), None
    else:
        res = job.run()
        image = res.image
    info, s = job.info, job.info.scale
    range_span = job.intensity.span
    if layer_mode:
        intensity_range = job.intensity.intensity_range

    in_scale = np.asarray(snap.scale, dtype=float)
    in_translate = np.asarray(snap.translate, dtype=float).copy()
    if plane is not None:
        for axis, i in zip(axes, plane, strict=True):
            in_translate[axis] += i * in_scale[axis]
    out_scale, out_translate = sr_geometry(in_scale, in_translate, s, _grid(info), axes=spatial)
    common = {"units": snap.units, "axis_labels": snap.axis_labels, "rotate": snap.rotate, "shear": snap.shear,
              "affine": snap.affine}
    estimate = {} if res is None else res.estimate
    device_used = res.device if res is not None else device_label(job.device)
    out_meta = {"name": output_name(snap.name, task, plane), "scale": tuple(out_scale),
                "translate": tuple(out_translate), "rgb": rgb, "contrast_limits": snap.contrast_limits,
                "gamma": snap.gamma, "blending": snap.blending, "opacity": snap.opacity,
                "metadata": {"vdir": {"task": task, "model": info.name, "device": device_used,
                                      "strength": strength, "plane": plane, "channel_axis": ch,
                                      "intensity_range": _plain_value(intensity_range),
                                      "estimate": _plain(estimate)}}, **common}
    if not rgb:
        out_meta["colormap"] = snap.colormap
    if lazy_whole:
        out_meta["multiscale"] = False
    layers = [(image, out_meta, "image")]

    if latent and res is not None:
        layers.append(_latent_layer(snap, res.latent, ch, axes, spatial, in_scale, in_translate, task, plane))
    if uncertainty and res is not None and res.uncertainty is not None:
        # an RGB layer's scale has no entry for the colour axis, so the mean over it (alpha excluded) fits the
        # same geometry
        unc = res.uncertainty[..., :3].mean(axis=-1) if rgb else res.uncertainty
        layers.append((unc.astype(np.float32), {"name": uncertainty_name(snap.name, task, plane),
                                                "scale": tuple(out_scale), "translate": tuple(out_translate),
                                                "colormap": "inferno", "blending": "additive", **common},
                       "image"))
    produced = {meta["name"] for _, meta, _ in layers}
    stale = [n for n in (latent_name(snap.name, task, plane), uncertainty_name(snap.name, task, plane))
             if n not in produced]
    return LayerRestoration(layers, estimate, device_used, info.name, task, stale,
                            data_units=np.dtype(snap.data.dtype) != np.uint8, range_span=range_span, lazy=lazy_whole,
                            backend="" if res is None else res.backend)


def _latent_layer(snap, lat, ch, axes, spatial, in_scale, in_translate, task, plane):
    """The latent c as a layer: (4, *plane axes, [channels,] h/4, w/4), each cell centred on its 4 x 4 block."""
    lat = np.moveaxis(lat, -3, 0)  # the core gives (*plane axes, [channels,] 4, h/4, w/4)
    order = list(axes) + ([ch] if ch is not None else []) + list(spatial)
    lat_scale = [1.0] + [1.0 if a == ch else float(in_scale[a]) for a in order]
    lat_translate = [0.0] + [0.0 if a == ch else float(in_translate[a]) for a in order]
    for k, a in enumerate(order):
        if a in spatial:
            lat_scale[k + 1] = 4 * in_scale[a]
            lat_translate[k + 1] = in_translate[a] + 1.5 * in_scale[a]
    return (lat, {"name": latent_name(snap.name, task, plane), "scale": tuple(lat_scale),
                  "translate": tuple(lat_translate), "units": ("pixel", *(snap.units[a] for a in order)),
                  "axis_labels": ("latent c", *(snap.axis_labels[a] for a in order)),
                  "colormap": "magma", "opacity": 0.6, "blending": "translucent"}, "image")


def _dask():
    import dask.array as da

    return da


def _as_dask(data, axes):
    """A dask view of lazy data with one chunk per plane (so napari computes only the plane it shows)."""
    da = _dask()
    x = data if isinstance(data, da.Array) else da.from_array(data, chunks="auto")
    return x.rechunk({a: 1 for a in axes}) if axes else x


def _range_sample(snap: LayerSnapshot, sub, axes, plane, range_plane):
    """Where the "layer" range of a run is read: the smallest level of a multiscale layer, the whole array of a
    numpy layer (a plane run and a stack run agree), else (dask, zarr) the plane being restored or, for a
    whole-stack run, ``range_plane`` (default: the middle one) — lazy data is never read whole."""
    if snap.overview is not None:
        return snap.overview
    if not snap.lazy:
        return snap.data
    if plane is not None:
        return sub
    from napari_vdir.core.layout import check_image

    where = range_plane if range_plane is not None else tuple(snap.data.shape[a] // 2 for a in axes)
    sample = np.asarray(snap.data[_plane_index(snap, axes, where)])
    check_image(sample)
    return sample


def backend_label(device="auto") -> str:
    """What ``restore(device=device, backend="auto", precision="auto")`` runs with, e.g. "onnxruntime fp32"
    or "torch bf16" (from :func:`napari_vdir.core.backends.resolve_backend` and the device's fast dtype)."""
    from napari_vdir.core.backends import resolve_backend
    from napari_vdir.core.devices import fast_dtype, select_device

    dev = select_device(device)
    backend = resolve_backend("auto", dev, "auto")
    if backend == "onnxruntime":
        return "onnxruntime fp32"
    dtype = fast_dtype(dev, "auto")
    return f"torch {'fp32' if dtype is None else {'bfloat16': 'bf16', 'float16': 'fp16'}[str(dtype).split('.')[-1]]}"


def sr_geometry(scale, translate, factor: int, grid: str = "centred", axes=(-2, -1)) -> tuple[np.ndarray, np.ndarray]:
    """(scale, translate) of a layer ``factor`` times finer on the two spatial ``axes`` (default the last two;
    the two before a last channel/colour axis for multichannel data) that overlays the input on
    the pixel-centred grid: its pixel ``j`` is drawn where the input's coordinate ``(j + 0.5) / s - 0.5``
    is. ``grid="corner"`` is for the SR models trained on the paper's direct decimation (they draw low-res
    pixel ``i`` as high-res pixel ``s * i``): pixel ``j`` at input coordinate ``j / s``, the input's translate.
    The leading axes are unchanged; ``factor`` 1 changes nothing."""
    from napari_vdir.core.degradations import sampling_origin

    scale = np.asarray(scale, dtype=float).copy()
    translate = np.asarray(translate, dtype=float).copy()
    # high-res pixel 0 sits sampling_origin high-res pixels before low-res pixel 0's centre
    axes = list(axes)
    translate[axes] -= sampling_origin(factor, grid) / factor * scale[axes]
    scale[axes] /= factor
    return scale, translate


def _grid(info) -> str:
    from napari_vdir.core.degradations import model_grid

    return model_grid(getattr(info, "task", ""), getattr(info, "recipe", None))


def _plain(estimate: dict) -> dict:
    return {k: _plain_value(v) for k, v in estimate.items()}


def _plain_value(v):
    return v.tolist() if isinstance(v, np.ndarray) else v


def remove_stale(viewer, result: LayerRestoration) -> None:
    for name in result.stale:
        if name in viewer.layers:
            viewer.layers.remove(viewer.layers[name])


def add_or_update(viewer, layer_data: tuple):
    """Add a layer-data tuple to the viewer, or update the layer of that name in place (rerun)."""
    data, meta, kind = layer_data
    name = meta["name"]
    if name in viewer.layers:
        old = viewer.layers[name]
        from napari.layers import Image

        same_kind = isinstance(old, Image) and kind == "image" and old.rgb == meta.get("rgb", False)
        if same_kind and old.ndim == len(meta["scale"]):
            old.data = data
            for key in ("scale", "translate", "rotate", "shear", "units", "axis_labels", "metadata", "blending",
                        "opacity", "gamma", "colormap"):
                if key in meta:
                    setattr(old, key, meta[key])
            if "affine" in meta:
                old.affine = meta["affine"]
            if "contrast_limits" in meta:
                old.contrast_limits = meta["contrast_limits"]
            else:
                old.reset_contrast_limits()
            return old
        viewer.layers.remove(old)
    return viewer.add_image(data, **meta)
