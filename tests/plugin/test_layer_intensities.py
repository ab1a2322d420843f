"""Microscopy layers through ``napari_vdir.plugin.layers.restore_layer`` (what the Restore dock runs), without a
viewer: intensities of float, hot-pixel, high-dynamic-range and multichannel layers, the channel-axis
guess, display settings copied to the output, and lazy (dask over a memory map) stacks read plane by plane."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
from napari.layers import Image  # noqa: E402

from napari_vdir.plugin import layers as vl  # noqa: E402


def blobs(n=128, low=200.0, high=30000.0, seed=0):
    """A clean image: a flat background at ``low`` and a few Gaussian cells reaching up to ``high``."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    img = np.zeros((n, n))
    for _ in range(6):
        cy, cx, s = r.uniform(20, n - 20), r.uniform(20, n - 20), r.uniform(5, 12)
        img += r.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return low + (high - low) * np.clip(img, 0, 1)


def rms(a, b, mask=None):
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(np.sqrt(np.mean(d[mask] ** 2 if mask is not None else d ** 2)))


@pytest.fixture(scope="module")
def shipped_gray():
    from napari_vdir.core.models import shipped_models

    if "denoise-gray" not in shipped_models():
        pytest.skip("shipped denoise-gray model not present")
    return "denoise-gray"


def restored(layer, **kwargs):
    return vl.restore_layer(layer, "denoise", **kwargs).layers[0][0]


def test_hdr_channel_keeps_background_and_foreground_means(shipped_gray):
    """A GFP-like uint16 channel, 200-30000 counts with Poisson-Gaussian noise: the flat background and the
    bright cells keep their mean (within 1 % of the data range, the background also within 5 % of itself)."""
    rng = np.random.default_rng(0)
    clean = blobs()
    gain = 10.0  # counts per photon
    noisy = np.clip(rng.poisson(clean / gain) * gain + rng.normal(0, 20, clean.shape), 0, 65535).astype(np.uint16)
    out = restored(Image(noisy), model=shipped_gray)
    assert out.dtype == np.uint16 and out.shape == noisy.shape
    background, cells = clean < 300, clean > 15000
    data_range = float(np.ptp(clean))
    for region in (background, cells):
        assert abs(out[region].mean() - clean[region].mean()) < 0.01 * data_range
    assert abs(out[background].mean() - clean[background].mean()) < 0.05 * clean[background].mean()
    assert rms(out, clean) < 0.6 * rms(noisy, clean)


def test_a_hot_pixel_does_not_squeeze_the_signal(shipped_gray):
    """One saturated pixel (65535 in a 100-3000 image) neither moves the normalisation nor spoils the result."""
    rng = np.random.default_rng(1)
    clean = blobs(low=100, high=3000, seed=1)
    noisy = np.clip(rng.normal(clean, 70), 0, 65535).astype(np.uint16)
    hot = noisy.copy()
    hot[5, 5] = 65535
    others = np.ones(clean.shape, bool)
    others[5, 5] = False
    layer = Image(hot)
    assert layer.contrast_limits[1] == 65535  # napari's automatic limits are stretched by the pixel...
    low, high = vl.layer_intensity_range(vl.snapshot(layer), None)
    assert high < 4000  # ...the range the restoration uses is not
    error_hot = rms(restored(layer, model=shipped_gray), clean, others)
    error_plain = rms(restored(Image(noisy), model=shipped_gray), clean, others)
    assert error_hot < 1.3 * error_plain
    assert error_hot < 0.5 * rms(noisy, clean, others)


def test_user_narrowed_contrast_limits_are_the_range():
    data = np.random.default_rng(2).integers(100, 3000, size=(32, 32)).astype(np.uint16)
    layer = Image(data, contrast_limits=(500, 1500))
    assert vl.layer_intensity_range(vl.snapshot(layer), None) == (500.0, 1500.0)


def test_float_layer_outside_0_1(shipped_gray):
    """Deconvolved / background-subtracted floats (-197...1220) come out restored, not dim, and the estimate
    is in the layer's units."""
    rng = np.random.default_rng(2)
    clean = blobs(low=-197, high=1220, seed=2).astype(np.float32)
    noisy = (clean + rng.normal(0, 60, clean.shape)).astype(np.float32)
    result = vl.restore_layer(Image(noisy), "denoise", model=shipped_gray)
    out = result.layers[0][0]
    assert out.dtype == np.float32
    assert rms(out, clean) < 0.3 * rms(noisy, clean)
    assert abs(float(out.mean()) - float(clean.mean())) < 0.01 * float(np.ptp(clean))
    text = result.summary()
    assert "layer's units" in text and "0-255" not in text
    sigma = float(np.mean(result.estimate["noise_sigma_data_units"]))
    assert 40 < sigma < 80  # the true sigma is 60 in the layer's units


