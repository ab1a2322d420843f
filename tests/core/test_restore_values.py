"""restore() gives the right values, not only the right shapes and dtypes.

An identity network (VDIR with its last layer zeroed: the global skip makes the output equal the input) shows
that every dtype comes back bit-exact; the uncertainty is rebuilt from the same random draws; strength,
self-ensemble and the receptive radius are checked against what they promise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vdir import restore
from napari_vdir.core.inference import tile_margin
from napari_vdir.core.nets import LATENT_STRIDE, VDIR
from napari_vdir.core.weights import ModelInfo, load_weights, save_weights

EXACT = dict(precision="float32", device="cpu")


@pytest.fixture(scope="module")
def identity(tmp_path_factory, tiny_vdir):
    """VDIRs whose restorer tail is zero, so x = y + 0: restore() must hand the input back unchanged."""
    folder = tmp_path_factory.mktemp("identity")
    files = {}
    for channels in (1, 3):
        model = tiny_vdir(channels, width=4, encoder_width=4)
        with torch.no_grad():
            model.restorer.tail.weight.zero_()
            model.restorer.tail.bias.zero_()
        files[channels] = tiny_vdir.save(model, folder / f"identity-{channels}.safetensors",
                                         name=f"identity-{channels}ch")
    return files


def _gray(dtype, rng, shape=(37, 42)):
    if dtype == np.uint8:
        return rng.integers(0, 256, shape).astype(np.uint8)
    if dtype == np.uint16:
        return rng.integers(0, 65536, shape).astype(np.uint16)
    if dtype == np.uint32:
        return rng.integers(0, 2**32, shape, dtype=np.uint64).astype(np.uint32)
    if dtype == np.int16:
        return rng.integers(0, 32768, shape).astype(np.int16)
    raise ValueError(dtype)


INTEGER_DTYPES = [np.uint8, np.uint16, np.int16, np.uint32]


@pytest.mark.parametrize("dtype", INTEGER_DTYPES)
@pytest.mark.parametrize("options", [{}, {"tile_size": 16}, {"ensemble": True}], ids=["whole", "tiled", "x8"])
def test_identity_network_gives_every_integer_dtype_back_bit_exact(identity, rng, dtype, options):
    image = _gray(dtype, rng)
    out = restore(image, "denoise", model=identity[1], **EXACT, **options)
    assert out.dtype == image.dtype
    np.testing.assert_array_equal(out, image)


def test_identity_uint32_in_the_float32_exact_range(identity, rng):
    image = rng.integers(0, 2**24, (33, 40)).astype(np.uint32)
    np.testing.assert_array_equal(restore(image, "denoise", model=identity[1], **EXACT), image)


def test_identity_uint16_rgb_stack_and_gray_stack(identity, rng):
    rgb = rng.integers(0, 65536, (2, 21, 30, 3)).astype(np.uint16)
    np.testing.assert_array_equal(restore(rgb, "denoise", model=identity[3], **EXACT), rgb)
    stack = rng.integers(100, 4000, (3, 24, 20)).astype(np.uint16)
    np.testing.assert_array_equal(restore(stack, "denoise", model=identity[1], **EXACT), stack)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_identity_floats_unclipped(identity, rng, dtype):
    """Floats are [0, 1] intensity as they are: values outside come back unclipped, in the input's dtype."""
    image = (rng.random((3 * 8, 28, 3)) * 1.6 - 0.3).astype(dtype)
    assert image.min() < 0 and image.max() > 1
    out = restore(image, "denoise", model=identity[3], **EXACT)
    assert out.dtype == image.dtype
    # float64 goes through the float32 network, but only the network's change is added to it: bit-exact too
    np.testing.assert_array_equal(out, image)


def test_identity_intensity_range(identity, rng):
    image = rng.integers(1000, 3001, (32, 36)).astype(np.uint16)
    np.testing.assert_array_equal(restore(image, "denoise", model=identity[1], intensity_range=(0, 4095), **EXACT),
                                  image)


def test_intensity_range_is_what_the_network_sees(tiny_weights, rng):
    """uint16 with intensity_range=(low, high) is the float image (x - low) / (high - low), mapped back."""
    path, (low, high) = tiny_weights[("denoise", 1, 1)], (500.0, 4500.0)
    image = rng.integers(1000, 4001, (32, 36)).astype(np.uint16)
    as_int = restore(image, "denoise", model=path, intensity_range=(low, high), **EXACT)
    as_float = restore((image.astype(np.float32) - low) / (high - low), "denoise", model=path, **EXACT)
    inside = (as_float >= 0) & (as_float <= 1)
    assert inside.mean() > 0.9
    expected = np.rint(as_float * (high - low) + low)
    assert np.abs(as_int[inside].astype(np.float64) - expected[inside]).max() <= 1
    assert np.abs(as_int.astype(np.float64) - image).mean() > 20  # the network changed something


