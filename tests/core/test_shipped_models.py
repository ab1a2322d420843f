"""Every shipped model loads and beats what a trivial method reaches on a real image (bundled with scikit-image).

The bars are set against the *best* trivial method, not the degraded input: a Gaussian blur whose sigma is chosen
per image from ``BLUR_SIGMAS`` for denoising and JPEG, bicubic upscaling for super-resolution. A model whose
network were replaced by such a blur (``tests/mutants/blur_models.py`` does exactly that) fails here.
Margins measured on these crops when the bars were set (model - best blur or bicubic, dB): denoise-rgb
σ30 +3.1, σ50 +2.6; denoise-gray σ30 +1.3; real-denoise-rgb +3.9; jpeg-rgb q10/q30 +0.47/+0.67;
jpeg-gray q10/q30 +0.57/+0.71; sr-x2-rgb-paper +4.6, sr-x4-rgb-paper +3.9 (Y, the paper's protocol); the real-world
sr-x2-rgb / sr-x4-rgb on a box (binning) downscale +0.67 / +0.47 over bicubic (the paper-protocol models: -4.2 / -4.8).

The ``slow`` tests rerun a few images of every row of the README's quality table and check them against the
per-image figures of ``benchmarks/results/evaluation.json``, whose means are the numbers the README states.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import evaluate as ev
import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data
from skimage.metrics import peak_signal_noise_ratio as psnr

from napari_vdir import restore
from napari_vdir.core import degradations as deg
from napari_vdir.core.devices import device_label, select_device
from napari_vdir.core.models import shipped_models
from napari_vdir.core.weights import load_weights

REPO = Path(__file__).resolve().parents[2]
EXPECTED = {"denoise-rgb", "denoise-gray", "real-denoise-rgb", "sr-x2-rgb", "sr-x2-rgb-paper", "sr-x4-rgb",
            "sr-x4-rgb-paper", "jpeg-rgb", "jpeg-gray"}
PAPER_SR = {2: "sr-x2-rgb-paper", 4: "sr-x4-rgb-paper"}  # the models for the paper's corner-grid protocol
REALWORLD_SR = {2: "sr-x2-rgb", 4: "sr-x4-rgb"}          # the pixel-centred real-world defaults
BLUR_SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
DENOISE_MARGIN, JPEG_MARGIN, SR_MARGIN = 1.0, 0.3, 3.0  # dB over the best blur / over bicubic
REALWORLD_SR_MARGIN = {2: 0.4, 4: 0.25}  # dB over bicubic on an ordinary (box) downscale
# Clean in (issue 15): PSNR of restore(clean) against clean on both crops (dB). Measured when set, astronaut /
# coffee, before -> after the clean-inclusive fine-tunes: denoise-rgb 39.8 / 40.2 -> 45.6 / 46.6, denoise-gray
# 39.4 / 42.1 -> 45.2 / 46.8, real-denoise-rgb 32.0 / 33.7 -> 40.0 / 42.9; uncompressed through jpeg-rgb 38.1 -> 47.3,
# jpeg-gray 40.9 -> 56.2; EST(c)'s sigma of the clean crops 4.3 / 3.7 -> 1.7 / 1.0; q90 / q95 JPEG gain over the
# input jpeg-rgb +0.30 / -0.98 -> +0.47 / +0.23 dB, jpeg-gray +0.28 / -2.40 -> +0.49 / +0.20.
CLEAN_IN_BAR = {"denoise-rgb": 43.0, "denoise-gray": 43.0, "real-denoise-rgb": 38.0, "jpeg-rgb": 44.0, "jpeg-gray": 50.0}
CLEAN_SIGMA_BAR = 2.5
LIGHT_JPEG_MARGIN = 0.1  # dB over the q90 / q95 input
FLOAT32 = dict(precision="float32", device="cpu")


def _luma(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114], np.float32)


def photo(gray=False) -> np.ndarray:
    img = data.astronaut()[32:160, 160:288].astype(np.float32) / 255.0  # 128 x 128 face and texture
    return _luma(img) if gray else img


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Blur the spatial axes only (never across colour channels)."""
    return ndimage.gaussian_filter(image, (sigma, sigma, 0) if image.ndim == 3 else sigma, mode="reflect")


