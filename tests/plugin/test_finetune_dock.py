"""The Fine-tune dock in a real viewer: a run saves a user model that restore() finds by name, the plot
fills, Cancel saves nothing, and the dock does not grow."""

from __future__ import annotations

import numpy as np
import pytest

import napari_vdir
from napari_vdir.core import models
from napari_vdir.core.weights import load_weights

pytestmark = pytest.mark.gui


def noisy_stack(rng, planes: int = 3, size: int = 48) -> np.ndarray:
    """uint16 counts of blurry blobs with Poisson-Gaussian noise on a 100-count offset."""
    yy, xx = np.mgrid[:size, :size]
    clean = np.full((planes, size, size), 0.05)
    for z in range(planes):
        for _ in range(5):
            cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(3, 8)
            clean[z] += 0.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    noisy = rng.poisson(clean * 12) / 12 + rng.normal(0, 0.03, clean.shape)
    return np.clip(np.rint(noisy * 4000 + 100), 0, 65535).astype(np.uint16)


@pytest.fixture
def dock(make_napari_viewer, models_dir, rng):
    from napari_vdir.plugin._qt.finetune_dock import FineTuneDock

    viewer = make_napari_viewer(show=True)  # shown: the dock's width is laid out for real
    viewer.add_image(noisy_stack(rng), name="cells")
    widget = FineTuneDock(viewer)
    widget.dock_widget = viewer.window.add_dock_widget(widget, name="Fine-tune (VDIR)")
    assert "tiny-start" in widget.model.choices  # a user model is a starting point
    widget.model.value = "tiny-start"
    widget.by_steps.value = True  # a known number of steps (the dock's default is a training time)
    widget.steps.value = 10
    widget.batch.value = 4
    return widget


def test_a_run_from_the_dock_saves_a_model_that_restore_finds_by_name(dock, models_dir, qtbot):
    from napari_vdir.plugin._qt.restore_dock import RestoreDock

    data = dock._viewer.layers["cells"].data
    restore_dock = RestoreDock(dock._viewer)
    dock._viewer.window.add_dock_widget(restore_dock, name="Restore (VDIR)")
    assert "cells-tuned" not in restore_dock.model.choices
    dock.name.value = "cells-tuned"
    changes = []
    unsubscribe = models.on_user_models_changed(lambda: changes.append(dock.model.choices))
    qtbot.wait(10)
    width_before, height_before = dock.dock_widget.width(), dock.native.sizeHint().height()
    try:
        worker = dock.run()
        assert worker is not None and dock.running
        with qtbot.waitSignal(worker.finished, timeout=300_000):
            pass
    finally:
        unsubscribe()
    saved = models_dir / "cells-tuned.safetensors"
    assert saved.is_file(), dock.status.value
    model, info = load_weights(saved)
    assert info.name == "cells-tuned" and info.recipe["self_supervised"] == "neighbor2neighbor"
    assert info.recipe["steps_done"] == 10 and info.recipe["data"]["train"] == ["cells"]
    assert changes and "cells-tuned" in dock.model.choices  # announced; this dock's own list has it too
    qtbot.waitUntil(lambda: "cells-tuned" in restore_dock.model.choices, timeout=5_000)  # and the Restore dock's
    restored = napari_vdir.restore(data, "denoise", model="cells-tuned", precision="float32")
    assert restored.shape == data.shape and restored.dtype == data.dtype
    assert dock.plot.train_points and [s for s, _ in dock.plot.train_points] == list(range(1, 11))
    assert len(dock.plot.val_points) >= 2 and dock.plot.val_points[0][0] == 0  # the start and later validations
    assert dock.progress.value == dock.progress.max
    assert worker.pbar.total == 11 and worker.pbar.n == 11  # napari's activity list: step 0 and 10 steps
    from napari_vdir.plugin.finetune import outcome_text

    assert "cells-tuned" in dock.status.value and dock.status.value == outcome_text(dock.last_result)
    assert dock.name.value != "cells-tuned"  # a fresh name is offered for the next run
    qtbot.wait(10)
    assert len(dock.status.value) > 40  # the saved model's folder: long text, which must not widen the dock
    assert dock.dock_widget.width() == width_before
    assert dock.native.sizeHint().height() == height_before


