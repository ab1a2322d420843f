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
    from napari_vdir.core.devices import device_label, select_device

    assert res.device == device_label(select_device("auto")) and res.model.task == "denoise"


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


def test_cancel_a_quarter_into_a_single_pass_plane(deep_rgb, rng):
    """A 1024² RGB plane runs as one tile; a cancel set when a quarter of the network has run stops
    that pass within one block: the rest of the trunk and the tail never run, nothing is returned."""
    import time

    from napari_vdir.core.inference import cached_model, plan_tiles, tile_margin

    net = cached_model(str(deep_rgb), "cpu", deep_rgb.stat().st_mtime)[0]
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
        restore(image, "denoise", model=deep_rgb, backend="torch")  # the hooks watch the torch modules
        full = time.perf_counter() - start
        assert ran == ["group 2", "group 3", "tail"]  # without a cancel the hooks see a whole pass
        ran.clear()
        armed.append(True)
        progress = []
        with pytest.raises(RestorationCancelled):
            restore(image, "denoise", model=deep_rgb, cancel=event, progress=lambda d, t: progress.append(d),
                    backend="torch")
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


# ----------------------------------------------------------------------------- RGBA and 2-channel layouts

@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_rgba_restores_rgb_and_keeps_alpha(denoise_rgb, rng, dtype):
    rgba = rng.random((30, 34, 4))
    rgba = (rgba * 255).astype(dtype) if dtype == np.uint8 else rgba.astype(dtype)
    before = rgba.copy()
    out = restore(rgba, "denoise", model=denoise_rgb)
    assert out.shape == rgba.shape and out.dtype == rgba.dtype
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])  # alpha unchanged
    np.testing.assert_array_equal(out[..., :3], restore(rgba[..., :3], "denoise", model=denoise_rgb))
    np.testing.assert_array_equal(rgba, before)


def test_rgba_super_resolution_repeats_alpha(tiny_weights, rng):
    rgba = (rng.random((2, 12, 10, 4)) * 255).astype(np.uint8)  # a stack of RGBA frames
    res = restore(rgba, "sr", scale=2, model=tiny_weights[("sr", 2, 3)], samples=2, details=True)
    assert res.image.shape == (2, 24, 20, 4)
    np.testing.assert_array_equal(res.image[..., 3], rgba[..., 3].repeat(2, axis=-2).repeat(2, axis=-1))
    assert (res.uncertainty[..., 3] == 0).all() and res.uncertainty[..., :3].max() > 0


def test_two_channel_last_axis_is_restored_channel_by_channel(denoise_gray, rng):
    image = np.stack([rng.integers(100, 400, (32, 36)), rng.integers(2000, 30000, (32, 36))], -1).astype(np.uint16)
    out = restore(image, "denoise", model=denoise_gray, details=True)
    assert out.image.shape == image.shape and out.latent.shape == (2, 4, 8, 9)
    for ch in range(2):  # each channel is normalised by its own range: as if restored alone
        np.testing.assert_array_equal(out.image[..., ch], restore(image[..., ch], "denoise", model=denoise_gray))
    assert abs(float(out.image[..., 0].mean()) - float(image[..., 0].mean())) < 60  # the dim channel stays dim


def test_alpha_option(denoise_gray, rng):
    la = (rng.random((20, 24, 2)) * 255).astype(np.uint8)  # gray + alpha
    out = restore(la, "denoise", model=denoise_gray, alpha=True)
    np.testing.assert_array_equal(out[..., 1], la[..., 1])
    np.testing.assert_array_equal(out[..., 0], restore(la[..., 0], "denoise", model=denoise_gray))
    four = (rng.random((20, 24, 4)) * 255).astype(np.uint8)
    channels = restore(four, "denoise", model=denoise_gray, alpha=False)  # four gray channels, no alpha
    assert not np.array_equal(channels[..., 3], four[..., 3])
    np.testing.assert_array_equal(channels, restore(four, "denoise", model=denoise_gray, channel_axis=-1))
    with pytest.raises(ValueError, match="gray model; it cannot restore a colour image"):
        restore(four, "denoise", model=denoise_gray)  # a last axis of 4 is RGBA by default


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(alpha=True, channel_axis=False), ValueError, "needs a channel axis; give channel_axis"),
    (dict(alpha=True), ValueError, "needs 2 .* or 4 .* channels on channel_axis, got 3"),
    (dict(alpha="yes"), TypeError, "alpha must be None, True or False"),
    (dict(channel_axis=1.5), TypeError, "channel_axis must be None, False or an axis number"),
    (dict(channel_axis=1), ValueError, "channel_axis=1: the channel axis must be the last"),
])
def test_layout_errors_name_channel_axis(denoise_rgb, kwargs, error, match):
    with pytest.raises(error, match=match):
        restore(np.zeros((16, 16, 3), np.float32), "denoise", model=denoise_rgb, **kwargs)


def test_gray_image_without_channel_axis_refuses_alpha(denoise_gray):
    with pytest.raises(ValueError, match="alpha=True needs a channel axis.*give channel_axis"):
        restore(np.zeros((16, 16), np.float32), "denoise", model=denoise_gray, alpha=True)


