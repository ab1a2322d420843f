"""restore() on dask arrays: lazy, block by block, and equal to the numpy result."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vdir import restore
from napari_vdir.core.lazy import spatial_chunks

da = pytest.importorskip("dask.array")

EXACT = dict(precision="float32", device="cpu")


def _both(image, chunks, task, model, **kwargs):
    """(numpy result, dask result computed) for the same data."""
    expected = restore(image, task, model=model, **EXACT, **kwargs)
    lazy = restore(da.from_array(image, chunks=chunks), task, model=model, **EXACT, **kwargs)
    assert isinstance(lazy, da.Array)
    return expected, lazy.compute(scheduler="threads")


class CountingArray:
    """An array-like that counts how often its data is read (dask's empty meta probes aside)."""

    def __init__(self, data):
        self.data, self.reads = data, 0
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, key):
        part = self.data[key]
        self.reads += part.size > 0
        return part


def test_nothing_is_computed_until_compute(tiny_weights, rng):
    source = CountingArray(rng.random((72, 80, 3), dtype=np.float32))
    lazy = restore(da.from_array(source, chunks=(40, 40, 3)), "denoise",
                   model=tiny_weights[("denoise", 1, 3)], **EXACT)
    assert isinstance(lazy, da.Array)
    assert lazy.shape == (72, 80, 3) and lazy.dtype == np.float32
    assert source.reads == 0
    lazy.compute()
    assert source.reads > 0


def test_denoise_rgb_equals_numpy(tiny_weights, rng):
    image = rng.random((90, 131, 3), dtype=np.float32)
    expected, got = _both(image, (37, 41, 3), "denoise", tiny_weights[("denoise", 1, 3)])
    np.testing.assert_allclose(got, expected, atol=1e-3)


@pytest.mark.parametrize("scale", [2])
def test_sr_equals_numpy(tiny_weights, rng, scale):
    image = (rng.random((70, 97, 3)) * 255).astype(np.uint8)
    expected, got = _both(image, (36, 33, 3), "sr", tiny_weights[("sr", scale, 3)], scale=scale)
    assert got.shape == (70 * scale, 97 * scale, 3) and got.dtype == np.uint8
    lazy = restore(da.from_array(image, chunks=(36, 33, 3)), "sr", scale=scale, model=tiny_weights[("sr", scale, 3)])
    assert lazy.chunks[:2] == ((72, 68), (66, 66, 62))  # the input chunks (36, 33), x2
    assert np.abs(got.astype(int) - expected).max() <= 1  # uint8 rounding of ~1e-6 float differences


def test_uint16_stack_with_leading_axis(tiny_weights, rng):
    """Per-block normalisation must use the global (robust) range, or blocks would disagree."""
    stack = (rng.random((3, 75, 66)) * 3000 + 500).astype(np.uint16)
    stack[1, :10, :10] = 60000  # one bright corner: a block-local range would differ from the global one
    expected, got = _both(stack, (2, 29, 30), "denoise", tiny_weights[("denoise", 1, 1)])
    assert got.dtype == np.uint16 and got.shape == stack.shape
    assert np.abs(got.astype(np.int64) - expected).max() <= 1


def test_channel_axis_first_and_ensemble(tiny_weights, rng):
    image = rng.random((2, 3, 64, 72), dtype=np.float32)  # (Z, C, H, W)
    expected, got = _both(image, (1, 1, 36, 36), "denoise", tiny_weights[("denoise", 1, 3)],
                          channel_axis=1, ensemble=True)
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_spatial_chunks_are_multiples_of_4():
    assert spatial_chunks(100, 37, 8) == (36, 36, 28)
    assert spatial_chunks(100, 37, 32) == (36, 64)       # a last chunk under the margin is merged
    assert spatial_chunks(30, 64, 32) == (30,)
    chunks = spatial_chunks(1000, 250, 32)
    assert all(c % 4 == 0 for c in chunks[:-1]) and sum(chunks) == 1000


