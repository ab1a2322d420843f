"""restore(): layouts, dtypes, tiling, ensemble, sampling, cancel and bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import napari_vdir
from napari_vdir import RestorationCancelled, restore


@pytest.fixture
def denoise_gray(tiny_weights):
    return tiny_weights[("denoise", 1, 1)]


@pytest.fixture
def denoise_rgb(tiny_weights):
    return tiny_weights[("denoise", 1, 3)]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_gray_dtype_and_shape_kept(denoise_gray, rng, dtype):
    if np.issubdtype(dtype, np.integer):
        image = rng.integers(100, 3000 if dtype == np.uint16 else 200, (37, 45)).astype(dtype)
    else:
        image = rng.random((37, 45)).astype(dtype)
    out = restore(image, "denoise", model=denoise_gray)
    assert out.shape == image.shape and out.dtype == image.dtype


def test_uint16_keeps_intensity_range(denoise_gray, rng):
    image = rng.integers(1000, 1400, (40, 40)).astype(np.uint16)
    out = restore(image, "denoise", model=denoise_gray)  # default "auto": robust range, exact inverse
    assert abs(float(out.mean()) - float(image.mean())) < 100
    assert 500 < out.min() and out.max() < 2000  # mapped back to the data's scale, not to 0-65535
    clipped = restore(image, "denoise", model=denoise_gray, intensity_range="minmax")
    assert clipped.min() >= image.min() and clipped.max() <= image.max()


def test_rgb_and_channel_axis(denoise_rgb, rng):
    rgb = rng.random((32, 40, 3)).astype(np.float32)
    out = restore(rgb, "denoise", model=denoise_rgb)
    assert out.shape == rgb.shape
    # the same data with channels first gives the same result
    first = restore(np.moveaxis(rgb, -1, 0), "denoise", model=denoise_rgb, channel_axis=0)
    np.testing.assert_allclose(np.moveaxis(first, 0, -1), out, atol=1e-6)


def test_stack_restored_plane_by_plane(denoise_gray, rng):
    stack = rng.random((3, 2, 24, 28)).astype(np.float32)
    out = restore(stack, "denoise", model=denoise_gray, precision="float32")
    assert out.shape == stack.shape
    single = restore(stack[1, 0], "denoise", model=denoise_gray, precision="float32")
    np.testing.assert_allclose(out[1, 0], single, atol=1e-6)


def test_uint16_stack_needs_no_float_copy_of_the_whole_result(denoise_gray, rng):
    """Planes go back to uint16 one at a time: restoring a stack allocates about one output's
    worth of memory (plus per-plane scratch), not a float32 result twice the input's size."""
    import tracemalloc

    stack = rng.integers(100, 4000, (32, 128, 128)).astype(np.uint16)
    restore(stack[:1], "denoise", model=denoise_gray)  # load and cache the model first
    tracemalloc.start()
    try:
        out = restore(stack, "denoise", model=denoise_gray)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.dtype == np.uint16 and out.shape == stack.shape
    assert peak < 1.5 * stack.nbytes, f"peak {peak / stack.nbytes:.2f}x the input's size"


def test_multichannel_microscopy_each_channel_gray(denoise_gray, rng):
    image = rng.integers(0, 4000, (5, 2, 32, 32)).astype(np.uint16)  # Z, C, Y, X
    out = restore(image, "denoise", model=denoise_gray, channel_axis=1, details=True)
    assert out.image.shape == image.shape and out.image.dtype == np.uint16
    assert out.latent.shape == (5, 2, 4, 8, 8)


@pytest.mark.parametrize("scale", [2, 4])
def test_sr_shapes(tiny_weights, rng, scale):
    rgb = rng.random((21, 18, 3)).astype(np.float32)
    out = restore(rgb, "sr", scale=scale, model=tiny_weights[("sr", scale, 3)])
    assert out.shape == (21 * scale, 18 * scale, 3)
    gray = rng.integers(0, 255, (2, 13, 17)).astype(np.uint8)
    out = restore(gray, "sr", scale=scale, model=tiny_weights[("sr", scale, 1)])
    assert out.shape == (2, 13 * scale, 17 * scale) and out.dtype == np.uint8