def test_cancel_stops_training_and_saves_nothing(dock, models_dir, qtbot):
    dock.steps.value = 5000
    dock.name.value = "never-saved"
    worker = dock.run()

    def cancel_at_third_step(record):
        if record.step >= 3:
            dock.cancel()

    worker.yielded.connect(cancel_at_third_step)
    with qtbot.waitSignal(worker.finished, timeout=300_000):
        pass
    assert not (models_dir / "never-saved.safetensors").exists()
    assert not any(p.name.startswith(".") for p in models_dir.iterdir())  # no partial file either
    assert dock.status.value == "cancelled; nothing saved"
    assert 3 <= dock.plot.train_points[-1][0] < 5000
    assert not dock.running and dock.run_button.enabled


def test_a_second_run_is_refused_while_one_runs_and_errors_are_notifications(dock, qtbot, monkeypatch, rng):
    from napari_vdir.plugin._qt import worker

    messages = []
    monkeypatch.setattr(worker, "show_error", messages.append)
    monkeypatch.setattr(worker, "show_info", messages.append)
    dock._viewer.add_image(noisy_stack(rng, planes=3, size=40), name="clean of another size")
    dock.clean.value = dock._viewer.layers["clean of another size"]
    dock.name.value = "mismatched"
    worker = dock.run()  # the sizes are found out in the worker: its error must come back as a notification
    assert worker is not None
    assert dock.run() is None and "already running" in messages[-1]
    qtbot.waitUntil(lambda: not dock.running, timeout=60_000)
    assert "sizes do not match" in messages[-1] and dock.status.value == "failed"
    for name, expected in (("denoise-gray", "shipped model"), ("bad/name", "model name"),
                           ("tiny-start", "exists in your models folder")):
        dock.name.value = name
        assert dock.run() is None and expected in messages[-1]
    dock.name.value = "fine"
    dock.noisy.value = []
    assert dock.run() is None and "noisy layer" in messages[-1]
    assert not dock.running


def test_layers_are_prepared_as_the_restore_dock_prepares_them(dock):
    """Contrast limits as wide as a hot pixel (or the dtype) are narrowed to the data's robust range and padded
    as for restoring; the hot pixel itself is clipped before training. A clean twin gets the noisy range."""
    from napari_vdir.plugin import layers
    from napari_vdir.plugin.finetune import training_inputs

    layer = dock._viewer.layers["cells"]
    hot = layer.data.copy()
    hot[0, 0, 0] = 65535
    layer.data = hot
    layer.contrast_limits = (0, 65535)
    settings = dock.settings()
    assert [s.name for s in settings["noisy_snaps"]] == ["cells"] and settings["clean_snap"] is None
    snap = settings["noisy_snaps"][0]
    prepared = training_inputs([snap], snap)
    (rng,) = prepared["intensity_range"]
    assert rng == layers.padded_range(layers.layer_intensity_range(snap, None))  # what restore_layer uses
    low, high = rng
    assert low < 0 < high < 10_000  # padded robust range: bright cells ~2000-4000 counts
    noisy, clean = prepared["noisy"][0], prepared["clean"][0]
    assert noisy[0, 0, 0] < 15_000 and clean[0, 0, 0] == noisy[0, 0, 0]  # clipped, by the same range
    assert np.array_equal(noisy[1:], hot[1:])  # nothing else changed


def test_the_start_model_follows_the_chosen_layers(make_napari_viewer, models_dir, qtbot, rng):
    """Issue 31 (friction): on an RGB layer the dock started from denoise-gray and Run failed ("denoise-gray is a
    gray model"). RGB layers now start from denoise-rgb, gray and multichannel ones from denoise-gray; and a
    run on the RGB layer with what the dock chose trains and saves."""
    from napari_vdir.plugin._qt.finetune_dock import FineTuneDock

    viewer = make_napari_viewer()
    viewer.add_image(noisy_stack(rng, planes=2), name="gray")
    viewer.add_image(np.moveaxis(noisy_stack(rng, planes=2), 0, -1), name="two channels")
    viewer.add_image((rng.random((32, 32, 3)) * 255).astype(np.uint8), name="photo", rgb=True)
    dock = FineTuneDock(viewer)
    assert [layer.name for layer in dock.noisy.value] == ["photo"]  # the top layer
    assert dock.model.value == "denoise-rgb"
    dock.noisy.value = [viewer.layers["gray"]]
    assert dock.model.value == "denoise-gray"
    dock.noisy.value = [viewer.layers["photo"]]
    assert dock.model.value == "denoise-rgb"
    dock.noisy.value = [viewer.layers["two channels"]]
    assert dock.model.value == "denoise-gray"
    dock.model.value = "tiny-start"  # a gray model the user chose for gray data is kept
    dock.noisy.value = [viewer.layers["gray"]]
    assert dock.model.value == "tiny-start"

    dock.noisy.value = [viewer.layers["photo"]]
    assert dock.model.value == "denoise-rgb"
    dock.by_steps.value = True
    dock.steps.value = 10
    dock.batch.value = 1
    dock.name.value = "photo-tuned"
    worker = dock.run()
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=300_000):
        pass
    assert (models_dir / "photo-tuned.safetensors").is_file(), dock.status.value
    assert load_weights(models_dir / "photo-tuned.safetensors")[1].channels == 3


