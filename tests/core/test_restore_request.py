"""The one restore request: options checked once, when they are built, and resolved once per image by prepare."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_vdir.core import request
from napari_vdir.core.errors import OptionProblem
from napari_vdir.core.intensity import robust_range
from napari_vdir.core.request import RestoreOptions, prepare


def test_bad_options_are_refused_when_built_with_one_message():
    with pytest.raises(ValueError) as err:
        RestoreOptions("sr")
    assert isinstance(err.value, OptionProblem) and err.value.option == "scale"
    assert str(err.value) == "task='sr' needs scale=2 or scale=4, got None"
    with pytest.raises(TypeError, match="samples=2.5: samples must be a whole number"):
        RestoreOptions("denoise", samples=2.5)
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'gpu'"):
        RestoreOptions("denoise", device="gpu")


def test_options_are_frozen_and_draw_a_random_seed_once():
    options = RestoreOptions("denoise", seed=None)
    assert isinstance(options.seed, int) and 0 <= options.seed < 2 ** 63
    assert options.replace(samples=4).seed == options.seed  # the draw belongs to the request
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.samples = 3
    with pytest.raises(ValueError, match="samples must be at least 1"):
        options.replace(samples=0)  # a changed request is checked as the first was


def test_prepare_resolves_the_model_once_for_a_layer_run(tiny_weights, monkeypatch):
    pytest.importorskip("napari")
    from napari.layers import Image

    from napari_vdir.plugin.layers import restore_layer

    calls = []
    resolve = request.resolve_model
    monkeypatch.setattr(request, "resolve_model", lambda *args: calls.append(args) or resolve(*args))
    layer = Image(np.random.default_rng(1).integers(0, 4000, (3, 24, 24)).astype(np.uint16),
                  axis_labels=("c", "y", "x"))
    result = restore_layer(layer, "denoise", model=str(tiny_weights[("denoise", 1, 1)]))
    assert len(calls) == 1 and calls[0][2] == 1  # three channels that are not RGB: the gray model, once
    assert result.layers[0][0].shape == (3, 24, 24)


def test_prepare_reads_the_layout_and_intensity_once(tiny_weights):
    image = np.random.default_rng(2).integers(100, 3000, (20, 22, 3)).astype(np.uint16)
    job = prepare(image, RestoreOptions("denoise", model=tiny_weights[("denoise", 1, 3)], intensity_range="layer"))
    assert job.layout.colour and job.layout.channel_axis == 2 and not job.lazy
    r_low, r_high = robust_range(image)  # one joint range for RGB, padded by the 10 % margin
    span = r_high - r_low
    assert job.intensity.span == span
    assert job.intensity.intensity_range == pytest.approx((r_low - 0.1 * span, r_high + 0.1 * span))
    assert job.run().shape == image.shape
