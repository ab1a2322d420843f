"""Lazy restoration of dask arrays (zarr-backed, larger than memory, or on a dask.distributed cluster).

The array is cut into blocks that overlap by the model's tile margin on the two spatial axes;
each block goes through the same request as a numpy array (:mod:`napari_vdir.core.request`) and the overlap
is trimmed off again. Block
origins are multiples of 4 (the latent grid) and integer data is normalised with one global
intensity range, so the result equals ``restore`` on the whole numpy array — up to float32
rounding — for deterministic settings (``samples=1``, ``strength=1``). With ``samples > 1`` or
``strength != 1`` the random draws differ per block: the result is equally valid, not identical.
"""

from __future__ import annotations

import numpy as np

from napari_vdir.core.inference import tile_margin
from napari_vdir.core.nets import LATENT_STRIDE  # block origins on multiples of it keep each block's latent grid on the image's
from napari_vdir.core.request import Prepared, RestoreOptions, prepare


def restore_dask(job: Prepared):
    """Restore a prepared dask image (:func:`napari_vdir.core.request.prepare`) block by block; returns a lazy dask
    array (see :func:`napari_vdir.restore`).

    Nothing is restored until the result is computed. Everything was resolved once, by ``prepare``: the model,
    the options (checked before any block runs) and the intensity range (``"auto"``: the robust percentile range,
    the default for integer data other than uint8), over the whole array, block by block, exactly as for a numpy
    array. Each block gets them as explicit options.
    """
    import dask.array as da

    image, layout, net, model_scale = job.image, job.layout, job.net, job.options.model_scale
    # Work on (..., H, W, C): the channel axis last (a length-1 one for gray data without one).
    x = image[..., None] if layout.channel_axis is None else da.moveaxis(image, layout.channel_axis, -1)
    block_options = job.options.replace(
        model=str(job.path), channel_axis=-1, alpha=layout.alpha, rgb=None if layout.colour else False,
        intensity_range=job.intensity.intensity_range, intensity_hint=None, details=False, progress=None,
        cancel=None)

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
                                 dtype=image.dtype, meta=np.empty((0,) * x.ndim, dtype=image.dtype),
                                 options=block_options)
    out = da.overlap.trim_internal(restored, {axis: d * model_scale for axis, d in depth.items()},
                                   boundary="none")
    out = out.rechunk(given)  # the caller's chunking (x scale), e.g. regular chunks for to_zarr
    return out[..., 0] if layout.channel_axis is None else da.moveaxis(out, -1, layout.channel_axis)


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


def _restore_block(block: np.ndarray, options: RestoreOptions) -> np.ndarray:
    """Restore one (..., H, W, C) block. Module-level so dask.distributed can pickle it."""
    return prepare(block, options).run()
