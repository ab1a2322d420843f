"""Training data: clean images held in memory, random patches, on-the-fly degradation."""

from __future__ import annotations

import fnmatch
import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_vdir.core import degradations as deg
from napari_vdir.core.io import IMAGE_SUFFIXES, list_images, read_image
from napari_vdir.training.config import Recipe

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_unit(image: np.ndarray, intensity_range=None) -> np.ndarray:
    """A whole file's array -> float32 model intensity, by the same mapping as ``napari_vdir.restore``.

    A fine-tuned model thus sees its training data on the scale it will see at inference (uint8 /255, other
    integers by the robust range of the whole file, floats as they are:
    :func:`napari_vdir.core.intensity.plan_intensity`). ``intensity_range`` is ``restore``'s option of that name
    (e.g. a napari layer's contrast limits).
    """
    from napari_vdir.core.intensity import Intensity

    return Intensity.of(image, intensity_range).forward(image)


def check_training_image(image, intensity_range=None) -> None:
    """Refuse what ``restore`` refuses (:func:`napari_vdir.core.layout.check_image`: NaN/inf, bool, negative signed
    integers, ...), and floats far outside the [0, 1] intensity they are taken as when no ``intensity_range``
    maps them (``restore`` warns about those; a model trained on them learns the wrong scale or diverges).
    One-line ``TypeError``/``ValueError``, before any training."""
    from napari_vdir.core.intensity import float_span_off_scale
    from napari_vdir.core.layout import check_image

    check_image(image)
    span = float_span_off_scale(image) if intensity_range is None else None
    if span is not None:
        raise ValueError(f"float image spans [{span[0]:.3g}, {span[1]:.3g}]; floats are taken as [0, 1] "
                         "intensity (as restore takes them): rescale the data to [0, 1] or give an intensity range")


def as_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """A float32 plane (H, W) or (H, W, C) -> (H, W, channels); colour to gray by BT.601 luma."""
    if x.ndim == 2:
        x = x[..., None]
    if x.shape[-1] == channels:
        return x
    if channels == 1:
        return (x[..., :3] @ LUMA)[..., None]
    return np.repeat(x[..., :1], 3, axis=-1)


def planes_of(path: Path) -> list[np.ndarray]:
    """A file's 2-D planes in model intensity, (H, W, 1) gray or (H, W, 3) RGB, read as ``restore`` reads the
    file's array (:func:`array_planes`: multi-page stacks give one entry per page, a ``(H, W, 2)`` file two gray
    planes, RGBA its colour). A file ``restore`` would refuse (NaN, ...) is a one-line ``ValueError``."""
    image = read_image(path)
    try:
        check_training_image(image)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None
    return array_planes(image, None)


def array_layout(shape: tuple[int, ...], rgb: bool | None = None, channel_axis=None) -> tuple[int | None, bool]:
    """``(channel axis or None, whether it is RGB colour)`` of an image, by the one layout rule
    (:meth:`napari_vdir.core.layout.Layout.of`).

    ``rgb`` None: ``restore``'s default rule (with 3+ dimensions a last axis of 3 is RGB, of 4 RGBA, of 2 two
    channels), or ``channel_axis`` as ``restore`` takes it. ``rgb`` True: the last axis is colour (3, or 4 with
    alpha). ``rgb`` False (napari's ``layer.rgb``): no colour; ``channel_axis`` None takes a last axis of 2 or 4
    as channels, as the Restore dock reads such a layer. Channels that are not colour are planes of their own.
    """
    from napari_vdir.core.layout import Layout

    layout = Layout.of(shape, channel_axis, alpha=False if rgb is False else None, rgb=rgb)
    return layout.channel_axis, layout.colour


def _arranged(image, rgb, channel_axis):
    """(data with its channel axis last and alpha dropped, has a channel axis, is colour)."""
    axis, colour = array_layout(image.shape, rgb, channel_axis)
    if axis is None:
        return image, False, False
    data = np.moveaxis(image, axis, -1)
    return (data[..., :3] if colour else data), True, colour


