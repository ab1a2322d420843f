"""What a run exports: the best-validated weights of a fine-tune (never below its start), and the moving
average of the weights where it validates better (issues 33 and 34)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from napari_vdir import restore
from napari_vdir.training.__main__ import main as training_main
from napari_vdir.training.trainer import Trainer
from napari_vdir.core.weights import load_weights, read_info


def rows_of(log) -> list[dict]:
    with open(log, newline="") as fh:
        return list(csv.DictReader(fh))


def same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k].float().cpu(), b[k].float().cpu()) for k in a)


def distance(a: dict, b: dict) -> float:
    return max(float((a[k].float().cpu() - b[k].float().cpu()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def start_model(image_folder, tmp_path_factory, tiny_recipe):
    """A tiny denoiser trained a little, to fine-tune from."""
    out = tmp_path_factory.mktemp("start")
    return Trainer(tiny_recipe(image_folder, steps=30, val_every=30, checkpoint_every=30), out, device="cpu",
                   precision="float32").fit()


def test_a_fine_tune_that_only_gets_worse_saves_its_start_unchanged(image_folder, start_model, tmp_path, capsys):
    """A learning rate far too high wrecks the weights at once: the latest weights validate worse than the start,
    so the exported file holds the starting model's weights bit for bit and the CLI says so."""
    code = training_main([
        "--task", "denoise", "--data", str(image_folder), "--val", str(image_folder), "--init", str(start_model),
        "--steps", "4", "--val-every", "2", "--patch", "32", "--batch", "2", "--lr", "0.03", "--warmup-steps", "0",
        "--out", str(tmp_path),
        "--quiet", "--device", "cpu", "--precision", "float32"])
    assert code == 0
    rows = rows_of(tmp_path / "log.csv")
    assert [r["exported"] for r in rows] == ["start"] * 3
    assert max(float(r["val_psnr"]) for r in rows[1:]) < float(rows[0]["val_psnr"])  # it did get worse
    saved, _ = load_weights(tmp_path / "denoise.safetensors")
    start, _ = load_weights(start_model)
    assert same_weights(saved.state_dict(), start.state_dict())
    assert read_info(tmp_path / "denoise.safetensors").quality["weights"] == "start"
    assert "the starting model stayed best" in capsys.readouterr().out


def test_without_keep_best_the_latest_weights_are_saved(image_folder, start_model, tmp_path):
    """The same run with --no-keep-best exports the wrecked latest weights: what the test above guards against."""
    code = training_main([
        "--task", "denoise", "--data", str(image_folder), "--val", str(image_folder), "--init", str(start_model),
        "--steps", "4", "--val-every", "2", "--patch", "32", "--batch", "2", "--lr", "0.03", "--warmup-steps", "0",
        "--out", str(tmp_path),
        "--quiet", "--device", "cpu", "--precision", "float32", "--no-keep-best"])
    assert code == 0
    saved, _ = load_weights(tmp_path / "denoise.safetensors")
    start, _ = load_weights(start_model)
    assert not same_weights(saved.state_dict(), start.state_dict())


def test_a_fine_tune_that_improves_keeps_its_best_validation(image_folder, start_model, tmp_path, tiny_recipe):
    recipe = tiny_recipe(image_folder, init=str(start_model), arch={}, steps=12, val_every=3, lr=3e-4)
    trainer = Trainer(recipe, tmp_path, device="cpu", precision="float32")
    path = trainer.fit()
    rows = rows_of(tmp_path / "log.csv")
    scores = [float(r["val_psnr"]) for r in rows]
    best = int(np.argmax(scores))
    assert rows[-1]["exported"] == ("start" if best == 0 else f"best@{rows[best]['step']}")
    with torch.no_grad():
        y = trainer.val[0].degraded
        saved, _ = load_weights(path)
        psnr_saved = float(-10 * torch.log10(((saved(y).image - trainer.val[0].clean) ** 2).mean()))
    assert psnr_saved >= scores[0] - 0.05  # no worse than the start (validation crops, float32)
    assert trainer.outcome().startswith("validation PSNR +") or "stayed best" in trainer.outcome()


