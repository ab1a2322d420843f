"""Synthetic degradations shared by training, evaluation and the plugin's sample data.

Images are float tensors (N, C, H, W) in [0, 1]; every random draw takes an explicit
``torch.Generator`` so a run is reproducible. Noise levels are on the 0-255 scale,
as in the denoising literature.
"""

from __future__ import annotations

import io
import math

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


def uniform(n, lo, hi, generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def add_gaussian_noise(x: torch.Tensor, sigma: torch.Tensor, generator=None) -> torch.Tensor:
    """AWGN with per-image std ``sigma`` (0-255 scale); not clipped, not quantised."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + noise * sigma / 255.0


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


def random_poisson_gaussian(x, generator=None):
    n = x.shape[0]
    log_lo, log_hi = math.log(PHOTONS_RANGE[0]), math.log(PHOTONS_RANGE[1])
    photons = torch.exp(uniform(n, log_lo, log_hi, generator, x.device))
    read = uniform(n, *READ_NOISE_RANGE, generator, x.device)
    return add_poisson_gaussian(x, photons, read, generator)


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


def add_camera_noise(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Realistic camera noise (the CBDNet recipe, with a gamma camera response).

    sRGB -> linear (inverse gamma) -> Bayer mosaic -> Poisson-Gaussian noise with
    variance L*s^2 + c^2 -> bilinear demosaic -> clip -> gamma. Colour images only.
    """
    if x.shape[1] != 3:
        raise ValueError("camera noise needs RGB images")
    n, _, h, w = x.shape
    dev = x.device
    gamma = uniform(n, *GAMMA_RANGE, generator, dev).reshape(-1, 1, 1, 1)
    shot = uniform(n, *SHOT_SIGMA_RANGE, generator, dev).reshape(-1, 1, 1, 1)
    read = uniform(n, *READ_SIGMA_RANGE, generator, dev).reshape(-1, 1, 1, 1)
    linear = x.clamp(0, 1) ** gamma
    patterns = torch.cat([bayer_masks(p, h, w, dev) for p in ("RGGB", "BGGR", "GRBG", "GBRG")])
    masks = patterns[torch.randint(0, 4, (n,), generator=generator, device=dev)]
    raw = (linear * masks).sum(dim=1, keepdim=True)
    std = torch.sqrt(raw * shot ** 2 + read ** 2)
    raw = raw + std * torch.randn(raw.shape, generator=generator, device=dev, dtype=x.dtype)
    out = demosaic_bilinear(raw.expand(-1, 3, -1, -1), masks)
    return out.clamp(0, 1) ** (1.0 / gamma)


def gaussian_kernel(sigma_major: float, sigma_minor: float, theta: float, size: int = KERNEL_SIZE) -> np.ndarray:
    """Anisotropic Gaussian kernel (stds along the rotated axes, in pixels), sums to 1."""
    half = size // 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
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
    """Correlate each image with its kernel (reflected borders), keep pixel (0, 0) of each s x s block."""
    n, c, h, w = x.shape
    k = kernels.to(x).reshape(n, 1, 1, *kernels.shape[-2:]).expand(n, c, 1, -1, -1).reshape(n * c, 1, *kernels.shape[-2:])
    pad = kernels.shape[-1] // 2
    blurred = F.conv2d(F.pad(x.reshape(1, n * c, h, w), (pad,) * 4, mode="reflect"), k, groups=n * c)
    return blurred.reshape(n, c, h, w)[..., ::scale, ::scale]


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


def random_jpeg(x: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """JPEG at quality ~ U{10..80}; returns the decoded batch and quality / 100."""
    lo, hi = JPEG_QUALITY_RANGE
    q = torch.randint(lo, hi + 1, (x.shape[0],), generator=_cpu(generator))
    return jpeg_batch(x, q.tolist()), (q.float() / 100.0).to(x.device)