def _channel_range(intensity_range, k: int, count: int):
    """Channel ``k``'s part of ``intensity_range``: a per-channel ``(C, 2)`` range gives its row ``k``."""
    if intensity_range is None or isinstance(intensity_range, str):
        return intensity_range
    rng = np.asarray(intensity_range, dtype=np.float64)
    if rng.ndim == 2:
        if rng.shape[0] != count:
            raise ValueError(f"{rng.shape[0]} intensity ranges for an image of {count} channels")
        return float(rng[k, 0]), float(rng[k, 1])
    return intensity_range


def array_range(image, *, rgb: bool | None = None, channel_axis=None, intensity_range=None):
    """The explicit intensity range ``restore`` maps ``image`` by: None (floats as they are), ``(low, high)``, or
    a ``(C, 2)`` array with one row per channel for channels that are not colour (each its own range, as restore
    normalises channels one by one). Passed back as ``intensity_range``, it maps another array (a clean twin) the
    same way."""
    from napari_vdir.core.intensity import Intensity
    from napari_vdir.core.layout import Layout

    image = np.asarray(image)
    data, has_axis, colour = _arranged(image, rgb, channel_axis)
    if has_axis and not colour:
        count = data.shape[-1]
        maps = [Intensity.of(data[..., k], _channel_range(intensity_range, k, count)) for k in range(count)]
        if all(m.identity for m in maps):
            return None
        return np.array([[float(m.low), float(m.high)] for m in maps])
    layout = Layout(data.ndim - 1, data.ndim, colour=True) if colour else None
    m = Intensity.of(data, intensity_range, layout)
    if m.identity:
        return None
    if np.ndim(m.low):
        return np.stack([m.low, m.high], axis=-1)
    return float(m.low), float(m.high)


def array_planes(image, channels: int | None, *, rgb: bool | None = None, channel_axis=None,
                 intensity_range=None) -> list[np.ndarray]:
    """An in-memory image (a napari layer's data: 2-D, a stack, RGB/RGBA, channels) -> its 2-D planes as float32
    (H, W, channels) in model intensity, by ``restore``'s mapping (:func:`array_range`). Channels are found as
    :func:`array_layout` finds them: RGB planes stay colour (alpha dropped); every other channel is a gray plane
    of its own, so an ``(H, W, 2)`` image gives two planes. ``channels`` None keeps 1 (gray) or 3 (RGB)."""
    from napari_vdir.core.intensity import Intensity
    from napari_vdir.core.layout import Layout

    image = np.asarray(image)
    if image.ndim < 2:
        raise ValueError(f"an image of shape {image.shape} has no 2-D planes")
    data, has_axis, colour = _arranged(image, rgb, channel_axis)
    if colour:
        unit = Intensity.of(data, intensity_range, Layout(data.ndim - 1, data.ndim, colour=True)).forward(data)
        planes = unit.reshape(-1, *unit.shape[-3:])
    elif has_axis:
        count = data.shape[-1]
        if data.ndim < 3:
            raise ValueError(f"an image of shape {image.shape} has no 2-D planes")
        per_channel = [Intensity.of(data[..., k], _channel_range(intensity_range, k, count)).forward(data[..., k])
                       for k in range(count)]
        unit = np.stack(per_channel, axis=-3)  # (..., C, H, W): each plane's channels one after another
        planes = unit.reshape(-1, *unit.shape[-2:])[..., None]
    else:
        unit = Intensity.of(data, intensity_range).forward(data)
        planes = unit.reshape(-1, *unit.shape[-2:])[..., None]
    return [p if channels is None else as_channels(p, channels) for p in planes]