def test_a_two_channel_layer_trains_on_its_channels(dock, models_dir):
    """Issue 31 item 11: a (H, W, 2) layer is two channels, as the Restore dock reads it (not 64 planes)."""
    from napari_vdir.plugin.finetune import training_inputs

    layer = dock._viewer.add_image(np.moveaxis(noisy_stack(np.random.default_rng(1), planes=2), 0, -1),
                                   name="two channels")
    dock.noisy.value = [layer]
    settings = dock.settings()
    inputs = training_inputs(settings.pop("noisy_snaps"), settings.pop("clean_snap"))
    assert inputs["channel_axis"] == [2] and np.asarray(inputs["intensity_range"][0]).shape == (2, 2)
    from napari_vdir.training import session

    result = session.finetune(**settings, **inputs, notify=False)
    assert result.info.recipe["patch"] == 48  # planes of 48 x 48, not 48 x 2


def test_a_models_folder_that_cannot_take_the_result_is_refused_before_training(dock, qtbot, monkeypatch, tmp_path):
    """Issue 31 item 4: the dock trained every step, then failed to save. Now Run is refused up front."""
    from napari_vdir.plugin._qt import worker

    messages = []
    monkeypatch.setattr(worker, "show_error", messages.append)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv(models.ENV_VAR, str(blocker))
    dock.name.value = "anything"
    assert dock.run() is None and not dock.running
    assert "is a file, not a folder" in messages[-1] and str(blocker) in messages[-1]


# ----------------------------------------------------------------------------- issue 33 item 5: the dock speaks minutes

def _start_line_drawn(plot) -> bool:
    """Whether the rendered plot has the start colour along the row start_y() names (a dashed line: about
    half of the box's width)."""
    from qtpy.QtGui import QColor

    plot.repaint()
    image = plot.grab().toImage()
    ratio = image.width() / max(1, plot.width())  # device pixels per widget pixel
    box, y = plot.plot_box(), plot.start_y()

    def is_start(x, row):
        c = QColor(image.pixel(int(x * ratio), row))
        return c.blue() > 150 and c.red() < 120 and abs(c.red() - plot.START.red()) < 60

    rows = range(max(0, int((y - 1) * ratio)), min(image.height(), int((y + 1) * ratio) + 1))
    xs = range(int(box.left()) + 2, int(box.right()) - 2)
    hits = sum(any(is_start(x, row) for row in rows) for x in xs)
    return hits > 0.3 * len(xs)


def test_a_run_of_some_minutes_from_the_dock(dock, models_dir, qtbot, monkeypatch):
    """Training time is the dock's setting (steps, under Advanced, replace it when set): a run of 0.05
    minutes trains about that long, the plot's x axis is that time, the start model's held-out loss is a
    line, and the status says whether the saved model beat the start."""
    from napari_vdir.plugin.finetune import outcome_text
    from napari_vdir.training import trainer

    monkeypatch.setattr(trainer, "HELD_OUT_PIXELS", 2**12)  # cheap validations: several in 3 s
    monkeypatch.setattr(trainer, "VALIDATION_SHARE", 100.0)  # and never spaced out on a loaded machine

    assert not dock.minutes.enabled  # the fixture chose 10 steps, which replace the training time
    dock.by_steps.value = False  # the dock's default: the training time decides
    assert dock.minutes.enabled and dock.minutes.visible and not dock.steps.enabled
    assert dock.minutes in list(dock) and dock.steps not in list(dock)  # the primary setting; steps: Advanced
    assert dock.steps in list(dock.advanced)
    dock.minutes.value = 0.05
    dock.name.value = "cells-minutes"
    settings = dock.settings()
    assert settings["minutes"] == 0.05 and "steps" not in settings
    worker = dock.run()
    assert worker is not None and dock.status.value.endswith("(0.05 min)…")
    assert worker.pbar.total == 0  # napari's activity list: busy (the number of steps is not known)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    res = dock.last_result
    assert res is not None, dock.status.value
    assert res.info.recipe["time_budget_minutes"] == 0.05 and res.info.recipe["budget_clock"] == "wall"
    plot = dock.plot
    assert plot.minutes == 0.05 and plot.extent == 3.0
    assert 3.0 <= plot.train_points[-1][0] < 4.0  # seconds of training on the x axis, up to the budget
    assert len(plot.val_points) >= 6  # the start and several validations along the way
    assert plot.val_points[0] == (0.0, res.history[0].val) and plot.start_level == res.history[0].val
    assert _start_line_drawn(plot)
    assert dock.progress.value == dock.progress.max
    assert dock.status.value == outcome_text(res) and res.outcome in dock.status.value
    if res.start_kept:
        assert dock.status.value.startswith("not better than the start: ")
    else:
        assert dock.status.value.startswith("better than the start: ") and "not better" not in dock.status.value