def test_uint8_is_what_the_network_sees_over_255(tiny_weights, rng):
    """uint8 x maps to x / 255 (not / 256): the uint8 result is the float result of x / 255, times 255, rounded."""
    path = tiny_weights[("denoise", 1, 3)]
    image = rng.integers(0, 256, (32, 36, 3)).astype(np.uint8)
    as_float = restore(image.astype(np.float32) / 255, "denoise", model=path, **EXACT)
    expected = np.clip(np.rint(as_float * 255), 0, 255).astype(np.uint8)
    got = restore(image, "denoise", model=path, **EXACT)
    np.testing.assert_array_equal(got, expected)
    assert np.abs(got.astype(int) - image).mean() > 2  # the network changed something


def test_identity_uncertainty_is_zero_and_samples_average(identity, rng):
    image = rng.random((24, 32, 3)).astype(np.float32)
    res = restore(image, "denoise", model=identity[3], samples=3, details=True, **EXACT)
    np.testing.assert_allclose(res.image, image, atol=1e-6)
    assert np.abs(res.uncertainty).max() < 1e-3


# ----------------------------------------------------------------------------- uncertainty

def test_uncertainty_is_the_std_of_the_draws(tiny_weights, rng):
    """Rebuild the k draws c = mu + std * noise with the same generator: the std (ddof=1) is the uncertainty
    and their mean is the image."""
    path, k, seed = tiny_weights[("denoise", 1, 3)], 4, 7
    image = rng.random((32, 40, 3)).astype(np.float32)
    res = restore(image, "denoise", model=path, samples=k, seed=seed, details=True, **EXACT)

    model, _ = load_weights(path)
    y = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
    generator = torch.Generator().manual_seed(seed)
    draws = []
    with torch.no_grad():
        for _ in range(k):
            noise = torch.randn((1, 4, 32 // LATENT_STRIDE, 40 // LATENT_STRIDE), generator=generator)
            draws.append(model(y, noise=noise).image[0].numpy().transpose(1, 2, 0))
    draws = np.stack(draws)
    expected = draws.std(axis=0, ddof=1)
    assert expected.mean() > 1e-3  # the draws really differ: the test can tell std from variance or 10 x std
    np.testing.assert_allclose(res.uncertainty, expected, rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(res.image, draws.mean(axis=0), atol=1e-5)


def test_uncertainty_in_data_units_for_uint16(tiny_weights, rng):
    """uint16 data: the same draws as on the [0, 1]-normalised floats, scaled by the data's range."""
    path = tiny_weights[("denoise", 1, 1)]
    image = rng.integers(200, 4200, (32, 32)).astype(np.uint16)
    low, high = float(image.min()), float(image.max())
    as_int = restore(image, "denoise", model=path, samples=3, details=True, intensity_range=(low, high), **EXACT)
    as_float = restore((image.astype(np.float32) - low) / (high - low), "denoise", model=path, samples=3,
                       details=True, **EXACT)
    assert as_float.uncertainty.mean() > 1e-3
    np.testing.assert_allclose(as_int.uncertainty, as_float.uncertainty * (high - low), rtol=1e-3, atol=1e-2)


# ----------------------------------------------------------------------------- strength

@pytest.mark.parametrize("task,model,gray,min_effect", [("denoise", "denoise-rgb", False, 0.5),
                                                       ("jpeg", "jpeg-rgb", False, 1.5), ("jpeg", "jpeg-gray", True, 0.8)])
def test_strength_is_monotone_in_the_removed_residual(task, model, gray, min_effect):
    """|restore(x, strength=s) - x| grows with s (shipped models on a degraded photo; the JPEG models steer with
    a quality-10 copy, the denoisers with a noisier one). Measured growth from s=0 to 3, in 1/255:
    denoise-rgb 1.25, jpeg-rgb 2.6, jpeg-gray 1.26 (the unshuffle JPEG models; rounding alone moves ~0.01)."""
    from skimage import data

    from napari_vdir.core import degradations as deg

    clean = data.astronaut()[64:128, 192:256].astype(np.float32) / 255
    if gray:
        clean = clean @ np.array([0.299, 0.587, 0.114], np.float32)
    if task == "jpeg":
        damaged = deg.jpeg_roundtrip(clean, 30)
    else:
        damaged = clean + np.random.default_rng(0).normal(0, 25 / 255, clean.shape).astype(np.float32)
    removed = [np.abs(restore(damaged, task, model=model, strength=s, **EXACT) - damaged).mean()
               for s in (0.0, 0.5, 1.0, 2.0, 3.0)]
    assert all(a < b for a, b in zip(removed, removed[1:], strict=False)), removed
    assert removed[-1] - removed[0] > min_effect / 255  # a real effect, not rounding
    again = restore(damaged, task, model=model, strength=2.0, **EXACT)
    assert np.abs(again - damaged).mean() == removed[3]  # the steering copy is drawn from a fixed seed


# ----------------------------------------------------------------------------- self-ensemble

def _transforms():
    for flip in (False, True):
        for k in range(4):
            yield (lambda a, k=k, f=flip: np.rot90(a[:, ::-1] if f else a, k)), \
                  (lambda a, k=k, f=flip: (lambda r: r[:, ::-1] if f else r)(np.rot90(a, -k)))


def test_ensemble_is_the_mean_of_the_eight_transforms(tiny_weights, rng):
    path = tiny_weights[("denoise", 1, 3)]
    image = rng.random((32, 44, 3)).astype(np.float32)
    expected = np.mean([inverse(restore(np.ascontiguousarray(forward(image)), "denoise", model=path, **EXACT))
                        for forward, inverse in _transforms()], axis=0)
    got = restore(image, "denoise", model=path, ensemble=True, **EXACT)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - restore(image, "denoise", model=path, **EXACT)).max() > 1e-3


@pytest.mark.parametrize("task,scale", [("denoise", None), ("sr", 2)])
def test_ensemble_commutes_with_rot90_and_flip(tiny_weights, rng, task, scale):
    path = tiny_weights[(task, scale or 1, 3)]
    image = rng.random((28, 40, 3)).astype(np.float32)
    ens = restore(image, task, scale=scale, model=path, ensemble=True, **EXACT)
    for k in (1, 2, 3):
        rotated = restore(np.ascontiguousarray(np.rot90(image, k)), task, scale=scale, model=path, ensemble=True,
                          **EXACT)
        np.testing.assert_allclose(rotated, np.rot90(ens, k), atol=1e-5)
    flipped = restore(np.ascontiguousarray(image[:, ::-1]), task, scale=scale, model=path, ensemble=True, **EXACT)
    np.testing.assert_allclose(flipped, ens[:, ::-1], atol=1e-5)


# ----------------------------------------------------------------------------- receptive radius

def measured_radius(model: VDIR, size: int) -> int:
    """The farthest input pixel (Chebyshev distance) with a non-zero gradient on a central output pixel,
    over the four positions of that pixel in the latent's 4 x 4 cell."""
    model = model.double().eval()
    far = 0
    for offset in range(LATENT_STRIDE):
        y = torch.rand(1, model.cfg.channels, size, size, dtype=torch.float64, requires_grad=True)
        centre = size // 2 + offset
        model(y).image[0, :, centre, centre].sum().backward()
        hit = (y.grad[0].abs().sum(0) != 0).nonzero()
        far = max(far, int((hit - centre).abs().max()))
    return far


@pytest.mark.parametrize("rir_blocks,res_blocks", [(1, 1), (2, 2), (1, 4), (3, 1)])
def test_receptive_radius_matches_the_gradient_support(rir_blocks, res_blocks, tiny_vdir):
    model = tiny_vdir(1, width=3, encoder_width=3, rir_blocks=rir_blocks, res_blocks=res_blocks,
                      estimate_dims=0).train()
    radius = model.cfg.receptive_radius
    measured = measured_radius(model, size=(2 * radius + 40) // 4 * 4)
    assert measured <= radius <= measured + 4, (measured, radius)  # covers it, and not far beyond
    assert tile_margin(model) >= radius and tile_margin(model) % LATENT_STRIDE == 0


# ----------------------------------------------------------------------------- tile plan

def test_tile_plan_covers_the_plane_once_on_the_latent_grid():
    from napari_vdir.core.inference import WHOLE_IMAGE_PIXELS, plan_tiles

    def covers_once(h, w, plan):
        count = np.zeros((h, w), int)
        for top, left, bottom, right in plan:
            assert top % LATENT_STRIDE == 0 and left % LATENT_STRIDE == 0
            count[top:bottom, left:right] += 1
        return (count == 1).all()

    for h, w, tile in ((100, 72, 48), (64, 64, 64), (36, 200, 30), (8, 8, 16)):
        plan = plan_tiles(h, w, tile, margin=20)
        assert all(b - t <= max(4, tile // 4 * 4) and r - l_ <= max(4, tile // 4 * 4) for t, l_, b, r in plan)
        assert covers_once(h, w, plan), (h, w, tile)
    # tile_size=None: one pass up to WHOLE_IMAGE_PIXELS; beyond, the fewest balanced tiles that fit with margins
    assert plan_tiles(1024, 1024, None, 84) == [(0, 0, 1024, 1024)]
    assert plan_tiles(4000, 40, None, 84) == [(0, 0, 4000, 40)]
    for h, w, margin in ((1028, 1028, 84), (2048, 2048, 88), (4000, 400, 88), (3000, 1200, 40), (2000, 2000, 600)):
        plan = plan_tiles(h, w, None, margin)
        assert covers_once(h, w, plan)
        cores_h = sorted({b - t for t, _, b, _ in plan})
        cores_w = sorted({r - l_ for _, l_, _, r in plan})
        rows, cols = len({p[0] for p in plan}), len({p[1] for p in plan})
        # balanced: the last core is short by at most the rounding to multiples of 4, not a sliver
        assert cores_h[-1] - cores_h[0] <= 4 * rows and cores_w[-1] - cores_w[0] <= 4 * cols, (h, w, margin)
        if 2 * margin < 512:
            assert all((min(b + margin, h) - max(t - margin, 0)) * (min(r + margin, w) - max(l_ - margin, 0))
                       <= WHOLE_IMAGE_PIXELS for t, l_, b, r in plan), (h, w, margin)
            # one tile fewer per axis would not fit: a core of that size plus both margins holds too many pixels
            for n, size in ((rows, h), (cols, w)):
                if n > 1:
                    assert (-(-size // (n - 1)) + 2 * margin) ** 2 > WHOLE_IMAGE_PIXELS
        assert cores_h[0] >= 4 and cores_w[0] >= 4
    assert len(plan_tiles(2048, 2048, None, 88)) == 9  # not 16 tiles of 512²


def test_dask_spatial_chunks():
    """Chunks on the latent grid, each at least the margin, the short rest merged into the last chunk."""
    from napari_vdir.core.lazy import spatial_chunks

    assert spatial_chunks(176, 88, 84) == (88, 88)
    assert spatial_chunks(160, 80, 84) == (160,)          # a chunk is never shorter than the margin
    assert spatial_chunks(172, 88, 84) == (88, 84)        # a rest of exactly the margin stays a chunk
    assert spatial_chunks(200, 64, 20) == (64, 64, 72)    # a shorter rest joins the last chunk
    assert spatial_chunks(100, 37, 4) == (36, 36, 28)     # rounded to multiples of 4
    assert spatial_chunks(10, 1, 3) == (4, 6)             # at least one latent cell
    for size, chunk, margin in ((301, 50, 20), (97, 33, 12), (1000, 128, 84)):
        sizes = spatial_chunks(size, chunk, margin)
        assert sum(sizes) == size and min(sizes) >= margin
        assert all(s % 4 == 0 for s in sizes[:-1])


# ----------------------------------------------------------------------------- weights metadata

def test_weights_metadata_round_trips_and_optional_keys_default(tmp_path, tiny_vdir):
    from safetensors.torch import save_file

    from napari_vdir.core.weights import read_info

    model = tiny_vdir(1, width=4, encoder_width=4)
    cfg = model.cfg
    info = ModelInfo(name="m", task="denoise", arch=cfg, description="a test model", recipe={"steps": 5, "lr": 0.01},
                     quality={"val_psnr": 31.5}, trained_steps=11)
    back = read_info(save_weights(tmp_path / "m.safetensors", model, info))
    assert (back.name, back.task, back.arch, back.description, back.recipe, back.quality, back.trained_steps) == \
           ("m", "denoise", cfg, "a test model", {"steps": 5, "lr": 0.01}, {"val_psnr": 31.5}, 11)
    # only the required keys: the optional ones take their defaults
    meta = {k: v for k, v in info.to_metadata().items() if k not in ("description", "recipe", "quality",
                                                                      "trained_steps")}
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp_path / "bare.safetensors"), metadata=meta)
    bare = read_info(tmp_path / "bare.safetensors")
    assert (bare.description, bare.recipe, bare.quality, bare.trained_steps) == ("", {}, {}, 0)


def test_identity_network_reports_zero_uncertainty(identity, rng):
    """Draws that change nothing have no spread: the std is exactly 0, not float32 cancellation noise."""
    image = rng.random((40, 44, 3)).astype(np.float32)
    res = restore(image, "denoise", model=identity[3], samples=4, details=True, **EXACT)
    np.testing.assert_array_equal(res.image, image)
    assert res.uncertainty.max() == 0.0