@dataclass
class ArrayData:
    """An in-memory data source (what napari layers hold), for :meth:`Trainer.load_data`.

    ``noisy``: (H, W, C) float32 planes in model intensity (:func:`array_planes`). ``clean``: their clean
    twins (``scale`` times larger for sr) for supervised pairs, or None for a self-supervised run. As for
    folders, every tenth plane (pair) is held out when there are two or more: as noisy patches for the
    self-supervised validation loss, or as centre crops of the pairs for validation PSNR.
    """

    noisy: list[np.ndarray]
    clean: list[np.ndarray] | None = None
    labels: list[str] | None = None  # where the planes came from (layer names), for the log

    def samplers(self, recipe: Recipe, device):
        """(training sampler, held-out noisy sampler or None, validation batches, description)."""
        s = recipe.scale or 1
        noisy = list(self.noisy)
        if not noisy:
            raise ValueError("no planes to train on")
        small = [x.shape[:2] for x in noisy if min(x.shape[:2]) < recipe.patch]
        if small:
            raise ValueError(f"planes of {small[0][0]}x{small[0][1]} px are smaller than the {recipe.patch} px "
                             "training patch; use larger images or a smaller patch")
        if self.clean is None:
            held_out = None
            if len(noisy) >= 2:
                held_out = PatchSampler(noisy[::10], recipe.patch, device)
                noisy = [x for i, x in enumerate(noisy) if i % 10]
            return PatchSampler(noisy, recipe.patch, device), held_out, [], f"{len(noisy)} training planes (noisy)"
        clean = list(self.clean)
        if len(clean) != len(noisy):
            raise ValueError(f"{len(noisy)} noisy planes but {len(clean)} clean ones; pairs need as many of each")
        for k, (c, d) in enumerate(zip(clean, noisy, strict=True)):
            if c.shape[0] != d.shape[0] * s or c.shape[1] != d.shape[1] * s:
                raise ValueError(f"pair {k}: clean {c.shape[0]}x{c.shape[1]} and noisy {d.shape[0]}x{d.shape[1]} "
                                 "sizes do not match" + (f" (x{s})" if s > 1 else ""))
        val = []
        if len(noisy) >= 2:
            crop = recipe.data.val_crop
            val = [Batch(_crop_tensor(d, crop, 4).to(device), _crop_tensor(c, crop * s, 4 * s).to(device), None)
                   for c, d in zip(clean[::10], noisy[::10], strict=True)]
            keep = [i for i in range(len(noisy)) if i % 10]
            clean, noisy = [clean[i] for i in keep], [noisy[i] for i in keep]
        return PatchSampler(clean, recipe.patch, device, noisy, s), None, val, f"{len(noisy)} training pairs"


def image_paths(source: str | Path | list, exclude=()) -> list[Path]:
    """Image files of a folder or a glob pattern (or a list of them), sorted by name within each source.

    ``exclude`` holds file names or fnmatch patterns of names to leave out.
    """
    if isinstance(source, (list, tuple)):
        return [p for s in source for p in image_paths(s, exclude)]
    source = str(source)
    if Path(source).is_dir():
        paths = list_images(source)
    elif Path(source).is_file() and Path(source).suffix.lower() in IMAGE_SUFFIXES:  # one stack
        paths = [Path(source)]
    elif glob.has_magic(source):
        paths = sorted(Path(p) for p in glob.glob(source) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f"{source}: the pattern matches no PNG/JPEG/TIFF files")
    else:
        paths = list_images(source)  # raises "not a folder"
    return [p for p in paths if not any(fnmatch.fnmatch(p.name, pattern) for pattern in exclude)]


def load_folder(source, channels: int, exclude=(), min_size: int = 0) -> list[tuple[str, np.ndarray]]:
    """(name#plane, float32 (H, W, channels)) for every plane of every image of ``source`` (see ``image_paths``)."""
    out = []
    for path in image_paths(source, exclude):
        for k, plane in enumerate(planes_of(path)):
            x = as_channels(plane, channels)
            if min(x.shape[:2]) >= min_size:
                out.append((f"{path.name}#{k}", x))
    if not out:
        raise ValueError(f"{source}: no usable images (PNG/JPEG/TIFF, at least {min_size} px on each side)")
    return out


