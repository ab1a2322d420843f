"""The npe2 manifest is valid and names importable contributions; the plugin modules import without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

npe2 = pytest.importorskip("npe2")


def test_manifest_validates_and_resolves():
    import importlib

    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-vdir")
    assert pm.name == "napari-vdir"
    assert {w.display_name for w in pm.contributions.widgets} == {"Restore (VDIR)", "Denoise", "Super-resolve",
                                                                 "Remove JPEG artefacts", "Fine-tune (VDIR)"}
    # the three task shortcuts are the one Restore dock, preset on a task
    from napari_vdir.plugin._qt.restore_dock import RestoreDock

    commands = {c.id: c for c in pm.contributions.commands}
    for widget in pm.contributions.widgets:
        module, attr = commands[widget.command].python_name.split(":")
        if module == "napari_vdir.plugin._qt.restore_dock":
            assert issubclass(getattr(importlib.import_module(module), attr), RestoreDock)
    # the right-click actions are contributed (Layers > Filter > Restore (VDIR); see _commands)
    menu = {item.command for item in pm.contributions.menus["napari-vdir.restore_menu"]}
    assert menu == {"napari-vdir.denoise_layer", "napari-vdir.jpeg_layer", "napari-vdir.sr2_layer"}
    assert {s.key for s in pm.contributions.sample_data} == {"noisy_photo", "noisy_gray", "low_resolution",
                                                             "jpeg_damaged"}
    for command in pm.contributions.commands:
        module, attr = command.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.id


def test_plugin_modules_import_without_torch():
    code = ("import sys, napari_vdir, napari_vdir.plugin._qt.restore_dock, napari_vdir.plugin.sample_data, napari_vdir.plugin.layers, "
            "napari_vdir.plugin.commands, napari_vdir.plugin.finetune, napari_vdir.plugin._qt.finetune_dock; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_sample_data_is_generated_locally():
    import numpy as np

    from napari_vdir.plugin import sample_data as s

    data, meta, kind = s.noisy_gray(size=32)[0]
    assert kind == "image" and data.dtype == np.uint16 and data.shape == (32, 32)
    assert meta["scale"] == (0.1, 0.1)
    data, _, _ = s.low_resolution(size=32)[0]
    assert data.shape == (32, 32, 3) and data.dtype == np.uint8


def test_dask_and_distributed_are_declared_with_one_range():
    """Issue 31 (friction): dask.distributed pins dask to its own version. With dask allowed past the last
    distributed release, `pip install -e ".[testing]"` after `pip install -e .` backtracked through ~80
    distributed releases and then downgraded dask. Every distributed requirement must share dask's range."""
    from pathlib import Path

    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    (dask,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "dask"]
    assert any(spec.operator in ("<", "<=") for spec in dask.specifier), dask  # bounded above
    distributed = [Requirement(r) for reqs in project["optional-dependencies"].values() for r in reqs
                   if Requirement(r).name == "distributed"]
    assert distributed and all(r.specifier == dask.specifier for r in distributed), distributed
