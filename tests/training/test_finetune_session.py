"""training.session.finetune: fine-tuning from in-memory arrays, headless (no napari, no Qt)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import napari_vdir
from napari_vdir.core import models
from napari_vdir.training import session
from napari_vdir.training.data import array_planes


def cells_stack(rng, planes: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) uint16 counts: blobs on a dim background, Poisson (12 photons at 1.0) + Gaussian read
    noise, on a 100-count camera offset (examples/noisy_stack.py's recipe; benchmarks/heldout_ranking.py scores
    its held-out losses on the same stack)."""
    from heldout_ranking import cells_counts

    return tuple(cells_counts(rng, planes, size))


def psnr(a, b, peak) -> float:
    return float(10 * np.log10(peak**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv(models.ENV_VAR, str(folder))
    return folder


# The full-trunk gray denoiser shipped before issue 15's retrain: on this stack (Poisson-Gaussian noise, which the
# shipped models are trained for) today's denoise-gray already scores 32.6 dB, above what 60 (or 300)
# Neighbor2Neighbor steps reach from either start (~32.0-32.4), so the mechanism is tested from the weaker start.
PREVIOUS_GRAY = Path(__file__).parents[2] / "training" / "stages" / "denoise-gray-full-trunk.safetensors"


@pytest.mark.parametrize("method", ["pseudo-clean", "neighbor2neighbor"])
def test_a_short_self_supervised_run_beats_the_model_it_starts_from(models_dir, method):
    """60 steps on the noisy uint16 stack alone (its clean twin is only for scoring), by the default method and by
    Neighbor2Neighbor. A low photon count the start never saw: the learning rate for data far from the start
    (3e-4), not the default."""
    noisy, clean = cells_stack(np.random.default_rng(0), planes=4, size=128)
    peak = float(clean.max()) - float(clean.min())
    records = []
    result = session.finetune(noisy, name="cells", init=PREVIOUS_GRAY, steps=60, patch=48, batch=4, lr=3e-4,
                              method=method, callback=records.append, seed=0)
    assert result.path == models_dir / "cells.safetensors" and result.metric == "val_loss"
    start = napari_vdir.restore(noisy, "denoise", model=PREVIOUS_GRAY, precision="float32")
    tuned = napari_vdir.restore(noisy, "denoise", model="cells", precision="float32")
    before, after = psnr(start, clean, peak), psnr(tuned, clean, peak)
    print(f"noisy {psnr(noisy, clean, peak):.2f} dB, start {before:.2f} dB, fine-tuned {after:.2f} dB")
    assert after > before + 0.5, (before, after)
    assert [r.step for r in records] == list(range(61))  # step 0 (the start's validation), then every step
    assert records[0].loss is None and all(r.loss is not None for r in records[1:])
    assert sum(r.val is not None for r in records) == 21  # every third step and step 0
    assert result.info.trained_steps > 60  # the start's steps plus these
    assert result.info.recipe["init"].endswith("denoise-gray-full-trunk.safetensors")


def test_pairs_train_supervised_and_report_validation_psnr(models_dir, tiny_weights):
    noisy, clean = cells_stack(np.random.default_rng(1), planes=3, size=48)
    shutil.copytree(tiny_weights[("denoise", 1, 1)].parent, models_dir)
    records = []
    result = session.finetune(noisy, clean, name="paired", init="tiny-denoise-x1-1ch", steps=20, batch=4,
                              lr=2e-3, callback=records.append)
    assert result.metric == "val_psnr" and result.info.recipe["self_supervised"] is None
    vals = [r.val for r in records if r.val is not None]
    assert len(vals) >= 2 and vals[-1] > vals[0]  # dB, from an untrained network
    assert "paired" in models.list_user_models()


def test_a_clean_twin_is_mapped_by_its_noisy_images_range():
    """One intensity scale per pair: the clean plane in the noisy array's units, not by its own range."""
    noisy, clean = cells_stack(np.random.default_rng(2), planes=2, size=32)
    (rng,) = session._ranges_for([noisy], None, None)
    low, high = napari_vdir.core.intensity.robust_range(noisy)
    assert rng == (low, high)
    plane = array_planes(clean, 1, intensity_range=rng)[1][..., 0]
    np.testing.assert_allclose(plane, (clean[1] - low) / (high - low), rtol=1e-6)
    assert session._ranges_for([noisy.astype(np.float32) / 65535], None, None) == [None]  # floats as they are
    assert session._ranges_for([noisy], [(0, 1000)], None) == [(0.0, 1000.0)]  # e.g. contrast limits


def test_cancel_stops_the_run_and_saves_nothing(models_dir, tiny_weights):
    shutil.copytree(tiny_weights[("denoise", 1, 1)].parent, models_dir)
    noisy, _ = cells_stack(np.random.default_rng(3), planes=2, size=32)
    stop = threading.Event()
    steps = []

    def on_step(record):
        steps.append(record.step)
        if record.step == 3:
            stop.set()

    with pytest.raises(session.TrainingCancelled):
        session.finetune(noisy, name="stopped", init="tiny-denoise-x1-1ch", steps=500, batch=2,
                         callback=on_step, cancel=stop)
    assert steps[-1] == 3
    assert not (models_dir / "stopped.safetensors").exists()
    assert not [p for p in models_dir.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name, error", [("denoise-gray", "shipped model"), ("a/b", "model name"),
                                         ("taken", "exists")])
def test_names_are_checked_before_training(models_dir, tiny_weights, name, error):
    models_dir.mkdir()
    shutil.copy(tiny_weights[("denoise", 1, 1)], models_dir / "taken.safetensors")
    with pytest.raises((ValueError, FileExistsError), match=error):
        session.finetune(np.zeros((32, 32), np.uint8), name=name, init="denoise-gray", steps=1)


def test_a_non_denoiser_needs_clean_images(models_dir):
    with pytest.raises(ValueError, match="only denoisers"):
        session.finetune(np.zeros((32, 32, 3), np.uint8), name="x", init="jpeg-rgb", steps=1)


def test_several_arrays_of_different_sizes_and_dtypes_train_together(models_dir, tiny_weights):
    """Like several layers chosen in the dock: each mapped by its own range, all planes in one run."""
    shutil.copytree(tiny_weights[("denoise", 1, 1)].parent, models_dir)
    counts, _ = cells_stack(np.random.default_rng(4), planes=2, size=48)
    floats = counts[0, :40, :36].astype(np.float32) / 4000.0  # a 2-D float image, another size
    result = session.finetune([counts, floats], name="both", init="tiny-denoise-x1-1ch", steps=10, batch=2,
                              intensity_range=[None, (0.0, 2.0)], labels=["stack", "float image"])
    assert result.info.recipe["data"]["train"] == ["stack", "float image"]
    assert result.info.recipe["patch"] == 32  # the smaller image's side, rounded down to a multiple of 8
    assert len(result.history) == 11
    with pytest.raises(ValueError, match="2 intensity ranges for 1 images"):
        session.finetune([counts], name="x", init="tiny-denoise-x1-1ch", steps=1, intensity_range=[None, None])


def test_colour_images_need_a_colour_model(models_dir):
    with pytest.raises(ValueError, match="gray model"):
        session.finetune(np.zeros((32, 32, 3), np.uint8), name="x", init="denoise-gray", steps=1)


# ----------------------------------------------------------------------------- issue 31: destination and inputs

def _steps_seen():
    seen = []
    return seen, (lambda record: seen.append(record.step))


def _read_only(folder: Path, monkeypatch) -> None:
    """``folder`` cannot be written: its permission bits say so, and where they do not bind (root) the
    writes into it fail as they would on a read-only mount."""
    import errno
    import os
    import tempfile

    folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    real = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's name
        if dir is not None and Path(dir) == folder:
            raise PermissionError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)