def load_frame_groups(source, channels: int, axis: int, exclude=(), min_size: int = 0) -> list[np.ndarray]:
    """Repeated acquisitions for Noise2Noise: per field of view, an array (frames, H, W, channels).

    ``axis`` is the axis of each file's array that holds the repeats (e.g. 0 for a (T, Y, X) stack); any other
    leading axes (Z, ...) give separate fields of view.
    """
    groups = []
    for path in image_paths(source, exclude):
        image = read_image(path)
        try:
            check_training_image(image)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None
        image = to_unit(image)
        rgb = channels == 3 and image.ndim >= 4 and image.shape[-1] == 3
        spatial = 3 if rgb else 2
        frames_at = axis + image.ndim if axis < 0 else axis  # -1 names an image axis, never a frame axis
        leading = image.ndim - spatial
        if not 0 <= frames_at < leading:
            where = f"0 to {leading - 1}" if leading else "none: it is a single image, not a stack"
            raise ValueError(f"{path.name}: shape {image.shape} has no frame axis {axis} before its image axes "
                             f"(the frame axis is one of the leading axes: {where})")
        frames = np.moveaxis(image, frames_at, 0)
        if frames.shape[0] < 2:
            raise ValueError(f"{path.name}: axis {axis} holds {frames.shape[0]} frame; Noise2Noise needs two or more")
        frames = frames.reshape(frames.shape[0], -1, *image.shape[image.ndim - spatial:])
        for k in range(frames.shape[1]):
            group = np.stack([as_channels(f, channels) for f in frames[:, k]])
            if min(group.shape[1:3]) >= min_size:
                groups.append(group)
    if not groups:
        raise ValueError(f"{source}: no stacks with a frame axis {axis} at least {min_size} px on each side")
    return groups


def pair_by_name(clean: list[tuple[str, np.ndarray]], degraded: list[tuple[str, np.ndarray]], what: str):
    """Degraded twins of ``clean``: by identical file name, else (different naming schemes) in sorted order."""
    by_name = dict(degraded)
    if all(n in by_name for n, _ in clean):
        return [by_name[n] for n, _ in clean]
    if len(degraded) != len(clean):
        missing = [n for n, _ in clean if n not in by_name]
        raise ValueError(f"{what}: no degraded twin for {missing[:3]} (pairs match by file name, or in sorted order "
                         f"when both hold as many images: {len(clean)} clean, {len(degraded)} degraded)")
    return [x for _, x in degraded]


@dataclass
class Batch:
    degraded: torch.Tensor
    clean: torch.Tensor
    estimate_target: torch.Tensor | None  # (N, dims) in training units, or None when unknown


