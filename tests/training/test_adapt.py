"""``adapt: biases``: a fine-tune that trains only the biases of a trained model (issue 33)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from napari_vdir.core.weights import load_weights
from napari_vdir.training.trainer import Trainer


@pytest.fixture(scope="module")
def start_weights(image_folder, tmp_path_factory, tiny_recipe):
    out = tmp_path_factory.mktemp("start")
    return Trainer(tiny_recipe(image_folder, steps=6, val_every=6, checkpoint_every=6), out, device="cpu",
                   precision="float32").fit()


def test_a_biases_only_fine_tune_changes_the_biases_and_nothing_else(image_folder, start_weights, tmp_path,
                                                                    tiny_recipe):
    recipe = tiny_recipe(image_folder, init=str(start_weights), adapt="biases", keep_best=False, lr=1e-2, steps=4)
    saved = Trainer(recipe, tmp_path, device="cpu", precision="float32").fit()
    before = load_weights(start_weights)[0].state_dict()
    after = load_weights(saved)[0].state_dict()
    biases = [k for k in before if k.endswith("bias")]
    others = [k for k in before if not k.endswith("bias")]
    assert biases and others
    assert all(torch.equal(before[k], after[k]) for k in others)
    moved = [k for k in biases if not torch.equal(before[k], after[k])]
    assert len(moved) > 0.8 * len(biases)


def test_biases_only_needs_a_trained_start(image_folder, tiny_recipe):
    with pytest.raises(ValidationError, match="give init"):
        tiny_recipe(image_folder, adapt="biases")
    with pytest.raises(ValidationError):
        tiny_recipe(image_folder, adapt="weights")


@pytest.mark.parametrize("form, adapt", [
    ((), "all"),  # from scratch
    (("--init", "denoise-gray"), "all"),  # a fine-tune on clean images (synthetic noise)
    (("--init", "denoise-gray", "--adapt", "biases"), "biases"),
])
def test_the_adapt_flag_reaches_the_recipe(image_folder, form, adapt):
    from napari_vdir.training.__main__ import build_parser, recipe_from_args

    args = build_parser().parse_args(["--task", "denoise", "--channels", "1", "--data", str(image_folder),
                                      "--steps", "10", "--out", "unused", *form])
    assert recipe_from_args(args).adapt == adapt
