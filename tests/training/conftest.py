"""Fixtures the training tests share."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_recipe(tiny_vdir):
    """``tiny_recipe(folder, **values)``: a fast denoise recipe (the network of ``tiny_vdir``, six steps of four
    32 px patches, validated on two 64 px crops of ``folder``); ``values`` replace any of its keys."""
    from napari_vdir.training.config import Recipe

    def make(folder, **kw) -> Recipe:
        values = dict(name="tiny", task="denoise", channels=3, arch=dict(tiny_vdir.ARCH), steps=6, patch=32, batch=4,
                      lr=1e-3, val_every=3, checkpoint_every=3, data={"train": [str(folder)], "val": str(folder),
                                                                       "val_images": 2, "val_crop": 64})
        values.update(kw)
        return Recipe.model_validate(values)

    return make
