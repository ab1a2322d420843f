"""Reading and writing image files (PNG/JPEG/TIFF) without changing their layout or dtype."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STALE_AGE_S = 3600.0   # a leftover (partial file, staging or build folder) this old is stale whatever its pid says
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}


class ImageFileError(ValueError):
    """An input file is missing, unreadable or of an unsupported kind."""


@dataclass(frozen=True)
class FileLayout:
    """What a file says about its array's axes: for ``restore()`` and for writing the result back.

    ``channel_axis`` and ``alpha`` are what ``restore()`` takes: None leaves the choice to its
    default rules (a last axis of 3 is RGB, of 4 RGBA); an int names the axis of a TIFF's samples,
    ``alpha=True`` says its last channel is alpha (gray + alpha or RGBA), False that none is.
    ``tiff`` holds the photometric / planarconfig / extrasamples to write the result back alike.
    """

    channel_axis: int | None = None
    alpha: bool | None = None
    tiff: dict = field(default_factory=dict)


def read_image(path: str | Path) -> np.ndarray:
    """Read PNG/JPEG/BMP with Pillow and TIFF with tifffile (uint16 and multi-page stacks kept).

    Pillow images come back as gray or RGB (alpha dropped); :func:`read_image_file` keeps alpha.
    """
    return _read(Path(path), keep_alpha=False)[0]


def read_image_file(path: str | Path) -> tuple[np.ndarray, FileLayout]:
    """The image (alpha kept, as RGBA) and its :class:`FileLayout`."""
    return _read(Path(path), keep_alpha=True)


def _read(path: Path, keep_alpha: bool) -> tuple[np.ndarray, FileLayout]:
    if not path.is_file():
        raise ImageFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageFileError(f"{path}: unsupported file type {suffix!r} (use {', '.join(IMAGE_SUFFIXES)})")
    try:
        if suffix in (".tif", ".tiff"):
            return _read_tiff(path)
        from PIL import Image

        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im, dtype=np.uint16), FileLayout()
            if keep_alpha and ("A" in im.getbands() or "transparency" in im.info):
                mode = "LA" if im.mode in ("LA", "La") or (im.mode == "L" and "transparency" in im.info) else "RGBA"
                return np.asarray(im.convert(mode)), FileLayout(channel_axis=-1, alpha=True)
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            return np.asarray(im), FileLayout()
    except ImageFileError:
        raise
    except Exception as err:
        raise ImageFileError(f"{path}: cannot read image ({err})") from err


def _read_tiff(path: Path) -> tuple[np.ndarray, FileLayout]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        image = series.asarray()
        axes, page = series.axes, series.keyframe
    if "S" not in axes or image.shape != tuple(series.shape):
        if image.ndim >= 3 and image.shape[-1] in (2, 4):
            # tifffile stores an (H, W, 2) array as H pages of W x 2 pixels: nobody means images
            # 2 or 4 pixels wide, so the last axis is channels (restored one by one)
            return image, FileLayout(channel_axis=-1, alpha=False)
        return image, FileLayout()
    axis = axes.index("S") - len(axes)
    rgb = page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
    extra = tuple(tifffile.EXTRASAMPLE(e).name.lower() for e in page.extrasamples)
    tiff = dict(photometric="rgb" if rgb else "minisblack", planarconfig="contig" if axis == -1 else "separate")
    if extra:
        tiff["extrasamples"] = extra
    alpha = axis == -1 and image.shape[-1] == (4 if rgb else 2) and extra[-1:] in (("assocalpha",), ("unassalpha",))
    return image, FileLayout(channel_axis=axis, alpha=alpha, tiff=tiff)


def write_image(path: str | Path, image: np.ndarray, layout: FileLayout | None = None) -> Path:
    """Write TIFF with tifffile (any dtype, stacks; ``layout`` from :func:`read_image_file` keeps the
    input's samples layout) or PNG/JPEG/BMP with Pillow (uint8 gray, RGB, RGBA, gray + alpha in PNG;
    uint16 gray PNG).

    The file appears whole or not at all: it is written to a hidden temporary file beside ``path``
    and renamed over it once complete, with the permissions of a new file (the umask applies).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        options = dict(layout.tiff) if layout is not None and layout.tiff else {}
        if not options:
            # Only (..., H, W, 3) is RGB; anything else (a Z-stack of 3 pages too) is pages of gray planes.
            options["photometric"] = "rgb" if image.ndim >= 3 and image.shape[-1] == 3 else "minisblack"
            if layout is not None and layout.alpha and image.shape[-1] in (2, 4):
                options.update(photometric="rgb" if image.shape[-1] == 4 else "minisblack", planarconfig="contig",
                               extrasamples=("unassalpha",))

        def save(fh):
            tifffile.imwrite(fh, image, **options)
    elif suffix in PIL_FORMATS:
        from PIL import Image

        gray16 = image.dtype == np.uint16 and image.ndim == 2 and suffix == ".png"
        jpeg = PIL_FORMATS[suffix] == "JPEG"
        channels = (3,) if jpeg else (2, 3, 4) if suffix == ".png" else (3, 4)  # LA only in PNG
        pillow = image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in channels)
        if not gray16 and (image.dtype != np.uint8 or not pillow):
            raise ImageFileError(f"{path}: {suffix} holds 8-bit gray, RGB or RGBA images only; write .tif instead")
        options = dict(quality=95) if jpeg else {}

        def save(fh):
            Image.fromarray(image).save(fh, format=PIL_FORMATS[suffix], **options)
    else:
        raise ImageFileError(f"{path}: unsupported file type {suffix!r} (use {', '.join(IMAGE_SUFFIXES)})")
    write_atomically(path, save)
    return path


