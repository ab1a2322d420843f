"""napari_vdir.plugin.layers without a viewer: multiscale layers and the backend label the dock shows."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
from napari.layers import Image  # noqa: E402

from napari_vdir.plugin import layers as vl  # noqa: E402


def test_multiscale_layer_restores_its_full_resolution_lazily(tiny_weights):
    """A dask pyramid: level 0 is restored (lazily, plane by plane); the range comes from the smallest level."""
    import dask.array as da

    rng = np.random.default_rng(0)
    full = rng.integers(200, 3000, size=(4, 64, 64)).astype(np.uint16)
    full[0, 0, 0] = 65535  # a hot pixel, only in level 0
    pyramid = [da.from_array(full, chunks=(1, 64, 64)), da.from_array(full[:, ::2, ::2], chunks=(1, 32, 32))]
    layer = Image(pyramid, multiscale=True, contrast_limits=(0, 65535), name="pyramid")
    snap = vl.snapshot(layer)
    assert snap.overview is not None and snap.data.shape == (4, 64, 64)
    low, high = vl.layer_intensity_range(snap, None)
    assert high < 4000
    result = vl.restore_layer(layer, "denoise", model=tiny_weights[("denoise", 1, 1)])
    out, meta, _ = result.layers[0]
    assert result.lazy and isinstance(out, da.Array) and out.shape == full.shape
    assert meta["multiscale"] is False
    assert np.asarray(out[1]).dtype == np.uint16


@pytest.mark.parametrize("ort,bf16,expected", [(True, False, "onnxruntime fp32"), (False, False, "torch fp32"),
                                               (True, True, "torch bf16"), (False, True, "torch bf16")])
def test_backend_label_says_what_restore_auto_runs(monkeypatch, ort, bf16, expected):
    """The dock's 'runs on' names the backend and precision restore(backend="auto") picks on a CPU."""
    from napari_vdir.core import backends
    from napari_vdir.core import devices

    monkeypatch.setattr(backends, "onnxruntime_available", lambda: ort)
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: bf16)
    assert vl.backend_label("cpu") == expected
    import torch

    used = backends.resolve_backend("auto", torch.device("cpu"), "auto")
    assert expected.startswith(used)


def test_what_the_restore_dock_offers(tiny_weights, tmp_path, monkeypatch):
    """The dock's choices come from here: the axes that can hold channels, the models of a task (shipped, then the
    user's), the devices."""
    import shutil

    from napari_vdir.core import models

    stack = Image(np.zeros((2, 5, 16, 16), np.float32), axis_labels=("c", "z", "y", "x"))
    choices = vl.channel_choices(stack)  # which axes qualify is the core's rule (core.layout)
    assert choices[0] == ("none", None) and {("axis 0 (c, 2)", 0), ("axis 1 (z, 5)", 1)} <= set(choices)
    assert vl.channel_choices(Image(np.zeros((16, 16, 3), np.uint8), rgb=True)) == [("RGB colours", None)]
    assert vl.channel_choices(None) == [("none", None)]

    monkeypatch.setenv(models.ENV_VAR, str(tmp_path))
    shutil.copy(tiny_weights[("sr", 4, 3)], tmp_path / "mine-x4.safetensors")
    sr4 = vl.models_for("sr", 4)
    assert sr4[-1] == "mine-x4" and "sr-x4-rgb" in sr4 and "sr-x2-rgb" not in sr4
    assert "mine-x4" not in vl.models_for("sr", 2) and "mine-x4" not in vl.models_for("denoise", None)
    assert vl.device_choices()[:2] == ["auto", "cpu"]

    assert vl.chosen_model(None, "sr", 4) == (None, "sr", 4)  # auto: the core picks by the layer's colours
    path, task, scale = vl.chosen_model("mine-x4", "sr", 4)
    assert path.endswith("mine-x4.safetensors") and (task, scale) == ("sr", 4)
    with pytest.raises(ValueError, match="is a 'sr' model; the task chosen is Denoise"):
        vl.chosen_model(tmp_path / "mine-x4.safetensors", "denoise", None, task_label="Denoise")
    with pytest.raises(ValueError, match="choose a .safetensors weights file"):
        vl.chosen_model(tmp_path / "missing.safetensors", "sr", 4)