def test_wrong_model_fails_before_compute(tiny_weights, rng):
    lazy_image = da.from_array(rng.random((40, 40, 3), dtype=np.float32), chunks=20)
    with pytest.raises(ValueError, match="cannot do"):
        restore(lazy_image, "jpeg", model=tiny_weights[("denoise", 1, 3)])


def test_zarr_backed(tiny_weights, rng, tmp_path):
    zarr = pytest.importorskip("zarr")
    image = rng.random((64, 88), dtype=np.float32)
    z = zarr.open_array(str(tmp_path / "img.zarr"), mode="w", shape=image.shape, chunks=(34, 46), dtype="f4")
    z[:] = image
    model = tiny_weights[("denoise", 1, 1)]
    lazy = restore(da.from_zarr(str(tmp_path / "img.zarr")), "denoise", model=model, **EXACT)
    assert lazy.chunks == ((34, 30), (46, 42))  # the input's chunking comes back, so to_zarr accepts it
    lazy.to_zarr(str(tmp_path / "out.zarr"))
    got = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[:]
    np.testing.assert_allclose(got, restore(image, "denoise", model=model, **EXACT), atol=1e-3)


def test_dask_distributed_processes(tiny_weights, rng):
    """Blocks run in worker processes: the task function and its arguments must pickle."""
    distributed = pytest.importorskip("distributed")
    image = rng.random((64, 72, 3), dtype=np.float32)
    model = tiny_weights[("denoise", 1, 3)]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        got = client.compute(restore(da.from_array(image, chunks=36), "denoise", model=model, **EXACT)).result()
    np.testing.assert_allclose(got, restore(image, "denoise", model=model, **EXACT), atol=1e-3)


def test_global_range_equals_numpy_range(rng):
    """The dask path computes the "auto" range block by block, exactly as for the numpy array."""
    from napari_vdir.core.intensity import plan_intensity, robust_range
    from napari_vdir.core.layout import Layout

    def global_intensity_range(array):  # the range restore maps the whole array by
        return plan_intensity(array, Layout.of(array.shape)).intensity_range

    stack = rng.integers(100, 3000, (4, 50, 60)).astype(np.uint16)
    stack[2, 3, 3] = 65535  # a hot pixel
    lazy = da.from_array(stack, chunks=(1, 25, 31))
    assert global_intensity_range(lazy) == robust_range(stack) == global_intensity_range(stack)
    floats = rng.random((40, 30, 2)) * 500
    np.testing.assert_array_equal(robust_range(da.from_array(floats, chunks=(13, 7, 1)), channel_axis=-1),
                                  robust_range(floats, channel_axis=-1))
    assert global_intensity_range(da.from_array(floats, chunks=10)) is None  # floats as they are by default


def test_hot_pixel_uint16_equals_numpy(tiny_weights, rng):
    ramp = np.linspace(100, 3000, 64)  # dim left, bright right: a block's own range would differ
    stack = (ramp + rng.normal(0, 50, (2, 60, 64))).clip(0).astype(np.uint16)
    stack[1, 5, 5] = 65535
    expected, got = _both(stack, (1, 32, 32), "denoise", tiny_weights[("denoise", 1, 1)])
    assert np.abs(got.astype(np.int64) - expected).max() <= 1


def test_two_channel_and_rgba_equal_numpy(tiny_weights, rng):
    two = np.stack([rng.integers(100, 400, (48, 52)), rng.integers(2000, 30000, (48, 52))], -1).astype(np.uint16)
    expected, got = _both(two, (24, 26, 2), "denoise", tiny_weights[("denoise", 1, 1)])
    assert np.abs(got.astype(np.int64) - expected).max() <= 1
    rgba = (rng.random((40, 44, 4)) * 255).astype(np.uint8)
    expected, got = _both(rgba, (20, 22, 4), "denoise", tiny_weights[("denoise", 1, 3)])
    np.testing.assert_array_equal(got[..., 3], rgba[..., 3])
    assert np.abs(got.astype(np.int64) - expected).max() <= 1
