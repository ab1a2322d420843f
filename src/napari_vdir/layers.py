"""Restore a napari image layer and build the output layers, without any Qt.

The dock widgets (``_widget.py``) and headless scripts (``examples/batch_napari.py``) both go
through :func:`restore_layer` and :func:`add_or_update`, so what a script gets is exactly what
the widgets show.

Geometry (napari puts the centre of data pixel ``i`` at world ``i * scale + translate``):

* Super-resolution follows the project's pixel-centred grid (``degradations.PIXEL_GRID``): high-res
  pixel ``j`` has its centre at low-res coordinate ``(j + 0.5) / s - 0.5``
  (``degradations.hr_centre``), so the s x s high-res pixels of low-res pixel ``i`` tile exactly the
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

import numpy as np


def output_name(layer_name: str, task: str) -> str:
    return f"{layer_name} [{task}]"


def latent_name(layer_name: str, task: str) -> str:
    return f"{output_name(layer_name, task)} latent c"


def uncertainty_name(layer_name: str, task: str) -> str:
    return f"{output_name(layer_name, task)} uncertainty"


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

    def summary(self) -> str:
        return describe_estimate(self.task, self.estimate)


def describe_estimate(task: str, estimate: dict) -> str:
    """One line for the widget's estimate label, e.g. 'estimated noise σ ≈ 24.8 (0-255 scale)'."""
    def value(key):
        v = estimate.get(key)
        if v is None:
            return None
        v = np.asarray(v, dtype=float)
        return float(np.nanmean(v)) if v.size else None

    planes = next((np.asarray(v).size for v in estimate.values() if np.ndim(v)), 1)
    suffix = f" (mean of {planes} planes)" if planes > 1 else ""
    if task == "denoise" and value("noise_sigma") is not None:
        text = f"estimated noise σ ≈ {value('noise_sigma'):.1f} (0-255 scale)"
        if value("noise_sigma_data_units") is not None:
            text += f", ≈ {value('noise_sigma_data_units'):.1f} in data units"
        return text + suffix
    if task == "sr" and value("blur_sigma_major") is not None:
        return (f"estimated blur width σ ≈ {value('blur_sigma_major'):.2f} × {value('blur_sigma_minor'):.2f} "
                f"HR pixels" + suffix)
    if task == "jpeg" and value("jpeg_quality") is not None:
        return f"estimated JPEG quality ≈ {value('jpeg_quality'):.0f}" + suffix
    return "no degradation estimate for this model"


def layer_array(layer):
    """The full-resolution data of an image layer, checked for what the widgets cannot handle."""
    from napari.layers import Image

    if not isinstance(layer, Image):
        kind = type(layer).__name__ if layer is not None else "nothing"
        raise TypeError(f"choose an image layer (got {kind})")
    data = layer.data[0] if layer.multiscale else layer.data
    if data.size == 0:
        raise ValueError(f"layer {layer.name!r} is empty (shape {tuple(data.shape)})")
    spatial_ndim = 3 if layer.rgb else 2
    if data.ndim < spatial_ndim:
        raise ValueError(f"layer {layer.name!r} has shape {tuple(data.shape)}; need at least 2 spatial axes")
    return data


def current_plane(layer, world_point) -> tuple[int, ...]:
    """Indices of the layer's leading (non-spatial) axes at the viewer's current position."""
    data = layer_array(layer)
    lead = data.ndim - (3 if layer.rgb else 2)
    if lead == 0:
        return ()
    pos = np.asarray(layer.world_to_data(world_point), dtype=float)[:lead]
    return tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(pos, data.shape[:lead], strict=False))