# ----------------------------------------------------------------------------- option validation

@pytest.mark.parametrize("option,value,error,match", [
    ("strength", float("nan"), ValueError, "strength must be a finite number from 0 to 4"),
    ("strength", float("inf"), ValueError, "strength must be a finite number"),
    ("strength", -1.0, ValueError, "from 0 to 4"),
    ("strength", 4.5, ValueError, "from 0 to 4"),
    ("strength", "2", TypeError, "strength must be a number"),
    ("strength", True, TypeError, "strength must be a number"),
    ("intensity_range", (5, 5), ValueError, "high > low"),
    ("intensity_range", (9, 1), ValueError, "high > low"),
    ("intensity_range", (float("nan"), 1), ValueError, "finite values"),
    ("intensity_range", (0, float("inf")), ValueError, "finite values"),
    ("intensity_range", "robust", ValueError, "'auto', 'minmax' or \\(low, high\\)"),
    ("intensity_range", (1, 2, 3), ValueError, "\\(low, high\\) or one \\(low, high\\) per channel"),
    ("intensity_range", ("a", "b"), TypeError, "\\(low, high\\) numbers"),
    ("samples", 2.5, TypeError, "samples=2.5: samples must be a whole number"),
    ("samples", 0, ValueError, "samples must be at least 1"),
    ("samples", True, TypeError, "whole number"),
    ("seed", 2.5, TypeError, "seed must be a whole number"),
    ("seed", -1, ValueError, "seed must be None \\(random\\) or a whole number"),
    ("seed", "1", TypeError, "seed must be a whole number"),
    ("device", "bogus", ValueError, "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'bogus'"),
    ("device", 3.5, TypeError, "device must be"),
    ("device", "meta", ValueError, "device must be"),
    ("tile_size", 8, ValueError, "at least 16"),
    ("tile_size", 64.0, TypeError, "tile_size must be a whole number"),
    ("ensemble", "yes", TypeError, "ensemble must be True or False"),
    ("precision", "fp8", ValueError, "precision must be"),
    ("progress", 5, TypeError, "progress must be None or a callable"),
    ("cancel", 5, TypeError, "cancel must be None, a threading.Event or a callable"),
])
def test_bad_options_refused_with_what_is_allowed(denoise_gray, rng, option, value, error, match):
    image = rng.integers(0, 4000, (16, 16)).astype(np.uint16)
    before = image.copy()
    with pytest.raises(error, match=match) as err:
        restore(image, "denoise", model=denoise_gray, **{option: value})
    assert "\n" not in str(err.value)
    np.testing.assert_array_equal(image, before)


def test_cuda_device_without_a_gpu_is_a_clear_error(denoise_gray):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU is available; use 'auto' or 'cpu'"):
        restore(np.zeros((16, 16), np.float32), "denoise", model=denoise_gray, device="cuda:0")


def test_seed_none_draws_fresh_samples_and_ints_repeat(denoise_gray, rng):
    image = rng.random((24, 24)).astype(np.float32)
    a = restore(image, "denoise", model=denoise_gray, samples=2, seed=None)
    b = restore(image, "denoise", model=denoise_gray, samples=2, seed=None)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(restore(image, "denoise", model=denoise_gray, samples=2, seed=np.int64(7)),
                                  restore(image, "denoise", model=denoise_gray, samples=2, seed=7))


def test_strength_at_the_limits_and_per_channel_range_accepted(denoise_gray, rng):
    image = rng.integers(0, 4000, (16, 16, 2)).astype(np.uint16)
    for strength in (0, 4):
        assert restore(image, "denoise", model=denoise_gray, strength=strength).shape == image.shape
    out = restore(image, "denoise", model=denoise_gray, intensity_range=[(0, 4000), (0, 8000)])
    assert out.shape == image.shape
    with pytest.raises(ValueError, match="per channel \\(2\\)"):
        restore(image, "denoise", model=denoise_gray, intensity_range=[(0, 1)] * 3)


# ----------------------------------------------------------------------------- integer extremes

def test_int64_beyond_float64_is_refused(denoise_gray):
    image = np.full((16, 16), 2 ** 62, dtype=np.int64)
    image[0, 0] = 2 ** 63 - 1
    with pytest.raises(ValueError, match="above 2\\^53 cannot be restored exactly"):
        restore(image, "denoise", model=denoise_gray)
    with pytest.raises(ValueError, match="above 2\\^53"):
        restore(image.astype(np.uint64), "denoise", model=denoise_gray)


@pytest.mark.parametrize("dtype,top", [(np.int64, 2 ** 53), (np.uint64, 2 ** 53), (np.int32, 2 ** 31 - 1),
                                       (np.uint32, 2 ** 32 - 1), (np.uint16, 65535)])