@pytest.mark.parametrize("problem, message", [("a file", "is a file, not a folder"),
                                              ("under a file", "which is a file"),
                                              ("read-only", "cannot be written")])
def test_the_destination_is_checked_before_training(tmp_path, monkeypatch, tiny_weights, problem, message):
    """Issue 31 item 4: with the models folder a file (or read-only) every step trained, then saving failed
    with OSError and the model was gone. Now nothing trains."""
    start = tiny_weights[("denoise", 1, 1)]
    folder = tmp_path / "models"
    if problem == "a file":
        folder.write_text("not a folder")
    elif problem == "under a file":
        (tmp_path / "home").write_text("a file")
        folder = tmp_path / "home" / "models"
    else:
        folder.mkdir()
        _read_only(folder, monkeypatch)
    monkeypatch.setenv(models.ENV_VAR, str(folder))
    seen, record = _steps_seen()
    noisy, _ = cells_stack(np.random.default_rng(5), planes=2, size=32)
    try:
        with pytest.raises(OSError, match=message) as err:
            session.finetune(noisy, name="mine", init=start, steps=3, batch=2, callback=record)
    finally:
        if folder.is_dir():
            folder.chmod(0o755)
    assert seen == [] and "\n" not in str(err.value) and str(folder) in str(err.value)


