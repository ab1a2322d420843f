"""The pixel-unshuffle trunk (issue 15): shapes at every size, the weights format, the receptive radius the
tiling relies on, ONNX export, and training it (tiled == whole and the bioimage.io package: test_restorer_trunks.py)."""

from __future__ import annotations

import json

import pytest
import torch

from napari_vdir.core.inference import tile_margin
from napari_vdir.core.nets import ARCH_CHOICES, LATENT_STRIDE, ArchConfig, Restorer, UnshuffleRestorer
from napari_vdir.core.weights import WeightsError, load_weights, read_header, read_info

SMALL = dict(width=8, rir_blocks=1, res_blocks=2, encoder_width=8)
UNSHUFFLE_MODELS = {"denoise-rgb", "denoise-gray", "real-denoise-rgb", "jpeg-rgb", "jpeg-gray"}  # the shipped models retrained on the pixel-unshuffle trunk


@pytest.fixture
def unshuffle_model(tiny_vdir):
    """``unshuffle_model(channels=3, seed=0, **arch)``: a tiny VDIR with the 'unshuffle' trunk (conftest's factory)."""
    return lambda channels=3, seed=0, **kw: tiny_vdir(channels, seed=seed, trunk="unshuffle", **{**SMALL, **kw})


# ----------------------------------------------------------------------------- the network

def test_the_trunk_is_chosen_by_the_config_and_bounded(unshuffle_model, tiny_vdir):
    assert isinstance(tiny_vdir(**SMALL).restorer, Restorer)  # the default stays the paper's trunk
    model = unshuffle_model()
    assert isinstance(model.restorer, UnshuffleRestorer)
    # the body runs on the 2x2 cells of [y, up(c)]: 4 x (3 + 4) channels in, 4 x 3 out
    assert model.restorer.trunk.head.weight.shape[1] == 28 and model.restorer.tail.weight.shape[0] == 12
    assert ARCH_CHOICES["trunk"] == ("full", "unshuffle", "unet")
    with pytest.raises(ValueError, match="trunk must be one of full, unshuffle, unet"):
        ArchConfig(trunk="half")
    with pytest.raises(ValueError, match="trunk must be one of"):
        ArchConfig(trunk=["unshuffle"])
    with pytest.raises(ValueError, match="scale 1"):
        ArchConfig(scale=2, trunk="unshuffle")


def test_an_odd_side_is_padded_at_its_end_so_the_cell_grid_stays_put():
    """With a constant latent (up(c) is then the same at any size), the restorer on an odd-sized crop equals
    the restorer on the even image wherever the trunk's receptive field stays inside the crop: padding at the
    bottom/right keeps the 2x2 cells where they are."""
    torch.manual_seed(1)
    restorer = UnshuffleRestorer(ArchConfig(channels=3, trunk="unshuffle", **SMALL)).double().eval()
    y = torch.rand(1, 3, 48, 40, dtype=torch.float64)
    c = torch.full((1, 4, 12, 10), 0.3, dtype=torch.float64)
    reach = 2 * (1 + SMALL["rir_blocks"] * (2 * SMALL["res_blocks"] + 1) + 2) + 1
    with torch.no_grad():
        whole = restorer(y, c)
        odd = restorer(y[..., :47, :39], c)
    assert odd.shape[-2:] == (47, 39)
    keep = (slice(None), slice(None), slice(0, 47 - reach - 1), slice(0, 39 - reach - 1))
    torch.testing.assert_close(odd[keep], whole[keep], rtol=0, atol=1e-12)
    assert not torch.allclose(odd[..., -1, :], whole[..., 46, :39])  # the border does see the padding


# ----------------------------------------------------------------------------- weights files


def test_full_trunk_files_read_as_before(tmp_path, tiny_weights, tiny_vdir):
    """The default trunk is not written, so a full-trunk file's metadata is what earlier versions wrote and
    read; files without the key (every shipped model not in UNSHUFFLE_MODELS) load as the full trunk."""
    model = tiny_vdir(**SMALL)
    meta, _ = read_header(tiny_vdir.save(model, tmp_path / "full.safetensors"))
    assert "trunk" not in json.loads(meta["arch"])
    for path in tiny_weights.values():
        assert "trunk" not in json.loads(read_header(path)[0]["arch"])
        assert read_info(path).arch.trunk == "full"
    from napari_vdir.core.models import shipped_models

    for name, path in shipped_models().items():
        declared = json.loads(read_header(path)[0]["arch"]).get("trunk", "full")
        assert read_info(path).arch.trunk == declared == ("unshuffle" if name in UNSHUFFLE_MODELS else "full"), name