def test_integer_extremes_never_wrap(denoise_gray, rng, dtype, top):
    """Values at the top of the range come back near it, never wrapped to the other end (int64 used to
    return -2^63)."""
    image = (top - rng.integers(0, 1000, (24, 24))).astype(dtype)
    for mode in (None, "minmax"):
        out = restore(image, "denoise", model=denoise_gray, intensity_range=mode)
        assert out.dtype == dtype
        # "auto" keeps values beyond the range (up to the dtype's limit), "minmax" clips to the data's
        assert int(out.min()) > top - 10_000 and int(out.max()) <= (top if mode else top + 10_000)
        assert int(out.max()) <= np.iinfo(dtype).max


def test_intensity_mapping_is_exact_for_wide_integers():
    from napari_vdir.core.intensity import Intensity

    image = np.array([[0, 1, 2 ** 40 + 3, 2 ** 53]], dtype=np.int64)
    m = Intensity.of(image, (0, 2 ** 53))
    unit = image.astype(np.float64) / 2 ** 53  # what an exact float64 model output would be
    np.testing.assert_array_equal(m.inverse(unit), image)  # the way back is float64, not float32
    assert m.forward(image).dtype == np.float32


# ----------------------------------------------------------------------------- robust "auto" intensity range

def test_robust_range_ignores_one_hot_pixel_and_matches_percentiles(rng):
    from napari_vdir.core.intensity import robust_range

    image = rng.integers(100, 3000, (64, 64)).astype(np.uint16)
    hot = image.copy()
    hot[5, 7] = 65535
    (lo, hi), (lo_hot, hi_hot) = robust_range(image), robust_range(hot)
    assert abs(lo_hot - lo) <= 2 and abs(hi_hot - hi) <= 2  # one rank at most, not the hot pixel's value
    flat = image.astype(np.float64).ravel()
    assert robust_range(image) == (np.percentile(flat, 0.1, method="higher"),
                                   np.percentile(flat, 99.9, method="lower"))
    assert robust_range(np.full((4, 4), 7, np.uint16)) == (7.0, 7.0)
    assert robust_range(image, percentiles=(0, 100)) == (float(image.min()), float(image.max()))
    stack = np.stack([image, image * 10], axis=0)  # (C, Y, X)
    np.testing.assert_array_equal(robust_range(stack, channel_axis=0),
                                  [robust_range(image), robust_range(image * 10)])
    with pytest.raises(ValueError, match="percentiles"):
        robust_range(image, percentiles=(50, 10))


@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.float64])
def test_robust_range_of_wide_types_is_exact(rng, dtype):
    from napari_vdir.core.intensity import robust_range

    image = (rng.random((3, 50, 70)) * 1e6).astype(dtype)
    flat = image.astype(np.float64).ravel()
    assert robust_range(image) == (np.percentile(flat, 0.1, method="higher"),
                                   np.percentile(flat, 99.9, method="lower"))


def test_hot_pixel_does_not_change_the_rest_of_a_uint16_image(denoise_gray, rng):
    """With min-max scaling one saturated pixel squeezed the whole image; the default robust range moves
    by one rank at most, so pixels beyond the network's reach of the hot pixel come out the same
    (within 2 counts of 3000)."""
    from napari_vdir.core.inference import cached_model, tile_margin

    image = rng.integers(100, 3000, (96, 96)).astype(np.uint16)
    hot = image.copy()
    hot[4, 4] = 65535
    plain, with_hot = (restore(x, "denoise", model=denoise_gray, precision="float32").astype(np.int64)
                       for x in (image, hot))
    r = tile_margin(cached_model(str(denoise_gray), "cpu", denoise_gray.stat().st_mtime)[0])
    far = (slice(4 + r + 4, None), slice(4 + r + 4, None))
    assert np.abs(with_hot[far] - plain[far]).max() <= 2
    squeezed = restore(hot, "denoise", model=denoise_gray, intensity_range="minmax",
                       precision="float32").astype(np.int64)
    assert np.abs(squeezed[far] - plain[far]).mean() > 20  # what min-max did (and still does on request)
    np.testing.assert_array_equal(plain, restore(image, "denoise", model=denoise_gray, intensity_range="auto",
                                                 precision="float32"))  # "auto" is the default for uint16


def test_auto_range_maps_back_exactly_without_clipping(rng):
    from napari_vdir.core.intensity import Intensity

    image = rng.integers(100, 3000, (40, 40)).astype(np.uint16)
    image[0, 0], image[1, 1] = 65535, 0
    m = Intensity.of(image, "auto")
    assert m.low > 0 and m.high < 65535
    np.testing.assert_array_equal(m.inverse(m.forward(image)), image)  # the hot and cold pixel kept


def test_auto_range_for_floats_outside_unit_range(denoise_gray, rng):
    image = (rng.random((32, 32)) * 1400 - 200).astype(np.float32)  # e.g. background-subtracted data
    with pytest.warns(UserWarning, match="intensity_range='auto'"):
        restore(image, "denoise", model=denoise_gray)
    import warnings

    from napari_vdir.core.intensity import robust_range

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = restore(image, "denoise", model=denoise_gray, intensity_range="auto", details=True)
    assert abs(float(out.image.mean()) - float(image.mean())) < 100
    low, high = robust_range(image)
    assert out.estimate["noise_sigma_data_units"] == pytest.approx(out.estimate["noise_sigma"] / 255 * (high - low),
                                                                   rel=1e-6)
