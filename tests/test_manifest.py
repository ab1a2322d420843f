"""The npe2 manifest is valid and names importable contributions; the plugin modules import without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

npe2 = pytest.importorskip("npe2")


def test_manifest_validates_and_resolves():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-vdir")
    assert pm.name == "napari-vdir"
    assert {w.display_name for w in pm.contributions.widgets} == {"Denoise", "Super-resolve", "Remove JPEG artifacts"}
    assert {s.key for s in pm.contributions.sample_data} == {"noisy_photo", "noisy_gray", "low_resolution",
                                                             "jpeg_damaged"}
    import importlib

    for command in pm.contributions.commands:
        module, attr = command.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.id


def test_plugin_modules_import_without_torch():
    code = ("import sys, napari_vdir, napari_vdir._widget, napari_vdir._sample_data, napari_vdir.layers; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_sample_data_is_generated_locally():
    import numpy as np

    from napari_vdir import _sample_data as s

    data, meta, kind = s.noisy_gray(size=32)[0]
    assert kind == "image" and data.dtype == np.uint16 and data.shape == (32, 32)
    assert meta["scale"] == (0.1, 0.1)
    data, _, _ = s.low_resolution(size=32)[0]
    assert data.shape == (32, 32, 3) and data.dtype == np.uint8
