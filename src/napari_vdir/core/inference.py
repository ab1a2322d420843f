"""Restoring whole images: padding, tiling, self-ensemble, Monte-Carlo samples, latent steering.

Everything here works on one 2-D plane as a (C, H, W) float32 tensor in [0, 1]-ish intensity;
:mod:`napari_vdir.core.request` handles layouts, dtypes and stacks around it.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache

import torch

from napari_vdir.core.devices import autocast_context
from napari_vdir.core.nets import LATENT_STRIDE, VDIR, pad_to_multiple

WHOLE_IMAGE_PIXELS = 1024 * 1024  # the most pixels one pass may hold: a whole plane, or a tile with its margins
MIN_AUTO_TILE = 128  # smallest tile core the automatic plan uses, whatever the margin


class RestorationCancelled(RuntimeError):
    """Raised when the caller's cancel callback or event asks the restoration to stop."""


def is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event) or hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def tile_margin(model: VDIR) -> int:
    """Overlap on each side of a tile: the receptive radius, rounded up to a multiple of the network's
    ``size_multiple`` (4, or 8 for the multi-scale trunk), so that tile windows start on its grid too."""
    return _ceil_to(model.cfg.receptive_radius, model.cfg.size_multiple)


def plan_tiles(h: int, w: int, tile: int | None, margin: int, multiple: int = LATENT_STRIDE
               ) -> list[tuple[int, int, int, int]]:
    """Output cores (top, left, bottom, right) covering an (h, w) plane whose sizes are multiples of 4.

    ``tile=None`` chooses by memory: one pass when the plane holds at most WHOLE_IMAGE_PIXELS, else the fewest
    tiles whose cores plus margins stay within it, of balanced sizes — every tile recomputes its margins, so
    fewer, larger tiles waste less (with an 88 px margin, 2048² runs as 3 x 3 tiles of ~684² rather than
    4 x 4 of 512², 13 % less work). Tile origins are multiples of ``multiple`` (the network's
    ``size_multiple``: 4 for the latent grid, 8 for the multi-scale trunk's deepest level), so every grid of
    every tile lines up with the whole image's and tiled == whole.
    """
    if tile is None:
        if h * w <= WHOLE_IMAGE_PIXELS:
            return [(0, 0, h, w)]
        largest = max(MIN_AUTO_TILE, (math.isqrt(WHOLE_IMAGE_PIXELS) - 2 * margin) // multiple * multiple)

        def balanced(size: int) -> int:  # the fewest cores of at most `largest` along one axis, equal but for rounding
            count = -(-size // largest)
            return _ceil_to(-(-size // count), multiple)

        tile_h, tile_w = balanced(h), balanced(w)
    else:
        tile_h = tile_w = max(multiple, int(tile) // multiple * multiple)
    return [(t, l_, min(t + tile_h, h), min(l_ + tile_w, w))
            for t in range(0, h, tile_h) for l_ in range(0, w, tile_w)]


@dataclass
class PlaneResult:
    image: torch.Tensor            # (C, H*s, W*s)
    latent: torch.Tensor           # (4, H/4, W/4), mu
    estimate: torch.Tensor | None  # (D,) mean of EST(c) over the plane, training units
    uncertainty: torch.Tensor | None


_TRANSFORMS = [(k, flip) for flip in (False, True) for k in range(4)]


def _forward(x, k, flip):
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1))


def _inverse(x, k, flip):
    x = torch.rot90(x, -k, dims=(-2, -1))
    return x.flip(-1) if flip else x


class PlaneRestorer:
    """Runs one model over planes, tile by tile, reporting progress and honouring cancel.

    ``cancel`` is checked before every tile and, inside a tile's pass, between the network's blocks
    (``VDIR.forward(between_blocks=...)``), so even a plane that runs as one tile stops within one block.
    The settings arrive checked (:class:`napari_vdir.core.request.RestoreOptions`).
    """

    def __init__(self, model: VDIR, device: torch.device, precision: str = "auto", tile_size: int | None = None,
                 ensemble: bool = False, samples: int = 1, strength: float = 1.0, seed: int = 0,
                 progress=None, cancel=None):
        self.model, self.device, self.precision = model, device, precision
        self.tile_size, self.ensemble, self.samples = tile_size, ensemble, samples
        self.strength, self.seed = float(strength), seed
        self.margin = tile_margin(model)
        self.scale = model.cfg.scale
        self.progress, self.cancel = progress, cancel
        self.done = 0
        self.total = 0

    def _check_cancel(self) -> None:
        if is_cancelled(self.cancel):
            raise RestorationCancelled("restoration cancelled")

    def count_steps(self, h: int, w: int) -> int:
        """Progress ticks one plane costs (tiles x transforms x samples)."""
        multiple = self.model.cfg.size_multiple
        hp, wp = _ceil_to(h, multiple), _ceil_to(w, multiple)
        tiles = len(plan_tiles(hp, wp, self.tile_size, self.margin, self.model.cfg.size_multiple))
        transforms = 8 if self.ensemble else 1
        return tiles * transforms * self.samples

    def restore_plane(self, plane: torch.Tensor, degrade_more=None) -> PlaneResult:
        """``plane``: (C, H, W) float32. ``degrade_more``: callable giving a more degraded copy
        (used only when strength != 1)."""
        c, h, w = plane.shape
        # padded to the network's grid here, once, so that every pass (whole, tile, ONNX graph) gets sizes it
        # takes as they are
        multiple = self.model.cfg.size_multiple
        x = _pad_to(plane, multiple)
        steer = None
        if self.strength != 1.0 and degrade_more is not None:
            steer = _pad_to(degrade_more(plane), multiple)
        # running sums, not lists of full-size copies: a 4096^2 plane must stay within ~2 GB. At scale 1 they
        # sum the change each draw makes to the input, which keeps float32 sums exact where nothing changes
        # (an untouched pixel comes back bit for bit, with zero uncertainty) and the variance well-conditioned.
        reference = x if self.scale == 1 else None
        total, squares, draws, latent, estimate = None, None, 0, None, None
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        for k, flip in (_TRANSFORMS if self.ensemble else _TRANSFORMS[:1]):
            xt = _forward(x, k, flip)
            st = None if steer is None else _forward(steer, k, flip)
            for _ in range(self.samples):
                img, mu, est = self._tiled(xt, st, sample=self.samples > 1, generator=generator)
                img = _inverse(img, k, flip)
                if reference is not None:
                    img = img.sub_(reference)
                if self.samples > 1:
                    squares = img * img if squares is None else squares.addcmul_(img, img)
                total = img if total is None else total.add_(img)
                draws += 1
                if latent is None:
                    latent, estimate = mu, est
        crop = (slice(None), slice(0, h * self.scale), slice(0, w * self.scale))
        mean = total.div_(draws)
        uncertainty = None
        if squares is not None:  # unbiased std over all draws (samples x transforms)
            variance = (squares.div_(draws) - mean * mean).clamp_(min=0) * (draws / (draws - 1))
            uncertainty = variance.sqrt_()[crop]
        image = (mean if reference is None else mean.add_(reference))[crop]
        latent = latent[:, :_ceil4(h) // LATENT_STRIDE, :_ceil4(w) // LATENT_STRIDE]
        if estimate is not None:
            estimate = estimate[:, :h, :w].mean(dim=(1, 2))
        return PlaneResult(image, latent, estimate, uncertainty)

    @torch.no_grad()
    def _tiled(self, x: torch.Tensor, steer: torch.Tensor | None, sample: bool, generator):
        c, h, w = x.shape
        s, m = self.scale, self.margin
        out = torch.empty(c, h * s, w * s)
        latent = torch.empty(4, h // LATENT_STRIDE, w // LATENT_STRIDE)
        est = None
        for top, left, bottom, right in plan_tiles(h, w, self.tile_size, m, self.model.cfg.size_multiple):
            self._check_cancel()
            t0, l0 = max(0, top - m), max(0, left - m)
            b0, r0 = min(h, bottom + m), min(w, right + m)
            tile = x[None, :, t0:b0, l0:r0]
            shift = None
            y = tile.to(self.device)
            if self.device.type != "mps":
                y = y.contiguous(memory_format=torch.channels_last)
            with autocast_context(self.device, self.precision):
                if steer is not None:
                    more = steer[None, :, t0:b0, l0:r0].to(y)
                    shift = (self.strength - 1.0) * (self.model.encode(more)[0] - self.model.encode(y)[0])
                noise = None
                if sample:
                    shape = (1, 4, (b0 - t0) // LATENT_STRIDE, (r0 - l0) // LATENT_STRIDE)
                    noise = torch.randn(shape, generator=generator).to(self.device)
                res = self.model(y, sample=False, latent_shift=shift, with_estimate=True, noise=noise,
                                 between_blocks=None if self.cancel is None else self._check_cancel)
            img = res.image.float().cpu()[0]
            out[:, top * s:bottom * s, left * s:right * s] = img[:, (top - t0) * s:(bottom - t0) * s,
                                                                   (left - l0) * s:(right - l0) * s]
            q = LATENT_STRIDE
            latent[:, top // q:bottom // q, left // q:right // q] = res.mu.float().cpu()[
                0, :, (top - t0) // q:(bottom - t0) // q, (left - l0) // q:(right - l0) // q]
            if res.estimate is not None:
                if est is None:
                    est = torch.empty(res.estimate.shape[1], h, w)
                est[:, top:bottom, left:right] = res.estimate.float().cpu()[0, :, top - t0:bottom - t0,
                                                                              left - l0:right - l0]
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.total)
        return out, latent, est


def _ceil_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _ceil4(n: int) -> int:
    return _ceil_to(n, 4)


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (C, H, W) at the bottom/right to multiples of ``multiple`` (as the networks pad: :func:`nets.pad_to_multiple`)."""
    return pad_to_multiple(x[None], multiple)[0]


@lru_cache(maxsize=8)
def cached_model(path: str, device: str, mtime: float):
    from napari_vdir.core.weights import load_weights

    model, info = load_weights(path, device)
    if torch.device(device).type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model, info