def score(clean, out) -> float:
    return psnr(clean, np.clip(out, 0, 1), data_range=1)


def best_blur(clean, degraded) -> float:
    """PSNR of the best Gaussian blur of ``degraded``, sigma chosen for this very image (an oracle)."""
    return max(score(clean, gaussian_blur(degraded, s)) for s in BLUR_SIGMAS)


def test_every_model_is_shipped_and_loads():
    assert EXPECTED <= set(shipped_models())
    for name, path in shipped_models().items():
        model, info = load_weights(path)
        assert info.name == name and info.trained_steps > 0
        assert path.stat().st_size < 10 * 2**20


@pytest.mark.parametrize("name,gray,sigma", [("denoise-rgb", False, 30), ("denoise-gray", True, 30),
                                             ("denoise-rgb", False, 50)])
def test_denoisers_beat_the_best_blur(name, gray, sigma):
    clean = photo(gray)
    noisy = clean + np.random.default_rng(1).normal(0, sigma / 255, clean.shape).astype(np.float32)
    got = score(clean, restore(noisy, "denoise", model=name))
    assert got > best_blur(clean, noisy) + DENOISE_MARGIN
    assert got > score(clean, noisy) + 6


def test_gray_denoiser_handles_poisson_noise():
    clean = photo(gray=True)
    x = torch.from_numpy(clean)[None, None]
    noisy, _ = deg.add_poisson_gaussian(x, torch.tensor([30.0]), torch.tensor([5.0]), torch.Generator().manual_seed(0))
    noisy = noisy[0, 0].numpy()
    got = score(clean, restore(noisy, "denoise", model="denoise-gray"))
    assert got > best_blur(clean, noisy) + DENOISE_MARGIN
    assert got > score(clean, noisy) + 4


def test_real_denoiser_beats_the_best_blur():
    clean = photo()
    x = torch.from_numpy(clean.transpose(2, 0, 1))[None]
    noisy = deg.add_camera_noise(x, torch.Generator().manual_seed(3))[0].numpy().transpose(1, 2, 0)
    got = score(clean, restore(noisy, "real-denoise", model="real-denoise-rgb"))
    assert got > best_blur(clean, noisy) + DENOISE_MARGIN


@pytest.mark.parametrize("quality", [10, 30])
@pytest.mark.parametrize("name,gray", [("jpeg-rgb", False), ("jpeg-gray", True)])
def test_jpeg_models_beat_the_best_blur(name, gray, quality):
    clean = photo(gray)
    damaged = deg.jpeg_roundtrip(clean, quality)
    got = score(clean, restore(damaged, "jpeg", model=name))
    assert got > best_blur(clean, damaged) + JPEG_MARGIN
    assert got > score(clean, damaged) + JPEG_MARGIN


def textured_photo(gray=False) -> np.ndarray:
    """A second clean crop, dense texture (coffee beans, a cup's rim) where a model that "sees" noise smooths."""
    img = data.coffee()[100:228, 200:328].astype(np.float32) / 255.0
    return _luma(img) if gray else img


@pytest.mark.parametrize("name,task,gray", [("denoise-rgb", "denoise", False), ("denoise-gray", "denoise", True),
                                            ("real-denoise-rgb", "real-denoise", False)])
def test_denoisers_leave_a_clean_photo_alone(name, task, gray):
    """Blind means "no noise" is an answer: a clean photo comes back nearly unchanged (issue 15)."""
    for clean in (photo(gray), textured_photo(gray)):
        assert score(clean, restore(clean, task, model=name)) > CLEAN_IN_BAR[name]


