"""Statistics of the synthetic degradations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from napari_vdir import degradations as deg


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