@pytest.mark.parametrize("layout", ["YXC", "CYX"])
def test_each_channel_is_normalised_on_its_own(shipped_gray, layout):
    """A dim (100-400) and a bright (1000-30000) channel in one layer, (Y, X, 2) or (C, Y, X) labelled 'c':
    the channel axis is found and the dim channel is restored as well as it would be alone."""
    rng = np.random.default_rng(3)
    clean = np.stack([blobs(low=100, high=400, seed=3), blobs(low=1000, high=30000, seed=4)], axis=-1)
    noisy = np.clip(rng.normal(clean, [15.0, 800.0]), 0, 65535).astype(np.uint16)
    if layout == "YXC":
        layer = Image(noisy, rgb=False)
    else:
        layer = Image(np.moveaxis(noisy, -1, 0), axis_labels=("c", "y", "x"))
    snap = vl.snapshot(layer)
    assert vl.guess_channel_axis(snap) == (2 if layout == "YXC" else 0)
    out = restored(layer, model=shipped_gray)
    assert out.shape == snap.data.shape
    if layout == "CYX":
        out = np.moveaxis(out, 0, -1)
    for c in range(2):
        assert rms(out[..., c], clean[..., c]) < 0.4 * rms(noisy[..., c], clean[..., c]), c
    np.testing.assert_allclose(vl.restore_layer(layer, "denoise", model=shipped_gray).layers[0][1]["scale"],
                               layer.scale)


@pytest.mark.parametrize("shape,labels,rgb,expected", [
    ((3, 32, 32), ("c", "y", "x"), False, 0),
    ((32, 3, 32, 32), ("z", "Ch", "y", "x"), False, 1),
    ((2, 32, 32), ("Channel", "y", "x"), False, 0),
    ((32, 32, 2), None, False, 2),
    ((32, 32, 4), None, False, 2),
    ((32, 32, 3), None, False, None),   # a gray stack 3 wide: napari said not RGB, no channel axis
    ((32, 32, 3), None, True, None),    # RGB: layer.rgb handles the colours
    ((5, 32, 32), ("z", "y", "x"), False, None),
    ((32, 2, 32), ("y", "c", "x"), False, None),  # a channel axis between the image axes cannot be one
])
def test_channel_axis_guess(shape, labels, rgb, expected):
    kwargs = {"axis_labels": labels} if labels else {}
    layer = Image(np.zeros(shape, dtype=np.uint16), rgb=rgb, **kwargs)
    assert vl.guess_channel_axis(vl.snapshot(layer)) == expected


def test_output_keeps_display_settings(tiny_weights):
    layer = Image(np.random.default_rng(4).random((2, 32, 32)).astype(np.float32), name="gfp", colormap="green",
                  blending="additive", opacity=0.7, gamma=0.8, contrast_limits=(0.1, 0.9), scale=(3, 0.5, 0.5),
                  translate=(1, 2, 3), units=("um", "um", "um"), axis_labels=("z", "y", "x"))
    meta = vl.restore_layer(layer, "denoise", model=tiny_weights[("denoise", 1, 1)]).layers[0][1]
    assert meta["blending"] == "additive" and meta["opacity"] == 0.7 and meta["gamma"] == 0.8
    assert meta["colormap"].name == "green" and meta["contrast_limits"] == (0.1, 0.9)
    assert meta["scale"] == (3, 0.5, 0.5) and meta["translate"] == (1, 2, 3)
    assert meta["axis_labels"] == ("z", "y", "x") and meta["units"] == ("micrometer",) * 3


class CountingArray:
    """An array-like over a memory map that records every plane it is asked for (dask's empty probes aside)."""

    def __init__(self, data):
        self.data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.planes_read: list[int] = []

    def __getitem__(self, key):
        part = np.asarray(self.data[key])
        if part.size:
            first = key[0] if isinstance(key, tuple) else key
            rows = range(*first.indices(self.shape[0])) if isinstance(first, slice) else [int(first)]
            self.planes_read.extend(rows)
        return part


@pytest.fixture
def memmap_stack(tmp_path):
    """A 20-plane uint16 stack on disk (memory-mapped), 512 x 512 per plane."""
    path = tmp_path / "stack.u16"
    stack = np.memmap(path, dtype=np.uint16, mode="w+", shape=(20, 512, 512))
    rng = np.random.default_rng(5)
    for z in range(20):
        stack[z] = rng.integers(200, 3000, size=(512, 512), dtype=np.uint16)
    stack.flush()
    return np.memmap(path, dtype=np.uint16, mode="r", shape=(20, 512, 512))