def test_noise_estimate_of_a_clean_photo_is_near_zero():
    """EST(c) learnt sigma 0 for clean inputs (it used to say ~4: the least noise it had seen was sigma 5)."""
    for clean in (photo(), textured_photo()):
        est = restore(clean, "denoise", model="denoise-rgb", details=True).estimate["noise_sigma"]
        assert est < CLEAN_SIGMA_BAR, est


@pytest.mark.parametrize("name,gray", [("jpeg-rgb", False), ("jpeg-gray", True)])
def test_jpeg_models_improve_a_light_jpeg_and_keep_an_uncompressed_image(name, gray):
    """Quality 90/95 comes back better than it went in, an uncompressed photo nearly unchanged (issue 15)."""
    clean = photo(gray)
    for quality in (90, 95):
        saved = deg.jpeg_roundtrip(clean, quality)
        assert score(clean, restore(saved, "jpeg", model=name)) > score(clean, saved) + LIGHT_JPEG_MARGIN, quality
    assert score(clean, restore(clean, "jpeg", model=name)) > CLEAN_IN_BAR[name]


@pytest.mark.parametrize("scale", [2, 4])
def test_sr_beats_bicubic_on_the_paper_protocol(scale):
    """Gaussian blur of variance 2 (21 x 21), LR = blurred[::s, ::s], scored on Y with ``scale`` pixels shaved."""
    setting = ev.Setting("Set5", f"x{scale}_g2.0")
    hr, lr = ev.degrade(setting, photo().astype(np.float64), 0)
    out = restore(lr.astype(np.float32), "sr", scale=scale, model=PAPER_SR[scale])
    assert out.shape == hr.shape
    ours = ev.score(setting, hr, np.clip(out.astype(np.float64), 0, 1))["psnr"]
    bicubic = ev.score(setting, hr, np.clip(ev.bicubic(lr, hr.shape), 0, 1))["psnr"]
    assert ours > bicubic + SR_MARGIN


@pytest.mark.parametrize("scale", sorted(REALWORLD_SR))
def test_default_sr_beats_bicubic_on_an_ordinary_downscale(scale):
    """Sensor binning (the mean of every s x s block, 8-bit), the default model of ``restore(task="sr")``; the
    output overlays the input's pixel grid (a shifted output loses several dB here)."""
    setting = ev.Setting("Set5", f"x{scale}_area")
    hr, lr = ev.degrade(setting, photo().astype(np.float64), 0)
    out = restore(lr.astype(np.float32), "sr", scale=scale)
    assert out.shape == hr.shape
    ours = ev.score(setting, hr, np.clip(out.astype(np.float64), 0, 1))["psnr"]
    bicubic = ev.score(setting, hr, np.clip(ev.bicubic(lr, hr.shape), 0, 1))["psnr"]
    assert ours > bicubic + REALWORLD_SR_MARGIN[scale]


def test_noise_estimate_tracks_sigma():
    clean = photo()
    for sigma in (15, 45):
        noisy = clean + np.random.default_rng(2).normal(0, sigma / 255, clean.shape).astype(np.float32)
        est = restore(noisy, "denoise", model="denoise-rgb", details=True).estimate["noise_sigma"]
        assert abs(est - sigma) < 0.2 * sigma


@pytest.mark.parametrize("layout", ["left-right", "top-bottom"])
def test_noise_estimate_covers_the_whole_image(layout):
    """Half of the image at sigma 15, half at 45: the estimate is the whole plane's, not one corner's."""
    clean = photo()
    rng = np.random.default_rng(4)
    sigma = np.full(clean.shape[:2], 15.0, np.float32)
    if layout == "left-right":
        sigma[:, 64:] = 45.0  # the top-left corner sees sigma 15
    else:
        sigma[:64] = 45.0  # the top-left corner sees sigma 45
    noisy = clean + (sigma[..., None] / 255 * rng.standard_normal(clean.shape)).astype(np.float32)
    est = restore(noisy, "denoise", model="denoise-rgb", details=True).estimate["noise_sigma"]
    assert 22.0 < est < 38.0, est


