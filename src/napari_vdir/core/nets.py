"""VDIR networks in pure PyTorch (Soh & Cho, IEEE TIP 2022).

Inference needs the encoder q(c|y), the restorer (or super-resolver) and the
estimator head EST(c). Training adds the decoder p(y|c) and a spectral-norm
discriminator. Layer facts follow the official implementation; the
super-resolver and the non-AWGN estimator targets are this project's design.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

LATENT_CHANNELS = 4
LATENT_STRIDE = 4
UNET_STRIDE = 8  # the "unet" trunk's deepest level runs at 1/8 of the input grid

# Inclusive bounds of every architecture size. They are far above anything trained here (the
# paper's network is width 64, 5 x 5 blocks) and keep a forged weights file from asking for a
# network that does not fit in memory: they are checked before anything is built.
ARCH_LIMITS: dict[str, tuple[int, int]] = {
    "channels": (1, 3),
    "scale": (1, 4),
    "width": (1, 256),
    "rir_blocks": (1, 32),
    "res_blocks": (1, 32),
    "encoder_width": (1, 256),
    "estimate_dims": (0, 8),
}
# The architecture fields that take one of a few names (bounded like ARCH_LIMITS, checked before anything is built).
ARCH_CHOICES: dict[str, tuple[str, ...]] = {
    "trunk": ("full", "unshuffle", "unet"),
}


@dataclass(frozen=True)
class ArchConfig:
    """Everything needed to rebuild a VDIR network; stored in every weights file.

    ``width=64, rir_blocks=5, res_blocks=5`` is the paper's configuration.
    ``estimate_dims`` is the number of degradation parameters EST(c) predicts
    (0 for real noise, where none is known).
    ``trunk="unshuffle"`` runs the restorer's residual-in-residual body at half resolution on the 2 x 2
    cells of [y, up(c)] (FFDNet-style): a quarter of the cost per block, twice the receptive field per
    block (:class:`UnshuffleRestorer`, restoration only). ``"unet"`` is a three-level encoder-decoder on
    those cells (:class:`UNetRestorer`, restoration only): ``width`` is its first level's width,
    ``res_blocks`` the residual blocks of each encoder and decoder level, ``rir_blocks`` those of the deepest
    level. ``"full"`` is the paper's restorer.
    """

    channels: int = 3
    scale: int = 1
    width: int = 64
    rir_blocks: int = 5
    res_blocks: int = 5
    encoder_width: int = 64
    estimate_dims: int = 1
    trunk: str = "full"

    def __post_init__(self):
        for name, choices in ARCH_CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.trunk != "full" and self.scale != 1:
            raise ValueError(f"trunk {self.trunk!r} is for restoration (scale 1); super-resolution uses the full trunk")
        for name in ARCH_LIMITS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.scale not in (1, 2, 4):
            raise ValueError(f"scale must be 1, 2 or 4, got {self.scale}")
        for name, (low, high) in ARCH_LIMITS.items():
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be between {low} and {high}, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        """The fields as a dict; ``trunk`` only when it is not the default "full", so a full-trunk model's
        metadata (and its recipe's) reads exactly as before the field existed, for older napari-vdir too."""
        values = asdict(self)
        if values["trunk"] == "full":
            del values["trunk"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> ArchConfig:
        if not isinstance(values, dict):
            raise ValueError(f"the architecture must be a JSON object, got {type(values).__name__}")
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown architecture keys: {sorted(unknown)}")
        return cls(**values)

    @property
    def size_multiple(self) -> int:
        """Whole planes and tile origins must be multiples of this (the deepest downsampling of the network):
        then every tile's grids line up with the whole plane's and tiled == whole."""
        return UNET_STRIDE if self.trunk == "unet" else LATENT_STRIDE

    @property
    def receptive_radius(self) -> int:
        """Pixels (input grid) on each side that one output pixel depends on (an upper bound)."""
        # encoder: conv(1) + pool(1) + 2 convs at 1/2 (4) + pool(2) + 3 convs at 1/4 (12)
        # + bilinear upsampling of c (4)
        encoder = 1 + 1 + 4 + 2 + 12 + 4
        if self.trunk == "unet":
            # a 3x3 conv reaches 2 px at 1/2, 4 at 1/4, 8 at 1/8 (two convs a residual block); a 2x2 down
            # step and an up step each reach one cell of the finer level (2 px from 1/2, 4 px from 1/4);
            # the pixel's own 2x2 cell adds 1, the head and tail convs at 1/2 two each
            levels = 2 * self.res_blocks * (2 + 4) * 2 + 2 * self.rir_blocks * 8  # encoder + decoder, deepest
            return 1 + 2 + levels + 2 * (2 + 4) + 2 + encoder
        trunk = 1 + self.rir_blocks * (2 * self.res_blocks + 1) + 2  # head, blocks, fuse and tail convs
        if self.trunk == "unshuffle":
            # each conv at half resolution reaches one 2 x 2 cell (2 pixels) further; an output pixel's own
            # cell adds its neighbour pixel on one side
            trunk = 2 * trunk + 1
        return trunk + encoder


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class Encoder(nn.Module):
    """q(c|y): two max-pools to 1/4 resolution, then mu and log-variance heads."""

    def __init__(self, in_channels: int, width: int = 64):
        super().__init__()
        self.conv1 = conv3x3(in_channels, width)
        self.conv2 = conv3x3(width, width)
        self.conv3 = conv3x3(width, width)
        self.conv4 = conv3x3(width, width)
        self.conv5 = conv3x3(width, width)
        self.mu = conv3x3(width, LATENT_CHANNELS)
        self.logvar = conv3x3(width, LATENT_CHANNELS)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(F.max_pool2d(self.conv1(y), 2, ceil_mode=True))
        h = self.conv3(F.relu(self.conv2(h)))
        h = F.relu(F.max_pool2d(h, 2, ceil_mode=True))
        h = self.conv5(F.relu(self.conv4(h)))
        return self.mu(h), self.logvar(h)


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = conv3x3(width, width)
        self.conv2 = conv3x3(width, width)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class RIRBlock(nn.Module):
    """Residual-in-residual group: N ResBlocks, a conv, and a skip."""

    def __init__(self, width: int, res_blocks: int):
        super().__init__()
        self.body = nn.Sequential(*[ResBlock(width) for _ in range(res_blocks)], conv3x3(width, width))

    def forward(self, x, between_blocks=None):
        if between_blocks is None:
            return x + self.body(x)
        h = x
        for layer in self.body:
            h = layer(h)
            between_blocks()
        return x + h


class Trunk(nn.Module):
    """Head conv, D RIR groups, a conv and the long skip — shared by restorer and super-resolver."""

    def __init__(self, in_channels: int, width: int, rir_blocks: int, res_blocks: int):
        super().__init__()
        self.head = conv3x3(in_channels, width)
        self.groups = nn.Sequential(*[RIRBlock(width, res_blocks) for _ in range(rir_blocks)])
        self.fuse = conv3x3(width, width)

    def forward(self, x, between_blocks=None):
        h = self.head(x)
        g = h
        for group in self.groups:
            g = group(g, between_blocks)
        return h + self.fuse(g)


def upsample_latent(c: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(c, size=size, mode="bilinear", align_corners=False)


class Restorer(nn.Module):
    """x = y + R([y, up(c)]) — the global residual predicts the correction."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.trunk = Trunk(cfg.channels + LATENT_CHANNELS, cfg.width, cfg.rir_blocks, cfg.res_blocks)
        self.tail = conv3x3(cfg.width, cfg.channels)

    def forward(self, y, c, between_blocks=None):
        h = self.trunk(torch.cat([y, upsample_latent(c, y.shape[-2:])], dim=1), between_blocks)
        return y + self.tail(h)


class UnshuffleRestorer(nn.Module):
    """x = y + shuffle(R(unshuffle([y, up(c)]))): the trunk runs at half resolution on 2 x 2 cells.

    Each 2 x 2 neighbourhood of [y, up(c)] becomes 4 x (C + 4) input channels (pixel-unshuffle), the
    residual-in-residual body runs on them, its tail gives 4 x C channels that pixel-shuffle back to the
    input grid, and the global residual adds y. An odd height or width is reflect-padded by one pixel
    and cropped back.
    """

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.trunk = Trunk(4 * (cfg.channels + LATENT_CHANNELS), cfg.width, cfg.rir_blocks, cfg.res_blocks)
        self.tail = conv3x3(cfg.width, 4 * cfg.channels)

    def forward(self, y, c, between_blocks=None):
        h, w = y.shape[-2:]
        x = torch.cat([y, upsample_latent(c, (h, w))], dim=1)
        pad_h, pad_w = h % 2, w % 2
        if pad_h or pad_w:  # reflection needs 2 pixels; a 1-pixel side repeats its pixel
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if min(h, w) > 1 else "replicate")
        r = F.pixel_shuffle(self.tail(self.trunk(F.pixel_unshuffle(x, 2), between_blocks)), 2)
        return y + r[..., :h, :w]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (N, C, H, W) at the bottom/right to multiples of ``multiple`` by reflection (replicate when too small)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not (pad_h or pad_w):
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if h > pad_h and w > pad_w else "replicate")


class UNetRestorer(nn.Module):
    """x = y + shuffle(U(unshuffle([y, up(c)]))): a three-level encoder-decoder on the 2 x 2 cells.

    The levels run at 1/2, 1/4 and 1/8 of the input grid with widths w, 2w and 4w, so a 3 x 3 conv costs the
    same per input pixel at every level while its reach doubles from one level to the next: the receptive
    field grows geometrically at a flat cost (DRUNet's and NAFNet's shape, with plain residual blocks).
    Encoder levels hold ``res_blocks`` residual blocks, the deepest ``rir_blocks``, decoder levels
    ``res_blocks`` again after adding the encoder's features of their level (skip). Down: a 2 x 2 conv of
    stride 2; up: a 1 x 1 conv and pixel-shuffle. The latent c lives on the 1/4 grid: besides entering
    with y, it is added to the 1/4 level's features through a 1 x 1 conv, so the degradation steers the
    coarse levels directly. Planes are reflect-padded to multiples of 8 and cropped back.
    """

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        w, n = cfg.width, cfg.res_blocks
        self.head = conv3x3(4 * (cfg.channels + LATENT_CHANNELS), w)
        self.encoder1 = nn.Sequential(*[ResBlock(w) for _ in range(n)])
        self.down1 = nn.Conv2d(w, 2 * w, 2, stride=2)
        self.latent_in = nn.Conv2d(LATENT_CHANNELS, 2 * w, 1)
        self.encoder2 = nn.Sequential(*[ResBlock(2 * w) for _ in range(n)])
        self.down2 = nn.Conv2d(2 * w, 4 * w, 2, stride=2)
        self.middle = nn.Sequential(*[ResBlock(4 * w) for _ in range(cfg.rir_blocks)])
        self.up2 = nn.Sequential(nn.Conv2d(4 * w, 8 * w, 1), nn.PixelShuffle(2))
        self.decoder2 = nn.Sequential(*[ResBlock(2 * w) for _ in range(n)])
        self.up1 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 1), nn.PixelShuffle(2))
        self.decoder1 = nn.Sequential(*[ResBlock(w) for _ in range(n)])
        self.tail = conv3x3(w, 4 * cfg.channels)

    @staticmethod
    def _blocks(blocks: nn.Sequential, h: torch.Tensor, between_blocks) -> torch.Tensor:
        for block in blocks:
            h = block(h)
            if between_blocks is not None:
                between_blocks()
        return h

    def forward(self, y, c, between_blocks=None):
        h, w = y.shape[-2:]
        x = pad_to_multiple(torch.cat([y, upsample_latent(c, (h, w))], dim=1), UNET_STRIDE)
        # c on the padded 1/4 grid: its last row/column repeated where the plane was padded
        c = F.pad(c, (0, x.shape[-1] // LATENT_STRIDE - c.shape[-1], 0, x.shape[-2] // LATENT_STRIDE - c.shape[-2]),
                  mode="replicate")
        skip1 = self._blocks(self.encoder1, self.head(F.pixel_unshuffle(x, 2)), between_blocks)
        skip2 = self._blocks(self.encoder2, self.down1(skip1) + self.latent_in(c), between_blocks)
        deep = self._blocks(self.middle, self.down2(skip2), between_blocks)
        h2 = self._blocks(self.decoder2, self.up2(deep) + skip2, between_blocks)
        h1 = self._blocks(self.decoder1, self.up1(h2) + skip1, between_blocks)
        r = F.pixel_shuffle(self.tail(h1), 2)
        return y + r[..., :h, :w]


RESTORERS = {"full": Restorer, "unshuffle": UnshuffleRestorer, "unet": UNetRestorer}


class SuperResolver(nn.Module):
    """Same trunk on the low-resolution y, sub-pixel (PixelShuffle x2 stages) upsampler,
    global residual from the bicubic-upsampled y."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.scale = cfg.scale
        self.trunk = Trunk(cfg.channels + LATENT_CHANNELS, cfg.width, cfg.rir_blocks, cfg.res_blocks)
        stages = []
        for _ in range({2: 1, 4: 2}[cfg.scale]):
            stages += [conv3x3(cfg.width, cfg.width * 4), nn.PixelShuffle(2), nn.ReLU(inplace=True)]
        self.upsampler = nn.Sequential(*stages)
        self.tail = conv3x3(cfg.width, cfg.channels)

    def forward(self, y, c, between_blocks=None):
        h = self.trunk(torch.cat([y, upsample_latent(c, y.shape[-2:])], dim=1), between_blocks)
        base = F.interpolate(y, scale_factor=self.scale, mode="bicubic", align_corners=False)
        for layer in self.upsampler:
            h = layer(h)
            if between_blocks is not None and isinstance(layer, nn.PixelShuffle):
                between_blocks()
        return base + self.tail(h)


class Estimator(nn.Module):
    """EST(c): per-pixel map of the degradation parameters, at the input resolution."""

    def __init__(self, dims: int, width: int = 64):
        super().__init__()
        self.conv1 = conv3x3(LATENT_CHANNELS, width)
        self.conv2 = conv3x3(width, dims)

    def forward(self, c):
        est = self.conv2(F.relu(self.conv1(c)))
        return F.interpolate(est, scale_factor=LATENT_STRIDE, mode="bilinear", align_corners=False)


class Decoder(nn.Module):
    """p(y|c): reconstructs the degraded input from the latent (training only)."""

    def __init__(self, channels: int, width: int = 64):
        super().__init__()
        self.conv_in = conv3x3(LATENT_CHANNELS, width)
        self.conv1 = conv3x3(width, width)
        self.conv2 = conv3x3(width, width)
        self.conv3 = conv3x3(width, width)
        self.conv_out = conv3x3(width, channels)

    def forward(self, c):
        h = F.relu(F.interpolate(self.conv_in(c), scale_factor=2, mode="nearest"))
        h = self.conv2(F.relu(self.conv1(h)))
        h = F.relu(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(F.relu(self.conv3(h)))


class Discriminator(nn.Module):
    """Spectral-normalised PatchGAN-like critic on y (real) vs decoder output (fake)."""

    def __init__(self, channels: int, widths=(64, 64, 128, 128, 256, 256, 512, 512, 512, 512)):
        super().__init__()
        layers, cin = [], channels
        for i, cout in enumerate(widths):
            stride = 2 if i % 2 else 1
            layers += [nn.utils.spectral_norm(nn.Conv2d(cin, cout, 3, stride, 1)), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        layers.append(nn.utils.spectral_norm(nn.Conv2d(cin, 1, 3, 1, 1)))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


@dataclass
class Forward:
    """What one VDIR forward pass produces."""

    image: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    c: torch.Tensor
    estimate: torch.Tensor | None = None


def draw_latent(mu: torch.Tensor, logvar: torch.Tensor, sample: bool, noise: torch.Tensor | None = None,
                latent_shift: torch.Tensor | None = None) -> torch.Tensor:
    """c from q(c|y): mu, or mu + std * noise (``noise`` given, or drawn when ``sample``), plus ``latent_shift``."""
    if noise is None and sample:
        noise = torch.randn_like(mu)
    c = mu if noise is None else mu + torch.exp(0.5 * logvar) * noise.to(mu)
    return c if latent_shift is None else c + latent_shift


class VDIR(nn.Module):
    """Encoder + restorer/super-resolver + estimator: the part that is shipped."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg.channels, cfg.encoder_width)
        if cfg.scale > 1:
            self.restorer = SuperResolver(cfg)
        else:
            self.restorer = RESTORERS[cfg.trunk](cfg)
        self.estimator = Estimator(cfg.estimate_dims) if cfg.estimate_dims else None

    def encode(self, y):
        return self.encoder(y)

    def forward(self, y, *, sample: bool = False, latent_shift: torch.Tensor | None = None,
                with_estimate: bool = False, noise: torch.Tensor | None = None,
                between_blocks=None) -> Forward:
        """Restore ``y`` (N, C, H, W) with H, W multiples of 4.

        ``sample=False`` uses c = mu (deterministic); ``True`` draws c ~ q(c|y).
        ``noise`` (shaped like mu) draws c = mu + std * noise with the caller's random numbers.
        ``latent_shift`` is added to c (used for strength control).
        ``between_blocks()`` is called after the encoder, after every block of the restorer's trunk and
        after every upsampling stage: a cooperative cancel raises from it, so a pass stops within one
        block (about 1/(rir_blocks * (res_blocks + 1)) of the work). It does not change the result.
        """
        mu, logvar = self.encoder(y)
        if between_blocks is not None:
            between_blocks()
        c = draw_latent(mu, logvar, sample, noise, latent_shift)
        estimate = self.estimator(c) if (with_estimate and self.estimator is not None) else None
        return Forward(self.restorer(y, c, between_blocks), mu, logvar, c, estimate)