def test_a_model_that_cannot_be_saved_at_the_end_is_kept_where_the_message_says(models_dir, tiny_weights):
    """Issue 31 item 4: another process saved a model of the same name while this one trained: the run ended
    in FileExistsError and its model was discarded. Now the model is kept, and the message names where."""
    theirs = models_dir / "mine.safetensors"

    def meanwhile(record):
        if record.step == 2:
            shutil.copy(tiny_weights[("denoise", 1, 3)], theirs)  # someone else's model takes the name
    noisy, _ = cells_stack(np.random.default_rng(6), planes=2, size=32)
    with pytest.raises(session.ModelNotSaved) as err:
        session.finetune(noisy, name="mine", init=tiny_weights[("denoise", 1, 1)], steps=4, batch=2,
                         callback=meanwhile)
    kept = err.value.path
    assert str(kept) in str(err.value) and "\n" not in str(err.value) and "exists" in str(err.value)
    model, info = napari_vdir.core.weights.load_weights(kept)
    assert info.name == "mine" and info.recipe["steps_done"] == 4 and info.channels == 1
    assert theirs.read_bytes() == tiny_weights[("denoise", 1, 3)].read_bytes()  # theirs untouched
    restored = napari_vdir.restore(noisy, "denoise", model=kept, precision="float32")
    assert restored.shape == noisy.shape
    assert sorted(p.name for p in kept.parent.iterdir()) == ["log.csv", "mine.safetensors"]
    shutil.rmtree(kept.parent)