@pytest.mark.parametrize("gray", [True, False])
@pytest.mark.parametrize("quality", [10, 30, 70])
def test_jpeg_estimate_tracks_quality(gray, quality):
    """EST(c) reads the JPEG quality the image was saved at (the models never get it)."""
    saved = deg.jpeg_roundtrip(photo(gray), quality)
    est = restore(saved, "jpeg", details=True).estimate["jpeg_quality"]
    assert abs(est - quality) <= 0.25 * quality + 5


def test_device_auto_is_what_select_device_picks():
    res = restore(photo()[:32, :32], "denoise", model="denoise-rgb", details=True)
    assert res.device == device_label(select_device("auto"))
    assert restore(photo()[:32, :32], "denoise", model="denoise-rgb", device="cpu", details=True).device == "CPU"


# ----------------------------------------------------------------------------- the paper-size models tile

def test_large_radius_denoiser_dask_matches_whole():
    """The pixel-unshuffle network (receptive radius 85 px): four overlapping dask blocks give the one-pass result."""
    da = pytest.importorskip("dask.array")
    from napari_vdir.core.inference import tile_margin

    model, info = load_weights(shipped_models()["real-denoise-rgb"])
    assert info.arch.trunk == "unshuffle" and tile_margin(model) >= 80
    image = np.random.default_rng(6).random((176, 176, 3), dtype=np.float32)
    whole = restore(image, "real-denoise", model="real-denoise-rgb", **FLOAT32)
    lazy = restore(da.from_array(image, chunks=(88, 88, 3)), "real-denoise", model="real-denoise-rgb", **FLOAT32)
    assert lazy.numblocks[:2] == (2, 2)  # the margin (88) fits an 88-pixel chunk: four blocks, not one
    np.testing.assert_allclose(lazy.compute(scheduler="synchronous"), whole, atol=1e-4)


def test_paper_size_super_resolver_tiled_matches_whole():
    """The radius-82 network: four 56-pixel tiles with their margin give the one-pass result."""
    image = np.random.default_rng(5).random((112, 112, 3), dtype=np.float32)
    whole = restore(image, "sr", scale=2, model="sr-x2-rgb", **FLOAT32)
    calls = []
    tiled = restore(image, "sr", scale=2, model="sr-x2-rgb", tile_size=56, progress=lambda d, t: calls.append(t),
                    **FLOAT32)
    assert calls[-1] == 4 and tiled.shape == (224, 224, 3)
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


# ----------------------------------------------------------------------------- the README's quality table (slow)