@pytest.mark.parametrize("task,scale", [("denoise", 1), ("sr", 2), ("jpeg", 1)])
def test_tiled_matches_whole(tiny_weights, rng, task, scale):
    image = rng.random((150, 203, 3)).astype(np.float32)
    model = tiny_weights[(task, scale, 3)]
    whole = restore(image, task, scale=scale if task == "sr" else None, model=model, precision="float32",
                    details=True)
    tiled = restore(image, task, scale=scale if task == "sr" else None, model=model, precision="float32",
                    tile_size=48, details=True)
    assert np.abs(whole.image - tiled.image).max() < 1e-3
    assert np.abs(whole.latent - tiled.latent).max() < 1e-3


def test_tiled_matches_whole_paper_size_model(rng):
    """The shipped (paper-size) network has a 100+ pixel receptive field: tiles must cover it."""
    image = rng.random((260, 300, 3)).astype(np.float32)
    whole = restore(image, "denoise", precision="float32")
    tiled = restore(image, "denoise", precision="float32", tile_size=128)
    assert np.abs(whole - tiled).max() < 1e-3


def test_progress_and_cancel(denoise_rgb, rng):
    image = rng.random((96, 96, 3)).astype(np.float32)
    calls = []
    restore(image, "denoise", model=denoise_rgb, tile_size=32, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (9, 9) and [d for d, _ in calls] == list(range(1, 10))

    event = threading.Event()

    def stop_after_two(done, total):
        if done == 2:
            event.set()

    seen = []
    with pytest.raises(RestorationCancelled):
        restore(image, "denoise", model=denoise_rgb, tile_size=32, cancel=event,
                progress=lambda d, t: (seen.append(d), stop_after_two(d, t)))
    assert max(seen) == 2  # stopped within one tile


def test_ensemble_and_samples(denoise_rgb, rng):
    image = rng.random((32, 32, 3)).astype(np.float32)
    plain = restore(image, "denoise", model=denoise_rgb, precision="float32")
    again = restore(image, "denoise", model=denoise_rgb, precision="float32")
    np.testing.assert_array_equal(plain, again)  # c = mu: deterministic
    ens = restore(image, "denoise", model=denoise_rgb, precision="float32", ensemble=True)
    assert ens.shape == image.shape and not np.allclose(ens, plain)
    res = restore(image, "denoise", model=denoise_rgb, samples=3, details=True)
    assert res.uncertainty.shape == image.shape and (res.uncertainty >= 0).all()
    assert res.uncertainty.max() > 0


def test_details_estimate_and_latent(denoise_rgb, rng):
    image = rng.random((2, 30, 42, 3)).astype(np.float32)
    res = restore(image, "denoise", model=denoise_rgb, details=True)
    assert res.latent.shape == (2, 4, 8, 11)
    assert res.estimate["noise_sigma"].shape == (2,)
    assert res.device == "CPU" and res.model.task == "denoise"


def test_strength_neutral_is_plain(denoise_rgb, rng):
    image = rng.random((40, 40, 3)).astype(np.float32)
    plain = restore(image, "denoise", model=denoise_rgb)
    neutral = restore(image, "denoise", model=denoise_rgb, strength=1.0)
    np.testing.assert_array_equal(plain, neutral)
    assert not np.allclose(restore(image, "denoise", model=denoise_rgb, strength=2.0), plain)


def test_input_never_modified(denoise_rgb, rng):
    image = rng.random((32, 32, 3)).astype(np.float32)
    before = image.copy()
    restore(image, "denoise", model=denoise_rgb, ensemble=True)
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("bad,error,match", [
    (np.zeros((0, 10), np.float32), ValueError, "empty"),
    (np.zeros(10, np.float32), ValueError, "2-D"),
    (np.full((8, 8), np.nan, np.float32), ValueError, "NaN"),
    (np.full((8, 8), np.inf, np.float32), ValueError, "NaN or inf"),
    (np.zeros((8, 8), bool), TypeError, "dtype"),
    (np.zeros((8, 8), np.complex64), TypeError, "dtype"),
    (-np.ones((8, 8), np.int16), ValueError, "negative"),
    (np.array([["a"]]), TypeError, "dtype"),
])
def test_bad_input_clear_error(denoise_gray, bad, error, match):
    with pytest.raises(error, match=match):
        restore(bad, "denoise", model=denoise_gray)


def test_bad_task_scale_model(denoise_gray, rng):
    image = rng.random((16, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="unknown task"):
        restore(image, "deblur")
    with pytest.raises(ValueError, match="scale=2 or scale=4"):
        restore(image, "sr", scale=3)
    with pytest.raises(ValueError, match="only applies"):
        restore(image, "denoise", scale=2)
    with pytest.raises(napari_vdir.WeightsError, match="no shipped model named"):
        restore(image, "denoise", model="no-such-model")
    with pytest.raises(ValueError, match="cannot do"):
        restore(image, "jpeg", model=denoise_gray)


def test_float_far_outside_unit_range_warns(denoise_gray):
    with pytest.warns(UserWarning, match="rescale"):
        restore(np.full((16, 16), 500.0, np.float32), "denoise", model=denoise_gray)


def test_channel_axis_false_means_gray_stack(denoise_gray, rng):
    stack = rng.random((2, 16, 3)).astype(np.float32)  # Z, Y, X with X = 3 — not RGB
    out = restore(stack, "denoise", model=denoise_gray, channel_axis=False, details=True)
    assert out.image.shape == stack.shape and out.latent.shape == (2, 4, 4, 1)


@pytest.fixture(scope="module")
def deep_rgb(tmp_path_factory):
    """A small random RGB denoiser with 4 RIR groups, so "a quarter of the way" is a block boundary."""
    import torch

    from napari_vdir.nets import VDIR, ArchConfig
    from napari_vdir.weights import ModelInfo, save_weights

    torch.manual_seed(0)
    cfg = ArchConfig(channels=3, width=8, rir_blocks=4, res_blocks=2, encoder_width=8, estimate_dims=1)
    path = tmp_path_factory.mktemp("deep") / "deep.safetensors"
    return save_weights(path, VDIR(cfg), ModelInfo(name="deep", task="denoise", arch=cfg), half=False)


def _net(path):
    from napari_vdir.inference import cached_model

    return cached_model(str(path), "cpu", path.stat().st_mtime)[0]


def test_cancel_a_quarter_into_a_single_pass_plane(deep_rgb, rng):
    """A 1024² RGB plane runs as one tile; a cancel set when a quarter of the network has run stops
    that pass within one block: the rest of the trunk and the tail never run, nothing is returned."""
    import time

    from napari_vdir.inference import plan_tiles, tile_margin

    net = _net(deep_rgb)
    image = rng.random((1024, 1024, 3)).astype(np.float32)
    assert len(plan_tiles(1024, 1024, None, tile_margin(net))) == 1
    groups = net.restorer.trunk.groups
    ran, times, armed = [], {}, []
    event = threading.Event()

    def quarter(module, args):  # the second of four RIR groups starts: a quarter of the trunk is done
        if armed:
            times["set"] = time.perf_counter()
            event.set()

    handles = [groups[1].register_forward_pre_hook(quarter)]
    for name, module in (("group 2", groups[2]), ("group 3", groups[3]), ("tail", net.restorer.tail)):
        handles.append(module.register_forward_hook(lambda m, a, o, name=name: ran.append(name)))
    try:
        start = time.perf_counter()
        restore(image, "denoise", model=deep_rgb)
        full = time.perf_counter() - start
        assert ran == ["group 2", "group 3", "tail"]  # without a cancel the hooks see a whole pass
        ran.clear()
        armed.append(True)
        progress = []
        with pytest.raises(RestorationCancelled):
            restore(image, "denoise", model=deep_rgb, cancel=event, progress=lambda d, t: progress.append(d))
        stopped = time.perf_counter() - times["set"]
    finally:
        for h in handles:
            h.remove()
    assert ran == [] and progress == []
    assert stopped < 0.5 * full, (stopped, full)


def test_cancel_checks_do_not_change_the_result(deep_rgb, rng):
    image = rng.random((64, 72, 3)).astype(np.float32)
    plain = restore(image, "denoise", model=deep_rgb, precision="float32")
    watched = restore(image, "denoise", model=deep_rgb, precision="float32", cancel=threading.Event())
    np.testing.assert_array_equal(plain, watched)
