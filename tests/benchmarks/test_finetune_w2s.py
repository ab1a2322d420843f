"""benchmarks/finetune_w2s.py (issue 33): the W2S fine-tuning / Noise2Void harness at budgets of seconds, and its
score. The real runs (CPU-minutes to an hour each) are benchmarks, not tests."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bench():
    threads = torch.get_num_threads()
    yield _load("finetune_w2s")
    torch.set_num_threads(threads)  # main() sets one thread


def _reference(rng) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(rng.random((96, 96)), 3)
    return (smooth - smooth.min()) / np.ptp(smooth) * 200 + 20  # 20-220: no clipping under the changes below


def test_matched_psnr_ignores_an_affine_change_and_not_noise(bench, rng):
    ev = _load("eval_w2s")
    ref = _reference(rng)
    stretched = 0.4 * ref + 10  # what a per-file contrast stretch does
    assert ev.psnr(stretched, ref) < 20  # plain PSNR punishes the stretch
    assert ev.matched_psnr(stretched, ref) > 80  # matched PSNR undoes it (inf up to rounding)
    assert ev.matched_psnr(ref, ref) > 80
    noise = rng.normal(128, 40, ref.shape)
    assert ev.matched_psnr(noise, ref) < 20  # no affine map turns noise into the image
    noisy = ref + rng.normal(0, 10, ref.shape)
    assert ev.matched_psnr(noisy, ref) == pytest.approx(ev.psnr(ev.affine_match(noisy, ref), ref))
    assert 25 < ev.matched_psnr(noisy, ref) < 30  # sigma 10: ~28 dB, a little better after the fit
    got = bench.scores([stretched, noise], [("a", None, ref), ("b", None, ref)])
    assert got["per_image"]["a"] > 80 and got["per_image"]["b"] < 20
    assert got["plain"] < 20
    assert bench.scores([stretched], [("a", None, ref)])["ssim"] > 0.999  # SSIM of the matched result
    assert bench.scores([noise], [("b", None, ref)])["ssim"] < 0.5


def test_fields_and_split(bench, tmp_path):
    assert bench.parse_fields("031-033,040") == [31, 32, 33, 40]
    assert bench.fields_text([21, 22, 23, 30]) == "021-023,030"
    with pytest.raises(SystemExit, match="both trained on and scored"):
        bench.main(["ours", "--w2s", str(tmp_path), "--train-fields", "21-22", "--score-fields", "22",
                    "--out", str(tmp_path / "r.md")])


def test_ours_at_a_tiny_budget(bench, datasets, tmp_path):
    """Two training fields, one scored field (cropped): the report's rows, and the start model's score equal to
    restore + eval_w2s's matched PSNR computed here."""
    w2s = datasets / "W2S"
    if not (w2s / "noisy").is_dir():
        pytest.skip("no W2S in ../shared/datasets")
    out = tmp_path / "finetune.md"
    assert bench.main(["ours", "--w2s", str(w2s), "--train-fields", "31-32", "--score-fields", "21", "--crop", "64",
                       "--budgets", "0.02", "--val-every", "5", "--latest", "--quiet", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    rows = {(e["family"], e["weights"], e["budget"]): e for e in data["entries"]}
    assert set(rows) == {("noisy", "-", 0), ("start", "start", 0), ("ours", "exported", 0.02),
                         ("ours", "latest", 0.02)}
    trained = rows[("ours", "exported", 0.02)]
    assert trained["steps"] >= 1 and trained["train_cpu_s"] >= 0.02 * 60
    assert trained["exported_as"] == "start" or trained["exported_as"].startswith("best@")
    assert len(trained["per_image"]) == 3  # field 021, three stains

    import napari_vdir

    ev = _load("eval_w2s")
    pairs = [(k, bench.centre_crop(n, 64), bench.centre_crop(c, 64)) for k, n, c in ev.validation_pairs(w2s, [21])]
    start = np.mean([ev.matched_psnr(napari_vdir.restore(n, "denoise", model="denoise-gray"), c) for _, n, c in pairs])
    assert rows[("start", "start", 0)]["matched"] == pytest.approx(start, abs=1e-6)
    noisy = np.mean([ev.matched_psnr(n, c) for _, n, c in pairs])
    assert rows[("noisy", "-", 0)]["matched"] == pytest.approx(noisy, abs=1e-6)
    assert start > noisy + 3
    if trained["exported_as"] == "start":  # kept unchanged: the same score as the start model
        assert trained["matched"] == pytest.approx(start, abs=1e-6)

    report = out.read_text()
    assert "SMOKE" not in report
    assert "| noisy input | - |" in report and "| denoise-gray, no training | start | **" in report
    assert "| 0.02 CPU-min |" in report and "Neighbor2Neighbor from denoise-gray: lr 3e-5, warm-up 50" in report  # a fine-tune's defaults
    assert "SMOKE RUN" in bench.render(data, smoke=True)

    # a rerun of another split into the same report is refused: one table, one protocol
    with pytest.raises(SystemExit, match="another split"):
        bench.main(["ours", "--w2s", str(w2s), "--train-fields", "33", "--score-fields", "21", "--crop", "64",
                    "--budgets", "0.01", "--quiet", "--out", str(out)])


def test_n2v_at_a_tiny_budget(bench, datasets, tmp_path):
    """CAREamics Noise2Void in its own environment (.venv-n2v, see the script's docstring); skipped without it."""
    if not bench.N2V_PYTHON.exists():
        pytest.skip("no CAREamics environment at .venv-n2v (benchmark only; see benchmarks/finetune_w2s.py)")
    w2s = datasets / "W2S"
    if not (w2s / "noisy").is_dir():
        pytest.skip("no W2S in ../shared/datasets")
    out = tmp_path / "n2v.md"
    assert bench.main(["n2v", "--w2s", str(w2s), "--train-fields", "31-32", "--score-fields", "21", "--crop", "64",
                       "--budgets", "0.01,0.02", "--variants", "n2v", "--quiet", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    n2v = sorted((e for e in data["entries"] if e["family"] == "n2v"), key=lambda e: e["budget"])
    assert [e["budget"] for e in n2v] == [0.01, 0.02]
    assert n2v[0]["steps"] <= n2v[1]["steps"] and all(np.isfinite(e["matched"]) for e in n2v)
    assert "CAREamics Noise2Void 0.3.5" in out.read_text()
