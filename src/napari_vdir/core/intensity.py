"""Intensity ranges: how the caller's values map to the model's [0, 1] intensity.

:func:`robust_range` is the one definition of the "auto" range, shared by :func:`napari_vdir.restore`
(``intensity_range="auto"``, the default for integer data other than uint8), its dask path and the
widget (``lazy.global_intensity_range``), and training on uint16 stacks: the 0.1th and 99.9th
percentiles of the whole array, per channel where there is a channel axis. One hot (or cold) pixel can
never move it: the low end is taken as an order statistic rounded up, the high end rounded down.

The same order statistics are computed for numpy arrays (in one piece) and for dask, zarr and other
array-likes (block by block, never the whole array in memory), so both give identical ranges.
"""

from __future__ import annotations

import math

import numpy as np

PERCENTILES = (0.1, 99.9)
_BINS = 1 << 16            # histogram bins of one refinement pass
_COLLECT = 1 << 22         # at most this many candidate values are gathered to pick the exact one


def robust_range(array, channel_axis: int | None = None, percentiles: tuple[float, float] = PERCENTILES):
    """The robust intensity range of ``array``: its ``percentiles`` (default 0.1 and 99.9).

    Parameters
    ----------
    array : numpy array, dask array, zarr array or another array-like with ``shape``/``dtype``
        Integer or float data (NaN/inf are not allowed).
    channel_axis : int or None
        With a channel axis, each channel gets its own range.
    percentiles : (low, high), 0 <= low < high <= 100.

    Returns
    -------
    ``(low, high)`` floats without a channel axis, else a float64 array of shape ``(C, 2)``.
    When the percentiles coincide (e.g. a mostly constant image) the data's min and max are used;
    ``high == low`` only for constant data.
    """
    p_low, p_high = (float(p) for p in percentiles)
    if not 0.0 <= p_low < p_high <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}")
    dtype = np.dtype(array.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise TypeError(f"robust_range needs integer or float data, got {dtype}")
    if channel_axis is None:
        return _range_of(_pieces(array, None, None), dtype, p_low, p_high)
    ndim = len(array.shape)
    axis = int(channel_axis) % ndim
    return np.array([_range_of(_pieces(array, axis, c), dtype, p_low, p_high)
                     for c in range(array.shape[axis])], dtype=np.float64)


def _pieces(array, axis, channel):
    """A function that yields the (flattened) values of one channel, in pieces of bounded size."""
    if isinstance(array, np.ndarray):
        view = array if channel is None else np.moveaxis(array, axis, 0)[channel]

        def numpy_pieces():
            yield from _numpy_pieces(view)
        return numpy_pieces
    import dask.array as da

    lazy = array if isinstance(array, da.Array) else da.from_array(array, chunks="auto")
    if channel is not None:
        lazy = da.take(lazy, channel, axis=axis)

    def dask_pieces():
        for block in lazy.to_delayed().ravel():
            yield from _numpy_pieces(np.asarray(block.compute()))
    return dask_pieces


_PIECE = 1 << 15  # elements: temporaries stay a few MB whatever the array's size


def _numpy_pieces(view: np.ndarray):
    if view.ndim == 0:
        yield view.reshape(1)
    elif view.size <= _PIECE or view.ndim == 1:
        flat = view.reshape(-1)
        for i in range(0, flat.size, _PIECE):
            yield flat[i:i + _PIECE]
    else:
        row = view[0].size
        if row > _PIECE:
            for sub in view:
                yield from _numpy_pieces(sub)
        else:
            step = max(1, _PIECE // row)
            for i in range(0, view.shape[0], step):
                yield view[i:i + step].reshape(-1)


def _range_of(pieces, dtype, p_low, p_high) -> tuple[float, float]:
    n, lo, hi = 0, math.inf, -math.inf
    for v in pieces():
        if v.size:
            n += v.size
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    if n == 0:
        raise ValueError("robust_range of an empty array")
    k_low = math.ceil(p_low / 100.0 * (n - 1) - 1e-9)
    k_high = math.floor(p_high / 100.0 * (n - 1) + 1e-9)
    low, high = _order_statistics(pieces, dtype, (k_low, k_high), lo, hi)
    if high <= low:  # the percentiles coincide: fall back to the full range
        low, high = lo, hi
    return float(low), float(high)


def _order_statistics(pieces, dtype, ranks, lo: float, hi: float) -> list[float]:
    """The values at the given ranks (0-based, ascending) of all pieces, exactly."""
    if lo == hi:
        return [lo for _ in ranks]
    small_int = np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2
    if small_int:  # one bincount pass: exact
        base = int(lo)
        counts = np.zeros(int(hi) - base + 1, dtype=np.int64)
        for v in pieces():
            counts += np.bincount((v.astype(np.int64) - base), minlength=counts.size)
        cum = np.cumsum(counts)
        return [float(base + int(np.searchsorted(cum, k, side="right"))) for k in ranks]
    # histogram in float64 over [lo, hi], then gather the values of the bin that holds each rank
    scale = _BINS / (hi - lo)

    def bins_of(v):
        return np.clip(np.floor((v.astype(np.float64) - lo) * scale), 0, _BINS - 1).astype(np.int64)

    counts = np.zeros(_BINS, dtype=np.int64)
    for v in pieces():
        counts += np.bincount(bins_of(v), minlength=_BINS)
    cum = np.cumsum(counts)
    targets = []
    for k in ranks:
        b = int(np.searchsorted(cum, k, side="right"))
        targets.append((b, k - (int(cum[b - 1]) if b else 0)))
    if any(counts[b] > _COLLECT for b, _ in targets):  # pathological: settle for the bin's edge
        return [lo + (b + (0 if i == 0 else 1)) / scale for i, (b, _) in enumerate(targets)]
    wanted = {b for b, _ in targets}
    gathered = {b: [] for b in wanted}
    for v in pieces():
        idx = bins_of(v)
        for b in wanted:
            gathered[b].append(v[idx == b])
    out = []
    for b, k in targets:
        values = np.sort(np.concatenate(gathered[b]).astype(np.float64))
        out.append(float(values[k]))
    return out
