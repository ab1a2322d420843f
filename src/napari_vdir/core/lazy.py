"""Lazy restoration of dask arrays (zarr-backed, larger than memory, or on a dask.distributed cluster).

The array is cut into blocks that overlap by the model's tile margin on the two spatial axes;
each block goes through :func:`napari_vdir.restore` and the overlap is trimmed off again. Block
origins are multiples of 4 (the latent grid) and integer data is normalised with one global
intensity range, so the result equals ``restore`` on the whole numpy array — up to float32
rounding — for deterministic settings (``samples=1``, ``strength=1``). With ``samples > 1`` or
``strength != 1`` the random draws differ per block: the result is equally valid, not identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_vdir.core.api import Layout, resolve_range
from napari_vdir.core.inference import cached_model, tile_margin
from napari_vdir.core.models import resolve_model
from napari_vdir.core.nets import LATENT_STRIDE  # block origins on multiples of it keep each block's latent grid on the image's
from napari_vdir.core.tasks import check_task


def restore_dask(image, task: str, *, scale=None, model=None, channel_axis=None, alpha=None, device="auto",
                 tile_size=None, ensemble=False, samples=1, precision="auto", strength=1.0, intensity_range=None,
                 seed=0, backend="auto"):
    """Restore a dask array block by block; returns a lazy dask array (see :func:`napari_vdir.restore`).

    Nothing is restored until the result is computed. The intensity range (``"auto"``: the robust
    percentile range, the default for integer data other than uint8) is computed here, once, over
    the whole array, block by block, exactly as ``restore`` computes it for a numpy array.
    """
    import dask.array as da

    model_scale = check_task(task, scale)
    layout = Layout.of(image.shape, channel_axis, alpha)
    # Work on (..., H, W, C): the channel axis last (a length-1 one for gray data without one).
    x = image[..., None] if layout.channel_axis is None else da.moveaxis(image, layout.channel_axis, -1)
    channels = 3 if layout.colour_channels(image.shape) == 3 else 1
    path = str(resolve_model(model, task, channels, model_scale))

    intensity_range = resolve_range(image, intensity_range, layout)

    options = dict(task=task, scale=scale, model=path, device=device, tile_size=tile_size, ensemble=ensemble,
                   samples=samples, precision=precision, strength=strength, intensity_range=intensity_range,
                   seed=seed, alpha=layout.alpha, backend=backend)
    _check_options(x, options)  # fail now, not later inside a worker

    net, _ = cached_model(path, "cpu", Path(path).stat().st_mtime)
    margin = tile_margin(net)
    h_axis, w_axis = x.ndim - 3, x.ndim - 2
    given = _scale_axes(x.chunks, (h_axis, w_axis), model_scale)
    chunks = list(x.chunks)
    chunks[-1] = (x.shape[-1],)
    for axis in (h_axis, w_axis):
        chunks[axis] = spatial_chunks(x.shape[axis], x.chunks[axis][0], margin, net.cfg.size_multiple)
    x = x.rechunk(tuple(chunks))

    depth = {axis: margin if len(x.chunks[axis]) > 1 else 0 for axis in (h_axis, w_axis)}
    padded = da.overlap.overlap(x, depth=depth, boundary="none", allow_rechunk=False)
    restored = padded.map_blocks(_restore_block, chunks=_scale_axes(padded.chunks, depth, model_scale),
                                 dtype=image.dtype, meta=np.empty((0,) * x.ndim, dtype=image.dtype), **options)
    out = da.overlap.trim_internal(restored, {axis: d * model_scale for axis, d in depth.items()},
                                   boundary="none")
    out = out.rechunk(given)  # the caller's chunking (x scale), e.g. regular chunks for to_zarr
    return out[..., 0] if layout.channel_axis is None else da.moveaxis(out, -1, layout.channel_axis)


def global_intensity_range(array, channel_axis=None, alpha=None, intensity_range=None):
    """The intensity range ``restore`` uses for the whole ``array`` (see ``api.resolve_range``): None for
    uint8 and floats by default, else ``(low, high)`` or one ``(low, high)`` per channel.

    Pass it as ``intensity_range`` when restoring parts of the array (one plane, a block) so that each
    part is normalised like the whole. numpy arrays are reduced in pieces; dask, zarr and other
    array-likes block by block, so a larger-than-memory stack is never held in memory whole.
    """
    layout = Layout.of(tuple(array.shape), channel_axis, alpha)
    return resolve_range(array, intensity_range, layout)


def spatial_chunks(size: int, chunk: int, margin: int, multiple: int = LATENT_STRIDE) -> tuple[int, ...]:
    """Chunk sizes for one spatial axis: multiples of ``multiple`` (the network's ``size_multiple``, so every
    block origin is one), at least ``margin`` (so overlapping never rechunks), a short last chunk merged into
    the one before."""
    chunk = max(margin, multiple, round(chunk / multiple) * multiple)
    if chunk >= size:
        return (size,)
    sizes = [chunk] * (size // chunk)
    rest = size - sum(sizes)
    if rest >= margin:
        sizes.append(rest)
    else:
        sizes[-1] += rest
    return tuple(sizes)


def _scale_axes(chunks: tuple, axes, scale: int) -> tuple:
    """``chunks`` with the sizes along ``axes`` multiplied by the output scale."""
    return tuple(tuple(c * scale for c in sizes) if axis in axes else sizes for axis, sizes in enumerate(chunks))


def _restore_block(block: np.ndarray, **options) -> np.ndarray:
    """Restore one (..., H, W, C) block. Module-level so dask.distributed can pickle it."""
    from napari_vdir.core.api import restore

    return restore(block, channel_axis=-1, **options)


def _check_options(x, options: dict) -> None:
    """Run the same checks as a block will (task vs model, channels, precision, ...) on a tiny
    dummy plane on the CPU, so a wrong argument raises here rather than at compute time."""
    dummy = np.zeros((LATENT_STRIDE, LATENT_STRIDE, x.shape[-1]), dtype=x.dtype)
    _restore_block(dummy, **{**options, "device": "cpu", "ensemble": False, "samples": 1, "tile_size": None})
