"""One pixel grid, pixel-centred: the SR degradations, the resize libraries they imitate, the napari layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.transform import downscale_local_mean, resize

from napari_vdir.core import degradations as deg

CENTRED = [m for m in deg.SR_MIX if m != "paper"]


def downscale(x: torch.Tensor, scale: int, name: str, border: str = "symmetric") -> torch.Tensor:
    """An integer-factor downscale as the SR degradations sample it: ``name``'s 1-D taps, separable, sampled on the
    pixel-centred grid (``border="renormalise"`` is Pillow's border, ``"symmetric"`` MATLAB's)."""
    taps = deg.skimage_taps(scale) if name == "skimage" else deg.resize_taps(name, scale)
    return deg.blur_sample(x, deg.separable(taps), scale, border=border)


def lr_centre(i, scale: int):
    """High-res coordinate of the centre of low-res pixel ``i``: its block starts at ``scale * i``."""
    return scale * np.asarray(i, dtype=float) + deg.sampling_origin(scale)


def ramps(size=48):
    """(2, 1, size, size) float64: a ramp along the rows and one along the columns (value = coordinate)."""
    r = torch.arange(size, dtype=torch.float64)
    return torch.stack([r[:, None].expand(size, size), r[None, :].expand(size, size)])[:, None].contiguous()


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("member", CENTRED)
def test_centred_members_sample_the_block_centres(member, scale):
    lr, _ = deg.sr_degrade(ramps(), scale, member, torch.Generator().manual_seed(0))
    i = np.arange(lr.shape[-1])
    inner = slice(5, -5)  # away from the borders, where a ramp is folded back
    expected = lr_centre(i, scale)[inner]
    np.testing.assert_allclose(lr[0, 0, inner, 5].numpy(), expected, atol=1e-6)  # along the rows
    np.testing.assert_allclose(lr[1, 0, 5, inner].numpy(), expected, atol=1e-6)  # along the columns


@pytest.mark.parametrize("scale", [2, 4])
def test_box_downscale_of_a_ramp_puts_lr_centres_mid_block_and_the_paper_at_the_corner(scale):
    box = downscale(ramps(), scale, "area")
    np.testing.assert_allclose(box[1, 0, 0].numpy(), scale * np.arange(48 // scale) + (scale - 1) / 2)
    paper, _ = deg.sr_degrade(ramps(), scale, "paper", torch.Generator().manual_seed(0))
    np.testing.assert_allclose(paper[1, 0, 5, 5:-5].numpy(), scale * np.arange(48 // scale)[5:-5], atol=1e-6)
    assert deg.sampling_origin(scale) == (scale - 1) / 2 and deg.sampling_origin(scale, "corner") == 0


def test_the_sampling_origin_is_the_centre_of_each_block():
    for s in (2, 3, 4):
        i = np.arange(7)
        # the s high-res pixels of low-res pixel i average to its centre
        np.testing.assert_allclose((s * i[:, None] + np.arange(s)).mean(1), lr_centre(i, s))


def _pillow(img: np.ndarray, scale: int, flt) -> np.ndarray:
    h, w = img.shape
    return np.asarray(Image.fromarray(img.astype(np.float32)).resize((w // scale, h // scale), flt))


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name,flt", [("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR), ("area", Image.BOX)])
def test_resize_matches_pillow(name, flt, scale):
    img = np.random.default_rng(scale).random((48, 36))
    got = downscale(torch.from_numpy(img)[None, None], scale, name, border="renormalise")[0, 0].numpy()
    np.testing.assert_allclose(got, _pillow(img, scale, flt), atol=1e-6)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_resize_matches_skimage(scale):
    img = np.random.default_rng(scale).random((48, 36))
    x = torch.from_numpy(img)[None, None]
    np.testing.assert_allclose(downscale(x, scale, "area")[0, 0].numpy(),
                               downscale_local_mean(img, (scale, scale)), atol=1e-12)
    shape = (48 // scale, 36 // scale)
    inner = (slice(3, -3), slice(3, -3))  # skimage pads its Gaussian differently at the border
    aa = resize(img, shape, order=1, anti_aliasing=True)
    np.testing.assert_allclose(downscale(x, scale, "skimage")[0, 0].numpy()[inner], aa[inner], atol=1e-9)
    plain = resize(img, shape, order=1, anti_aliasing=False)
    np.testing.assert_allclose(downscale(x, scale, "linear-noaa")[0, 0].numpy()[1:-1, 1:-1],
                               plain[1:-1, 1:-1], atol=1e-12)


@pytest.mark.parametrize("scale", [2, 4])
def test_matlab_bicubic_reproduces_the_set5_lr_files(datasets, scale):
    """Set5's LR_bicubic files were made by MATLAB imresize: ours differs by at most one grey level on
    a few pixels (MATLAB's floating-point rounding), nearly all pixels are identical."""
    folder = datasets / "Set5"
    for hr_path in sorted((folder / "HR").glob("*.png")):
        hr = np.asarray(Image.open(hr_path))
        hr = hr[:hr.shape[0] // scale * scale, :hr.shape[1] // scale * scale]
        want = np.asarray(Image.open(folder / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png")).astype(int)
        diff = np.abs(deg.matlab_bicubic(hr, scale).astype(int) - want)
        assert diff.max() <= 2 and (diff > 0).mean() < 0.01, (hr_path.name, diff.max(), (diff > 0).mean())


def _overlay_checks(lr_layer, hr_layer, s):
    from napari.layers import Image as ImageLayer

    assert isinstance(hr_layer, ImageLayer)
    h, w = lr_layer.data.shape[:2]
    # every high-res pixel centre lands on the input coordinate (j + 0.5) / s - 0.5, the corners included
    for j in [(0, 0), (0, w * s - 1), (h * s - 1, 0), (h * s - 1, w * s - 1)]:
        np.testing.assert_allclose(hr_layer.data_to_world(j), lr_layer.data_to_world((np.asarray(j) - deg.sampling_origin(s)) / s))
    # so the outer edges coincide: the output covers exactly the input's extent
    np.testing.assert_allclose(hr_layer.data_to_world((-0.5, -0.5)), lr_layer.data_to_world((-0.5, -0.5)))
    np.testing.assert_allclose(hr_layer.data_to_world((h * s - 0.5, w * s - 0.5)),
                               lr_layer.data_to_world((h - 0.5, w - 0.5)))
    # and the s x s high-res pixels of low-res pixel (2, 3) are centred on it
    block = [hr_layer.data_to_world((2 * s + a, 3 * s + b)) for a in range(s) for b in range(s)]
    np.testing.assert_allclose(np.mean(block, axis=0), lr_layer.data_to_world((2, 3)))


@pytest.mark.parametrize("s", [2, 4])
def test_sr_layer_geometry_overlays_the_input(s):
    from napari.layers import Image as ImageLayer

    from napari_vdir.plugin.layers import sr_geometry

    lr = ImageLayer(np.zeros((10, 12)), scale=(0.5, 0.25), translate=(3.0, -2.0))
    scale, translate = sr_geometry(lr.scale, lr.translate, s)
    _overlay_checks(lr, ImageLayer(np.zeros((10 * s, 12 * s)), scale=scale, translate=translate), s)
    scale, translate = sr_geometry((2.0, 0.5, 0.25), (1.0, 3.0, -2.0), 1)
    np.testing.assert_allclose(scale, (2.0, 0.5, 0.25))
    np.testing.assert_allclose(translate, (1.0, 3.0, -2.0))
    scale, translate = sr_geometry((2.0, 0.5, 0.25), (1.0, 3.0, -2.0), s)  # a Z axis stays as it is
    assert scale[0] == 2.0 and translate[0] == 1.0


def test_sr_layer_geometry_of_a_corner_grid_model():
    """A model trained on the paper's direct decimation draws low-res pixel i as high-res pixel s * i."""
    from napari.layers import Image as ImageLayer

    from napari_vdir.plugin.layers import sr_geometry

    lr = ImageLayer(np.zeros((10, 12)), scale=(0.5, 0.25), translate=(3.0, -2.0))
    scale, translate = sr_geometry(lr.scale, lr.translate, 4, grid="corner")
    hr = ImageLayer(np.zeros((40, 48)), scale=scale, translate=translate)
    for i in [(0, 0), (9, 11), (3, 5)]:
        np.testing.assert_allclose(hr.data_to_world(4 * np.asarray(i)), lr.data_to_world(i))
    assert deg.model_grid("sr", {"degradation": "blur"}) == "corner"
    assert deg.model_grid("sr", {}) == deg.model_grid("sr", {"degradation": "sr-mix"}) == "centred"


def test_restored_sr_layer_overlays_its_input(tiny_weights):
    """restore_layer end to end (no viewer): the output layer built from its kwargs overlays the input."""
    from napari.layers import Image as ImageLayer

    from napari_vdir.plugin.layers import restore_layer

    rgb = np.random.default_rng(0).integers(0, 255, (20, 24, 3)).astype(np.uint8)
    layer = ImageLayer(rgb, rgb=True, scale=(0.7, 0.7), translate=(4.0, 5.0))
    result = restore_layer(layer, "sr", scale=2, model=tiny_weights[("sr", 2, 3)], uncertainty=True, samples=2)
    (data, meta, _), *rest = result.layers
    assert data.shape == (40, 48, 3)
    out = ImageLayer(data, rgb=True, scale=meta["scale"], translate=meta["translate"])
    _overlay_checks(layer, out, 2)
    unc_data, unc_meta, _ = rest[-1]
    np.testing.assert_allclose(unc_meta["translate"], meta["translate"])  # the uncertainty map sits on the output


def test_sr_training_defaults_to_the_real_world_mix(tmp_path):
    """A new SR recipe trains on sr-mix (pixel-centred); the paper-protocol recipes keep the paper's 'blur'."""
    import torch

    from napari_vdir.training.config import Recipe, load_recipe
    from napari_vdir.training.data import degrade

    recipe = Recipe.model_validate(dict(name="t", task="sr", scale=2, steps=1, data={"train": [str(tmp_path)]}))
    assert recipe.degradation == "sr-mix"
    hr = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = degrade(hr, recipe, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    assert batch.degraded.shape == (6, 3, 16, 16) and batch.estimate_target.shape == (6, 2)
    assert torch.isfinite(batch.degraded).all() and not torch.equal(batch.degraded, hr[..., ::2, ::2])
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "training"
    for name in ("sr-x2-rgb", "sr-x4-rgb"):  # the real-world defaults
        assert load_recipe(root / f"{name}.yaml").degradation == "sr-mix"
    for name in ("sr-x2-rgb-paper", "sr-x4-rgb-paper"):  # the paper-protocol models
        assert load_recipe(root / f"{name}.yaml").degradation == "blur"
