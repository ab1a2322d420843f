"""One intensity policy: a layer restored from the right-click / Layers menu, from a script's ImageData command and
from the Restore dock gives the same pixels (no Qt: the layer is a plain ``napari.layers.Image``)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from napari.layers import Image  # noqa: E402

from napari_vdir.plugin import commands  # noqa: E402
from napari_vdir.plugin import layers as vl  # noqa: E402

DATA = {
    "uint8": lambda rng: rng.integers(0, 256, (40, 44)).astype(np.uint8),
    "uint16": lambda rng: (rng.integers(200, 3000, (40, 44)) + np.arange(44) * 20).astype(np.uint16),
    "float32": lambda rng: (rng.random((40, 44)) * 0.6 + 0.1).astype(np.float32),
}


@pytest.fixture(autouse=True)
def shipped_denoiser():
    from napari_vdir.core.models import shipped_models

    if "denoise-gray" not in shipped_models():
        pytest.skip("shipped denoise-gray model not present (the commands use the shipped models)")


def dock_result(layer) -> np.ndarray:
    """What the Restore dock runs for ``layer`` with its defaults (task Denoise, model auto, the whole image):
    ``RestoreDock.job``'s keyword arguments, handed to ``restore_layer`` as its worker does."""
    snap = vl.snapshot(layer)
    channel_axis = vl.check_channel_axis(snap, vl.guess_channel_axis(snap))  # the channel chooser's default
    job = dict(layer=snap, task="denoise", scale=None, model=None, device="auto", plane=None,
               channel_axis=channel_axis, range_plane=None, tile_size=None, ensemble=False, samples=1,
               latent=False, uncertainty=False, strength=1.0)
    return vl.restore_layer(**job).layers[0][0]


@pytest.mark.parametrize("dtype", sorted(DATA))
def test_menu_script_and_dock_give_the_same_result(dtype):
    image = DATA[dtype](np.random.default_rng(7))
    image[5, 5] = np.iinfo(image.dtype).max if image.dtype.kind == "u" else 40.0  # a hot pixel
    layer = Image(image, name="cells")  # napari's own contrast limits
    from_dock = dock_result(layer)
    from_menu, meta, _ = commands.denoise_layer(layer)
    from_script = commands.denoise(layer.data)
    assert from_dock.dtype == image.dtype and from_dock.shape == image.shape
    np.testing.assert_array_equal(from_menu, from_dock)
    np.testing.assert_array_equal(from_script, from_dock)
    assert meta["name"] == "cells [denoise]"


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_narrowed_contrast_limits_count_alike_from_menu_and_dock(dtype):
    """Limits the user narrowed are the hint of the same policy on both paths."""
    image = DATA[dtype](np.random.default_rng(8))
    layer = Image(image, name="cells")
    low, high = layer.contrast_limits
    layer.contrast_limits = (low + 0.3 * (high - low), high - 0.3 * (high - low))
    from_menu = commands.denoise_layer(layer)[0]
    np.testing.assert_array_equal(from_menu, dock_result(layer))
    assert not np.array_equal(from_menu, commands.denoise(layer.data))  # the hint changes the mapping