def restore_layer(layer, task: str, *, scale: int | None = None, model=None, device="auto",
                  plane: tuple[int, ...] | None = None, tile_size: int | None = None, ensemble: bool = False,
                  samples: int = 1, latent: bool = False, uncertainty: bool = False, strength: float = 1.0,
                  progress=None, cancel=None) -> LayerRestoration:
    """Restore an image layer with :func:`napari_vdir.restore` and describe the layers to show.

    ``plane``: indices of the leading axes to restore only that plane (see :func:`current_plane`);
    None restores the whole stack. A single plane keeps its leading axes (size 1), translated to
    where the plane sits, so it overlays the input in the viewer.
    """
    from .api import restore
    from .lazy import global_intensity_range

    data = layer_array(layer)
    rgb = bool(layer.rgb)
    lead = data.ndim - (3 if rgb else 2)
    offset = (0,) * lead
    # Integer data beyond uint8 is normalised by the whole layer's range (dask or zarr data too,
    # reduced chunk by chunk), so a plane restored alone matches the same plane of a whole-stack run.
    intensity_range = global_intensity_range(data, channel_axis=-1 if rgb else False,
                                             alpha=rgb and data.shape[-1] == 4)
    if plane is not None and lead:
        offset = tuple(int(i) for i in plane)
        sub = np.asarray(data[offset])[(None,) * lead]
    else:
        sub = np.asarray(data)
    alpha = None
    if rgb and sub.shape[-1] == 4:  # RGBA: restore the colour, carry alpha along
        sub, alpha = sub[..., :3], sub[..., 3:]
    # napari already decided whether the layer is RGB; never let restore() guess from a length-3 axis
    res = restore(sub, task, scale=scale, model=model, channel_axis=-1 if rgb else False, device=device,
                  tile_size=tile_size, ensemble=ensemble, samples=samples, details=True, progress=progress,
                  cancel=cancel, strength=strength, intensity_range=intensity_range)
    s = res.model.scale
    image = res.image
    if alpha is not None:
        a = np.repeat(np.repeat(alpha, s, axis=-3), s, axis=-2) if s > 1 else alpha
        image = np.concatenate([image, a.astype(image.dtype)], axis=-1)

    in_scale = np.asarray(layer.scale, dtype=float)
    in_translate = np.asarray(layer.translate, dtype=float).copy()
    in_translate[:lead] += np.asarray(offset) * in_scale[:lead]
    units = tuple(str(u) for u in layer.units)
    labels = tuple(layer.axis_labels)
    out_scale, out_translate = sr_geometry(in_scale, in_translate, s, _grid(res.model))
    common = {"units": units, "axis_labels": labels, "rotate": layer.rotate, "shear": layer.shear,
              "affine": layer.affine.affine_matrix}
    out_meta = {"name": output_name(layer.name, task), "scale": tuple(out_scale), "translate": tuple(out_translate),
                "rgb": rgb, "contrast_limits": tuple(layer.contrast_limits), "gamma": layer.gamma,
                "metadata": {"vdir": {"task": task, "model": res.model.name, "device": res.device,
                                      "strength": strength, "estimate": _plain(res.estimate)}}, **common}
    if not rgb:
        out_meta["colormap"] = layer.colormap.name
    layers = [(image, out_meta, "image")]

    if latent:
        lat = np.moveaxis(res.latent, -3, 0)  # (4, *lead, h/4, w/4)
        lat_scale = (1.0, *in_scale[:-2], *(4 * in_scale[-2:]))
        lat_translate = (0.0, *in_translate[:-2], *(in_translate[-2:] + 1.5 * in_scale[-2:]))
        layers.append((lat, {"name": latent_name(layer.name, task), "scale": lat_scale, "translate": lat_translate,
                             "units": ("pixel", *units), "axis_labels": ("latent c", *labels),
                             "colormap": "magma", "opacity": 0.6, "blending": "translucent"}, "image"))
    if uncertainty and res.uncertainty is not None:
        unc = res.uncertainty.mean(axis=-1) if rgb else res.uncertainty
        layers.append((unc.astype(np.float32), {"name": uncertainty_name(layer.name, task), "scale": tuple(out_scale),
                                                "translate": tuple(out_translate), "colormap": "inferno",
                                                "blending": "additive", **common}, "image"))
    produced = {meta["name"] for _, meta, _ in layers}
    stale = [n for n in (latent_name(layer.name, task), uncertainty_name(layer.name, task)) if n not in produced]
    return LayerRestoration(layers, res.estimate, res.device, res.model.name, task, stale)


def sr_geometry(scale, translate, factor: int, grid: str = "centred") -> tuple[np.ndarray, np.ndarray]:
    """(scale, translate) of a layer ``factor`` times finer on the last two axes that overlays the input on
    the pixel-centred grid: its pixel ``j`` is drawn where the input's coordinate ``(j + 0.5) / s - 0.5``
    is. ``grid="corner"`` is for the SR models trained on the paper's direct decimation (they draw low-res
    pixel ``i`` as high-res pixel ``s * i``): pixel ``j`` at input coordinate ``j / s``, the input's translate.
    The leading axes are unchanged; ``factor`` 1 changes nothing."""
    from .degradations import sampling_origin

    scale = np.asarray(scale, dtype=float).copy()
    translate = np.asarray(translate, dtype=float).copy()
    # high-res pixel 0 sits sampling_origin high-res pixels before low-res pixel 0's centre
    translate[-2:] -= sampling_origin(factor, grid) / factor * scale[-2:]
    scale[-2:] /= factor
    return scale, translate


def _grid(info) -> str:
    from .degradations import model_grid

    return model_grid(getattr(info, "task", ""), getattr(info, "recipe", None))


def _plain(estimate: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in estimate.items()}


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
            for key in ("scale", "translate", "rotate", "shear", "units", "axis_labels", "metadata"):
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
