"""`python benchmarks/evaluate.py`: baselines follow the peers-v1 protocol, ours beats the input."""

from __future__ import annotations

import json

import evaluate as ev
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio
from skimage.transform import resize


@pytest.fixture
def shipped():
    """Skip when a shipped model is not in this checkout."""
    from napari_vdir.core.models import shipped_models

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
    from napari_vdir.core.degradations import jpeg_roundtrip

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
            "--methods", "noisy,skimage-wavelet,ours", "--models", str(folder), "--real-settings", "camera"]
    report = ev.main(argv)
    (result,) = report["results"]
    assert result["n_images"] == 1 and set(result["methods"]) == {"noisy", "skimage-wavelet", "ours"}
    md = (out / "evaluation.md").read_text()
    assert "Command: `python benchmarks/evaluate.py --datasets" in md and "| Val20 | camera | first 1 of 20 | 1 |" in md
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


def _y_psnr(ref, out, s):
    to_y = lambda a: (16 + 65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255  # noqa: E731
    return _psnr(to_y(ref)[s:-s, s:-s], to_y(np.clip(out, 0, 1))[s:-s, s:-s])


@pytest.mark.parametrize("level", ["x2_matlab", "x4_matlab"])
def test_realworld_sr_uses_the_sets_own_lr_files_with_a_bicubic_baseline(datasets, tiny_weights, level):
    s = int(level[1])
    models = {("sr", s, 3): tiny_weights[("sr", s, 3)]}
    r = ev.evaluate_setting(datasets, ev.Setting("Set5", level), methods=["bicubic", "bicubic-pil", "ours"],
                            max_images=1, models=models)
    hr = _first_image(datasets / "Set5" / "HR")  # baby.png, 512 x 512
    lr = np.asarray(Image.open(datasets / "Set5" / "LR_bicubic" / f"X{s}" / f"babyx{s}.png"), dtype=np.float64) / 255
    up = resize(lr, hr.shape, order=3, anti_aliasing=False)
    assert r["methods"]["bicubic"]["metrics"][0]["psnr"] == pytest.approx(_y_psnr(hr, up, s), abs=1e-9)
    keys = np.stack([np.asarray(Image.fromarray(lr[..., c].astype(np.float32)).resize(hr.shape[1::-1], Image.BICUBIC))
                     for c in range(3)], -1)
    assert r["methods"]["bicubic-pil"]["metrics"][0]["psnr"] == pytest.approx(_y_psnr(hr, keys, s), abs=1e-6)
    assert np.isfinite(r["methods"]["ours"]["metrics"][0]["psnr"])
    files = ev.lr_files(datasets, ev.Setting("Set5", level))
    assert len(files) == 5 and files["woman.png"].name == f"womanx{s}.png"
    assert ev.lr_files(datasets, ev.Setting("Set14", level)) == {}  # Set14 has none: matlab_bicubic makes them


def test_realworld_lr_images_are_made_as_the_libraries_make_them():
    rng = np.random.default_rng(0)
    hr = np.round(rng.random((24, 36, 3)) * 255) / 255
    u8 = np.round(hr * 255).astype(np.uint8)
    from skimage.transform import downscale_local_mean

    from napari_vdir.core.degradations import matlab_bicubic

    for s in (2, 4):
        area = ev.realworld_lr("area", hr, s)
        np.testing.assert_allclose(area, np.round(downscale_local_mean(hr, (s, s, 1)) * 255) / 255)
        pil = np.asarray(Image.fromarray(u8).resize((36 // s, 24 // s), Image.BICUBIC), dtype=np.float64) / 255
        np.testing.assert_array_equal(ev.realworld_lr("pillow", hr, s), pil)
        np.testing.assert_array_equal(ev.realworld_lr("matlab", hr, s), matlab_bicubic(u8, s) / 255.0)
        for kind in ev.REALWORLD:  # 8-bit values, pixel-centred: a flat image stays flat
            lr = ev.realworld_lr(kind, hr, s)
            assert lr.shape == (24 // s, 36 // s, 3) and np.allclose(lr * 255, np.round(lr * 255))
            assert np.allclose(ev.realworld_lr(kind, np.full((24, 36, 3), 100 / 255), s), 100 / 255)


def test_an_sr_level_makes_the_validation_set_an_sr_setting():
    """SR models are chosen on Val20 (benchmarks/val20_levels.py --task sr): its images take the SR levels."""
    hr = np.round(np.random.default_rng(1).random((24, 36, 3)) * 255) / 255
    setting = ev.Setting("Val20", "x4_area")
    assert (setting.task, setting.scale, setting.realworld) == ("sr", 4, True)
    ref, lr = ev.degrade(setting, hr, 0)
    np.testing.assert_array_equal(ref, hr)
    np.testing.assert_array_equal(lr, ev.realworld_lr("area", hr, 4))
    assert ev.Setting("Val20", "camera").task == "real" and ev.Setting("Set12", 30).task == "awgn"


def test_centred_paper_blur_is_the_paper_blur_half_a_pixel_on():
    ramp = np.broadcast_to(np.arange(64.0)[None, :, None], (64, 64, 3)) / 64
    _, corner = ev.degrade(ev.Setting("Set5", "x2_g2.0"), ramp, 0)
    _, centred = ev.degrade(ev.Setting("Set5", "x2_g2.0-centred"), ramp, 0)
    inner = slice(8, -8)
    np.testing.assert_allclose(corner[5, inner, 0] * 64, 2 * np.arange(32)[inner], atol=1e-9)
    np.testing.assert_allclose(centred[5, inner, 0] * 64, 2 * np.arange(32)[inner] + 0.5, atol=1e-9)
    with pytest.raises(ValueError):
        ev.degrade(ev.Setting("Set5", "x2_g2.0-sideways"), ramp, 0)


def test_realworld_settings_run_by_default_and_report_the_bicubic_margin(tmp_path):
    keys = [s.key for s in ev.settings_from(["Set14", "Set5"])]
    assert {f"Set14/{lv}" for lv in ev.REALWORLD_LEVELS} <= set(keys)
    assert "Set5/x2_g2.0" in keys and "Set5/x4_matlab" in keys and "Set14/x2_g2.0" not in keys
    fake = {"set": "Set14", "task": "sr", "setting": "x2_area", "n_images": 2, "images_in_set": 14, "model": None,
            "methods": {m: {"images": ["a", "b"], "metrics": [{"psnr": p, "ssim": 0.9, "psnr_rgb": p} for p in ps],
                            "seconds_per_mp": [1.0, 1.0]}
                        for m, ps in {"bicubic": (30.0, 31.0), "ours": (32.5, 33.0)}.items()}}
    report = {"commands": ["x"], "environment": "test", "results": [fake]}
    md = ev.to_markdown(report)
    assert "≥ bicubic + 2.0: met (+2.25) (on 2 of 14)" in md and "`area` = mean of every" in md
    fake["setting"] = "x4_area"
    assert "≥ bicubic + 1.5: met (+2.25)" in ev.to_markdown(report)
    fake["methods"]["ours"]["metrics"][1]["psnr"] = 31.0
    assert "not met (+1.25)" in ev.to_markdown(report)


def test_regrid_moves_a_corner_grid_image_onto_the_centred_grid():
    """regrid by the known phase: the corner-grid sampling of a smooth image becomes its centred sampling."""
    yy, xx = np.mgrid[0:128, 0:128] / 128.0
    hr = np.stack([np.sin(2 * np.pi * 3 * xx) * np.cos(2 * np.pi * 2 * yy)] * 3, -1) * 0.4 + 0.5
    for s in (2, 4):
        corner, centred = hr[::s, ::s], hr[(s - 1) // 2::s, (s - 1) // 2::s]
        if s % 2 == 0:  # half-integer centres: the mean of the two middle pixels on each axis
            c = s // 2
            centred = hr.reshape(128 // s, s, 128 // s, s, 3)[:, c - 1:c + 1, :, c - 1:c + 1].mean(axis=(1, 3))
        moved = ev.regrid(corner, s, "corner", "centred")
        inner = (slice(4, -4), slice(4, -4))
        assert np.abs(moved - centred)[inner].max() < 0.01 < np.abs(corner - centred)[inner].max()
        np.testing.assert_allclose(ev.regrid(moved, s, "centred", "corner")[inner], corner[inner], atol=0.01)
    assert ev.regrid(corner, 2, "centred", "centred") is corner
    assert ev.setting_grid(ev.Setting("Set5", "x2_g2.0")) == "corner"
    assert ev.setting_grid(ev.Setting("Set5", "x2_g2.0-centred")) == ev.setting_grid(ev.Setting("Set5", "x4_area"))


def test_paper_protocol_settings_run_the_paper_grid_model_where_there_is_one(tmp_path):
    paper, centred = ev.Setting("Set5", "x2_g2.0"), ev.Setting("Set5", "x2_matlab")
    both = {"sr-x2-rgb", "sr-x2-rgb-paper"}
    assert ev.shipped_model(paper, both) == "sr-x2-rgb-paper"
    assert ev.shipped_model(ev.Setting("Set5", "x2_g2.0-centred"), both) == "sr-x2-rgb"
    assert ev.shipped_model(centred, both) == "sr-x2-rgb"
    assert ev.shipped_model(paper, {"sr-x2-rgb"}) == "sr-x2-rgb"  # no paper model: the default one
    for name in both:
        (tmp_path / f"{name}.safetensors").write_bytes(b"")
    assert ev.model_for(paper, tmp_path).name == "sr-x2-rgb-paper.safetensors"
    assert ev.model_for(centred, tmp_path).name == "sr-x2-rgb.safetensors"


def test_clean_in_settings_give_the_model_the_reference_itself(datasets):
    kodak = _first_image(datasets / "Kodak24")
    for setting in (ev.Setting("Kodak24", ev.CLEAN), ev.Setting("Kodak24", ev.CAMERA_CLEAN),
                    ev.Setting("Classic5", ev.CLEAN)):
        ref, x = ev.degrade(setting, kodak, 0)
        assert np.array_equal(ref, x) and x is not ref and setting.label == setting.level
    ref, x = ev.degrade(ev.Setting("LIVE1-Y", ev.CLEAN), kodak, 0)  # the uint8 luma, as LIVE1-Y scores
    assert ref.ndim == 2 and np.array_equal(ref, x) and np.array_equal(ref, np.round(ref * 255) / 255)
    camera = ev.Setting("Kodak24", ev.CAMERA_CLEAN)
    assert camera.task == "real" and ev.Setting("Kodak24", ev.CLEAN).task == "awgn"
    assert ev.shipped_model(camera) == "real-denoise-rgb"
    # no input column (infinite PSNR) and no non-blind peer (it needs a sigma > 0)
    assert set(ev.make_methods(ev.Setting("Kodak24", ev.CLEAN), None)) == {"skimage-nlm", "skimage-wavelet", "ours"}
    assert set(ev.make_methods(ev.Setting("LIVE1", ev.CLEAN), None)) == {"skimage-tv", "ours"}


def test_camera_low_is_the_same_pipeline_with_less_noise(datasets):
    """Same gamma, mosaic and draws (seed 2000 + i), noise stds 1/8: only the noise differs, the demosaicing
    error (most of what a low-ISO camera leaves) stays."""
    import torch

    from napari_vdir.core import degradations as deg

    clean = _first_image(datasets / "Val20")
    default, low = (ev.degrade(ev.Setting("Val20", level), clean, 0)[1] for level in ("camera", "camera-low"))
    x = torch.from_numpy(clean.transpose(2, 0, 1).copy())[None]
    silent = deg.NoiseRanges(shot_sigma=(0.0, 0.0), read_sigma=(0.0, 0.0))
    demosaiced = deg.add_camera_noise(x, generator=torch.Generator().manual_seed(ev.CAMERA_SEED), ranges=silent)
    demosaiced = demosaiced[0].numpy().transpose(1, 2, 0)
    noise_default, noise_low = np.abs(default - demosaiced).mean(), np.abs(low - demosaiced).mean()
    assert 0 < noise_low < 0.25 * noise_default
    assert _psnr(clean, default) < _psnr(clean, low) < _psnr(clean, demosaiced)


def test_settings_from_takes_the_levels_of_each_task_a_set_has():
    keys = lambda **kw: [s.key for s in ev.settings_from(**kw)]  # noqa: E731
    assert set(keys(sets=["Kodak24"])) == {"Kodak24/sigma30", "Kodak24/sigma50", "Kodak24/clean",
                                           "Kodak24/camera-clean"}
    assert keys(sets=["Kodak24"], sigmas=[30]) == ["Kodak24/sigma30"]  # given levels replace the defaults
    assert keys(sets=["Kodak24"], real_settings=["camera"]) == ["Kodak24/camera"]
    assert keys(sets=["LIVE1"], qualities=[95, ev.CLEAN]) == ["LIVE1/q95", "LIVE1/clean"]
    assert ev.parse_args(["--sigmas", "clean,30"]).sigmas == [ev.CLEAN, 30]
    assert {"LIVE1/q90", "LIVE1/q95", "LIVE1/clean", "Classic5/clean", "Set12/clean", "Val20/camera-low"} <= \
        set(keys(sets=list(ev.DEFAULT_SETS)))


def _result(setting, per_method):
    """An evaluation result whose methods scored these per-image PSNRs (RGB PSNR the same)."""
    return {"set": setting.dataset, "task": setting.task, "setting": setting.label, "n_images": 2,
            "images_in_set": 2, "methods": {m: {"images": ["a", "b"], "seconds_per_mp": [1.0, 1.0],
                                                "metrics": [{"psnr": v, "ssim": 1.0, "psnr_rgb": v} for v in vals]}
                                            for m, vals in per_method.items()}}


@pytest.mark.parametrize("setting,base", [(ev.Setting("LIVE1", 95), "jpeg"), (ev.Setting("Val20", "camera-low"), "noisy")])
def test_light_degradations_are_scored_against_their_input(setting, base):
    """q90/q95 JPEG and the low-ISO camera: ours must gain 0.3 dB over what went in, not just be high."""
    r = _result(setting, {base: [40.0, 42.0], "ours": [40.5, 42.2]})
    assert ev._target(r, ev.summarise(r["methods"])).endswith("met (+0.35)")
    r = _result(setting, {base: [40.0, 42.0], "ours": [40.2, 42.2]})
    assert "not met (+0.20)" in ev._target(r, ev.summarise(r["methods"]))
    clean = _result(ev.Setting("Kodak24", ev.CLEAN), {"ours": [41.0, 42.0]})
    assert ev._target(clean, ev.summarise(clean["methods"])) == "≥ 42: not met"
