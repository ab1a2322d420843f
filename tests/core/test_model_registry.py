"""The user models folder: where it is, atomic saves, resolution by name after the shipped models, bad files
skipped with a warning, change notifications."""

from __future__ import annotations

import gc
import shutil
import sys

import pytest

import napari_vdir
from napari_vdir.core import models, weights
from napari_vdir.core.models import UserModelWarning


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    folder = tmp_path / "my models"
    monkeypatch.setenv(models.ENV_VAR, str(folder))
    return folder


@pytest.fixture
def tiny(tiny_weights):
    return weights.load_weights(tiny_weights[("denoise", 1, 1)])


def test_the_folder_is_the_override_else_the_platform_user_data_folder(models_dir, monkeypatch, tmp_path):
    assert models.user_models_dir() == models_dir
    monkeypatch.delenv(models.ENV_VAR)
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
        assert models.user_models_dir() == tmp_path / "data" / "napari-vdir" / "models"
    assert models.user_models_dir().parts[-2:] == ("napari-vdir", "models")


def test_a_saved_model_is_listed_loads_and_restores_by_name(models_dir, tiny, rng):
    model, info = tiny
    calls = []
    unsubscribe = models.on_user_models_changed(lambda: calls.append(1))
    try:
        path = models.save_user_model("mine", model, info)
    finally:
        unsubscribe()
    assert path == models_dir / "mine.safetensors" and calls == [1]
    assert models.list_user_models() == {"mine": path}
    assert weights.load_weights(path)[1].name == "mine"  # the metadata names it as it is listed
    assert models.resolve_model("mine", "denoise", 1) == path
    assert "mine" in [i.name for i in napari_vdir.list_models()]
    image = rng.integers(0, 255, (32, 32), dtype="uint8")
    assert napari_vdir.restore(image, "denoise", model="mine").shape == image.shape
    with pytest.raises(FileExistsError, match="exists"):
        models.save_user_model("mine", model, info)
    models.save_user_model("mine", model, info, overwrite=True)


def test_a_failed_save_leaves_no_file_and_keeps_the_previous_version(models_dir, tiny, monkeypatch):
    import safetensors.torch

    model, info = tiny
    path = models.save_user_model("kept", model, info)
    before = path.read_bytes()

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)  # a partial write, then the failure
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    calls = []
    unsubscribe = models.on_user_models_changed(lambda: calls.append(1))
    try:
        for name in ("kept", "new"):
            with pytest.raises(OSError, match="No space"):
                models.save_user_model(name, model, info, overwrite=True)
    finally:
        unsubscribe()
    assert path.read_bytes() == before
    assert sorted(p.name for p in models_dir.iterdir()) == ["kept.safetensors"]  # no partial file, no "new"
    assert calls == []


def test_a_shipped_name_wins_over_a_user_file_of_that_name(models_dir, tiny_weights, tiny):
    models_dir.mkdir()
    shutil.copy(tiny_weights[("denoise", 1, 1)], models_dir / "denoise-gray.safetensors")
    shipped = models.shipped_models()["denoise-gray"]
    assert models.resolve_model("denoise-gray", "denoise", 1) == shipped
    assert models.available_models()["denoise-gray"] == shipped
    assert models.shipped_models()["denoise-gray"] == shipped  # the cached shipped registry is untouched
    with pytest.raises(ValueError, match="shipped model"):
        models.save_user_model("denoise-gray", *tiny)


def test_a_bad_file_in_the_folder_is_skipped_with_a_warning(models_dir, tiny_weights):
    models_dir.mkdir()
    shutil.copy(tiny_weights[("denoise", 1, 1)], models_dir / "good.safetensors")
    (models_dir / "broken.safetensors").write_bytes(b"not a weights file at all")
    truncated = (models_dir / "good.safetensors").read_bytes()[:-100]
    (models_dir / "truncated.safetensors").write_bytes(truncated)
    with pytest.warns(UserModelWarning) as caught:
        found = models.list_user_models()
    assert list(found) == ["good"]
    for name in ("broken.safetensors", "truncated.safetensors"):
        assert any(name in str(w.message) for w in caught), name
    assert list(models.available_models())[-1] == "good"
    with pytest.raises(weights.WeightsError, match="no shipped model named 'broken'"):
        models.resolve_model("broken", "denoise", 1)


def test_names_must_be_plain_file_names(models_dir, tiny):
    for bad in ("", "../escape", "a/b", ".hidden", "x" * 65, "sp ace"):
        with pytest.raises(ValueError, match="model name"):
            models.save_user_model(bad, *tiny)
    assert models.check_model_name("cells.v2_ok-1.safetensors") == "cells.v2_ok-1"
    assert models.unique_model_name("denoise-gray") == "denoise-gray-2"
    assert models.unique_model_name("my cells / day 1") == "my-cells-day-1"


def test_subscribers_are_called_and_a_gone_or_failing_one_does_not_break_others(models_dir, tiny):
    class Dock:
        def __init__(self):
            self.calls = 0

        def refresh(self):
            self.calls += 1

    gone, alive = Dock(), Dock()
    unsubscribe = [models.on_user_models_changed(d.refresh) for d in (gone, alive)]

    def failing():
        raise RuntimeError("boom")

    unsubscribe.append(models.on_user_models_changed(failing))
    try:
        del gone
        gc.collect()
        with pytest.warns(RuntimeWarning, match="boom"):
            models.save_user_model("m", *tiny)
        assert alive.calls == 1
        unsubscribe[1]()
        with pytest.warns(RuntimeWarning):
            models.notify_user_models_changed()
        assert alive.calls == 1
    finally:
        for u in unsubscribe:
            u()


def test_a_deeply_nested_user_file_breaks_no_listing_and_no_lookup(models_dir, tiny_weights, capsys, rng):
    """Issue 31 item 8: dropped into the user models folder, a file whose recipe is 5,000 nested brackets
    broke `napari-vdir models` and `restore(model="denoise-gray")` with a RecursionError."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from napari_vdir.cli import main

    good = tiny_weights[("denoise", 1, 1)]
    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
    meta["recipe"] = "[" * 5000 + "]" * 5000
    models_dir.mkdir()
    save_file(load_file(str(good)), str(models_dir / "deep.safetensors"), metadata=meta)
    shutil.copy(good, models_dir / "fine.safetensors")

    assert main(["models"]) == 0
    out, err = capsys.readouterr()
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names == [*models.shipped_models(), "fine"]
    assert err.count("\n") == 1 and err.startswith("napari-vdir: warning: user model skipped: ")
    assert "deep.safetensors" in err and "nests 5000 levels deep" in err and "Traceback" not in err

    image = rng.integers(0, 255, (24, 24), dtype="uint8")
    assert napari_vdir.restore(image, "denoise", model="denoise-gray", backend="torch").shape == image.shape
    assert napari_vdir.restore(image, "denoise", model="fine", backend="torch").shape == image.shape
    assert [i.name for i in napari_vdir.list_models()][-1] == "fine"
    with pytest.raises(weights.WeightsError, match="nests 5000 levels deep") as err:  # asked for by name
        models.resolve_model("deep", "denoise", 1)
    assert "\n" not in str(err.value)
