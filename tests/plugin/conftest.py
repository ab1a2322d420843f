"""Fixtures the dock tests share: the docks' notifications, and a private user models folder."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def notes(monkeypatch):
    """Collect the docks' error/info/warning notifications (both docks send them through ``_qt.worker``)."""
    pytest.importorskip("napari")
    from napari_vdir.plugin._qt import worker

    seen = {"error": [], "info": [], "warning": []}
    monkeypatch.setattr(worker, "show_error", lambda msg: seen["error"].append(str(msg)))
    monkeypatch.setattr(worker, "show_info", lambda msg: seen["info"].append(str(msg)))
    monkeypatch.setattr(worker, "show_warning", lambda msg: seen["warning"].append(str(msg)))
    return seen


@pytest.fixture
def models_dir(tmp_path, monkeypatch, tiny_weights):
    """A private user models folder holding a tiny gray denoiser to start from (fast; quality is not tested)."""
    from napari_vdir.core import models

    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv(models.ENV_VAR, str(folder))
    shutil.copy(tiny_weights[("denoise", 1, 1)], folder / "tiny-start.safetensors")
    return folder