def augment(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flip/rot90 variants (k in 0..7)."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


class PatchSampler:
    """Random aligned patches from clean images (and their degraded twins when paired)."""

    def __init__(self, clean: list[np.ndarray], patch: int, device, degraded: list[np.ndarray] | None = None,
                 scale: int = 1):
        self.scale = scale
        self.patch = patch
        self.clean = [torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).to(device) for x in clean]
        self.degraded = None if degraded is None else [
            torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).to(device) for x in degraded]

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(clean patches of size patch*scale, degraded patches of size patch or None)."""
        s, p = self.scale, self.patch
        idx = torch.randint(len(self.clean), (n,), generator=generator).tolist()
        clean, degraded = [], []
        for i in idx:
            h, w = self.clean[i].shape[-2:]
            top = int(torch.randint(0, (h - p * s) // s + 1, (1,), generator=generator)) * s
            left = int(torch.randint(0, (w - p * s) // s + 1, (1,), generator=generator)) * s
            k = int(torch.randint(0, 8, (1,), generator=generator))
            clean.append(augment(self.clean[i][:, top:top + p * s, left:left + p * s], k))
            if self.degraded is not None:
                t, l_ = top // s, left // s
                degraded.append(augment(self.degraded[i][:, t:t + p, l_:l_ + p], k))
        return torch.stack(clean), (torch.stack(degraded) if degraded else None)

    def tiles(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
        """Up to ``n`` patches that share no pixel: a random choice among the images' non-overlapping patch grids.
        Held-out data: the check's standard error counts every pixel once, and a plane sampled four times over
        understated it. Unpaired samplers only."""
        p = self.patch
        grid = [(i, top, left) for i, x in enumerate(self.clean)
                for top in range(0, x.shape[-2] - p + 1, p) for left in range(0, x.shape[-1] - p + 1, p)]
        chosen = torch.randperm(len(grid), generator=generator)[:n].tolist()
        return torch.stack([self.clean[i][:, t:t + p, l_:l_ + p] for i, t, l_ in (grid[k] for k in chosen)]), None


class FramePairSampler:
    """Two different frames of one field of view, same crop and flip/rotation (Noise2Noise pairs)."""

    def __init__(self, groups: list[np.ndarray], patch: int, device):
        self.patch = patch
        self.groups = [torch.from_numpy(np.ascontiguousarray(g.transpose(0, 3, 1, 2))).to(device) for g in groups]

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.patch
        first, second = [], []
        for i in torch.randint(len(self.groups), (n,), generator=generator).tolist():
            frames = self.groups[i]
            t, h, w = frames.shape[0], frames.shape[-2], frames.shape[-1]
            a = int(torch.randint(0, t, (1,), generator=generator))
            b = (a + 1 + int(torch.randint(0, t - 1, (1,), generator=generator))) % t
            top = int(torch.randint(0, h - p + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - p + 1, (1,), generator=generator))
            k = int(torch.randint(0, 8, (1,), generator=generator))
            first.append(augment(frames[a, :, top:top + p, left:left + p], k))
            second.append(augment(frames[b, :, top:top + p, left:left + p], k))
        return torch.stack(first), torch.stack(second)


def degrade(clean: torch.Tensor, recipe: Recipe, generator: torch.Generator, cpu_generator: torch.Generator) -> Batch:
    """Apply the recipe's synthetic degradation; returns what the model sees and what it must give back."""
    kind = recipe.degradation
    n = clean.shape[0]
    ranges = deg.noise_ranges(recipe.ranges)
    if kind == "awgn":
        sigma = deg.random_sigma(n, generator, clean.device, ranges)
        return Batch(deg.add_gaussian_noise(clean, sigma, generator), clean, (sigma / 255.0)[:, None])
    if kind == "poisson":
        noisy, equivalent = deg.random_poisson_gaussian(clean, generator, ranges)
        return Batch(noisy, clean, (equivalent / 255.0)[:, None])
    if kind == "awgn+poisson":
        half = n // 2
        a = degrade(clean[:half], recipe.model_copy(update={"degradation": "awgn"}), generator, cpu_generator)
        b = degrade(clean[half:], recipe.model_copy(update={"degradation": "poisson"}), generator, cpu_generator)
        return Batch(torch.cat([a.degraded, b.degraded]), clean,
                     torch.cat([a.estimate_target, b.estimate_target]))
    if kind == "camera":
        noisy = deg.add_camera_noise(clean, generator, ranges)
        # a third of the photos are also JPEG-saved, as phones and cameras do
        saved = torch.rand(n, generator=cpu_generator) < 1 / 3
        if saved.any():
            q = torch.randint(60, 96, (int(saved.sum()),), generator=cpu_generator).tolist()
            noisy[saved.to(noisy.device)] = deg.jpeg_batch(noisy[saved.to(noisy.device)], q)
        return Batch(noisy, clean, None)
    if kind == "sr-mix":
        lr, params = deg.random_sr_degradation(clean, recipe.scale, cpu_generator)
        return Batch(lr.to(clean.device), clean, params.to(clean.device))
    if kind == "blur":
        kernels, params = deg.random_kernels(n, recipe.scale, cpu_generator, clean.device)
        return Batch(deg.blur_decimate(clean, kernels, recipe.scale), clean, params)
    if kind == "jpeg":
        decoded, quality = deg.random_jpeg(clean, cpu_generator, ranges)
        return Batch(decoded, clean, quality[:, None])
    raise ValueError(f"unknown degradation {kind!r}")


