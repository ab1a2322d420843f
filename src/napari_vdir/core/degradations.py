"""Synthetic degradations shared by training, evaluation and the plugin's sample data.

Images are float tensors (N, C, H, W) in [0, 1]; every random draw takes an explicit
``torch.Generator`` so a run is reproducible. Noise levels are on the 0-255 scale,
as in the denoising literature. Super-resolution uses one pixel grid, pixel-centred
(:data:`PIXEL_GRID`); only :func:`blur_decimate`, the paper's protocol, samples the corner grid.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SIGMA_RANGE = (5.0, 70.0)
JPEG_QUALITY_RANGE = (10, 80)
KERNEL_SIZE = 15
# Poisson-Gaussian (fluorescence microscopy): photons at full scale, log-uniform; read noise std.
PHOTONS_RANGE = (4.0, 400.0)
READ_NOISE_RANGE = (0.0, 20.0)
# CBDNet camera pipeline: signal-dependent and constant noise std in linear raw space; CRF gamma.
SHOT_SIGMA_RANGE = (0.0, 0.16)
READ_SIGMA_RANGE = (0.0, 0.06)
GAMMA_RANGE = (1.8, 2.6)


@dataclass(frozen=True)
class NoiseRanges:
    """What the denoise, camera and JPEG training degradations draw from (a recipe's ``ranges``).

    ``clean_share`` of the images is left exactly as it is (sigma 0, no camera pipeline, no JPEG): the
    model learns to leave an image with nothing to fix alone, and EST(c) learns its honest estimate
    (noise sigma 0; JPEG quality 100 for an uncompressed image). ``log_uniform`` draws the Poisson read
    noise and the camera's noise stds log-uniformly, so nearly clean settings are as common as heavy ones
    (uniform draws from 0 almost never give a low-ISO image). ``jpeg_log_share`` of the JPEG draws take the
    distortion 100 - q log-uniformly instead of q uniformly: near-lossless qualities (the 85-95 of cameras and
    the web) become as common as heavy ones, so the model learns how little to change there.
    """

    sigma: tuple[float, float] = SIGMA_RANGE
    photons: tuple[float, float] = PHOTONS_RANGE
    read_noise: tuple[float, float] = READ_NOISE_RANGE
    shot_sigma: tuple[float, float] = SHOT_SIGMA_RANGE
    read_sigma: tuple[float, float] = READ_SIGMA_RANGE
    jpeg_quality: tuple[int, int] = JPEG_QUALITY_RANGE
    clean_share: float = 0.0
    log_uniform: bool = False
    jpeg_log_share: float = 0.0


# from nothing to fix to heavy: 10 % exactly clean; AWGN sigma 0-75; Poisson-Gaussian down to ~0.5 of 255
# (1e5 photons, read noise 0.1); the camera from low ISO (shot 0.002, read 0.0005 in linear raw units) to heavy;
# JPEG quality 10-95 (and the clean share uncompressed)
_CLEAN_INCLUSIVE = NoiseRanges(sigma=(0.0, 75.0), photons=(4.0, 1e5), read_noise=(0.1, 20.0),
                               shot_sigma=(0.002, 0.16), read_sigma=(0.0005, 0.06), jpeg_quality=(10, 95),
                               clean_share=0.1, log_uniform=True)
NOISE_RANGES = {
    # every image visibly degraded: the ranges the models shipped before issue 15 were trained on
    "degraded-only": NoiseRanges(),
    "clean-inclusive": _CLEAN_INCLUSIVE,
    # and half the JPEG draws log-uniform in 100 - q: P(q >= 85) 13 % -> 25 %, P(q <= 20) 13 % -> 8 %
    "clean-inclusive-jpeg-hq": replace(_CLEAN_INCLUSIVE, jpeg_log_share=0.5),
}
DEFAULT_RANGES = "degraded-only"


def noise_ranges(ranges: NoiseRanges | str | None) -> NoiseRanges:
    """A :class:`NoiseRanges`, or the one :data:`NOISE_RANGES` names (None: today's default)."""
    if isinstance(ranges, NoiseRanges):
        return ranges
    name = DEFAULT_RANGES if ranges is None else ranges
    if name not in NOISE_RANGES:
        raise ValueError(f"unknown noise ranges {name!r}; choose from {', '.join(NOISE_RANGES)}")
    return NOISE_RANGES[name]


def uniform(n, lo, hi, generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def log_uniform(n, lo, hi, generator, device) -> torch.Tensor:
    return torch.exp(uniform(n, math.log(lo), math.log(hi), generator, device))


def _spread(n, bounds, log: bool, generator, device) -> torch.Tensor:
    return (log_uniform if log else uniform)(n, *bounds, generator, device)


def clean_mask(n: int, share: float, generator=None, device="cpu") -> torch.Tensor:
    """Which of ``n`` images stay exactly clean (each with probability ``share``). No draw at share 0,
    so the degraded-only ranges consume the random numbers they always did."""
    if share <= 0:
        return torch.zeros(n, dtype=torch.bool, device=device)
    return torch.rand(n, generator=generator, device=device) < share


def random_sigma(n: int, generator=None, device="cpu", ranges: NoiseRanges | str | None = None) -> torch.Tensor:
    """Blind-AWGN noise stds (0-255 scale): uniform over the range, and exactly 0 for the clean share."""
    r = noise_ranges(ranges)
    sigma = uniform(n, *r.sigma, generator, device)
    return sigma.masked_fill(clean_mask(n, r.clean_share, generator, device), 0.0)


def add_gaussian_noise(x: torch.Tensor, sigma: torch.Tensor, generator=None) -> torch.Tensor:
    """AWGN with per-image std ``sigma`` (0-255 scale); not clipped, not quantised."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + noise * sigma / 255.0


def noisy_u8(clean: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """uint8 ``clean`` (H x W or H x W x 3) plus Gaussian noise of std ``sigma`` (0-255) from ``seed``, clipped
    and quantised like a saved photo (the sample data's, the CLI demo's and the export test input)."""
    x = torch.from_numpy(clean.astype(np.float32) / 255.0)
    x = (x.permute(2, 0, 1) if x.ndim == 3 else x[None])[None]
    y = add_gaussian_noise(x, torch.tensor([float(sigma)]), torch.Generator().manual_seed(seed))
    a = y[0].permute(1, 2, 0).numpy() if y.shape[1] == 3 else y[0, 0].numpy()
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def add_poisson_gaussian(x: torch.Tensor, photons: torch.Tensor, read_sigma: torch.Tensor,
                         generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Shot noise (``photons`` at intensity 1) plus Gaussian read noise (0-255 scale).

    Returns the noisy image and each image's equivalent noise std on the 0-255 scale,
    sqrt(mean(x) / photons + read^2), which is what the estimator learns to report.
    """
    photons = torch.as_tensor(photons, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    read = torch.as_tensor(read_sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1) / 255.0
    shot = torch.poisson(x.clamp(min=0) * photons, generator=generator) / photons
    noisy = shot + read * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    equivalent = torch.sqrt(x.mean(dim=(1, 2, 3)) / photons.flatten() + read.flatten() ** 2) * 255.0
    return noisy, equivalent


def random_poisson_gaussian(x, generator=None, ranges: NoiseRanges | str | None = None):
    """Poisson-Gaussian noise with photons log-uniform over the range and read noise uniform (log-uniform
    with ``ranges.log_uniform``); the clean share comes back exactly clean, with equivalent std 0."""
    r = noise_ranges(ranges)
    n = x.shape[0]
    photons = log_uniform(n, *r.photons, generator, x.device)
    read = _spread(n, r.read_noise, r.log_uniform, generator, x.device)
    noisy, equivalent = add_poisson_gaussian(x, photons, read, generator)
    clean = clean_mask(n, r.clean_share, generator, x.device)
    if clean.any():
        noisy = torch.where(clean.reshape(-1, 1, 1, 1), x, noisy)
        equivalent = equivalent.masked_fill(clean, 0.0)
    return noisy, equivalent


def bayer_masks(pattern: str, h: int, w: int, device) -> torch.Tensor:
    """(1, 3, h, w) 0/1 masks of a 2x2 Bayer pattern such as 'RGGB'."""
    masks = torch.zeros(1, 3, h, w, device=device)
    index = {"R": 0, "G": 1, "B": 2}
    for k, colour in enumerate(pattern):
        masks[0, index[colour], k // 2::2, k % 2::2] = 1.0
    return masks


_DEMOSAIC_RB = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 4.0
_DEMOSAIC_G = torch.tensor([[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]]) / 4.0


def demosaic_bilinear(raw: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    kernels = torch.stack([_DEMOSAIC_RB, _DEMOSAIC_G, _DEMOSAIC_RB]).unsqueeze(1).to(raw)
    return F.conv2d(F.pad(raw * masks, (1, 1, 1, 1), mode="reflect"), kernels, groups=3)


def add_camera_noise(x: torch.Tensor, generator=None, ranges: NoiseRanges | str | None = None) -> torch.Tensor:
    """Realistic camera noise (the CBDNet recipe, with a gamma camera response).

    sRGB -> linear (inverse gamma) -> Bayer mosaic -> Poisson-Gaussian noise with
    variance L*s^2 + c^2 -> bilinear demosaic -> clip -> gamma. Colour images only.
    ``ranges`` sets the noise stds (log-uniform from low ISO with the clean-inclusive ranges) and the
    share of images returned exactly as they are (a clean photo has already been through a camera).
    """
    if x.shape[1] != 3:
        raise ValueError("camera noise needs RGB images")
    r = noise_ranges(ranges)
    n, _, h, w = x.shape
    dev = x.device
    gamma = uniform(n, *GAMMA_RANGE, generator, dev).reshape(-1, 1, 1, 1)
    shot = _spread(n, r.shot_sigma, r.log_uniform, generator, dev).reshape(-1, 1, 1, 1)
    read = _spread(n, r.read_sigma, r.log_uniform, generator, dev).reshape(-1, 1, 1, 1)
    linear = x.clamp(0, 1) ** gamma
    patterns = torch.cat([bayer_masks(p, h, w, dev) for p in ("RGGB", "BGGR", "GRBG", "GBRG")])
    masks = patterns[torch.randint(0, 4, (n,), generator=generator, device=dev)]
    raw = (linear * masks).sum(dim=1, keepdim=True)
    std = torch.sqrt(raw * shot ** 2 + read ** 2)
    raw = raw + std * torch.randn(raw.shape, generator=generator, device=dev, dtype=x.dtype)
    out = demosaic_bilinear(raw.expand(-1, 3, -1, -1), masks).clamp(0, 1) ** (1.0 / gamma)
    clean = clean_mask(n, r.clean_share, generator, dev)
    return torch.where(clean.reshape(-1, 1, 1, 1), x, out) if clean.any() else out


def gaussian_kernel(sigma_major: float, sigma_minor: float, theta: float, size: int = KERNEL_SIZE) -> np.ndarray:
    """Anisotropic Gaussian kernel (stds along the rotated axes, in pixels), sums to 1.

    The Gaussian is centred on the middle of the array, ``(size - 1) / 2``: on the middle tap for an odd
    ``size``, half-way between the two middle taps for an even one (what pixel-centred sampling at an
    even scale needs, see :func:`blur_sample`).
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) - (size - 1) / 2
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    cov = rot @ np.diag([sigma_major ** 2, sigma_minor ** 2]) @ rot.T
    inv = np.linalg.inv(cov)
    k = np.exp(-0.5 * (inv[0, 0] * x * x + (inv[0, 1] + inv[1, 0]) * x * y + inv[1, 1] * y * y))
    return k / k.sum()


def random_kernels(n: int, scale: int, generator=None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Blind-SR kernels: half isotropic, half anisotropic Gaussians (15x15).

    Stds are drawn in [0.7, 1.2 * scale] (HR pixels). Returns kernels (n, 15, 15) and the
    estimator targets (n, 2): the major and minor stds divided by 5.
    """
    g = _cpu(generator)
    major = uniform(n, 0.7, 1.2 * scale, g, "cpu")
    minor = 0.7 + (major - 0.7) * torch.rand(n, generator=g)
    isotropic = torch.rand(n, generator=g) < 0.5
    minor = torch.where(isotropic, major, minor)
    theta = uniform(n, 0, math.pi, g, "cpu")
    ks = np.stack([gaussian_kernel(float(a), float(b), float(t)) for a, b, t in zip(major, minor, theta, strict=True)])
    params = torch.stack([major, minor], dim=1) / 5.0
    return torch.from_numpy(ks).float().to(device), params.to(device)


def _cpu(generator):
    """Host-side draws (kernels, JPEG qualities) need a CPU generator."""
    return generator if generator is None or generator.device.type == "cpu" else None


def blur_decimate(x: torch.Tensor, kernels: torch.Tensor, scale: int) -> torch.Tensor:
    """The paper's direct decimation: correlate each image with its kernel (reflected borders), keep pixel
    (0, 0) of each s x s block.

    This is the *corner* grid, not the project's convention (:data:`PIXEL_GRID`): low-res pixel ``i``
    samples high-res coordinate ``s * i`` instead of the block centre ``s * i + (s - 1) / 2``, a shift of
    (s - 1) / 2 high-res pixels (0.5 at x2, 1.5 at x4). It is kept to reproduce the paper's protocol;
    :func:`blur_sample` with the default origin is the pixel-centred version.
    """
    n, c, h, w = x.shape
    k = kernels.to(x).reshape(n, 1, 1, *kernels.shape[-2:]).expand(n, c, 1, -1, -1).reshape(n * c, 1, *kernels.shape[-2:])
    pad = kernels.shape[-1] // 2
    blurred = F.conv2d(F.pad(x.reshape(1, n * c, h, w), (pad,) * 4, mode="reflect"), k, groups=n * c)
    return blurred.reshape(n, c, h, w)[..., ::scale, ::scale]


# ---------------------------------------------------------------- the pixel grid

PIXEL_GRID = "centred"
"""The project's one pixel-grid convention: a pixel's value belongs to its *centre*.

With pixel ``k`` centred at coordinate ``k`` of its own image, a low-res image made at integer scale ``s``
has low-res pixel ``i`` centred at high-res coordinate ``s * i + (s - 1) / 2`` (the centre of its s x s
block) and high-res pixel ``j`` centred at low-res coordinate ``(j + 0.5) / s - 0.5``. This is what every
camera (binning), every resize library (Pillow, scikit-image, OpenCV, MATLAB ``imresize``, PyTorch with
``align_corners=False``) and napari (data pixel ``i`` drawn at world ``i * scale + translate``) assume.
The paper's protocol (:func:`blur_decimate`) is the one exception: it samples the *corner* grid,
``s * i``.
"""


def sampling_origin(scale: int, grid: str = PIXEL_GRID) -> float:
    """High-res coordinate that low-res pixel 0 samples: (s - 1) / 2 on the centred grid, 0 on the paper's
    corner grid."""
    if grid not in ("centred", "corner"):
        raise ValueError(f"grid must be 'centred' or 'corner', got {grid!r}")
    return (scale - 1) / 2 if grid == "centred" else 0.0


# Training degradations whose low-res images sample another grid than PIXEL_GRID ("blur" = the paper's
# direct decimation, what the SR models shipped before the pixel-centred mix were trained on).
DEGRADATION_GRID = {"blur": "corner"}


def model_grid(task: str, recipe: dict | None) -> str:
    """The grid an SR model draws its output on: the one its training degradation sampled."""
    if task != "sr":
        return PIXEL_GRID
    return DEGRADATION_GRID.get((recipe or {}).get("degradation"), PIXEL_GRID)


def _symmetric_index(n: int, before: int, after: int, device) -> torch.Tensor:
    """Indices of a numpy-'symmetric' (edge repeated, MATLAB ``imresize``) padding of a length-n axis."""
    idx = np.arange(-before, n + after) % (2 * n)
    return torch.from_numpy(np.where(idx < n, idx, 2 * n - 1 - idx)).to(device)


def blur_sample(x: torch.Tensor, kernels: torch.Tensor, scale, origin=None, border: str = "symmetric") -> torch.Tensor:
    """Correlate each image with its kernel and sample the result every ``scale`` pixels from ``origin``.

    ``kernels``: (N, kh, kw) or (kh, kw), one per image or one for all, centred on the middle of the array
    (``(k - 1) / 2``). Low-res pixel ``i`` is the blurred image at high-res coordinate ``origin + s * i``;
    ``origin`` defaults to the pixel-centred :func:`sampling_origin`, and ``(k - 1) / 2 - origin`` must be a
    whole number (an even kernel size for an even scale on the centred grid). ``scale`` and ``origin`` may
    be (rows, columns) pairs. The output is ``H // s`` x ``W // s``. Borders: ``"symmetric"`` repeats the
    edge pixel (MATLAB ``imresize``, scipy's ``mode='reflect'``); ``"renormalise"`` drops the taps outside
    the image and rescales the others to sum 1 (Pillow).
    """
    n, c, h, w = x.shape
    sy, sx = (scale, scale) if np.isscalar(scale) else scale
    if origin is None:
        origin = (sampling_origin(sy), sampling_origin(sx))
    oy, ox = (origin, origin) if np.isscalar(origin) else origin
    k = kernels.to(x)
    if k.ndim == 2:
        k = k.expand(n, *k.shape)
    kh, kw = k.shape[-2:]
    lead = [(kh - 1) / 2 - oy, (kw - 1) / 2 - ox]
    if any(v != int(v) or v < 0 for v in lead):
        raise ValueError(f"a {kh}x{kw} kernel cannot be sampled from origin {origin} (pick an even size for an "
                         "even scale on the centred grid)")
    top, left = int(lead[0]), int(lead[1])
    ho, wo = h // sy, w // sx
    bottom = max(0, sy * (ho - 1) + kh - 1 - top - (h - 1))
    right = max(0, sx * (wo - 1) + kw - 1 - left - (w - 1))
    weight = k.reshape(n, 1, 1, kh, kw).expand(n, c, 1, kh, kw).reshape(n * c, 1, kh, kw)
    flat = x.reshape(1, n * c, h, w)
    if border == "symmetric":
        rows, cols = _symmetric_index(h, top, bottom, x.device), _symmetric_index(w, left, right, x.device)
        out = F.conv2d(flat.index_select(2, rows).index_select(3, cols), weight, stride=(sy, sx), groups=n * c)
    elif border == "renormalise":
        pad = (left, right, top, bottom)
        out = F.conv2d(F.pad(flat, pad), weight, stride=(sy, sx), groups=n * c)
        ones = F.pad(torch.ones(1, n * c, h, w, dtype=x.dtype, device=x.device), pad)
        out = out / F.conv2d(ones, weight, stride=(sy, sx), groups=n * c)
    else:
        raise ValueError(f"border must be 'symmetric' or 'renormalise', got {border!r}")
    return out[..., :ho, :wo].reshape(n, c, ho, wo)


# ---------------------------------------------------------------- resize kernels, as the libraries do them

def cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel: a = -0.5 in Pillow and MATLAB ``imresize``, -0.75 in OpenCV."""
    t = np.abs(t)
    inner = ((a + 2) * t - (a + 3)) * t * t + 1
    outer = a * (((t - 5) * t + 8) * t - 4)
    return np.where(t <= 1, inner, np.where(t < 2, outer, 0.0))


def triangle(t: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(t), 0.0, None)


def box(t: np.ndarray) -> np.ndarray:
    return ((t >= -0.5) & (t < 0.5)).astype(np.float64)


# name: (kernel, support in kernel units, antialiased: kernel stretched by the scale when downscaling)
RESIZE_FILTERS = {
    "area": (box, 0.5, True),            # box average = sensor binning, OpenCV INTER_AREA, Pillow BOX
    "bilinear": (triangle, 1.0, True),   # Pillow BILINEAR, MATLAB 'bilinear', torch antialias=True
    "bicubic": (cubic, 2.0, True),       # Pillow BICUBIC, MATLAB 'bicubic' (Keys a = -0.5)
    "linear-noaa": (triangle, 1.0, False),  # OpenCV INTER_LINEAR, torch/skimage order 1 without antialiasing
    "cubic-noaa": (lambda t: cubic(t, -0.75), 2.0, False),  # OpenCV INTER_CUBIC (a = -0.75, aliased)
}


def resize_taps(name: str, scale: int) -> np.ndarray:
    """1-D weights (sum 1) of an integer-factor downscale by a resize filter, on the pixel-centred grid.

    Tap ``k`` sits at high-res offset ``k - (len - 1) / 2`` from the low-res pixel's centre; antialiased
    filters are stretched by ``scale`` (the weights are ``f(t / s)``, as Pillow and MATLAB compute them).
    """
    f, support, antialias = RESIZE_FILTERS[name]
    reach = support * scale if antialias else support
    size = scale + 2 * max(0, math.ceil(reach - scale / 2))  # at least the s x s block
    t = np.arange(size) - (size - 1) / 2
    w = f(t / scale if antialias else t)
    return w / w.sum()


def skimage_taps(scale: int) -> np.ndarray:
    """``skimage.transform.resize(anti_aliasing=True)``: a Gaussian of std (s - 1) / 2 (scipy's, truncated
    at 4 std) then linear interpolation at the pixel centres."""
    sigma = (scale - 1) / 2
    radius = int(4 * sigma + 0.5)
    g = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return np.convolve(g / g.sum(), resize_taps("linear-noaa", scale))


def separable(taps: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.outer(taps, taps))


def equivalent_std(taps: np.ndarray, scale: int) -> float:
    """Std (high-res pixels) of the Gaussian that attenuates the low-res Nyquist frequency, 1 / (2 s) cycles
    per high-res pixel, as much as the 1-D sampling kernel ``taps`` does: the blur width the estimator head
    learns for the separable members of the training mix (0 for the aliased ones, whose response there is
    1 or more). A moment-based width would not do: Keys' a = -0.5 cubic has a zero second moment."""
    t = np.arange(len(taps)) - (len(taps) - 1) / 2
    f = 1.0 / (2 * scale)
    response = float(np.sum(taps * np.cos(2 * math.pi * f * t)))
    return float(math.sqrt(max(-math.log(min(max(response, 1e-6), 1.0)), 0.0) / (2 * math.pi ** 2 * f * f)))


def matlab_bicubic(image: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(image, 1/scale)`` (bicubic, antialiased) of a uint8 H x W [x C] image, as uint8.

    MATLAB resizes a uint8 image one axis at a time (rows first) and rounds each pass back to uint8;
    so does this. The size is ``H // s`` x ``W // s``.
    """
    planes = image.reshape(*image.shape[:2], -1).astype(np.float64)
    x = torch.from_numpy(planes.transpose(2, 0, 1).copy())[None]
    taps = torch.from_numpy(resize_taps("bicubic", scale))
    rows = blur_sample(x, taps[:, None], (scale, 1)).round().clamp(0, 255)
    both = blur_sample(rows, taps[None, :], (1, scale)).round().clamp(0, 255)
    out = both[0].numpy().transpose(1, 2, 0).astype(np.uint8)
    return out.reshape(*out.shape[:2], *image.shape[2:])


# ---------------------------------------------------------------- the blind-SR training mix

# How low-res images are really made; each training image draws one member (share of the batch).
# Every member samples the pixel-centred grid except "paper", the paper's direct decimation on the
# corner grid, which is off by default: see SR_GRID_NOTE.
SR_MIX = {
    "gaussian": 0.35,     # iso/anisotropic Gaussian (random_kernels' ranges), sampled at the block centres
    "area": 0.15,         # box average: sensor binning, OpenCV INTER_AREA, skimage downscale_local_mean
    "bicubic": 0.20,      # antialiased Keys a=-0.5: Pillow BICUBIC, MATLAB imresize (the SR benchmarks' LR)
    "bilinear": 0.10,     # antialiased triangle: Pillow BILINEAR, MATLAB 'bilinear', torch antialias=True
    "skimage": 0.10,      # skimage.transform.resize(anti_aliasing=True)
    "cubic-noaa": 0.05,   # OpenCV INTER_CUBIC: a=-0.75, no antialiasing (aliased)
    "linear-noaa": 0.05,  # OpenCV INTER_LINEAR, torch bilinear without antialias (aliased)
    "paper": 0.0,         # Gaussian + keep pixel (0, 0): the paper's protocol, corner grid
}
SR_GRID_NOTE = (
    "The paper's direct decimation samples high-res coordinate s*i, the pixel-centred members s*i + (s-1)/2: "
    "the same blurred image on two grids half a high-res pixel apart at x2 and 1.5 pixels at x4. The phase "
    "cannot be told from the image, so a model trained on both learns to hedge between them; the mix uses "
    "the centred variant of direct decimation ('gaussian') and the paper protocol is evaluated as published.")
SR_NOISE = (0.3, 0.5, 4.0)  # probability, std range on the 0-255 scale
SR_JPEG = (0.2, 60, 95)     # probability, quality range
SR_QUANTISE = 0.5           # probability of rounding the low-res image to 8 bits (most real files are)


def _gaussian_member(x: torch.Tensor, scale: int, generator, grid: str) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    g = _cpu(generator)
    major = uniform(n, 0.7, 1.2 * scale, g, "cpu")
    minor = 0.7 + (major - 0.7) * torch.rand(n, generator=g)
    minor = torch.where(torch.rand(n, generator=g) < 0.5, major, minor)
    theta = uniform(n, 0, math.pi, g, "cpu")
    origin = sampling_origin(scale, grid)
    size = KERNEL_SIZE + (1 if (KERNEL_SIZE - 1) / 2 - origin != int((KERNEL_SIZE - 1) / 2 - origin) else 0)
    ks = np.stack([gaussian_kernel(float(a), float(b), float(t), size) for a, b, t in zip(major, minor, theta,
                                                                                          strict=True)])
    lr = blur_sample(x, torch.from_numpy(ks), scale, origin=origin)
    return lr, torch.stack([major, minor], dim=1) / 5.0


def sr_member_taps(member: str, scale: int) -> np.ndarray:
    """1-D sampling kernel of a separable (resize) member of :data:`SR_MIX`."""
    return skimage_taps(scale) if member == "skimage" else resize_taps(member, scale)


def sr_degrade(x: torch.Tensor, scale: int, member: str, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One member of the SR mix applied to a (N, C, H, W) batch, no noise: (low-res, estimator targets).

    Targets are what :func:`random_kernels` returns: (major, minor) blur stds in high-res pixels / 5; for the
    separable resize members both are the :func:`equivalent_std` of their kernel.
    """
    if member in ("gaussian", "paper"):
        return _gaussian_member(x, scale, generator, "corner" if member == "paper" else PIXEL_GRID)
    if member not in SR_MIX:
        raise ValueError(f"unknown SR degradation {member!r}; choose from {', '.join(SR_MIX)}")
    taps = sr_member_taps(member, scale)
    lr = blur_sample(x, separable(taps), scale)
    std = equivalent_std(taps, scale)
    return lr, torch.full((x.shape[0], 2), std / 5.0)


def draw_members(n: int, generator=None, mix: dict | None = None) -> list[str]:
    """``n`` member names drawn with the mix's shares."""
    mix = SR_MIX if mix is None else mix
    names = [k for k, v in mix.items() if v > 0]
    shares = torch.tensor([float(mix[k]) for k in names])
    idx = torch.multinomial(shares / shares.sum(), n, replacement=True, generator=_cpu(generator))
    return [names[i] for i in idx.tolist()]


def random_sr_degradation(hr: torch.Tensor, scale: int, generator=None, mix: dict | None = None,
                          noise=SR_NOISE, jpeg=SR_JPEG, quantise: float = SR_QUANTISE, return_members: bool = False):
    """Blind-SR training degradation: every image of the (N, C, H, W) batch gets one member of the mix
    (:data:`SR_MIX`), then, with their probabilities, mild Gaussian noise, JPEG and 8-bit rounding.

    Returns (low-res (N, C, H/s, W/s), estimator targets (N, 2) as :func:`random_kernels`), plus the member
    names when ``return_members``. All draws come from ``generator`` (CPU side; the batch may be on a GPU).
    """
    n = hr.shape[0]
    g = _cpu(generator)
    members = draw_members(n, g, mix)
    lr = hr.new_empty(n, hr.shape[1], hr.shape[2] // scale, hr.shape[3] // scale)
    params = torch.empty(n, 2)
    for member in dict.fromkeys(members):
        idx = [i for i, m in enumerate(members) if m == member]
        lr[idx], params[idx] = sr_degrade(hr[idx], scale, member, g)
    p_noise, lo, hi = noise
    noisy = torch.rand(n, generator=g) < p_noise
    if noisy.any():
        sigma = (uniform(n, lo, hi, g, "cpu") * noisy).reshape(-1, 1, 1, 1)
        lr = lr + (torch.randn(lr.shape, generator=g, dtype=lr.dtype) * sigma / 255.0).to(lr.device)
    p_jpeg, q_lo, q_hi = jpeg
    saved = torch.rand(n, generator=g) < p_jpeg
    rounded = torch.rand(n, generator=g) < quantise
    lr = lr.clamp(0, 1)
    if rounded.any():
        lr[rounded.to(lr.device)] = torch.round(lr[rounded.to(lr.device)] * 255.0) / 255.0
    if saved.any():
        q = torch.randint(q_lo, q_hi + 1, (int(saved.sum()),), generator=g).tolist()
        lr[saved.to(lr.device)] = jpeg_batch(lr[saved.to(lr.device)], q)
    params = params.to(hr.device)
    return (lr, params, members) if return_members else (lr, params)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Pillow JPEG (IJG tables, 4:2:0 for colour) of a float [0,1] HxW or HxWx3 image."""
    u8 = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf), dtype=np.float32) / 255.0


def jpeg_batch(x: torch.Tensor, qualities) -> torch.Tensor:
    """JPEG-compress every image of a (N, C, H, W) batch on the CPU with Pillow."""
    arr = x.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for img, q in zip(arr, qualities, strict=True):
        img = img[..., 0] if img.shape[-1] == 1 else img
        dec = jpeg_roundtrip(img, int(q))
        out.append(dec[..., None] if dec.ndim == 2 else dec)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x)


UNCOMPRESSED_QUALITY = 100
"""What EST(c) learns for an image that was never JPEG-compressed: the top of the quality scale."""


def random_quality(n: int, ranges: NoiseRanges, generator=None) -> torch.Tensor:
    """JPEG qualities (int64) for ``n`` images as :func:`random_jpeg` draws them."""
    lo, hi = ranges.jpeg_quality
    q = torch.randint(lo, hi + 1, (n,), generator=generator)
    if ranges.jpeg_log_share <= 0:   # no extra draws: the other ranges consume the numbers they always did
        return q
    distortion = log_uniform(n, 100.0 - hi, 100.0 - lo, generator, "cpu")
    logged = (100.0 - distortion).round().long().clamp(lo, hi)
    return torch.where(torch.rand(n, generator=generator) < ranges.jpeg_log_share, logged, q)


def random_jpeg(x: torch.Tensor, generator=None, ranges: NoiseRanges | str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """JPEG at quality ~ U{lo..hi} of the ranges (10..80 by default; the ``jpeg_log_share`` with 100 - q
    log-uniform instead); returns the decoded batch and quality / 100. The clean share stays uncompressed,
    with target ``UNCOMPRESSED_QUALITY`` / 100."""
    r = noise_ranges(ranges)
    g = _cpu(generator)
    q = random_quality(x.shape[0], r, g)
    clean = clean_mask(x.shape[0], r.clean_share, g)
    if not clean.any():
        return jpeg_batch(x, q.tolist()), (q.float() / 100.0).to(x.device)
    out = x.clone()
    saved = ~clean
    if saved.any():
        out[saved.to(x.device)] = jpeg_batch(x[saved.to(x.device)], q[saved].tolist())
    q = q.masked_fill(clean, UNCOMPRESSED_QUALITY)
    return out, (q.float() / 100.0).to(x.device)