# README row label -> (evaluation setting, figure in evaluation.json, position of the bold figure in the row)
README_ROWS = [
    ("CBSD68 σ30 (RGB)", ev.Setting("CBSD68", 30), "psnr", 0),
    ("CBSD68 σ50", ev.Setting("CBSD68", 50), "psnr", 0),
    ("Set12 σ30 (gray)", ev.Setting("Set12", 30), "psnr", 0),
    ("Kodak24 σ30 / σ50", ev.Setting("Kodak24", 30), "psnr", 0),
    ("Kodak24 σ30 / σ50", ev.Setting("Kodak24", 50), "psnr", 1),
    ("Set5 ×2, g2.0 (Y)", ev.Setting("Set5", "x2_g2.0"), "psnr", 0),
    ("Set5 ×4, g2.0 (Y)", ev.Setting("Set5", "x4_g2.0"), "psnr", 0),
    ("BSD100 ×2, g2.0 (Y)", ev.Setting("BSD100", "x2_g2.0"), "psnr", 0),
    ("LIVE1 luma q10 / q30 (Y)", ev.Setting("LIVE1-Y", 10), "psnr", 0),
    ("LIVE1 luma q10 / q30 (Y)", ev.Setting("LIVE1-Y", 30), "psnr", 1),
    ("Classic5 q10 (gray)", ev.Setting("Classic5", 10), "psnr", 0),
    ("LIVE1 colour q10 (RGB)", ev.Setting("LIVE1", 10), "psnr_rgb", 0),
    ("Val20 + camera noise (RGB)", ev.Setting("Val20", "camera"), "psnr", 0),
    ("LIVE1 colour q90 / q95 (RGB)", ev.Setting("LIVE1", 90), "psnr_rgb", 0),
    ("LIVE1 colour q90 / q95 (RGB)", ev.Setting("LIVE1", 95), "psnr_rgb", 1),
    ("Val20 + low-ISO camera (RGB)", ev.Setting("Val20", "camera-low"), "psnr", 0),
    ("Kodak24 clean in, `denoise` / `real-denoise` (RGB)", ev.Setting("Kodak24", ev.CLEAN), "psnr", 0),
    ("Kodak24 clean in, `denoise` / `real-denoise` (RGB)", ev.Setting("Kodak24", ev.CAMERA_CLEAN), "psnr", 1),
    ("Set12 clean in, `denoise` (gray)", ev.Setting("Set12", ev.CLEAN), "psnr", 0),
    ("uncompressed in, `jpeg`: LIVE1 (RGB) / Classic5 (gray)", ev.Setting("LIVE1", ev.CLEAN), "psnr_rgb", 0),
    ("uncompressed in, `jpeg`: LIVE1 (RGB) / Classic5 (gray)", ev.Setting("Classic5", ev.CLEAN), "psnr", 1),
]
SLOW_IMAGES = 2


def readme_figure(label: str, position: int) -> float:
    """The bold "VDIR (ours)" figure of a row of the README's quality table."""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith(f"| {label} |"):
            return float(re.search(r"\*\*([\d. /]+)\*\*", line).group(1).split("/")[position])
    raise AssertionError(f"README has no quality-table row {label!r}")


def evaluation_result(setting: ev.Setting) -> dict:
    report = json.loads((REPO / "benchmarks" / "results" / "evaluation.json").read_text())
    for result in report["results"]:
        if result["set"] == setting.dataset and result["setting"] == setting.label:
            return result
    raise AssertionError(f"evaluation.json has no result for {setting.key}")


@pytest.mark.parametrize("label,setting,figure,position", README_ROWS, ids=[r[1].key for r in README_ROWS])
def test_readme_quality_table_row_is_reproduced(label, setting, figure, position):
    """The README figure is the mean of evaluation.json's per-image figures for the current weights, and the
    first images of the set restored now give those per-image figures again."""
    recorded = evaluation_result(setting)
    per_image = [m[figure] for m in recorded["methods"]["ours"]["metrics"]]
    assert recorded["n_images"] == len(per_image) == recorded.get("images_in_set", len(per_image))
    assert np.mean(per_image) == pytest.approx(readme_figure(label, position), abs=0.005)
    assert recorded["model"] == ev._describe_model(setting, None), "evaluation.json is for other weights"


@pytest.mark.slow
@pytest.mark.parametrize("label,setting,figure,position", README_ROWS, ids=[r[1].key for r in README_ROWS])
def test_readme_quality_first_images_rerun(datasets, label, setting, figure, position):
    recorded = evaluation_result(setting)["methods"]["ours"]
    rerun = ev.evaluate_setting(datasets, setting, methods=["ours"], max_images=SLOW_IMAGES, log=lambda *a: None)
    got = rerun["methods"]["ours"]
    assert got["images"] == recorded["images"][:SLOW_IMAGES]
    for name, now, then in zip(got["images"], got["metrics"], recorded["metrics"], strict=False):
        assert now[figure] == pytest.approx(then[figure], abs=0.02), name
