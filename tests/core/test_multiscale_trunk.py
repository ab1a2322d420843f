"""The multi-scale trunk (issue 34): shapes at every size, the cost per pixel it was designed for, the weights
format, the receptive radius and the 8-pixel grid the tiling relies on (dask == whole; tiled == whole and the
bioimage.io package with both trunks in test_restorer_trunks.py), ONNX export, and training it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_vdir import restore
from napari_vdir.core.inference import plan_tiles, tile_margin
from napari_vdir.core.nets import ARCH_CHOICES, UNET_STRIDE, VDIR, ArchConfig, UNetRestorer

SMALL = dict(width=8, rir_blocks=1, res_blocks=1, encoder_width=8)
PROBE_ARCH = dict(width=48, rir_blocks=4, res_blocks=2, encoder_width=64)  # training/stages/probe-unet-varied.yaml


@pytest.fixture
def unet_model(tiny_vdir):
    """``unet_model(channels=3, seed=0, **arch)``: a tiny VDIR with the 'unet' trunk (conftest's factory)."""
    return lambda channels=3, seed=0, **kw: tiny_vdir(channels, seed=seed, trunk="unet", **{**SMALL, **kw})


def macs_per_pixel(model: VDIR, side: int = 128) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, model.cfg.channels, side, side), with_estimate=True)
    return counter.get_total_flops() / 2 / side**2


# ----------------------------------------------------------------------------- the network

def test_the_trunk_is_chosen_by_the_config_and_is_for_restoration_only(unet_model):
    assert "unet" in ARCH_CHOICES["trunk"]
    model = unet_model()
    assert isinstance(model.restorer, UNetRestorer)
    # three levels: widths w, 2w, 4w; the 2x2 cells of [y, up(c)] in (4 x 7 channels), 4 x 3 out
    assert model.restorer.head.weight.shape[:2] == (8, 28) and model.restorer.tail.weight.shape[0] == 12
    assert model.restorer.middle[0].conv1.weight.shape[0] == 32
    assert model.cfg.size_multiple == UNET_STRIDE == 8 and ArchConfig().size_multiple == 4
    with pytest.raises(ValueError, match="scale 1"):
        ArchConfig(scale=2, trunk="unet")


def test_it_costs_less_per_pixel_than_the_shipped_trunk():
    """The probe's configuration is within the issue's budget (<= 180 k multiply-adds per pixel, encoder and
    EST included) and well under the shipped pixel-unshuffle trunk it is compared with."""
    unet = macs_per_pixel(VDIR(ArchConfig(trunk="unet", **PROBE_ARCH)))
    shipped = macs_per_pixel(VDIR(ArchConfig(trunk="unshuffle", width=64, rir_blocks=3, res_blocks=4)))
    assert unet <= 180e3 and unet < 0.6 * shipped, (unet, shipped)


def test_the_latent_steers_the_coarse_levels(unet_model):
    """c enters twice: with y, and added to the 1/4 level. Changing c only at the 1/4 injection (up(c) held
    fixed) changes the result, so that path is wired in."""
    model = unet_model(seed=3)
    torch.nn.init.normal_(model.restorer.latent_in.weight, std=0.5)
    y = torch.rand(1, 3, 32, 32)
    c = torch.rand(1, 4, 8, 8)
    with torch.no_grad():
        a = model.restorer(y, c)
        model.restorer.latent_in.weight.zero_()
        model.restorer.latent_in.bias.zero_()
        b = model.restorer(y, c)
    assert (a - b).abs().max() > 1e-4


# ----------------------------------------------------------------------------- tiling

