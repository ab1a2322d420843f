"""The one intensity policy: how the caller's values map to the model's [0, 1] intensity and back.

:func:`plan_intensity` decides it for every path into the model — :func:`napari_vdir.restore` and its dask
path, the command line, the npe2 commands and the docks (through :mod:`napari_vdir.core.request`) — from
``intensity_range``:

* None (``restore``'s default): uint8 / 255, other integers ``"auto"``, floats as they are;
* ``"auto"``: :func:`robust_range`; ``"minmax"``: the data's min and max (results clipped to them);
  ``(low, high)`` or one per channel: fixed (:func:`resolve_range`);
* ``"layer"`` (the plugin's, for images a person looks at): :func:`layer_range` — the robust range, narrowed
  to a ``hint`` (a layer's contrast limits) where it is narrower — padded by :data:`RANGE_HEADROOM` on each
  side, with far outliers clipped (:data:`OUTLIER_CLIP`); uint8 stays / 255.

:func:`robust_range` is the one definition of the "auto" range: the 0.1th and 99.9th percentiles of the
whole array, per channel where there is a channel axis. One hot (or cold) pixel can never move it: the low
end is taken as an order statistic rounded up, the high end rounded down.

The same order statistics are computed for numpy arrays (in one piece) and for dask, zarr and other
array-likes (block by block, never the whole array in memory), so both give identical ranges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_vdir.core.errors import OptionTypeError, OptionValueError
from napari_vdir.core.layout import Layout

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


# ---------------------------------------------------------------------------- the policy

INTENSITY_MODES = ("auto", "minmax", "layer")
FLOAT_SCALE = (-3.0, 4.0)  # floats taken as [0, 1] intensity: beyond this, far more than noise around [0, 1]
# The shipped models were trained on [0, 1] intensities: a margin of RANGE_HEADROOM x the range on each
# side keeps background and highlights off those edges, where the network is biased (a 200-count
# background on a 200-30000 channel rose by ~50 % without it; with it the means hold, test_layer_intensities).
RANGE_HEADROOM = 0.1
# Values more than OUTLIER_CLIP x the range beyond the padded range (hot or dead pixels) are clipped to it
# before restoring: one 65535 pixel in a 100-3000 image otherwise upsets the degradation estimate for the
# whole image (error 13 -> 57 counts).
OUTLIER_CLIP = 0.5


def float_span_off_scale(image) -> tuple[float, float] | None:
    """``(min, max)`` of a float image when it lies far outside the [0, 1] intensity that floats are taken
    as (:data:`FLOAT_SCALE`), else None (also for integer data). ``restore`` warns about such an image when
    no ``intensity_range`` is given; training refuses it (it would learn the wrong scale, or diverge)."""
    if not np.issubdtype(np.dtype(image.dtype), np.floating):
        return None
    lo, hi = float(np.min(image)), float(np.max(image))
    return (lo, hi) if lo < FLOAT_SCALE[0] or hi > FLOAT_SCALE[1] else None


@dataclass(frozen=True)
class IntensityPlan:
    """What :func:`plan_intensity` decided for one image."""

    data: Any              # the image; in the "layer" mode with far outliers clipped (lazily for dask)
    intensity_range: Any   # explicit (low, high), (C, 2) per channel, or None (uint8 / 255, floats as they are)
    mapping: Intensity
    span: float | None = None  # "layer" mode: width of the one range the data was mapped by, before the margins


def plan_intensity(image, layout: Layout, intensity_range=None, *, hint=None, sample=None) -> IntensityPlan:
    """The one intensity policy (see the module) for ``image`` (numpy or dask) laid out as ``layout``.

    ``hint``: a layer's contrast limits, for the ``"layer"`` mode of one channel. ``sample``: the part of a
    lazy image the ``"layer"`` range is read from (a plane), so that it is never read whole.
    """
    if isinstance(intensity_range, str) and intensity_range == "layer":
        rng = layer_range(image, layout, hint=hint, sample=sample)
        if rng is None:
            return IntensityPlan(image, None, Intensity.from_range(image.dtype, None))
        span = float(rng[1] - rng[0]) if np.ndim(rng) == 1 else None
        padded = padded_range(rng)
        data = clip_far_outliers(image, padded, layout)
        return IntensityPlan(data, padded, Intensity.from_range(image.dtype, padded), span)
    rng = resolve_range(image, intensity_range, layout)
    clip = isinstance(intensity_range, str) and intensity_range == "minmax"
    return IntensityPlan(image, rng, Intensity.from_range(image.dtype, rng, clip))


def layer_range(image, layout: Layout, hint=None, sample=None):
    """The ``"layer"`` range before its margins: None for uint8 (the dtype's 0-255, as the core does); one
    robust range per channel where channels are restored one by one; one joint robust range for RGB; for
    one channel the robust range narrowed to ``hint`` (contrast limits) where that is narrower — so a hot
    pixel, which stretches napari's automatic limits to the data's min-max, cannot squeeze the signal,
    while limits the user narrowed are kept. Read from ``sample`` where given, else the whole image."""
    if np.dtype(image.dtype) == np.uint8:
        return None
    sample = image if sample is None else sample
    if layout.per_channel:
        return robust_range(sample, channel_axis=layout.channel_axis)
    if layout.channel_axis is not None:
        return robust_range(layout.colour_part(sample))
    low, high = robust_range(sample)
    if hint is None:
        return low, high
    c_low, c_high = (float(v) for v in hint)
    narrowed = (max(low, c_low), min(high, c_high))
    if narrowed[1] > narrowed[0]:
        return narrowed
    return (c_low, c_high) if c_high > c_low else (low, high)


def padded_range(rng, headroom: float = RANGE_HEADROOM):
    """``(low, high)`` or ``(C, 2)`` widened by ``headroom`` x its span on each side (None stays None)."""
    if rng is None:
        return None
    r = np.asarray(rng, dtype=np.float64)
    span = r[..., 1] - r[..., 0]
    out = np.stack([r[..., 0] - headroom * span, r[..., 1] + headroom * span], axis=-1)
    return (float(out[0]), float(out[1])) if out.ndim == 1 else out


def clip_outliers(data, rng, channel_axis: int | None, margin: float = OUTLIER_CLIP):
    """``data`` with values more than ``margin`` x the span beyond ``rng`` clipped to those bounds (numpy
    or dask, lazily); the same array when nothing lies that far out. ``channel_axis``: where the per-channel
    ranges of a ``(C, 2)`` ``rng`` apply."""
    r = np.asarray(rng, dtype=np.float64)
    span = r[..., 1] - r[..., 0]
    low, high = r[..., 0] - margin * span, r[..., 1] + margin * span
    dtype = np.dtype(data.dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        low = np.clip(np.ceil(low), info.min, info.max)
        high = np.clip(np.floor(high), info.min, info.max)
    if r.ndim == 2:
        shape = [1] * data.ndim
        shape[channel_axis] = -1
        low, high = low.reshape(shape), high.reshape(shape)
    low, high = np.asarray(low).astype(dtype), np.asarray(high).astype(dtype)
    if isinstance(data, np.ndarray):
        if not ((data < low).any() or (data > high).any()):
            return data
        return np.clip(data, low, high)
    import dask.array as da

    return da.clip(data, low, high)


def clip_far_outliers(image, rng, layout: Layout):
    """``image`` with values far outside ``rng`` (a padded "layer" range) clipped (:func:`clip_outliers`), per
    channel where channels are restored one by one; an alpha channel is left as it is."""
    if layout.per_channel:
        return clip_outliers(image, rng, layout.channel_axis)
    if not layout.alpha:
        return clip_outliers(image, rng, None)
    colour = layout.colour_part(image)
    clipped = clip_outliers(colour, rng, None)
    return image if clipped is colour else _with_alpha(image, clipped, layout)


def _with_alpha(image, colour, layout: Layout):
    """``colour`` with ``image``'s alpha channel (its last) put back after it (numpy or dask)."""
    index = [slice(None)] * image.ndim
    index[layout.channel_axis] = slice(-1, None)
    if isinstance(image, np.ndarray):
        return np.concatenate([colour, image[tuple(index)]], axis=layout.channel_axis)
    import dask.array as da

    return da.concatenate([colour, image[tuple(index)]], axis=layout.channel_axis)


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
        """The mapping ``restore`` uses for ``image`` (numpy or dask); see :func:`plan_intensity`."""
        layout = layout if layout is not None else Layout(None, image.ndim)
        return plan_intensity(image, layout, intensity_range).mapping

    @classmethod
    def from_range(cls, dtype, rng, clip: bool = False) -> Intensity:
        """The mapping of an explicit range (None: uint8 / 255, other types as they are)."""
        dt = np.dtype(dtype)
        if rng is None:
            return cls(dt, 0.0, 255.0) if dt == np.uint8 else cls(dt)
        rng = np.asarray(rng, dtype=np.float64)
        low, high = (float(rng[0]), float(rng[1])) if rng.ndim == 1 else (rng[:, 0].copy(), rng[:, 1].copy())
        high = np.where(np.asarray(high) > low, high, np.asarray(low) + 1.0)  # constant data: any span
        high = float(high) if np.ndim(high) == 0 else high
        return cls(dt, low, high, clip=clip)

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
    """The explicit range of the modes other than ``"layer"``: None (uint8 /255, floats as they are),
    ``(low, high)``, or a ``(C, 2)`` array with one range per colour channel (alpha excluded).

    None = the default (``"auto"`` for integer data other than uint8); ``"auto"`` = :func:`robust_range` of the
    whole array (per channel when channels are restored one by one, joint for RGB); ``"minmax"`` = the data's
    min and max; explicit ``(low, high)`` / per-channel ``[(low, high), ...]`` with finite ``high > low``.
    Works on numpy and dask arrays alike (dask: block by block), so both paths agree.
    """
    dt = np.dtype(image.dtype)
    if intensity_range is None:
        if dt == np.uint8 or not np.issubdtype(dt, np.integer):
            return None
        intensity_range = "auto"
    if isinstance(intensity_range, str):
        check_intensity_range(intensity_range)
        percentiles = (0.0, 100.0) if intensity_range == "minmax" else PERCENTILES
        axis = layout.channel_axis if layout.per_channel else None
        return robust_range(layout.colour_part(image), channel_axis=axis, percentiles=percentiles)
    return check_intensity_range(intensity_range, layout.colour_channels(image.shape))


_MODES_TEXT = "'auto', 'minmax' or (low, high) ('layer': as the plugin maps a layer)"


def check_intensity_range(intensity_range, channels: int | None = None):
    """Validate ``intensity_range``: a mode, or an explicit ``(low, high)`` / ``[(low, high), ...]`` (one per
    channel; ``channels`` None: any number). Returns the explicit range as floats (a mode as it is)."""
    if intensity_range is None:
        return None
    if isinstance(intensity_range, str):
        if intensity_range not in INTENSITY_MODES:
            raise OptionValueError("intensity_range", f"{{intensity_range}} must be None, {_MODES_TEXT}, got {{value}}",
                                   intensity_range)
        return intensity_range
    try:
        rng = np.asarray(intensity_range, dtype=np.float64)
    except (TypeError, ValueError):
        raise OptionTypeError("intensity_range", "{intensity_range} must be None, 'auto', 'minmax', 'layer' or "
                              "(low, high) numbers, got {value}", intensity_range) from None
    per_channel = f"one (low, high) per channel ({channels})" if channels else "one (low, high) per channel"
    if rng.shape != (2,) and not (rng.ndim == 2 and rng.shape[1] == 2 and rng.shape[0] == (channels or rng.shape[0])):
        raise OptionValueError("intensity_range", f"{{intensity_range}} must be (low, high) or {per_channel}, "
                               f"got shape {rng.shape}", intensity_range)
    if not np.isfinite(rng).all() or not (rng[..., 1] > rng[..., 0]).all():
        raise OptionValueError("intensity_range", "{intensity_range} needs finite values with high > low, "
                               "got {value}", intensity_range)
    return (float(rng[0]), float(rng[1])) if rng.ndim == 1 else rng