def test_the_moving_average_follows_its_formula_and_is_exported_where_it_validates_better(image_folder, tmp_path, tiny_recipe):
    decay = 0.8
    recipe = tiny_recipe(image_folder, steps=6, val_every=3, ema_decay=decay, lr=1e-2)  # steps large enough to tell apart
    trainer = Trainer(recipe, tmp_path, device="cpu", precision="float32")
    expected = {k: v.detach().float().clone() for k, v in trainer.model.state_dict().items()}

    def follow(tr, row):  # the average, recomputed from the weights after every step
        d = min(decay, tr.step / (9 + tr.step))  # (1 + t) / (10 + t) with t the step before it was counted
        for k, v in tr.model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v.detach().float()

    trainer.fit(progress=follow)
    for k, v in expected.items():
        torch.testing.assert_close(trainer.ema[k], v, rtol=1e-5, atol=1e-6)
    last = rows_of(tmp_path / "log.csv")[-1]
    ema_wins = float(last["val_psnr_ema"]) > float(last["val_psnr"])
    assert last["exported"] == ("ema" if ema_wins else "latest")
    saved = load_weights(tmp_path / "tiny.safetensors")[0].state_dict()  # stored as float16
    chosen, other = (trainer.ema, trainer.model.state_dict()) if ema_wins else (trainer.model.state_dict(), trainer.ema)
    assert distance(saved, chosen) < 1e-3 and distance(saved, chosen) < 0.2 * distance(saved, other)


def test_a_fine_tunes_moving_average_starts_as_the_start_and_moves_at_the_full_decay(image_folder, start_model,
                                                                                     tmp_path, tiny_recipe):
    """From trained weights (init) there is no ramp: the average is d * average + (1 - d) * weights from the first
    step, so after a few steps at a learning rate that wrecks the latest weights it is still near the start."""
    decay = 0.9
    recipe = tiny_recipe(image_folder, init=str(start_model), steps=6, val_every=6, ema_decay=decay, lr=3e-2,
                         warmup_steps=0)
    trainer = Trainer(recipe, tmp_path, device="cpu", precision="float32")
    start = {k: v.detach().float().clone() for k, v in trainer.model.state_dict().items()}
    expected = {k: v.clone() for k, v in start.items()}

    def follow(tr, row):
        for k, v in tr.model.state_dict().items():
            expected[k] = decay * expected[k] + (1 - decay) * v.detach().float()

    trainer.fit(progress=follow)
    for k, v in expected.items():
        torch.testing.assert_close(trainer.ema[k], v, rtol=1e-5, atol=1e-6)
    assert distance(trainer.ema, start) < 0.7 * distance(trainer.model.state_dict(), start)


def test_resume_keeps_the_average_and_the_best(image_folder, tmp_path, tiny_recipe):
    recipe = tiny_recipe(image_folder, ema_decay=0.9, keep_best=True)
    straight = Trainer(recipe, tmp_path / "a", device="cpu", precision="float32")
    straight.fit()
    half = Trainer(recipe, tmp_path / "b", device="cpu", precision="float32")
    half.fit(stop_at=3)
    resumed = Trainer(recipe, tmp_path / "b", device="cpu", precision="float32")
    resumed.load_data()
    resumed.resume(tmp_path / "b" / "checkpoint.pt")
    resumed.fit()
    assert same_weights(straight.ema, resumed.ema)
    assert straight.best["step"] == resumed.best["step"] and same_weights(straight.best["state"], resumed.best["state"])


@pytest.mark.parametrize("value", [0.0, 1.0, 1.5])
def test_the_decay_is_checked(image_folder, value, tiny_recipe):
    with pytest.raises(ValueError, match="ema_decay"):
        tiny_recipe(image_folder, ema_decay=value)


@pytest.mark.parametrize("method", ["neighbor2neighbor", "pseudo-clean"])
def test_the_shipped_gray_model_fine_tuned_on_what_it_handles_well_is_no_worse(tmp_path, monkeypatch, method):
    """Issue 33: a self-supervised fine-tune of denoise-gray at the training CLI's from-scratch learning rate on
    a noisy natural image (sigma 25, which the model already restores well) returns a model no worse than its
    start against the clean image."""
    from skimage import data

    from napari_vdir.training.session import finetune

    monkeypatch.setenv("NAPARI_VDIR_MODELS", str(tmp_path / "models"))
    clean = data.camera()[96:352, 96:352].astype(np.float32) / 255
    noisy = np.stack([clean + np.random.default_rng(i).normal(0, 25 / 255, clean.shape).astype(np.float32)
                      for i in range(4)])
    start = restore(noisy[0], "denoise", model="denoise-gray", device="cpu", precision="float32", backend="torch")
    result = finetune(noisy, name="mine", init="denoise-gray", steps=20, lr=1e-3, device="cpu", precision="float32",
                      method=method, notify=False)
    tuned = restore(noisy[0], "denoise", model=result.path, device="cpu", precision="float32", backend="torch")

    def psnr(x):
        return 10 * np.log10(1 / np.mean((np.clip(x, 0, 1) - clean) ** 2))

    assert psnr(tuned) >= psnr(start) - 0.02, (psnr(tuned), psnr(start), result.outcome)
    assert result.outcome and (result.start_kept == ("stayed best" in result.outcome))