def gradient_reach(model: VDIR, size: int) -> int:
    """The farthest input pixel (Chebyshev distance) whose value reaches an output pixel near the centre,
    over the positions of an 8 x 8 cell (the deepest grid)."""
    far = 0
    for d in range(0, UNET_STRIDE, 3):
        y = torch.rand(1, 1, size, size, dtype=torch.float64, requires_grad=True)
        cy, cx = size // 2 + d, size // 2 + (d * 5) % UNET_STRIDE
        model(y).image[0, :, cy, cx].sum().backward()
        hit = (y.grad[0].abs().sum(0) != 0).nonzero()
        far = max(far, int((hit - torch.tensor([cy, cx])).abs().max()))
    return far


@pytest.mark.parametrize("rir_blocks,res_blocks", [(1, 1), (2, 1)])
def test_receptive_radius_covers_the_gradient_support(rir_blocks, res_blocks, tiny_vdir):
    model = tiny_vdir(1, width=3, rir_blocks=rir_blocks, res_blocks=res_blocks, encoder_width=3, estimate_dims=0,
                      trunk="unet").double()
    radius = model.cfg.receptive_radius
    measured = gradient_reach(model, (2 * radius + 40) // 8 * 8)
    assert measured <= radius <= measured + 16, (measured, radius)  # covers it, and not far beyond
    assert tile_margin(model) >= radius and tile_margin(model) % UNET_STRIDE == 0


def test_tiles_start_on_the_deepest_grid():
    for tile in (16, 20, 100):
        for top, left, _, _ in plan_tiles(200, 120, tile, 24, multiple=8):
            assert top % 8 == 0 and left % 8 == 0
    for top, left, _, _ in plan_tiles(2048, 2048, None, 160, multiple=8):
        assert top % 8 == 0 and left % 8 == 0


def test_tiles_on_the_latent_grid_alone_would_not_match(tmp_path, unet_model, tiny_vdir):
    """The 8-pixel grid is what makes tiled == whole: tiles started on multiples of 4 only (the old rule)
    give a different result, so the tiled == whole test of test_restorer_trunks.py would catch a tiler that
    forgot the network's grid."""
    import napari_vdir.core.inference as inference

    path = tiny_vdir.save(unet_model(seed=2), tmp_path / "u.safetensors")
    image = np.random.default_rng(0).random((328, 264, 3), dtype=np.float32)
    whole = restore(image, "denoise", model=path, device="cpu", precision="float32", backend="torch")
    original = inference.plan_tiles
    try:
        inference.plan_tiles = lambda h, w, tile, margin, multiple=4: original(h, w, 60, margin, 4)  # cores of 60: origins 0, 60, 120, ...
        off_grid = restore(image, "denoise", model=path, device="cpu", precision="float32", backend="torch",
                           tile_size=60)
    finally:
        inference.plan_tiles = original
    assert np.abs(off_grid - whole).max() > 1e-4


def test_dask_blocks_equal_one_pass(tmp_path, unet_model, tiny_vdir):
    da = pytest.importorskip("dask.array")
    path = tiny_vdir.save(unet_model(seed=4), tmp_path / "u.safetensors")
    image = np.random.default_rng(1).random((2, 404, 300), dtype=np.float32)
    whole = restore(image, "denoise", model=path, device="cpu", precision="float32", backend="torch")
    lazy = restore(da.from_array(image, chunks=(1, 100, 100)), "denoise", model=path, device="cpu",
                   precision="float32", backend="torch")
    np.testing.assert_allclose(lazy.compute(), whole, rtol=0, atol=2e-6)


# ----------------------------------------------------------------------------- export and training

def test_onnx_runtime_computes_the_unet_forward(tmp_path, unet_model, tiny_vdir):
    pytest.importorskip("onnxruntime")
    image = np.random.default_rng(1).random((52, 44, 3), dtype=np.float32)
    path = tiny_vdir.save(unet_model(seed=5), tmp_path / "u.safetensors")
    exact = restore(image, "denoise", model=path, device="cpu", precision="float32", backend="torch")
    ort = restore(image, "denoise", model=path, device="cpu", precision="float32", backend="onnxruntime")
    np.testing.assert_allclose(ort, exact, rtol=0, atol=1e-5)