def _with_arch(src, dst, arch: dict):
    """A copy of the weights file ``src`` whose metadata declares ``arch``."""
    from safetensors.torch import load_file, save_file

    meta, _ = read_header(src)
    save_file(load_file(str(src)), str(dst), metadata={**meta, "arch": json.dumps(arch)})
    return dst


def test_a_file_whose_trunk_does_not_match_its_tensors_is_refused_before_anything_is_built(tmp_path, monkeypatch, unshuffle_model, tiny_vdir):
    unshuffle = tiny_vdir.save(unshuffle_model(), tmp_path / "u.safetensors")
    full = tiny_vdir.save(tiny_vdir(**SMALL), tmp_path / "f.safetensors")
    says_full = _with_arch(unshuffle, tmp_path / "says-full.safetensors", ArchConfig(**SMALL).to_dict())
    says_unshuffle = _with_arch(full, tmp_path / "says-u.safetensors", ArchConfig(trunk="unshuffle", **SMALL).to_dict())
    says_other = _with_arch(unshuffle, tmp_path / "other.safetensors", {**ArchConfig(**SMALL).to_dict(), "trunk": "half"})

    import safetensors.torch

    def no_tensor_read(*args, **kwargs):
        raise AssertionError("tensors were read before the header was validated")

    monkeypatch.setattr(safetensors.torch, "load_file", no_tensor_read)
    for path in (says_full, says_unshuffle):
        with pytest.raises(WeightsError, match=r"tensor restorer\.(trunk\.head\.weight|tail\.(weight|bias)) has shape"):
            load_weights(path)
    with pytest.raises(WeightsError, match="invalid architecture.*trunk must be one of full, unshuffle"):
        load_weights(says_other)


# ----------------------------------------------------------------------------- receptive radius and tiling

def gradient_reach(fn, channels: int, size: int) -> int:
    """The farthest input pixel (Chebyshev distance) with a non-zero gradient on a central output pixel,
    over the 4 x 4 positions of that pixel in the latent's cell."""
    far = 0
    for dy in range(LATENT_STRIDE):
        for dx in range(LATENT_STRIDE):
            y = torch.rand(1, channels, size, size, dtype=torch.float64, requires_grad=True)
            cy, cx = size // 2 + dy, size // 2 + dx
            fn(y)[0, :, cy, cx].sum().backward()
            hit = (y.grad[0].abs().sum(0) != 0).nonzero()
            far = max(far, int((hit - torch.tensor([cy, cx])).abs().max()))
    return far


@pytest.mark.parametrize("rir_blocks,res_blocks", [(1, 1), (2, 2), (1, 3)])
def test_receptive_radius_matches_the_gradient_support(rir_blocks, res_blocks, tiny_vdir):
    arch = dict(channels=1, width=3, rir_blocks=rir_blocks, res_blocks=res_blocks, encoder_width=3, estimate_dims=0)
    unshuffle = tiny_vdir(trunk="unshuffle", **arch).double()
    full = tiny_vdir(seed=None, **arch).double()
    radius = unshuffle.cfg.receptive_radius
    size = (2 * radius + 40) // 4 * 4
    measured = gradient_reach(lambda y: unshuffle(y).image, 1, size)
    assert measured <= radius <= measured + 4, (measured, radius)  # covers it, and not far beyond
    assert tile_margin(unshuffle) >= radius and tile_margin(unshuffle) % LATENT_STRIDE == 0
    # the restorer's own reach (c held fixed): each half-resolution conv reaches two pixels, and a pixel's
    # 2x2 cell one more, so exactly twice the full trunk's reach plus one
    c = torch.rand(1, 4, size // 4, size // 4, dtype=torch.float64)
    own = gradient_reach(lambda y: unshuffle.restorer(y, c), 1, size)
    assert own == 2 * gradient_reach(lambda y: full.restorer(y, c), 1, size) + 1


# ----------------------------------------------------------------------------- export


def test_bioimageio_architecture_source_builds_the_unshuffle_trunk(unshuffle_model):
    """The package's ``pytorch_state_dict`` architecture is nets.py itself, called with the arch's kwargs."""
    from napari_vdir.export.package import architecture_source

    namespace: dict = {}
    exec(compile(architecture_source(), "vdir_arch.py", "exec"), namespace)
    model = unshuffle_model()
    net = namespace["DeterministicVDIR"](**model.cfg.to_dict())
    net.load_state_dict(model.state_dict())
    y = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(y), model(y).image, rtol=0, atol=0)
