"""Restoration terms computed from noisy data alone.

VDIR's other terms (KL of q(c|y), the decoder's reconstruction of y, the critic) need only y, so a
self-supervised run changes one thing: what the restorer is compared with.

- ``neighbor2neighbor`` (Huang et al., CVPR 2021): two sub-images are drawn from one noisy image by taking,
  in every 2x2 cell, one pixel and one of its two adjacent neighbours. Their signals nearly agree and their
  noises are independent, so restoring one towards the other is Noise2Noise on a single image. A regulariser
  (weight ``consistency``) corrects for the half-pixel offset between the two: the network's own full-size
  output, sub-sampled the same way, must differ between the two sub-images as the restored pair does.
- ``blind-spot`` (Noise2Void, Krull et al., CVPR 2019): a few pixels are replaced by a random neighbour and
  the loss is taken on those pixels only, so the network cannot copy its input.
- ``noise2noise`` (Lehtinen et al., ICML 2018): two frames of the same field of view (``pairs_from``),
  independent noise on the same signal; this also handles spatially correlated noise.
- ``pseudo-clean`` (one round of iterative data refinement, Zhang et al., CVPR 2022): the starting model's
  restoration of the training images (computed once, before training: :func:`pseudo_clean_pool`) is taken as a
  clean image and noised again with the noise model fitted to the user's data
  (:func:`fit_noise_model`); the network learns that supervised pair. The targets are nearly noise-free, so the
  gradient is far less noisy than a noisy target's, at full resolution; it needs a trained start (``init``) and
  noise that is independent from pixel to pixel. What the start smooths away it cannot learn back.

All three use the squared error: with zero-mean noise its minimiser is the clean signal (the L1 of
supervised training would give the median, which is biased for Poisson noise at low counts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

METHODS = ("neighbor2neighbor", "blind-spot", "noise2noise", "pseudo-clean")

# In a 2x2 cell the positions are 0 (top-left), 1 (top-right), 2 (bottom-left), 3 (bottom-right);
# each has two adjacent neighbours in the cell.
_NEIGHBOURS = torch.tensor([[1, 2], [0, 3], [0, 3], [1, 2]])

BLIND_SPOT_RATIO = 0.02  # share of pixels masked per patch
BLIND_SPOT_RADIUS = 2  # replacements come from the 5x5 window around each masked pixel


@dataclass
class Views:
    """What the restorer sees, what it is compared with, and the method's extras."""

    inputs: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor | None = None  # blind-spot: 1 where the loss is taken
    reference: torch.Tensor | None = None  # neighbor2neighbor: g1(f(y)) - g2(f(y)), no gradient