def test_steps_replace_the_minutes_and_the_status_says_when_the_start_stayed_best(dock, models_dir, qtbot):
    """One Neighbor2Neighbor step at the highest learning rate makes the tiny model worse on the held-out plane
    (deterministic: seed 0, one step): the start model is saved unchanged, and the status says so. (The tiny start
    is randomly initialised: pseudo-clean would learn its random output.)"""
    from napari_vdir.plugin._qt.finetune_dock import METHOD_LABELS

    dock.method.value = next(label for label, method in METHOD_LABELS.items() if method == "neighbor2neighbor")
    dock.steps.value = 1
    assert dock.by_steps.value and not dock.minutes.enabled  # steps chosen: the training time is not used
    dock.lr.value = 1e-2
    dock.name.value = "cells-one-step"
    settings = dock.settings()
    assert settings["steps"] == 1 and "minutes" not in settings
    worker = dock.run()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    res = dock.last_result
    assert res is not None and res.start_kept, (dock.status.value, res and res.outcome)
    assert res.info.recipe["steps_done"] == 1 and res.info.recipe["time_budget_minutes"] is None
    assert dock.status.value.startswith("not better than the start: the starting model stayed best")
    assert "saved unchanged as cells-one-step (" in dock.status.value
    assert [s for s, _ in dock.plot.val_points] == [0, 1] and dock.plot.val_points[1][1] > dock.plot.start_level
    assert _start_line_drawn(dock.plot)
    # the saved model is the start's weights (as float16 stores them; one Adam step at 1e-2 moves each by ~1e-2)
    start, _ = load_weights(models_dir / "tiny-start.safetensors")
    saved, _ = load_weights(models_dir / "cells-one-step.safetensors")
    for (k, a), b in zip(start.state_dict().items(), saved.state_dict().values(), strict=True):
        assert np.allclose(a.float().numpy(), b.float().numpy(), rtol=2e-3, atol=1e-4), k
    dock.by_steps.value = False
    assert dock.minutes.enabled and not dock.steps.enabled


def test_the_status_after_a_run_says_whether_the_start_was_beaten():
    from pathlib import Path

    from napari_vdir.plugin.finetune import outcome_text
    from napari_vdir.training.session import FineTuneResult

    def result(outcome, kept):
        return FineTuneResult("mine", Path("models") / "mine.safetensors", None, "val_loss", outcome=outcome,
                              start_kept=kept)

    assert outcome_text(result("held-out loss -3.1 % against the starting model (better)", False)) == (
        f"better than the start: held-out loss -3.1 % against the starting model (better); saved mine "
        f"({Path('models')})")
    kept = outcome_text(result("the starting model stayed best on the validation data; saved unchanged", True))
    assert kept == (f"not better than the start: the starting model stayed best on the validation data; saved "
                    f"unchanged as mine ({Path('models')})")
    assert outcome_text(result(None, False)) == (f"saved mine ({Path('models')}); not compared with the start "
                                                 "(no held-out data)")


def test_the_learning_rate_is_a_fine_tunes_unless_the_user_sets_one(dock):
    """The dock's learning rate reads "auto" (session.finetune's default: config.FINETUNE_NOISY on noisy layers
    alone, FINETUNE_PAIRS with a clean layer); a number the user types is passed on as it is."""
    assert dock.lr.value == 0 and dock.lr.native.text() == "auto"
    dock.name.value = "auto-rate"
    assert dock.settings()["lr"] is None
    dock.lr.value = 3e-4
    assert dock.settings()["lr"] == pytest.approx(3e-4)


def test_only_the_biases_train_when_ticked(dock):
    """Unticked, the dock leaves which parameters train to session.finetune (every one); ticked, only the biases."""
    dock.name.value = "adapt-choice"
    assert dock.settings()["adapt"] is None
    dock.biases_only.value = True
    assert dock.settings()["adapt"] == "biases"
