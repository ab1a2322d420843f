"""Weights files: safetensors tensors plus validated metadata (the file format: read, validate, save).

A weights file never contains pickled code: tensors are read by ``safetensors`` and
the metadata is JSON text, checked before any tensor reaches the network. Which files are models, and by
what name, is :mod:`napari_vdir.core.models`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from napari_vdir.core.io import written_then_renamed
from napari_vdir.core.nets import VDIR, ArchConfig
from napari_vdir.core.tasks import ESTIMATES, TASKS

FORMAT = "napari-vdir"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"


class WeightsError(ValueError):
    """A weights file is missing, corrupt, truncated or does not match its metadata."""


@dataclass
class ModelInfo:
    """The metadata stored beside the tensors of a weights file."""

    name: str
    task: str
    arch: ArchConfig
    description: str = ""
    recipe: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    trained_steps: int = 0

    @property
    def channels(self) -> int:
        return self.arch.channels

    @property
    def scale(self) -> int:
        return self.arch.scale

    def to_metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "name": self.name,
            "task": self.task,
            "arch": json.dumps(self.arch.to_dict()),
            "description": self.description,
            "recipe": json.dumps(self.recipe),
            "quality": json.dumps(self.quality),
            "trained_steps": str(self.trained_steps),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str] | None, source: str) -> ModelInfo:
        if not meta or meta.get("format") != FORMAT:
            raise WeightsError(f"{source}: not a napari-vdir weights file (no '{FORMAT}' metadata); "
                               "use a file made by `python -m napari_vdir.training` or a shipped model")
        try:
            version = int(meta["format_version"])
            if version > FORMAT_VERSION:
                raise WeightsError(f"{source}: weights format {version} is newer than this napari-vdir "
                                   f"understands ({FORMAT_VERSION}); upgrade napari-vdir")
            for key, text in meta.items():
                if len(text) > MAX_METADATA_CHARS:
                    raise WeightsError(f"{source}: not a napari-vdir weights file (its metadata {key!r} has "
                                       f"{len(text)} characters; at most {MAX_METADATA_CHARS})")
            try:
                arch = ArchConfig.from_dict(_bounded_json(meta["arch"], source, "arch"))
            except (ValueError, TypeError) as err:
                if isinstance(err, WeightsError):
                    raise
                raise WeightsError(f"{source}: invalid architecture in its metadata ({_one_line(err)}); "
                                   "the file is damaged or was not written by napari-vdir") from err
            info = cls(name=meta["name"], task=meta["task"], arch=arch,
                       description=meta.get("description", ""),
                       recipe=_bounded_json(meta.get("recipe", "{}"), source, "recipe"),
                       quality=_bounded_json(meta.get("quality", "{}"), source, "quality"),
                       trained_steps=int(meta.get("trained_steps", 0)))
        except WeightsError:
            raise
        except KeyError as err:
            raise WeightsError(f"{source}: invalid metadata (no {err.args[0]!r} entry)") from err
        except (ValueError, TypeError) as err:
            raise WeightsError(f"{source}: invalid metadata ({_one_line(err)})") from err
        if not isinstance(info.recipe, dict) or not isinstance(info.quality, dict):
            raise WeightsError(f"{source}: invalid metadata ('recipe' and 'quality' must be JSON objects)")
        if info.task not in TASKS:
            raise WeightsError(f"{source}: unknown task {info.task!r} in metadata")
        if (info.task == "sr") != (arch.scale > 1):
            raise WeightsError(f"{source}: task {info.task!r} does not match scale {arch.scale}")
        if arch.estimate_dims not in (0, len(ESTIMATES[info.task])):
            raise WeightsError(f"{source}: estimator size {arch.estimate_dims} does not fit task {info.task!r}")
        return info


def save_weights(path: str | Path, model: VDIR, info: ModelInfo, *, half: bool = True) -> Path:
    """Write the inference part of ``model`` (encoder, restorer, estimator) and its metadata.

    ``half=True`` stores float16 tensors: half the size, and the effect on PSNR is
    below 0.001 dB (they are loaded back as float32).
    """
    from safetensors.torch import save_file

    if info.arch != model.cfg:
        raise ValueError("ModelInfo.arch does not match the model's configuration")
    dtype = torch.float16 if half else torch.float32
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a full disk or a kill never leaves a truncated file under the final name, and the file gets a new
    # file's mode (safetensors itself writes 0o600, which would keep the weights from the user's group)
    with written_then_renamed(path) as partial:
        save_file(tensors, str(partial), metadata=info.to_metadata())
    return path


MAX_HEADER_BYTES = 16 * 1024 * 1024  # a shipped model's header is ~30 KB
MAX_METADATA_CHARS = 1024 * 1024     # one metadata entry; a shipped model's recipe is ~1 KB
MAX_JSON_DEPTH = 32                  # nesting of the header or of a metadata entry; a shipped recipe nests 3 deep
_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4}
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def json_depth(text: str) -> int:
    """How deep ``[`` and ``{`` nest in ``text`` (brackets inside JSON strings do not count), found
    without parsing it: Python's parser recurses once per level and fails with ``RecursionError``."""
    import numpy as np

    codes = np.frombuffer(_JSON_STRING.sub('""', text).encode("utf-8", "surrogatepass"), np.uint8)
    steps = np.zeros(codes.shape, np.int32)
    steps[(codes == ord("[")) | (codes == ord("{"))] = 1
    steps[(codes == ord("]")) | (codes == ord("}"))] = -1
    return int(np.cumsum(steps).max()) if steps.size else 0


def _bounded_json(text: str, source, what: str):
    """``json.loads(text)`` once its nesting is known to be at most :data:`MAX_JSON_DEPTH`."""
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise WeightsError(f"{source}: not a napari-vdir weights file (its {what} nests {depth} levels deep; "
                           f"at most {MAX_JSON_DEPTH})")
    return json.loads(text)


def read_header(path: str | Path) -> tuple[dict[str, str] | None, dict[str, dict]]:
    """(metadata, tensor table) of a safetensors file, read and checked without loading any tensor.

    The tensor table maps each name to ``{"dtype", "shape", "data_offsets"}``. Offsets are checked
    against the file's size, so a truncated file is found here. Torch checkpoints (zip or pickle)
    are recognised by their first bytes and never opened further: nothing is ever unpickled.
    """
    path = existing_file(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = f.read(9)
        if size == 0:
            raise WeightsError(f"{path}: the file is empty (0 bytes); export the model again")
        length = int.from_bytes(start[:8], "little") if size >= 8 else -1
        looks_safetensors = 0 <= length <= size - 8 and start[8:9] == b"{"
        if not looks_safetensors and _is_torch_checkpoint(path, start):
            raise WeightsError(f"{path}: this is a training checkpoint (torch.save), not a weights file; "
                               f"use OUT/<name>.safetensors from the same training run")
        if size < 8:
            raise WeightsError(f"{path}: truncated weights file ({size} bytes)")
        if length > size - 8:
            raise WeightsError(f"{path}: truncated or not a safetensors weights file (its header claims "
                               f"{length} bytes, the file has {size})")
        if length > MAX_HEADER_BYTES:
            raise WeightsError(f"{path}: not a napari-vdir weights file (a {length}-byte header)")
        f.seek(8)
        raw = f.read(length)
    try:
        header = _bounded_json(raw.decode("utf-8"), path, "header")
    except WeightsError:
        raise
    except (UnicodeDecodeError, ValueError) as err:
        raise WeightsError(f"{path}: corrupt or not a safetensors file (its header is not JSON)") from err
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise WeightsError(f"{path}: corrupt safetensors metadata (values must be strings)")
    data_bytes, end_max = size - 8 - length, 0
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], list(entry["shape"]), entry["data_offsets"]
            ok = all(isinstance(n, int) and n >= 0 for n in (*shape, begin, end))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise WeightsError(f"{path}: corrupt safetensors header (entry {name!r})")
        if dtype not in _ITEMSIZE:
            raise WeightsError(f"{path}: tensor {name} is {dtype}; napari-vdir weights are F16, BF16 or F32")
        numel = 1
        for n in shape:
            numel *= n
        if end - begin != numel * _ITEMSIZE[dtype]:
            raise WeightsError(f"{path}: corrupt safetensors header (tensor {name} has the wrong byte size)")
        end_max = max(end_max, end)
    if end_max > data_bytes:
        raise WeightsError(f"{path}: truncated weights file (tensors need {end_max} bytes of data, "
                           f"the file holds {data_bytes}); copy or export it again")
    return meta, header


def _is_torch_checkpoint(path: Path, start: bytes) -> bool:
    """torch.save writes a zip holding ``<name>/data.pkl`` (or, legacy, a bare pickle)."""
    if len(start) >= 2 and start[0] == 0x80 and 2 <= start[1] <= 5:  # pickle protocol 2-5
        return True
    if start[:4] != b"PK\x03\x04":
        return False
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:  # reads the directory only
            return any(n.endswith("data.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


@lru_cache(maxsize=16)
def expected_shapes(arch: ArchConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a VDIR with ``arch``, from a network on the meta device
    (nothing is allocated). ``arch`` is already within ``nets.ARCH_LIMITS``."""
    with torch.device("meta"):
        model = VDIR(arch)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_tensors(path, arch: ArchConfig, table: dict[str, dict]) -> None:
    """The tensors named in the file's header are exactly those of ``arch``, with its shapes."""
    expected = expected_shapes(arch)
    missing = sorted(set(expected) - set(table))
    unexpected = sorted(set(table) - set(expected))
    if missing or unexpected:
        raise WeightsError(f"{path}: tensors do not match the architecture in its metadata "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, entry in table.items():
        if tuple(entry["shape"]) != expected[key]:
            raise WeightsError(f"{path}: tensor {key} has shape {tuple(entry['shape'])}, "
                               f"the architecture needs {expected[key]}")


def read_info(path: str | Path) -> ModelInfo:
    """Read and validate the metadata of a weights file against its tensor table (no tensor is loaded)."""
    path = existing_file(path)
    meta, table = read_header(path)
    info = ModelInfo.from_metadata(meta, str(path))
    check_tensors(path, info.arch, table)
    return info


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[VDIR, ModelInfo]:
    """Build the network described by a weights file and load its tensors, checking every one.

    Everything that the header says is checked first (:func:`read_info`): the network is built
    only for a bounded architecture whose tensors the file really holds.
    """
    from safetensors.torch import load_file

    path = existing_file(path)
    info = read_info(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types for corrupt data
        raise WeightsError(f"{path}: corrupt or truncated weights file ({_one_line(err)})") from err
    for key, value in tensors.items():
        if not torch.isfinite(value).all():
            raise WeightsError(f"{path}: tensor {key} contains NaN or inf; the model diverged in training, "
                               "export an earlier checkpoint")
    model = VDIR(info.arch)
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    return model.eval().to(device), info


def _one_line(err) -> str:
    return " ".join(str(err).split())


def existing_file(path) -> Path:
    """``path`` as a Path where it is a file; else :class:`WeightsError` (one line)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    return path