def neighbor_indices(shape: tuple[int, ...], generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per 2x2 cell of an (N, C, H, W) batch: the first pixel's position and an adjacent one, (N, 1, 1, H/2, W/2)."""
    n, _, h, w = shape
    first = torch.randint(0, 4, (n, 1, 1, h // 2, w // 2), generator=generator, device=device)
    pick = torch.randint(0, 2, first.shape, generator=generator, device=device)
    second = _NEIGHBOURS.to(device)[first, pick]
    return first, second


def subsample(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The pixel at ``index`` of every 2x2 cell: (N, C, H, W) -> (N, C, H/2, W/2)."""
    n, c, h, w = x.shape
    cells = F.pixel_unshuffle(x, 2).view(n, c, 4, h // 2, w // 2)
    return cells.gather(2, index.expand(n, c, 1, h // 2, w // 2)).squeeze(2)


def neighbor2neighbor_views(model, y: torch.Tensor, generator: torch.Generator, regularised: bool = True) -> Views:
    """Two sub-images of ``y``; with ``regularised``, also the regulariser's reference (one full-size forward pass
    without gradient: more than half of a step's cost, skipped when the regulariser's weight is 0)."""
    first, second = neighbor_indices(y.shape, generator, y.device)
    if not regularised:
        return Views(subsample(y, first), subsample(y, second))
    with torch.no_grad():
        full = model(y).image.float()
    return Views(subsample(y, first), subsample(y, second),
                 reference=subsample(full, first) - subsample(full, second))


def blind_spot_views(y: torch.Tensor, generator: torch.Generator) -> Views:
    n, c, h, w = y.shape
    mask = (torch.rand((n, 1, h, w), generator=generator, device=y.device) < BLIND_SPOT_RATIO).to(y.dtype)
    r = BLIND_SPOT_RADIUS
    # a random non-zero offset in the window for every pixel (only the masked ones are used)
    dy = torch.randint(-r, r + 1, (n, 1, h, w), generator=generator, device=y.device)
    dx = torch.randint(-r, r + 1, (n, 1, h, w), generator=generator, device=y.device)
    dx = torch.where((dy == 0) & (dx == 0), torch.ones_like(dx), dx)
    rows = (torch.arange(h, device=y.device)[None, None, :, None] + dy).clamp(0, h - 1)
    cols = (torch.arange(w, device=y.device)[None, None, None, :] + dx).clamp(0, w - 1)
    flat = (rows * w + cols).expand(n, c, h, w).reshape(n, c, -1)
    replaced = y.reshape(n, c, -1).gather(2, flat).view(n, c, h, w)
    return Views(y * (1 - mask) + replaced * mask, y, mask=mask)


def pseudo_clean_views(clean: torch.Tensor, noise_model: tuple[float, float], generator: torch.Generator) -> Views:
    """Patches of the starting model's restorations (:func:`pseudo_clean_pool`) as the target, and the same
    patches noised again by ``noise_model`` (:func:`noise_variance`) as the input."""
    clean = clean.float()
    with torch.no_grad():
        spread = noise_variance(clean, noise_model).sqrt()
        noisy = clean + spread * torch.randn(clean.shape, generator=generator, device=clean.device)
    return Views(noisy.contiguous(memory_format=torch.channels_last), clean)


POOL_REGION = 512  # images larger than this are restored as regions of this size (with context around them)
POOL_PIXELS = 8_000_000  # at most this many target pixels ...
POOL_SHARE = 0.1  # ... and at most this share of a run's time budget spent restoring them


def pseudo_clean_pool(start, images: list[torch.Tensor], generator: torch.Generator, *, precision: str = "auto",
                      seconds: float | None = None, clock=time.process_time,
                      max_pixels: int = POOL_PIXELS) -> list[torch.Tensor]:
    """pseudo-clean's targets: the starting model's restorations of the (C, H, W) training ``images``, computed
    once, before training, as a user's restore computes them (whole planes, or regions of POOL_REGION² with the
    receptive field's context around them), in random order until ``max_pixels`` are restored or ``seconds`` of
    ``clock`` are spent (at least one region).

    Restoring every training patch anew at every step (as before) spent about half of a step on a forward pass
    without gradient, and gave targets with patch borders the model never sees in use."""
    from napari_vdir.core.inference import PlaneRestorer

    restorer = PlaneRestorer(start, images[0].device, precision=precision)
    m, r = restorer.margin, POOL_REGION
    regions = []  # (image index, top, left, height, width)
    for i, x in enumerate(images):
        h, w = x.shape[-2:]
        if h <= r and w <= r:
            regions.append((i, 0, 0, h, w))
            continue
        tops = sorted({min(t, h - r) for t in range(0, h, r)}) if h > r else [0]
        lefts = sorted({min(t, w - r) for t in range(0, w, r)}) if w > r else [0]
        regions += [(i, t, l_, min(r, h), min(r, w)) for t in tops for l_ in lefts]
    order = torch.randperm(len(regions), generator=generator).tolist()
    started, pool, pixels = clock(), [], 0
    for k in order:
        i, top, left, h, w = regions[k]
        x = images[i]
        t0, l0 = max(0, top - m), max(0, left - m)
        b0, r0 = min(x.shape[-2], top + h + m), min(x.shape[-1], left + w + m)
        restored = restorer.restore_plane(x[:, t0:b0, l0:r0].float().cpu()).image
        pool.append(restored[:, top - t0:top - t0 + h, left - l0:left - l0 + w].to(x.device))
        pixels += h * w
        if pixels >= max_pixels or (seconds is not None and clock() - started >= seconds):
            break
    return pool


def views_for(method: str, model, noisy: torch.Tensor, second: torch.Tensor | None,
              generator: torch.Generator, regularised: bool = True) -> Views:
    """The restorer's input and target for one batch of noisy patches (``second``: the other frame;
    ``regularised``: whether neighbor2neighbor's regulariser is used)."""
    if method == "neighbor2neighbor":
        return neighbor2neighbor_views(model, noisy, generator, regularised)
    if method == "blind-spot":
        return blind_spot_views(noisy, generator)
    if method == "noise2noise":
        return Views(noisy, second)
    raise ValueError(f"unknown self-supervised method {method!r} (choose from {', '.join(METHODS)})")


def restoration_terms(restored: torch.Tensor, views: Views) -> dict[str, torch.Tensor]:
    """``restore`` (and ``consistency`` for neighbor2neighbor), both squared errors."""
    restored = restored.float()
    target = views.target.float()
    if views.mask is not None:
        mask = views.mask.float().expand_as(restored)
        return {"restore": ((restored - target) ** 2 * mask).sum() / mask.sum().clamp(min=1)}
    terms = {"restore": F.mse_loss(restored, target)}
    if views.reference is not None:
        terms["consistency"] = F.mse_loss(restored - target, views.reference)
    return terms


# ----------------------------------------------------------------------------- held-out risk without clean images

NOISE_MODEL_BINS = 16  # intensity bins of the signal-dependent noise fit
SURE_PROBES = 2  # random directions of the Monte-Carlo divergence
_DIAGONAL = torch.tensor([[[[0.5, -0.5], [-0.5, 0.5]]]])  # the finest diagonal detail of a 2x2 window


def divergence_map(model, noisy: torch.Tensor, generator: torch.Generator,
                   probes: int = SURE_PROBES) -> tuple[torch.Tensor, torch.Tensor]:
    """``(model(noisy), d)``: d_i estimates df_i/dy_i, how much each output pixel follows its own input pixel, by
    Monte-Carlo finite differences (Ramani et al., 2008): b * (f(y + eps b) - f(y)) / eps, b ~ N(0, 1), averaged
    over ``probes`` directions. Unbiased per pixel, noisy; it is averaged over many pixels wherever it is used."""
    y = noisy.float()
    restored = model(y).image.float()
    eps = 1e-3 * max(float(y.abs().max()), 1e-3)
    d = torch.zeros_like(restored)
    for _ in range(probes):
        b = torch.randn(y.shape, generator=generator, device=y.device)
        d += b * (model(y + eps * b).image.float() - restored) / eps
    return restored, d / probes


def fit_noise_model(noisy: torch.Tensor, estimate: torch.Tensor,
                    divergence: torch.Tensor | None = None) -> tuple[float, float]:
    """A Poisson-Gaussian noise model fitted to noisy data: variance = gain * signal + offset.

    ``estimate`` is a denoiser's output for ``noisy`` (the starting model's). Its residual underestimates the
    noise: E(y - f)^2 = v (1 - 2 df/dy) + |f - x|^2, since the output follows the noise by df/dy. With
    ``divergence`` (:func:`divergence_map`) the mean squared residual of each of NOISE_MODEL_BINS equal-width
    intensity bins is divided by (1 - 2 x its mean divergence); the line is fitted by least squares weighted by
    the square root of each bin's pixel count. The offset may be negative (a camera's black level below the
    data's zero); :func:`noise_variance` keeps the variance positive.
    """
    s, r2 = estimate.float().flatten(), ((noisy.float() - estimate.float()) ** 2).flatten()
    d = None if divergence is None else divergence.float().flatten()
    lo, hi = (float(q) for q in torch.quantile(s, torch.tensor([0.001, 0.999], dtype=s.dtype)))

    def residual_variance(inside):
        follows = 0.0 if d is None else min(float(d[inside].mean()), 0.45)
        return float(s[inside].mean()), float(r2[inside].mean()) / (1 - 2 * follows)

    centres, variances, weights = _per_intensity_bin(s, lo, hi, 16, residual_variance)
    if len(centres) < 2:
        follows = 0.0 if d is None else min(float(d.mean()), 0.45)
        return 0.0, float(r2.mean()) / (1 - 2 * follows)
    return _fit_line(centres, variances, weights)


def fit_noise_from_detail(noisy: torch.Tensor, signal: torch.Tensor) -> tuple[float, float]:
    """A Poisson-Gaussian noise model (variance = gain * signal + offset) read from the noisy data's finest
    diagonal detail, for pseudo-clean's synthetic noise.

    d = (y[0,0] - y[0,1] - y[1,0] + y[1,1]) / 2 over every 2x2 window: for noise independent from pixel to pixel its
    variance is the mean of the four pixels' variances, and it is blind to constant and linear signal. ``signal``
    (the starting model's output) gives each window's intensity and how much the image varies around it (its range
    over the 6x6 pixels centred on the window); in each of NOISE_MODEL_BINS equal-width intensity bins the variance
    is the mean d^2 of the smoother half of the windows, so that texture at the pixel scale does not pass for noise.
    :func:`fit_noise_model` reads the start's residual instead, which also holds the detail the start removed: on a
    photograph with sigma-25 noise >= 8 % high where this fit is within 4 % (tests/training/test_selfsupervised.py);
    on W2S's held-out tiles +4.4 % against -4.9 % (benchmarks/results/heldout_check.md). Synthetic noise that is too
    strong teaches the network to smooth more than the user's data need.
    """
    y, f = noisy.float(), signal.float()
    detail = F.conv2d(y.flatten(0, 1)[:, None], _DIAGONAL.to(y.device)).flatten()
    level = F.avg_pool2d(f.flatten(0, 1)[:, None], 2, 1).flatten()
    planes = f.flatten(0, 1)[:, None]
    spread = (F.max_pool2d(planes, 6, 1, padding=2) + F.max_pool2d(-planes, 6, 1, padding=2)).flatten()
    lo, hi = (float(q) for q in torch.quantile(level[:: max(1, level.numel() // 2**20)].cpu(),
                                               torch.tensor([0.001, 0.999])))

    def detail_variance(inside):
        smooth = spread[inside] <= spread[inside].median()
        return float(level[inside][smooth].mean()), float((detail[inside][smooth] ** 2).mean())

    centres, variances, weights = _per_intensity_bin(level, lo, hi, 32, detail_variance)
    if len(centres) < 2:
        smooth = spread <= spread.median()
        return 0.0, float((detail[smooth] ** 2).mean())
    return _fit_line(centres, variances, weights)


def _per_intensity_bin(level: torch.Tensor, lo: float, hi: float, min_count: int, measure):
    """(centres, variances, weights) over NOISE_MODEL_BINS equal-width bins of ``level`` from lo to hi:
    ``measure(inside)`` gives a bin's (centre, variance) from its mask; bins under ``min_count`` pixels are
    skipped; the weight is the square root of the count."""
    centres, variances, weights = [], [], []
    if hi - lo > 1e-6:
        edges = torch.linspace(lo, hi, NOISE_MODEL_BINS + 1)
        for a, b in zip(edges[:-1], edges[1:]):
            inside = (level >= a) & (level <= b)
            n = int(inside.sum())
            if n >= min_count:
                centre, variance = measure(inside)
                centres.append(centre)
                variances.append(variance)
                weights.append(n**0.5)
    return centres, variances, weights


def _fit_line(centres, variances, weights) -> tuple[float, float]:
    """(gain, offset) of variance = gain * signal + offset by weighted least squares; one variance for every
    pixel where the data show no signal dependence."""
    x, v, w = (torch.tensor(t, dtype=torch.float64) for t in (centres, variances, weights))
    design = torch.stack([x, torch.ones_like(x)], dim=1) * w[:, None]
    gain, offset = (float(c) for c in torch.linalg.lstsq(design, (v * w)[:, None]).solution.flatten())
    if gain <= 0:
        return 0.0, float((v * w).sum() / w.sum())
    return gain, offset


def noise_variance(signal: torch.Tensor, model: tuple[float, float]) -> torch.Tensor:
    """Per-pixel variance of the fitted model at ``signal``, floored at a tenth of its mean (a negative offset
    must not make dark pixels noiseless)."""
    gain, offset = model
    variance = gain * signal.float() + offset
    return variance.clamp(min=max(0.1 * float(variance.mean()), 1e-12))


@torch.no_grad()
def sure_terms(model, noisy: torch.Tensor, variance: torch.Tensor, generator: torch.Generator,
               probes: int = SURE_PROBES) -> torch.Tensor:
    """Stein's unbiased estimate of the squared error of ``model`` to the unknown clean image, per pixel (its mean
    is :func:`sure_risk`).

    For independent noise of per-pixel variance v (Stein 1981; heteroscedastic form as in PURE-LET, Luisier et al.
    2011): E|f(y) - x|^2 = E[ |f(y) - y|^2 - v + 2 v * df/dy ], the divergence by Monte-Carlo finite differences
    (:func:`divergence_map`). Unlike the masked-pixel loss it scores the network on its ordinary input, so weights
    that never saw a blind spot (a shipped model) and weights fine-tuned with one are measured alike. Runs in
    float32 (a finite difference in bf16 is noise).
    """
    restored, follows = divergence_map(model, noisy, generator, probes)
    return stein_terms(noisy, restored, follows, variance)


def stein_terms(noisy: torch.Tensor, restored: torch.Tensor, follows: torch.Tensor,
                variance: torch.Tensor) -> torch.Tensor:
    """:func:`sure_terms` from a :func:`divergence_map` already taken (one map serves several noise models)."""
    return (restored - noisy.float()) ** 2 - variance + 2 * variance * follows


def sure_risk(model, noisy: torch.Tensor, variance: torch.Tensor, generator: torch.Generator,
              probes: int = SURE_PROBES) -> float:
    """The mean of :func:`sure_terms`: an estimate of the mean squared error to the clean image."""
    return float(sure_terms(model, noisy, variance, generator, probes).mean())


def paired_excess(terms: torch.Tensor, reference: torch.Tensor, block: int = 16, z: float = 2.0) -> float:
    """How much higher ``terms`` (one model's :func:`sure_terms`) are than ``reference`` (another's, on the same
    pixels with the same probes), as an upper confidence bound: the mean difference plus ``z`` standard errors,
    from the means of ``block`` x ``block`` tiles (neighbouring pixels' terms are correlated; tiles much less).
    Negative only where the first model is better beyond the estimate's own noise."""
    diff = (terms - reference).float()
    n, c, h, w = diff.shape
    b = max(1, min(block, h, w))
    tiles = diff[..., : h // b * b, : w // b * b].reshape(n, c, h // b, b, w // b, b).mean(dim=(1, 3, 5)).flatten()
    spread = float(tiles.std()) / len(tiles) ** 0.5 if len(tiles) > 1 else 0.0
    return float(diff.mean()) + z * spread
