"""`python -m napari_vdir.evaluate`: baselines follow the peers-v1 protocol, ours beats the input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio
from skimage.transform import resize

from napari_vdir import evaluate as ev


@pytest.fixture
def shipped():
    """Skip when a shipped model is not in this checkout."""
    from napari_vdir.weights import shipped_models

    def need(name):
        if name not in shipped_models():
            pytest.skip(f"shipped model {name} is absent")
        return name

    return need


def _psnr(a, b):
    return peak_signal_noise_ratio(a, b, data_range=1)


def _first_image(folder):
    path = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".bmp"))[0]
    return np.asarray(Image.open(path), dtype=np.float64) / 255.0


def test_awgn_noisy_baseline_is_the_protocol_and_ours_beats_it(datasets, shipped):
    shipped("denoise-rgb")
    r = ev.evaluate_setting(datasets, ev.Setting("CBSD68", 30), methods=["noisy", "ours"], max_images=1)
    clean = _first_image(datasets / "CBSD68")
    noisy = clean + 30 / 255 * np.random.default_rng(1000).standard_normal(clean.shape)
    got = r["methods"]["noisy"]["metrics"][0]["psnr"]
    assert got == pytest.approx(_psnr(clean, np.clip(noisy, 0, 1)), abs=1e-9)
    assert got == pytest.approx(19.07, abs=0.01)  # CBSD68 image 0 (101085.png) at sigma 30
    assert r["model"].startswith("denoise-rgb.safetensors")
    assert r["methods"]["ours"]["metrics"][0]["psnr"] > got + 5


def test_sr_bicubic_baseline_on_y_with_shave(datasets, tiny_weights):
    models = {("sr", 2, 3): tiny_weights[("sr", 2, 3)]}
    r = ev.evaluate_setting(datasets, ev.Setting("Set5", "x2_g2.0"), methods=["bicubic", "ours"],
                            max_images=1, models=models)
    hr = _first_image(datasets / "Set5" / "HR")
    hr = hr[:hr.shape[0] // 2 * 2, :hr.shape[1] // 2 * 2]
    y, x = np.mgrid[-10:11, -10:11]
    k = np.exp(-(x ** 2 + y ** 2) / 4.0)
    k /= k.sum()
    lr = np.stack([ndimage.correlate(hr[..., c], k, mode="reflect") for c in range(3)], -1)[::2, ::2]
    up = resize(lr, hr.shape, order=3, anti_aliasing=False)
    to_y = lambda a: (16 + 65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255  # noqa: E731
    expected = _psnr(to_y(hr)[2:-2, 2:-2], to_y(np.clip(up, 0, 1))[2:-2, 2:-2])
    assert r["methods"]["bicubic"]["metrics"][0]["psnr"] == pytest.approx(expected, abs=1e-9)
    assert np.isfinite(r["methods"]["ours"]["metrics"][0]["psnr"])


def test_jpeg_identity_on_classic5(datasets, tiny_weights):
    models = {("jpeg", 1, 1): tiny_weights[("jpeg", 1, 1)]}
    r = ev.evaluate_setting(datasets, ev.Setting("Classic5", 10), methods=["jpeg", "ours"], max_images=1,
                            models=models)
    clean = _first_image(datasets / "Classic5")
    clean = clean[..., 0] if clean.ndim == 3 else clean
    from napari_vdir.degradations import jpeg_roundtrip

    expected = _psnr(clean, jpeg_roundtrip(clean, 10).astype(np.float64))
    jpeg = r["methods"]["jpeg"]["metrics"][0]
    assert jpeg["psnr"] == pytest.approx(expected, abs=1e-9)
    assert jpeg["psnr_b"] < jpeg["psnr"]  # blocking is penalised
    assert r["model"].startswith("tiny-jpeg-x1-1ch") and np.isfinite(r["methods"]["ours"]["metrics"][0]["psnr"])


def test_psnr_b_has_no_penalty_without_blocking():
    rng = np.random.default_rng(0)
    ref = rng.random((64, 64))
    smooth = ndimage.gaussian_filter(ref, 2)
    assert ev.psnr_b(ref, smooth) == pytest.approx(_psnr(ref, smooth))


def test_settings_run_in_priority_order_and_cli_writes_reports(datasets, tiny_weights, tmp_path):
    order = [s.key for s in ev.settings_from(["Val20", "Set5", "CBSD68"])]
    assert order[:3] == ["CBSD68/sigma30", "CBSD68/sigma50", "Set5/x2_g2.0"] and order[-1] == "Set5/x2_aniso"

    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "real-denoise-rgb.safetensors").write_bytes(tiny_weights[("real-denoise", 1, 3)].read_bytes())
    out = tmp_path / "out"
    argv = ["--datasets", str(datasets), "--out", str(out), "--sets", "Val20", "--max-images", "1",
            "--methods", "noisy,skimage-wavelet,ours", "--models", str(folder)]
    report = ev.main(argv)
    (result,) = report["results"]
    assert result["n_images"] == 1 and set(result["methods"]) == {"noisy", "skimage-wavelet", "ours"}
    md = (out / "evaluation.md").read_text()
    assert "Command: `python -m napari_vdir.evaluate --datasets" in md and "| Val20 | camera | first 1 of 20 | 1 |" in md
    assert json.loads((out / "evaluation.json").read_text())["results"][0]["set"] == "Val20"

    merged = ev.main(["--out", str(tmp_path / "merged"), "--merge", str(out / "evaluation.json"),
                      str(out / "evaluation.json")])
    assert len(merged["results"]) == 1 and len(merged["commands"]) == 2


def test_ensemble_is_its_own_column(datasets, tiny_weights, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "real-denoise-rgb.safetensors").write_bytes(tiny_weights[("real-denoise", 1, 3)].read_bytes())
    setting = ev.settings_from(["Val20"])[0]
    assert "ours-x8" not in ev.make_methods(setting, None, folder)  # 8x slower: only on request
    report = ev.main(["--datasets", str(datasets), "--out", str(tmp_path / "out"), "--sets", "Val20",
                      "--max-images", "1", "--methods", "ours", "--ensemble", "--models", str(folder)])
    methods = report["results"][0]["methods"]
    assert set(methods) == {"ours", "ours-x8"}
    plain, x8 = (methods[m]["metrics"][0]["psnr"] for m in ("ours", "ours-x8"))
    assert plain != x8
    assert "| ours | ours-x8 |" in (tmp_path / "out" / "evaluation.md").read_text()