def test_a_models_folder_that_turns_read_only_keeps_the_model(models_dir, tiny_weights, monkeypatch):
    import errno

    def read_only(name, *args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system", str(models_dir / f"{name}.safetensors"))
    monkeypatch.setattr(models, "save_user_model", read_only)
    noisy, _ = cells_stack(np.random.default_rng(7), planes=2, size=32)
    with pytest.raises(session.ModelNotSaved, match="Read-only file system") as err:
        session.finetune(noisy, name="ro", init=tiny_weights[("denoise", 1, 1)], steps=2, batch=2)
    assert napari_vdir.core.weights.read_info(err.value.path).name == "ro"
    shutil.rmtree(err.value.path.parent)


@pytest.mark.parametrize("kind, error, message", [
    ("nan", ValueError, "NaN or inf"),
    ("bool", TypeError, "unsupported dtype bool"),
    ("int16 negative", ValueError, "negative values"),
    ("float 0-1e6", ValueError, "floats are taken as [0, 1] intensity"),
])
def test_arrays_are_checked_before_training_as_restore_checks_them(models_dir, tiny_weights, kind, error, message):
    """Issue 31 item 11: finetune accepted NaN, bool, int16 with negatives and floats on a 0-1e6 scale (then
    FloatingPointError after training had started). Each is now refused in one line before any step."""
    rng = np.random.default_rng(8)
    image = {"nan": np.where(rng.random((32, 32)) < 0.01, np.nan, rng.random((32, 32))).astype(np.float32),
             "bool": rng.random((32, 32)) > 0.5,
             "int16 negative": rng.integers(-50, 1000, (32, 32)).astype(np.int16),
             "float 0-1e6": (rng.random((32, 32)) * 1e6).astype(np.float32)}[kind]
    seen, record = _steps_seen()
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        session.finetune(image, name="x", init=tiny_weights[("denoise", 1, 1)], steps=2, batch=2, callback=record)
    assert seen == [] and "\n" not in str(err.value)
    if kind == "float 0-1e6":  # with an intensity range, as restore takes it, the same floats train
        session.finetune(image, name="scaled", init=tiny_weights[("denoise", 1, 1)], steps=2, batch=2,
                         intensity_range=(0.0, 1e6), callback=record)
        assert seen[-1] == 2 and (models_dir / "scaled.safetensors").is_file()


def test_a_two_channel_array_is_two_planes_as_restore_reads_it(models_dir, tiny_weights):
    """Issue 31 item 11: an (H, W, 2) array was read as 64 planes of 64x2 ("images of 2 px are too small").
    restore() reads a last axis of 2 as two channels, each normalised by its own range; so does finetune."""
    from napari_vdir.core.intensity import robust_range

    rng = np.random.default_rng(9)
    two = np.stack([rng.integers(100, 300, (64, 64)), rng.integers(1000, 30000, (64, 64))], -1).astype(np.uint16)
    planes = array_planes(two, 1)
    assert [p.shape for p in planes] == [(64, 64, 1), (64, 64, 1)]
    for k, plane in enumerate(planes):
        low, high = robust_range(two[..., k])
        np.testing.assert_allclose(plane[..., 0], (two[..., k] - low) / (high - low), rtol=1e-5, atol=1e-6)
    (ranges,) = session._ranges_for([two], None, None)
    assert np.asarray(ranges).shape == (2, 2)  # one range per channel, for the clean twin too
    result = session.finetune(two, name="two", init=tiny_weights[("denoise", 1, 1)], steps=2, batch=2)
    assert result.info.recipe["patch"] == 64
    assert len(array_planes(two, 1, rgb=False, channel_axis=False)) == 64  # explicitly no channels: 64 planes


# ----------------------------------------------------------------------------- issue 33 item 5: a budget in minutes

def test_a_minutes_budget_ends_training_in_about_that_time_and_validates_along_the_way(models_dir, tiny_weights,
                                                                                        monkeypatch):
    """``minutes`` is the recipe's wall-clock time budget: training stops once that much training time has
    passed (however many steps that is), and the run still validates about VAL_POINTS times along the way, at
    even shares of the time, and at its end (validations cheap enough: a small held-out set)."""
    import time

    from napari_vdir.training import trainer

    monkeypatch.setattr(trainer, "HELD_OUT_PIXELS", 2**12)
    monkeypatch.setattr(trainer, "VALIDATION_SHARE", 100.0)  # no spacing out on a loaded machine (tested below)
    shutil.copytree(tiny_weights[("denoise", 1, 1)].parent, models_dir)
    noisy, _ = cells_stack(np.random.default_rng(5), planes=3, size=48)
    records = []
    began = time.perf_counter()
    result = session.finetune(noisy, name="timed", init="tiny-denoise-x1-1ch", minutes=0.05, batch=4,
                              callback=records.append)
    wall = time.perf_counter() - began
    budget = 3.0  # seconds
    recipe = result.info.recipe
    assert recipe["time_budget_minutes"] == 0.05 and recipe["budget_clock"] == "wall"
    assert recipe["steps_done"] == records[-1].step > 10
    assert all(r.steps is None and r.minutes == 0.05 for r in records)
    trained = [r.train_seconds for r in records]
    slowest = max(b - a for a, b in zip(trained[1:], trained[2:], strict=False))
    assert budget <= trained[-1] <= budget + slowest + 1e-6  # stopped at the first step past the budget
    assert wall < budget + 12, wall  # the validations and preparing the data add a little, not a run's worth
    validated = [r for r in records if r.val is not None]
    assert validated[0].step == 0 and validated[-1] is records[-1]  # the start, and the end
    share = budget / session.VAL_POINTS
    assert session.VAL_POINTS // 2 <= len(validated) - 1 <= session.VAL_POINTS, len(validated)
    for k, r in enumerate(validated[1:-1], start=1):  # at most one per share of the time, each past its share
        assert r.train_seconds >= k * share
    assert result.outcome is not None and "against the starting model" in result.outcome


def test_validations_that_cost_more_than_their_share_of_the_time_are_spaced_out(models_dir, tiny_weights,
                                                                                 monkeypatch):
    """A validation (Stein's estimate on 2^18 held-out pixels) costs seconds on a CPU: in a short budget the run
    validates less often than VAL_POINTS times, so that validating adds at most about VALIDATION_SHARE of the
    training time, and still at the start and the end."""
    import time

    from napari_vdir.training import trainer

    slow = 0.3  # seconds per validation
    plain = trainer.Trainer.validate_self_supervised

    def slow_validation(self):
        time.sleep(slow)
        return plain(self)

    monkeypatch.setattr(trainer, "HELD_OUT_PIXELS", 2**12)
    monkeypatch.setattr(trainer.Trainer, "validate_self_supervised", slow_validation)
    shutil.copytree(tiny_weights[("denoise", 1, 1)].parent, models_dir)
    noisy, _ = cells_stack(np.random.default_rng(5), planes=3, size=48)
    records = []
    session.finetune(noisy, name="spaced", init="tiny-denoise-x1-1ch", minutes=0.05, batch=4, callback=records.append)
    validated = [r for r in records if r.val is not None]
    assert validated[0].step == 0 and validated[-1] is records[-1]
    gap = slow / trainer.VALIDATION_SHARE  # 2 s of training between validations, not 3 s / VAL_POINTS
    assert 2 <= len(validated) <= 2 + 3.0 / gap, [r.train_seconds for r in validated]
    for k, r in enumerate(validated[1:-1], start=1):
        assert r.train_seconds >= k * gap


def test_minutes_or_steps_not_both_and_minutes_by_default(models_dir, tiny_weights, monkeypatch):
    shutil.copytree(tiny_weights[("denoise", 1, 1)].parent, models_dir)
    noisy, _ = cells_stack(np.random.default_rng(6), planes=2, size=32)
    seen, record = _steps_seen()
    with pytest.raises(ValueError, match="minutes .* or steps .*, not both"):
        session.finetune(noisy, name="both", init="tiny-denoise-x1-1ch", minutes=1, steps=10, callback=record)
    for bad in (0, -1.0, float("inf"), float("nan"), "5", True):
        with pytest.raises(ValueError, match="minutes must be a positive number"):
            session.finetune(noisy, name="bad", init="tiny-denoise-x1-1ch", minutes=bad, callback=record)
    with pytest.raises(ValueError, match="steps must be a whole number"):
        session.finetune(noisy, name="bad", init="tiny-denoise-x1-1ch", steps=0, callback=record)
    assert seen == []  # refused before any training
    monkeypatch.setattr(session, "DEFAULT_MINUTES", 0.01)
    result = session.finetune(noisy, name="default", init="tiny-denoise-x1-1ch", batch=2)
    assert result.info.recipe["time_budget_minutes"] == 0.01  # neither given: a time budget
    from napari_vdir.training.config import FINETUNE_METHOD, FINETUNE_NOISY

    recipe, defaults = result.info.recipe, FINETUNE_NOISY[FINETUNE_METHOD]
    assert recipe["self_supervised"] == FINETUNE_METHOD == session.METHODS[0]
    assert (recipe["adapt"], recipe["lr"], recipe["warmup_steps"]) == (defaults["adapt"], defaults["lr"],
                                                                       defaults["warmup_steps"])
    assert recipe["losses"]["decoder"] == defaults.get("losses", {}).get("decoder", 1.0)
    from napari_vdir.training.config import ADAPT_LR

    biases = session.finetune(noisy, name="biases", init="tiny-denoise-x1-1ch", batch=2, adapt="biases")
    assert (biases.info.recipe["adapt"], biases.info.recipe["lr"]) == ("biases", ADAPT_LR["biases"])
    stepped = session.finetune(noisy, name="stepped", init="tiny-denoise-x1-1ch", steps=4, batch=2)
    assert stepped.info.recipe["time_budget_minutes"] is None and stepped.info.recipe["steps_done"] == 4


def test_a_budgeted_recipe_without_val_points_still_validates_by_steps(tmp_path, tiny_weights):
    """The training CLI's runs (fit without val_points) keep validating every val_every steps under a budget."""
    from napari_vdir.training.config import Recipe
    from napari_vdir.training.data import ArrayData
    from napari_vdir.training.trainer import Trainer

    noisy, _ = cells_stack(np.random.default_rng(7), planes=3, size=32)
    planes = array_planes(noisy, 1)
    recipe = Recipe.model_validate(dict(
        name="cli", task="denoise", channels=1, init=str(tiny_weights[("denoise", 1, 1)]), data={"train": ["x"]},
        steps=12, patch=32, batch=2, self_supervised="neighbor2neighbor", val_every=4, checkpoint_every=100,
        time_budget_minutes=60, losses={"gan": 0.0}))
    trainer = Trainer(recipe, tmp_path / "run", log=lambda *_: None)
    trainer.load_data(ArrayData(planes, None))
    trainer.fit()
    assert [row["step"] for row in trainer.history] == [0, 4, 8, 12]
