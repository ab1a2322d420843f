"""Reading and writing image files (PNG/JPEG/TIFF) without changing their layout or dtype."""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ImageFileError(ValueError):
    """An input file is missing, unreadable or of an unsupported kind."""


def read_image(path: str | Path) -> np.ndarray:
    """Read PNG/JPEG/BMP with Pillow and TIFF with tifffile (uint16 and multi-page stacks kept)."""
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageFileError(f"{path}: unsupported file type {suffix!r} (use {', '.join(IMAGE_SUFFIXES)})")
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        from PIL import Image

        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im, dtype=np.uint16)
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            return np.asarray(im)
    except ImageFileError:
        raise
    except Exception as err:
        raise ImageFileError(f"{path}: cannot read image ({err})") from err


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write TIFF with tifffile (any dtype, stacks) or PNG/JPEG with Pillow (uint8, 2-D or RGB)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        # Only (..., H, W, 3) is RGB; anything else (a Z-stack of 3 pages too) is pages of gray planes.
        photometric = "rgb" if image.ndim >= 3 and image.shape[-1] == 3 else "minisblack"
        tifffile.imwrite(path, image, photometric=photometric)
        return path
    from PIL import Image

    if image.dtype == np.uint16 and image.ndim == 2 and suffix == ".png":
        Image.fromarray(image).save(path)
        return path
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ImageFileError(f"{path}: {suffix} holds 8-bit gray or RGB images only; write .tif instead")
    Image.fromarray(image).save(path, quality=95) if suffix in (".jpg", ".jpeg") else Image.fromarray(image).save(path)
    return path


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageFileError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
