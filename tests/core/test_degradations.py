"""Statistics of the synthetic degradations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from napari_vdir.core import degradations as deg


def clean_batch(n=4, size=96):
    img = torch.from_numpy(data.astronaut()[:size, 100:100 + size].astype(np.float32) / 255).permute(2, 0, 1)
    return img[None].repeat(n, 1, 1, 1)


def test_awgn_sigma_and_no_clipping():
    x = torch.full((2, 3, 128, 128), 0.5)
    y = deg.add_gaussian_noise(x, torch.tensor([10.0, 50.0]), torch.Generator().manual_seed(0))
    stds = (y - x).std(dim=(1, 2, 3)) * 255
    assert stds[0] == pytest.approx(10, rel=0.03) and stds[1] == pytest.approx(50, rel=0.03)
    assert y.min() < 0 or y.max() > 1  # sigma 50 around 0.5 leaves [0, 1]: not clipped


def test_awgn_is_seeded():
    x = clean_batch()
    a = deg.add_gaussian_noise(x, torch.tensor([20.0] * 4), torch.Generator().manual_seed(7))
    b = deg.add_gaussian_noise(x, torch.tensor([20.0] * 4), torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_poisson_gaussian_variance_follows_signal():
    x = torch.tensor([0.1, 0.8]).reshape(2, 1, 1, 1).expand(2, 1, 200, 200).contiguous()
    photons, read = torch.tensor([50.0, 50.0]), torch.tensor([0.0, 0.0])
    y, equivalent = deg.add_poisson_gaussian(x, photons, read, torch.Generator().manual_seed(0))
    var = (y - x).var(dim=(1, 2, 3))
    np.testing.assert_allclose(var.numpy(), (x[:, 0, 0, 0] / photons).numpy(), rtol=0.05)
    np.testing.assert_allclose(equivalent.numpy(), (torch.sqrt(x[:, 0, 0, 0] / 50) * 255).numpy(), rtol=1e-5)


def test_camera_noise_is_signal_dependent_and_seeded():
    x = clean_batch()
    g = torch.Generator().manual_seed(1)
    y = deg.add_camera_noise(x, g)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert (y - x).abs().mean() > 0.005
    assert torch.equal(y, deg.add_camera_noise(x, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("major,minor,theta", [(1.0, 1.0, 0.0), (3.0, 1.0, 0.7), (0.7, 0.7, 0.0)])
def test_kernels_sum_to_one_and_have_their_spread(major, minor, theta):
    k = deg.gaussian_kernel(major, minor, theta, size=31)
    assert k.sum() == pytest.approx(1.0)
    y, x = np.mgrid[-15:16, -15:16]
    cov = np.array([[np.sum(k * x * x), np.sum(k * x * y)], [np.sum(k * x * y), np.sum(k * y * y)]])
    eig = np.sort(np.linalg.eigvalsh(cov))[::-1]
    np.testing.assert_allclose(np.sqrt(eig), [major, minor], rtol=0.03)


def test_random_kernels_and_direct_decimation():
    kernels, params = deg.random_kernels(8, 4, torch.Generator().manual_seed(0))
    assert kernels.shape == (8, 15, 15)
    np.testing.assert_allclose(kernels.sum(dim=(1, 2)).numpy(), 1.0, rtol=1e-5)
    assert (params[:, 0] >= params[:, 1]).all() and (params * 5 <= 4.8 + 1e-6).all()
    x = torch.rand(2, 3, 64, 64)
    delta = torch.zeros(2, 15, 15)
    delta[:, 7, 7] = 1
    lr = deg.blur_decimate(x, delta, 2)
    assert torch.allclose(lr, x[..., ::2, ::2])  # the first pixel of every 2x2 block


def test_jpeg_error_falls_as_quality_rises():
    img = data.astronaut()[:128, :128].astype(np.float32) / 255
    errors = [np.abs(deg.jpeg_roundtrip(img, q) - img).mean() for q in (10, 30, 80)]
    assert errors[0] > errors[1] > errors[2]
    gray = img.mean(-1)
    assert deg.jpeg_roundtrip(gray, 10).shape == gray.shape


def test_random_jpeg_reports_quality():
    x = clean_batch(3, 64)
    y, q = deg.random_jpeg(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and ((q >= 0.1) & (q <= 0.8)).all()


def test_even_gaussian_kernels_are_centred_between_taps():
    k = deg.gaussian_kernel(1.5, 1.5, 0.0, size=16)
    assert k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k, k[::-1, ::-1])  # symmetric about (7.5, 7.5)
    np.testing.assert_allclose(deg.gaussian_kernel(2.0, 1.0, 0.3), deg.gaussian_kernel(2.0, 1.0, 0.3, size=15))


def test_blur_sample_refuses_an_origin_off_the_kernel_grid():
    with pytest.raises(ValueError, match="even size"):
        deg.blur_sample(torch.rand(1, 1, 32, 32), torch.ones(15, 15) / 225, 2)  # centred x2 needs an even kernel


@pytest.mark.parametrize("sigma", [0.8, 1.5, 3.0])
def test_equivalent_std_of_a_gaussian_is_its_std(sigma):
    t = np.arange(32) - 15.5
    g = np.exp(-0.5 * (t / sigma) ** 2)
    assert deg.equivalent_std(g / g.sum(), 2) == pytest.approx(sigma, rel=3e-3)  # a sampled Gaussian
    # wider resize kernels blur more: box < bicubic < bilinear, all wider at x4 than at x2
    for s in (2, 4):
        widths = [deg.equivalent_std(deg.resize_taps(n, s), s) for n in ("area", "bicubic", "bilinear")]
        assert widths == sorted(widths) and widths[0] > 0.45 * s / 2


@pytest.mark.parametrize("scale", [2, 4])
def test_sr_mix_covers_every_member_and_is_seeded(scale):
    hr = clean_batch(64, 32 * scale)
    lr, params, members = deg.random_sr_degradation(hr, scale, torch.Generator().manual_seed(0), return_members=True)
    assert lr.shape == (64, 3, 32, 32) and params.shape == (64, 2)
    assert set(members) == {m for m, share in deg.SR_MIX.items() if share > 0}  # every member drawn
    assert "paper" not in members  # the corner grid is not in the default mix (see SR_GRID_NOTE)
    assert 0 <= lr.min() and lr.max() <= 1
    again = deg.random_sr_degradation(hr, scale, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], lr) and torch.equal(again[1], params)
    # targets as random_kernels gives them: stds / 5, major >= minor, and each separable member its width
    assert (params[:, 0] >= params[:, 1]).all() and (params >= 0).all()  # 0: the aliased members
    for m, p in zip(members, params, strict=True):
        if m not in ("gaussian", "paper"):
            taps = deg.sr_member_taps(m, scale)
            assert p.tolist() == pytest.approx([deg.equivalent_std(taps, scale) / 5] * 2)
        else:
            assert 0.7 / 5 - 1e-6 <= p[1] <= p[0] <= 1.2 * scale / 5 + 1e-6


def test_sr_mix_without_noise_is_the_member_itself_and_paper_is_selectable():
    hr = clean_batch(6, 64)
    clean = dict(noise=(0.0, 0, 0), jpeg=(0.0, 60, 60), quantise=0.0)
    lr, _ = deg.random_sr_degradation(hr, 2, torch.Generator().manual_seed(1), mix={"area": 1.0}, **clean)
    assert torch.allclose(lr, torch.nn.functional.avg_pool2d(hr, 2), atol=1e-6)
    lr, params = deg.random_sr_degradation(hr, 2, torch.Generator().manual_seed(1), mix={"paper": 1.0}, **clean)
    kernels, expected = deg.random_kernels(6, 2, torch.Generator().manual_seed(1))
    assert params.shape == expected.shape
    delta = torch.zeros(15, 15)
    delta[7, 7] = 1
    sharp = deg.blur_sample(hr, delta, 2, origin=0)
    assert torch.equal(sharp, hr[..., ::2, ::2])  # origin 0 is the paper's corner grid


def test_sr_mix_adds_mild_noise_and_jpeg_when_asked():
    hr = clean_batch(8, 64)
    g = torch.Generator().manual_seed(2)
    base, _ = deg.random_sr_degradation(hr, 2, g, mix={"area": 1.0}, noise=(0.0, 0, 0), jpeg=(0.0, 60, 60),
                                        quantise=0.0)
    noisy, _ = deg.random_sr_degradation(hr, 2, torch.Generator().manual_seed(2), mix={"area": 1.0},
                                         noise=(1.0, 4.0, 4.0), jpeg=(0.0, 60, 60), quantise=0.0)
    assert (noisy - base).std().item() * 255 == pytest.approx(4.0, rel=0.1)
    saved, _ = deg.random_sr_degradation(hr, 2, torch.Generator().manual_seed(2), mix={"area": 1.0},
                                         noise=(0.0, 0, 0), jpeg=(1.0, 60, 60), quantise=0.0)
    assert torch.allclose(saved, deg.jpeg_batch(base, [60] * 8))


# ---------------------------------------------------------------- clean-inclusive ranges (issue 15)

CLEAN = deg.NOISE_RANGES["clean-inclusive"]


def test_default_ranges_draw_exactly_what_they_always_drew():
    """The shipped recipes keep reproducing their models: the degraded-only ranges use the same random
    numbers as before the ranges existed (no extra draw for a clean share of 0)."""
    n = 64
    ours, before = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    sigma = deg.random_sigma(n, ours)
    assert torch.equal(sigma, deg.uniform(n, 5.0, 70.0, before, "cpu"))
    assert torch.equal(ours.get_state(), before.get_state())  # the noise drawn next is the same too
    assert deg.noise_ranges(None) == deg.NOISE_RANGES["degraded-only"] == deg.NoiseRanges()
    x = clean_batch(8, 32)
    ours, before = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    _, q = deg.random_jpeg(x, ours)
    assert torch.equal(q, torch.randint(10, 81, (8,), generator=before).float() / 100)
    assert torch.equal(ours.get_state(), before.get_state())
    with pytest.raises(ValueError, match="unknown noise ranges 'loud'"):
        deg.noise_ranges("loud")


def test_a_tenth_of_awgn_inputs_is_exactly_clean_and_sigma_reaches_75():
    sigma = deg.random_sigma(20000, torch.Generator().manual_seed(0), ranges="clean-inclusive")
    clean = sigma == 0
    assert clean.float().mean().item() == pytest.approx(0.10, abs=0.01)  # binomial std 0.002
    assert 74 < sigma.max() <= 75 and (sigma[~clean] < 2).any()
    assert deg.random_sigma(20000, torch.Generator().manual_seed(0)).min() >= 5  # degraded-only: never clean
    same = deg.random_sigma(500, torch.Generator().manual_seed(4), ranges=CLEAN)
    assert torch.equal(same, deg.random_sigma(500, torch.Generator().manual_seed(4), ranges=CLEAN))  # seeded
    x = clean_batch(8, 32)
    noisy = deg.add_gaussian_noise(x, torch.tensor([0.0] * 4 + [30.0] * 4), torch.Generator().manual_seed(0))
    assert torch.equal(noisy[:4], x[:4]) and not torch.equal(noisy[4:], x[4:])


def test_poisson_gaussian_reaches_negligible_noise_and_exactly_clean():
    x = clean_batch(400, 16)
    noisy, equivalent = deg.random_poisson_gaussian(x, torch.Generator().manual_seed(0), ranges=CLEAN)
    clean = equivalent == 0
    assert clean.float().mean().item() == pytest.approx(0.10, abs=0.05)
    assert torch.equal(noisy[clean], x[clean])
    assert (equivalent[~clean] < 1.0).float().mean() > 0.02  # below 1/255: negligible noise occurs
    _, before = deg.random_poisson_gaussian(x, torch.Generator().manual_seed(0))
    assert before.min() > 1.0


def test_camera_pipeline_from_clean_and_low_iso_to_heavy():
    x = torch.linspace(0.2, 0.8, 64).reshape(1, 1, 1, 64).expand(200, 3, 64, 64).contiguous()
    rms = {}
    for name in ("degraded-only", "clean-inclusive"):
        y = deg.add_camera_noise(x, torch.Generator().manual_seed(0), ranges=name)
        rms[name] = ((y - x) ** 2).mean(dim=(1, 2, 3)).sqrt() * 255
    exact = rms["clean-inclusive"] == 0
    assert exact.float().mean().item() == pytest.approx(0.10, abs=0.05)
    low = rms["clean-inclusive"][~exact] < 2  # nearly clean: under 2 of 255 RMS
    assert low.float().mean() > 0.15 and (rms["degraded-only"] < 2).float().mean() < 0.05
    assert rms["clean-inclusive"].max() > 15  # and still heavy at the other end


def test_jpeg_from_quality_10_to_95_and_uncompressed():
    x = clean_batch(300, 16)
    out, q = deg.random_jpeg(x, torch.Generator().manual_seed(0), ranges=CLEAN)
    uncompressed = q == deg.UNCOMPRESSED_QUALITY / 100
    assert uncompressed.float().mean().item() == pytest.approx(0.10, abs=0.05)
    assert torch.equal(out[uncompressed], x[uncompressed])
    qualities = torch.round(q[~uncompressed] * 100).int()
    assert qualities.min() == 10 and qualities.max() == 95 and (qualities == 95).any()
    for i in torch.nonzero(~uncompressed).flatten()[:3].tolist():  # the others really are those JPEGs
        expected = deg.jpeg_batch(x[i:i + 1], [int(qualities[(~uncompressed)[:i].sum()])])
        assert torch.equal(out[i:i + 1], expected)
    _, before = deg.random_jpeg(x, torch.Generator().manual_seed(0))
    assert before.max() <= 0.80


def test_high_quality_weighted_jpeg_draws_make_near_lossless_twice_as_common():
    """'clean-inclusive-jpeg-hq' draws half its qualities with 100 - q log-uniform: q >= 85 about twice as
    often as the uniform draw, heavy compression still present, and every quality inside 10..95."""
    n = 20000
    hq = deg.random_quality(n, deg.NOISE_RANGES["clean-inclusive-jpeg-hq"], torch.Generator().manual_seed(0))
    flat = deg.random_quality(n, CLEAN, torch.Generator().manual_seed(0))
    assert hq.min() >= 10 and hq.max() == 95 and flat.min() == 10
    share = {name: ((q >= 85).float().mean().item(), (q <= 20).float().mean().item())
             for name, q in (("hq", hq), ("flat", flat))}
    assert share["flat"][0] == pytest.approx(11 / 86, abs=0.01)
    assert share["hq"][0] == pytest.approx(0.25, abs=0.02) and share["hq"][1] > 0.06
    _, q = deg.random_jpeg(clean_batch(8, 16), torch.Generator().manual_seed(1), ranges="clean-inclusive-jpeg-hq")
    assert ((q == 1.0) | ((q >= 0.10) & (q <= 0.95))).all()


def test_zero_estimator_targets_stay_finite_through_the_loss(tiny_vdir):
    """sigma = 0 (and quality 100) are honest targets: the EST head is an L1 on sigma / 255 (no log), and the
    whole objective and its gradients stay finite on a batch of clean images."""
    from napari_vdir.core.nets import Decoder
    from napari_vdir.training import losses

    model, decoder = tiny_vdir().train(), Decoder(3, 8)
    clean = clean_batch(4, 32)
    sigma = torch.zeros(4)
    y = deg.add_gaussian_noise(clean, sigma, torch.Generator().manual_seed(0))
    out = model(y, sample=True, with_estimate=True)
    target = (sigma / 255.0)[:, None]
    est = losses.estimate_loss(out.estimate, target)
    total = ((out.image - clean).abs().mean() + 0.01 * losses.kl_divergence(out.mu, out.logvar)
             + (decoder(out.c) - y).abs().mean() + est)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(est)
    assert est.item() == pytest.approx(out.estimate.abs().mean().item())  # distance to 0, nothing else
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    full_quality = torch.full((4, 1), deg.UNCOMPRESSED_QUALITY / 100)
    assert torch.isfinite(losses.estimate_loss(out.estimate.detach(), full_quality))


def test_recipes_choose_the_ranges_and_default_to_the_shipped_ones():
    from pathlib import Path

    from napari_vdir.training.config import Recipe, load_recipe

    base = dict(name="x", task="denoise", data={"train": ["imgs"]}, steps=1)
    assert Recipe.model_validate(base).ranges == "degraded-only"
    assert Recipe.model_validate({**base, "ranges": "clean-inclusive"}).ranges in deg.NOISE_RANGES
    with pytest.raises(ValueError, match="ranges"):
        Recipe.model_validate({**base, "ranges": "quiet"})
    with pytest.raises(ValueError, match="not sr"):
        Recipe.model_validate({**base, "task": "sr", "scale": 2, "ranges": "clean-inclusive"})
    root = Path(__file__).resolve().parents[2] / "training"
    # issue 15: every shipped noise/JPEG model trains on ranges that include "nothing to fix"; the JPEG ones with
    # half their qualities drawn near-lossless
    ranges = {p.stem: load_recipe(p).ranges for p in root.glob("*.yaml") if load_recipe(p).task != "sr"}
    assert ranges == {"denoise-rgb": "clean-inclusive", "denoise-gray": "clean-inclusive",
                      "real-denoise-rgb": "clean-inclusive", "jpeg-rgb": "clean-inclusive-jpeg-hq",
                      "jpeg-gray": "clean-inclusive-jpeg-hq"}
    assert all(load_recipe(root / "stages" / f"{name}-degraded-only.yaml").ranges == "degraded-only"
               for name in ranges)
    assert load_recipe(root / "stages" / "probe-unshuffle.yaml").ranges == "clean-inclusive"


def test_recipe_ranges_reach_the_training_batches():
    """ranges: clean-inclusive gives a share of exactly clean inputs for every noise/JPEG degradation; the
    default (degraded-only) gives none."""
    from napari_vdir.training.config import Recipe
    from napari_vdir.training.data import degrade

    base = dict(name="x", data={"train": ["imgs"]}, steps=1)
    clean = torch.rand(400, 3, 16, 16)
    for task, kind in (("denoise", "awgn"), ("denoise", "poisson"), ("denoise", "awgn+poisson"),
                       ("jpeg", "jpeg"), ("real-denoise", "camera")):
        for ranges, low, high in (("clean-inclusive", 0.02, 0.2), ("degraded-only", 0.0, 0.0)):
            r = Recipe.model_validate({**base, "task": task, "degradation": kind, "ranges": ranges})
            g = torch.Generator().manual_seed(0)
            batch = degrade(clean, r, g, g)
            same = (batch.degraded == batch.clean).flatten(1).all(1).float().mean().item()
            assert low <= same <= high, (kind, ranges, same)
