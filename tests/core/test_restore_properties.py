"""Property-based test of ``restore``: for any shape, dtype, channel layout and options it either returns
the input's shape (x scale on the two spatial axes) and dtype and leaves the input untouched, or raises a
``ValueError``/``TypeError`` — never anything else."""

from __future__ import annotations

import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from napari_vdir import restore  # noqa: E402

MAX_ELEMENTS = 12_000  # with at most MAX_PLANES 2-D planes, one example takes milliseconds with the tiny models
MAX_PLANES = 24
DTYPES = [np.uint8, np.uint16, np.int16, np.float16, np.float32, np.float64]


@st.composite
def shapes(draw):
    """1-5 dimensions of sizes 1-70: the last two drawn first, the leading ones (stack or channel axes)
    within a budget of MAX_PLANES and MAX_ELEMENTS in all."""
    ndim = draw(st.integers(1, 5))
    last = [draw(st.integers(1, 70)) for _ in range(min(ndim, 2))]
    budget = min(MAX_PLANES * 4, MAX_ELEMENTS // math.prod(last))
    lead = []
    for _ in range(ndim - len(last)):
        n = draw(st.integers(1, max(1, min(70, budget))))
        lead.append(n)
        budget //= n
    return tuple(lead + last)


@st.composite
def images(draw):
    shape = draw(shapes())
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    kind = draw(st.sampled_from(["uniform", "constant", "hot pixel", "slightly outside"]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    if np.issubdtype(dtype, np.integer):
        top = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535, np.dtype(np.int16): 32767}[dtype]
        a = rng.integers(0, top // 8 + 1, shape) + top // 16
        if kind == "constant":
            a = np.full(shape, top // 3)
        elif kind == "hot pixel":
            a.reshape(-1)[0] = top
    else:
        a = rng.random(shape)
        if kind == "constant":
            a = np.full(shape, 0.4)
        elif kind == "hot pixel":
            a.reshape(-1)[0] = 3.5
        elif kind == "slightly outside":
            a = a * 1.4 - 0.2
    return np.ascontiguousarray(a.astype(dtype))


# phrases of errors raised deep inside numpy/torch: a ValueError saying one of these is a bug, not an answer
INTERNAL = ("broadcast", "cannot reshape", "out of bounds for", "invalid literal", "unsupported operand",
            "object of type", "positional argument", "Expected", "must match the size", "got an unexpected")

OPTIONS = st.fixed_dictionaries({
    "task": st.sampled_from([("denoise", None), ("jpeg", None), ("sr", 2)]),
    "model": st.sampled_from(["fit", "fit", "fit", 1, 3]),  # mostly the model the layout needs
    "channel_axis": st.sampled_from([None, None, False, -1, 0, 1, 2]),
    "alpha": st.sampled_from([None, None, True, False]),
    "ensemble": st.booleans(),
    "samples": st.sampled_from([1, 1, 2]),
    "strength": st.sampled_from([1.0, 1.0, 0.5, 1.7, float("nan")]),
    "intensity_range": st.sampled_from([None, None, "auto", "minmax", (0.0, 1000.0), (5.0, 5.0)]),
    "tile_size": st.sampled_from([None, None, 16, 24]),
    "seed": st.sampled_from([0, None, 3]),
    "details": st.booleans(),
})


def last_is_channel(shape, channel_axis) -> bool:
    ndim = len(shape)
    if channel_axis is None:
        return ndim >= 3 and shape[-1] in (2, 3, 4)
    return channel_axis is not False and -ndim <= channel_axis < ndim and channel_axis % ndim == ndim - 1


def colour_channels(shape, channel_axis, alpha) -> int:
    """The documented rule: 3 colour channels use the colour model, anything else the gray one."""
    ndim = len(shape)
    if channel_axis is False or ndim < 3:
        return 1
    axis = ndim - 1 if channel_axis is None else channel_axis
    if channel_axis is None and not last_is_channel(shape, None):
        return 1
    if not -ndim <= axis < ndim:
        return 1
    n = shape[axis]
    has_alpha = alpha if alpha is not None else (channel_axis is None and n == 4)
    return n - bool(has_alpha and n in (2, 4))


def expected_shape(shape, channel_axis, scale):
    """The documented rule: the two spatial axes are the last two, or the two before a last channel axis
    (a last axis of 2, 3 or 4 with channel_axis=None, or channel_axis naming the last axis)."""
    ndim = len(shape)
    spatial = (ndim - 3, ndim - 2) if last_is_channel(shape, channel_axis) else (ndim - 2, ndim - 1)
    return tuple(n * scale if i in spatial else n for i, n in enumerate(shape))


def _options(**changes):
    base = dict(task=("denoise", None), model="fit", channel_axis=None, alpha=None, ensemble=False, samples=1,
                strength=1.0, intensity_range=None, tile_size=None, seed=0, details=False)
    return {**base, **changes}


_RNG = np.random.default_rng(0)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(image=images(), options=OPTIONS)
# the cases the issue reported, always tried beside the random draws
@example(image=_RNG.random((16, 16)).astype(np.float32), options=_options(strength=float("nan")))
@example(image=_RNG.random((16, 16)).astype(np.float32), options=_options(strength=float("inf")))
@example(image=(_RNG.random((12, 10, 4)) * 255).astype(np.uint8), options=_options(task=("sr", 2), samples=2,
                                                                                    details=True))
@example(image=(_RNG.random((2, 12, 10, 2)) * 255).astype(np.uint8), options=_options(alpha=True, task=("sr", 2)))
@example(image=(_RNG.random((20, 18, 2)) * 4000).astype(np.uint16), options=_options(details=True))
@example(image=np.full((8, 8), 7, np.uint16), options=_options(intensity_range=(5.0, 5.0)))
@example(image=_RNG.random((9, 11)).astype(np.float16), options=_options(intensity_range="auto", seed=None))
def test_restore_returns_shape_and_dtype_or_a_clear_error(tiny_weights, image, options):
    task, scale = options.pop("task")
    channels = options.pop("model")
    if channels == "fit":
        channels = 3 if colour_channels(image.shape, options["channel_axis"], options["alpha"]) == 3 else 1
    model = tiny_weights[(task, scale or 1, channels)]
    before = image.copy()
    try:
        out = restore(image, task, scale=scale, model=model, **options)
    except (ValueError, TypeError) as err:
        message = str(err)
        assert message and "\n" not in message, message  # one line, saying what is wrong
        assert not any(phrase in message for phrase in INTERNAL), message  # ours, not numpy's or torch's
        np.testing.assert_array_equal(image, before)
        return
    result = out.image if options["details"] else out
    assert isinstance(result, np.ndarray)
    assert result.dtype == image.dtype
    assert result.shape == expected_shape(image.shape, options["channel_axis"], scale or 1)
    np.testing.assert_array_equal(image, before)  # the caller's array is never modified
    if np.issubdtype(image.dtype, np.floating) and image.dtype.itemsize >= 4:
        assert np.isfinite(result).all()
    if options["details"] and options["samples"] > 1:
        assert out.uncertainty.shape == result.shape and (out.uncertainty >= 0).all()


def test_shape_strategy_covers_the_range():
    """The drawn shapes reach 1 and 5 dimensions and sizes 1 and 70 (a guard on the strategy itself)."""
    seen = set()

    @settings(max_examples=400, deadline=None, database=None, derandomize=True)
    @given(shape=shapes())
    def collect(shape):
        assert 1 <= len(shape) <= 5 and all(1 <= n <= 70 for n in shape)
        assert math.prod(shape) <= MAX_ELEMENTS * 70
        seen.update({("ndim", len(shape))} | {("size", n) for n in shape if n in (1, 70)})

    collect()
    assert {("ndim", 1), ("ndim", 5), ("size", 1), ("size", 70)} <= seen