def write_atomically(path: str | Path, save) -> None:
    """Call ``save(binary_file)`` on a new hidden file beside ``path``, then rename it to ``path``
    (:func:`written_then_renamed`), flushed to disk first.

    On any failure (a full disk, Ctrl-C) the temporary file is removed and ``path`` is untouched.
    The file is created with mode 0o666 minus the umask, like any new file (not tempfile's 0o600).
    """
    with written_then_renamed(path) as partial, open(partial, "wb") as fh:
        save(fh)
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def written_then_renamed(path: str | Path) -> Iterator[Path]:
    """Write a file under a hidden name beside ``path`` (:func:`partial_name`), renamed to ``path`` once whole.

    Yields the hidden name, already created (empty) with a new file's mode, 0o666 minus the umask; the
    block writes the file there, by name. When the block completes the file keeps that mode (writers that
    create files 0o600, such as safetensors, would keep the file from the user's group) and replaces
    ``path``; whatever happens, nothing is left under the hidden name, so a full disk or a kill never
    leaves a truncated file under the final name (a killed process leaves the hidden name, which
    :func:`sweep_stale` can tell from a running writer's).
    """
    path = Path(path)
    partial = partial_name(path)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        mode = os.fstat(fd).st_mode & 0o777
        os.close(fd)
        yield partial
        if partial.stat().st_mode & 0o777 != mode:
            os.chmod(partial, mode)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageFileError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


# ----------------------------------------------------------------------------- leftovers of killed writers

def host_tag() -> str:
    """This host's name as it appears in leftover names (no "-": the fields after it are split on it)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def partial_name(path: str | Path, kind: str = "partial") -> Path:
    """A hidden name beside ``path`` for what is written before it is renamed to ``path``:
    ``.NAME.<kind>-<host>-<pid>-<thread>-<random>`` (:func:`owner_tag`), unique across threads, processes
    and hosts sharing the folder, and telling :func:`sweep_stale` whose it is."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{owner_tag()}")


def owner_tag() -> str:
    """``<host>-<pid>-<thread>-<random>``: a name part unique across hosts, processes, threads and calls,
    from which :func:`sweep_stale` tells whether the writer may still be running."""
    return f"{host_tag()}-{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}"


OWNER_PATTERN = r"(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-\d+-[0-9a-f]+"   # what owner_tag() writes


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (True where that cannot be told)."""
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process
        return True
    return True


def sweep_stale(root: Path, patterns, *, own: bool = False, max_age_s: float | None = None) -> list[Path]:
    """Remove the leftovers of killed writers directly in ``root``; return what was removed.

    Only entries whose whole name matches one of ``patterns`` (compiled regexes) are candidates; nothing
    else is ever touched. A candidate is stale when it is older than ``max_age_s`` (default
    :data:`STALE_AGE_S`; modification time), or when its pattern names a writer — the ``pid`` group, and the
    ``host`` group where there is one (none: this host) — that is gone from this host. ``own=True`` counts
    this process's own leftovers as stale too (for callers that hold the only lock under which this process
    writes them; a pid reused in a container then looks alive). Errors (a folder that cannot be listed, a
    leftover removed meanwhile) are ignored: sweeping never fails the caller.
    """
    limit = STALE_AGE_S if max_age_s is None else max_age_s
    now, host, me = time.time(), host_tag(), os.getpid()
    try:
        entries = list(Path(root).iterdir())
    except OSError:
        return []
    removed = []
    for p in entries:
        m = next((m for m in (pattern.fullmatch(p.name) for pattern in patterns) if m), None)
        if m is None:
            continue
        groups = m.groupdict()
        try:
            old = now - p.lstat().st_mtime > limit
        except OSError:
            continue
        gone = False
        if groups.get("pid") is not None and groups.get("host", host) == host:
            pid = int(groups["pid"])
            gone = (own and pid == me) or (pid != me and not process_alive(pid))
        if not (old or gone):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except OSError:
                continue
        removed.append(p)
    return removed