def center_crop(x: np.ndarray, size: int, multiple: int) -> np.ndarray:
    h, w = x.shape[:2]
    ch = min(size, h) // multiple * multiple
    cw = min(size, w) // multiple * multiple
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[top:top + ch, left:left + cw]


def _crop_tensor(x: np.ndarray, size: int, multiple: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(center_crop(x, size, multiple).transpose(2, 0, 1)))[None]


def validation_set(recipe: Recipe, device) -> list[Batch]:
    """A fixed set of validation crops: the recipe's degradation applied (seeded) to the clean `val` images,
    or their real degraded twins from `val_degraded`."""
    data = recipe.data
    if data.val is None:
        return []
    s = recipe.scale or 1
    images = load_folder(data.val, recipe.channels)[: data.val_images]
    twins = None
    if data.val_degraded:
        degraded = load_folder(data.val_degraded, recipe.channels)[: data.val_images]
        twins = pair_by_name(images, degraded, "val_degraded")
    g = torch.Generator().manual_seed(1234)
    out = []
    for i, (name, x) in enumerate(images):
        clean = _crop_tensor(x, data.val_crop * s, 4 * s)
        if twins is None:
            batch = degrade(clean, recipe, g, g)
        else:
            if twins[i].shape[0] * s != x.shape[0] or twins[i].shape[1] * s != x.shape[1]:
                raise ValueError(f"validation pair {name}: clean {x.shape[:2]} and degraded "
                                 f"{twins[i].shape[:2]} sizes do not match")
            batch = Batch(_crop_tensor(twins[i], data.val_crop, 4), clean, None)
        out.append(Batch(batch.degraded.to(device), batch.clean.to(device),
                         None if batch.estimate_target is None else batch.estimate_target.to(device)))
    return out


def training_data(recipe: Recipe, device, arrays: ArrayData | None = None) -> tuple:
    """(training sampler, held-out noisy sampler or None, validation batches, what was read, in words) for a recipe.

    ``arrays`` (in-memory planes, e.g. napari layers) replaces the recipe's files (:meth:`ArrayData.samplers`).
    Otherwise: Noise2Noise reads groups of repeated frames; every other run reads images (clean ones, noisy ones
    when self-supervised) and, where the recipe names them, their degraded twins. A self-supervised run without
    clean references (no ``data.val``) holds out every tenth image or field of view for its validation loss.
    """
    if arrays is not None:
        return arrays.samplers(recipe, device)
    r, s = recipe, recipe.scale or 1
    held_out = None
    hold_out = bool(r.self_supervised) and r.data.val is None
    if r.self_supervised == "noise2noise":
        groups = load_frame_groups(r.data.train, r.channels, r.pairs_from, r.data.exclude, min_size=r.patch)
        if hold_out and len(groups) >= 2:  # every tenth field of view
            held_out = FramePairSampler(groups[::10], r.patch, device)
            groups = [g for i, g in enumerate(groups) if i % 10]
        sampler = FramePairSampler(groups, r.patch, device)
        count = f"{len(groups)} fields of view ({sum(len(g) for g in groups)} frames)"
    else:
        clean = load_folder(r.data.train, r.channels, r.data.exclude, min_size=r.patch * s)
        degraded = None
        if r.data.degraded:
            twins = load_folder(r.data.degraded, r.channels, r.data.exclude, min_size=r.patch)
            degraded = pair_by_name(clean, twins, r.data.degraded)
            for (n, c), d in zip(clean, degraded, strict=True):
                if c.shape[0] != d.shape[0] * s or c.shape[1] != d.shape[1] * s:
                    raise ValueError(f"pair {n}: clean {c.shape[:2]} and degraded {d.shape[:2]} sizes do not match")
        images = [x for _, x in clean]
        if hold_out and len(images) >= 2:  # every tenth image
            held_out = PatchSampler(images[::10], r.patch, device)
            images = [x for i, x in enumerate(images) if i % 10]
        sampler = PatchSampler(images, r.patch, device, degraded, s)
        count = f"{len(images)} training images" + (" (noisy)" if r.self_supervised else "")
    return sampler, held_out, validation_set(r, device), count
