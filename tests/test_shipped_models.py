"""Every shipped model loads and clearly improves a real image (bundled with scikit-image)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio as psnr
from skimage.transform import resize

from napari_vdir import degradations as deg
from napari_vdir import restore
from napari_vdir.weights import load_weights, shipped_models

EXPECTED = {"denoise-rgb", "denoise-gray", "real-denoise-rgb", "sr-x2-rgb", "sr-x4-rgb", "jpeg-rgb", "jpeg-gray"}


def photo(gray=False) -> np.ndarray:
    img = data.astronaut()[32:160, 160:288].astype(np.float32) / 255.0  # 128 x 128 face and texture
    return img @ np.array([0.299, 0.587, 0.114], np.float32) if gray else img


def test_every_model_is_shipped_and_loads():
    assert EXPECTED <= set(shipped_models())
    for name, path in shipped_models().items():
        model, info = load_weights(path)
        assert info.name == name and info.trained_steps > 0
        assert path.stat().st_size < 10 * 2**20


@pytest.mark.parametrize("name,gray,sigma", [("denoise-rgb", False, 30), ("denoise-gray", True, 30),
                                             ("denoise-rgb", False, 50)])
def test_denoisers_gain(name, gray, sigma):
    clean = photo(gray)
    noisy = clean + np.random.default_rng(1).normal(0, sigma / 255, clean.shape).astype(np.float32)
    out = np.clip(restore(noisy, "denoise", model=name), 0, 1)
    assert psnr(clean, out, data_range=1) > psnr(clean, np.clip(noisy, 0, 1), data_range=1) + 6


def test_gray_denoiser_handles_poisson_noise():
    clean = photo(gray=True)
    x = torch.from_numpy(clean)[None, None]
    noisy, _ = deg.add_poisson_gaussian(x, torch.tensor([30.0]), torch.tensor([5.0]), torch.Generator().manual_seed(0))
    noisy = noisy[0, 0].numpy()
    out = np.clip(restore(noisy, "denoise", model="denoise-gray"), 0, 1)
    assert psnr(clean, out, data_range=1) > psnr(clean, np.clip(noisy, 0, 1), data_range=1) + 4


def test_real_denoise_gain():
    clean = photo()
    x = torch.from_numpy(clean.transpose(2, 0, 1))[None]
    noisy = deg.add_camera_noise(x, torch.Generator().manual_seed(3))[0].numpy().transpose(1, 2, 0)
    out = np.clip(restore(noisy, "real-denoise"), 0, 1)
    assert psnr(clean, out, data_range=1) > psnr(clean, noisy, data_range=1) + 2


@pytest.mark.parametrize("scale", [2, 4])
def test_sr_beats_bicubic(scale):
    clean = photo()
    k = torch.from_numpy(deg.gaussian_kernel(2.0 ** 0.5, 2.0 ** 0.5, 0.0))[None].float()
    lr = deg.blur_decimate(torch.from_numpy(clean.transpose(2, 0, 1))[None], k, scale)[0].numpy().transpose(1, 2, 0)
    out = np.clip(restore(lr, "sr", scale=scale), 0, 1)
    bicubic = np.clip(resize(lr, clean.shape, order=3), 0, 1)
    assert out.shape == clean.shape
    assert psnr(clean, out, data_range=1) > psnr(clean, bicubic, data_range=1) + 1.0


@pytest.mark.parametrize("name,gray", [("jpeg-rgb", False), ("jpeg-gray", True)])
def test_jpeg_gain(name, gray):
    clean = photo(gray)
    damaged = deg.jpeg_roundtrip(clean, 10)
    out = np.clip(restore(damaged, "jpeg", model=name), 0, 1)
    assert psnr(clean, out, data_range=1) > psnr(clean, damaged, data_range=1) + 0.3


def test_noise_estimate_tracks_sigma():
    clean = photo()
    for sigma in (15, 45):
        noisy = clean + np.random.default_rng(2).normal(0, sigma / 255, clean.shape).astype(np.float32)
        est = restore(noisy, "denoise", details=True).estimate["noise_sigma"]
        assert abs(est - sigma) < 0.2 * sigma


@pytest.mark.parametrize("gray", [True, False])
@pytest.mark.parametrize("quality", [10, 30, 70])
def test_jpeg_estimate_tracks_quality(gray, quality):
    """EST(c) reads the JPEG quality the image was saved at (the models never get it)."""
    saved = deg.jpeg_roundtrip(photo(gray), quality)
    est = restore(saved, "jpeg", details=True).estimate["jpeg_quality"]
    assert abs(est - quality) <= 0.25 * quality + 5