def test_lazy_stack_is_restored_plane_by_plane_within_a_memory_bound(tiny_weights, memmap_stack):
    """A dask layer over a memory-mapped 20-plane stack: the result is lazy; computing it plane by plane (as
    napari does when it shows planes) reads each plane once and never holds the stack in memory."""
    import tracemalloc

    import dask.array as da

    source = CountingArray(memmap_stack)
    layer = Image(da.from_array(source, chunks=(1, 512, 512)), name="lazy", contrast_limits=(200, 3000))
    source.planes_read.clear()  # napari looked at a plane for its thumbnail
    result = vl.restore_layer(layer, "denoise", model=tiny_weights[("denoise", 1, 1)], range_plane=(4,))
    out = result.layers[0][0]
    assert result.lazy and isinstance(out, da.Array) and out.shape == memmap_stack.shape
    assert source.planes_read == [4]  # only the plane the range is read from

    stack_bytes = memmap_stack.nbytes
    tracemalloc.start()
    try:
        for z in range(out.shape[0]):
            plane = out[z].compute(scheduler="synchronous")
            assert plane.shape == (512, 512) and plane.dtype == np.uint16
            del plane
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sorted(source.planes_read) == sorted([4, *range(20)])  # each plane once, after the range plane
    print(f"tracemalloc peak {peak / 1e6:.2f} MB for a {stack_bytes / 1e6:.1f} MB stack")
    assert peak < 0.75 * stack_bytes, (peak, stack_bytes)  # reading the stack whole alone takes stack_bytes


def test_current_plane_of_a_lazy_stack_reads_only_that_plane(tiny_weights, memmap_stack):
    import dask.array as da

    source = CountingArray(memmap_stack)
    layer = Image(da.from_array(source, chunks=(4, 256, 256)), name="lazy", contrast_limits=(200, 3000))
    source.planes_read.clear()
    result = vl.restore_layer(layer, "denoise", model=tiny_weights[("denoise", 1, 1)], plane=(7,))
    out, meta, _ = result.layers[0]
    assert isinstance(out, np.ndarray) and out.shape == (1, 512, 512)
    assert set(source.planes_read) == {7}
    assert meta["name"] == "lazy [denoise] (plane 7)"


def test_zarr_layer_restores_lazily(tiny_weights, tmp_path):
    zarr = pytest.importorskip("zarr")
    store = zarr.open_array(str(tmp_path / "stack.zarr"), mode="w", shape=(20, 64, 64), chunks=(1, 64, 64),
                            dtype="uint16")
    store[:] = np.random.default_rng(6).integers(200, 3000, size=(20, 64, 64), dtype=np.uint16)
    layer = Image(store, name="zarr", contrast_limits=(200, 3000))
    result = vl.restore_layer(layer, "denoise", model=tiny_weights[("denoise", 1, 1)])
    import dask.array as da

    out = result.layers[0][0]
    assert result.lazy and isinstance(out, da.Array) and out.chunks[0] == (1,) * 20
    plane = vl.restore_layer(layer, "denoise", model=tiny_weights[("denoise", 1, 1)], plane=(10,)).layers[0][0]
    np.testing.assert_array_equal(np.asarray(out[10]), plane[0])


@pytest.mark.parametrize("lazy", [False, True])
def test_three_channels_are_not_taken_for_rgb(tiny_weights, lazy):
    """(C=3, Y, X) fluorescence labelled 'c': each channel goes through the gray model on its own range
    (the colour model would mix them); the same as restoring each channel alone."""
    import dask.array as da

    rng = np.random.default_rng(7)
    data = np.stack([rng.integers(100, 400, (32, 32)), rng.integers(1000, 3000, (32, 32)),
                     rng.integers(5000, 30000, (32, 32))]).astype(np.uint16)
    weights = tiny_weights[("denoise", 1, 1)]  # a gray model: the colour path would refuse it
    layer = Image(da.from_array(data) if lazy else data, axis_labels=("c", "y", "x"))
    result = vl.restore_layer(layer, "denoise", model=weights, latent=True)
    out = np.asarray(result.layers[0][0])
    assert out.shape == data.shape
    for c in range(3):
        alone = vl.restore_layer(Image(data[c]), "denoise", model=weights).layers[0][0]
        np.testing.assert_array_equal(out[c], alone)
    if not lazy:
        assert result.layers[1][0].shape == (4, 3, 8, 8)  # latent: (4, channels, h/4, w/4)
