"""What every alternative restorer trunk must do alike (the pixel-unshuffle trunk of issue 15, the multi-scale
"unet" trunk of issue 34): give every size back as it went in, record itself in the weights file, check cancel
between its blocks, export to ONNX, and train from a recipe. What is particular to each trunk is in
test_unshuffle_trunk.py and test_multiscale_trunk.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_vdir.core.nets import UNetRestorer, UnshuffleRestorer
from napari_vdir.core.weights import load_weights, read_header, read_info

# trunk -> (restorer class, residual blocks per group (unshuffle) or per level (unet) of the tiny model)
TRUNKS = {"unshuffle": (UnshuffleRestorer, 2), "unet": (UNetRestorer, 1)}


@pytest.fixture(params=list(TRUNKS))
def trunk(request):
    return request.param


def trunk_model(tiny_vdir, trunk, channels=3, seed=0, **kw):
    return tiny_vdir(channels, seed=seed, trunk=trunk, **{"res_blocks": TRUNKS[trunk][1], **kw})


# sizes on and off each trunk's grid (4 and 8), odd ones, a single pixel, wide and tall
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(8, 8), (5, 7), (1, 1), (2, 3), (4, 12), (33, 64), (36, 52), (64, 17)])
def test_every_size_and_dtype_comes_back_as_it_went_in(tiny_vdir, trunk, channels, size):
    model = trunk_model(tiny_vdir, trunk, channels)
    y = torch.rand(2, channels, *size)
    with torch.no_grad():
        out = model(y, with_estimate=True)
        assert out.image.shape == y.shape and out.image.dtype == torch.float32
        assert torch.isfinite(out.image).all()
        double = model.double()(y.double()).image
        assert double.dtype == torch.float64 and double.shape == y.shape
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the CPU fast path
            fast = model.float()(y).image
        assert fast.shape == y.shape and torch.isfinite(fast).all()


@pytest.mark.parametrize(("name", "rir_blocks", "res_blocks", "checks"), [
    ("unshuffle", 2, 3, 1 + 2 * (3 + 1)),  # after the encoder, after every block and group conv
    ("unet", 2, 2, 1 + 4 * 2 + 2),         # after the encoder and after every block of every level
])
def test_cancel_is_checked_between_the_blocks(tiny_vdir, name, rir_blocks, res_blocks, checks):
    model = trunk_model(tiny_vdir, name, rir_blocks=rir_blocks, res_blocks=res_blocks)
    calls = []
    with torch.no_grad():
        plain = model(torch.ones(1, 3, 16, 16)).image
        checked = model(torch.ones(1, 3, 16, 16), between_blocks=lambda: calls.append(1)).image
    assert len(calls) == checks
    assert torch.equal(plain, checked)


def test_weights_round_trip_records_the_trunk(tmp_path, tiny_vdir, trunk):
    model = trunk_model(tiny_vdir, trunk)
    path = tiny_vdir.save(model, tmp_path / f"{trunk}.safetensors")
    meta, _ = read_header(path)
    assert json.loads(meta["arch"])["trunk"] == trunk
    info = read_info(path)
    assert info.arch == model.cfg and info.arch.trunk == trunk
    loaded, _ = load_weights(path)
    assert isinstance(loaded.restorer, TRUNKS[trunk][0])
    y = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(y).image, model(y).image, rtol=0, atol=0)


# unshuffle: any size on the latent grid; unet: sizes on its 8-pixel grid (what restore pads every plane to)
ONNX_SHAPES = {"unshuffle": ((1, 3, 40, 56), (2, 3, 64, 36)),
               "unet": ((1, 3, 64, 64), (2, 3, 40, 96), (1, 3, 8, 16), (1, 3, 184, 120))}


def test_cli_onnx_export_computes_the_torch_forward(tmp_path, capsys, tiny_vdir, trunk):
    """``napari-vdir export --format onnx``: the graph equals torch's deterministic forward, batch, height and
    width dynamic."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from napari_vdir.cli import main

    model = trunk_model(tiny_vdir, trunk, seed=7 if trunk == "unet" else 0)
    path, out = tiny_vdir.save(model, tmp_path / "u.safetensors"), tmp_path / "u.onnx"
    assert main(["export", str(path), "--format", "onnx", "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    for shape in ONNX_SHAPES[trunk]:
        x = rng.random(shape, dtype=np.float32)
        got = session.run(None, {"input": x})[0]
        with torch.no_grad():
            expect = model(torch.from_numpy(x)).image.numpy()
        assert got.shape == shape
        np.testing.assert_allclose(got, expect, rtol=0, atol=1e-5)


def test_a_recipe_trains_and_exports_the_trunk(tmp_path, image_folder, trunk):
    from napari_vdir.training.config import Recipe
    from napari_vdir.training.trainer import Trainer

    recipe = Recipe.model_validate(dict(
        name="u", task="denoise", data={"train": [str(image_folder)]}, steps=3, patch=32, batch=2,
        arch={"width": 8, "rir_blocks": 1, "res_blocks": TRUNKS[trunk][1], "encoder_width": 8, "trunk": trunk},
        losses={"gan": 0.0}, val_every=3, checkpoint_every=3))
    assert recipe.model_dump()["arch"]["trunk"] == trunk
    with pytest.raises(ValueError, match="super-resolution uses 'full'"):
        Recipe.model_validate({**recipe.model_dump(), "task": "sr", "scale": 2})
    path = Trainer(recipe, tmp_path, device="cpu", precision="float32").fit()
    info = read_info(path)
    assert info.arch.trunk == trunk and info.recipe["arch"]["trunk"] == trunk
    assert "trunk" not in Recipe.model_validate({**recipe.model_dump(), "arch": {}}).model_dump()["arch"]


# images larger than a tile and both its margins (88 px for the tiny unet), so that inner tiles see only part of the
# image and the windows of the later tiles start away from the image's origin: trunk -> (shapes, tile, arch)
TILING = {"unshuffle": ([(70, 54, 3), (45, 61)], 16, dict(rir_blocks=2, res_blocks=1)),
          "unet": ([(328, 264, 3), (333, 277)], 60, {})}


@pytest.mark.parametrize("case", [0, 1])
def test_tiled_restore_equals_one_pass(tmp_path, tiny_vdir, trunk, case):
    from napari_vdir import restore

    shapes, tile, arch = TILING[trunk]
    shape = shapes[case]
    channels = 3 if len(shape) == 3 else 1
    path = tiny_vdir.save(trunk_model(tiny_vdir, trunk, channels, seed=2, **arch), tmp_path / "t.safetensors")
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    whole = restore(image, "denoise", model=path, device="cpu", precision="float32", backend="torch")
    tiled = restore(image, "denoise", model=path, device="cpu", precision="float32", backend="torch", tile_size=tile)
    assert tiled.shape == image.shape
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=2e-6)


def test_bioimageio_package_of_each_trunk_passes(tmp_path, tiny_vdir, trunk):
    """Every weight format of the package (ONNX, TorchScript, pytorch_state_dict built from nets.py's source with
    the arch kwargs) reproduces the test output, the halo covers the receptive radius, and the input sizes step on
    the trunk's grid (4; 8 for the unet) from twice the tile margin."""
    core = pytest.importorskip("bioimageio.core")
    pytest.importorskip("onnxruntime")
    import yaml

    from napari_vdir.core.inference import tile_margin
    from napari_vdir.export.package import export_model

    model = trunk_model(tiny_vdir, trunk, seed=6)
    step = model.cfg.size_multiple
    out = export_model(tiny_vdir.save(model, tmp_path / "t.safetensors"), "bioimageio", tmp_path / "pkg")
    rdf = yaml.safe_load((out / "rdf.yaml").read_text())
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["trunk"] == trunk
    for axis in rdf["inputs"][0]["axes"][2:]:
        assert axis["size"] == {"min": 2 * tile_margin(model) + step, "step": step}
    assert all(side % step == 0 for side in np.load(out / "test_input.npy").shape[-2:])
    assert rdf["outputs"][0]["axes"][2]["halo"] >= model.cfg.receptive_radius
    summary = core.test_model(out)
    assert summary.status == "passed", [(d.name, [e.msg for e in d.errors]) for d in summary.details
                                        if d.status != "passed"]
    reproduced = {tuple(d.loc)[1] for d in summary.details
                  if d.name.startswith("Reproduce test outputs") and d.status == "passed"}
    assert reproduced == {"onnx", "pytorch_state_dict", "torchscript"}
