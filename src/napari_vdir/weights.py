"""Weights files: safetensors tensors plus validated metadata, and the shipped-model registry.

A weights file never contains pickled code: tensors are read by ``safetensors`` and
the metadata is JSON text, checked before any tensor reaches the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch

from .nets import VDIR, ArchConfig
from .tasks import ESTIMATES, TASKS

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
            raise WeightsError(f"{source}: not a napari-vdir weights file (no '{FORMAT}' metadata)")
        try:
            version = int(meta["format_version"])
            if version > FORMAT_VERSION:
                raise WeightsError(f"{source}: weights format {version} is newer than this napari-vdir "
                                   f"understands ({FORMAT_VERSION}); upgrade napari-vdir")
            arch = ArchConfig.from_dict(json.loads(meta["arch"]))
            info = cls(name=meta["name"], task=meta["task"], arch=arch,
                       description=meta.get("description", ""),
                       recipe=json.loads(meta.get("recipe", "{}")),
                       quality=json.loads(meta.get("quality", "{}")),
                       trained_steps=int(meta.get("trained_steps", 0)))
        except WeightsError:
            raise
        except (KeyError, ValueError, TypeError) as err:
            raise WeightsError(f"{source}: invalid metadata ({err})") from err
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
    save_file(tensors, str(path), metadata=info.to_metadata())
    return path


def read_info(path: str | Path) -> ModelInfo:
    """Read and validate only the metadata of a weights file."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"{path}: corrupt or truncated weights file ({err})") from err
    return ModelInfo.from_metadata(meta, str(path))


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[VDIR, ModelInfo]:
    """Build the network described by a weights file and load its tensors, checking every one."""
    from safetensors.torch import load_file

    path = _existing(path)
    info = read_info(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as err:
        raise WeightsError(f"{path}: corrupt or truncated weights file ({err})") from err
    model = VDIR(info.arch)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise WeightsError(f"{path}: tensors do not match the architecture in its metadata "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise WeightsError(f"{path}: tensor {key} has shape {tuple(value.shape)}, "
                               f"the architecture needs {tuple(expected[key].shape)}")
        if not torch.isfinite(value).all():
            raise WeightsError(f"{path}: tensor {key} contains NaN or inf")
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    return model.eval().to(device), info


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    return path


# ----------------------------------------------------------------------------- registry

def shipped_dirs() -> list[Path]:
    """Installed package data first, then the source checkout's top-level ``models/``."""
    dirs = [Path(str(resources.files("napari_vdir") / "models")),
            Path(__file__).resolve().parents[2] / "models"]
    return [d for d in dirs if d.is_dir()]


@lru_cache(maxsize=1)
def shipped_models() -> dict[str, Path]:
    """Name -> path of every shipped weights file (name = file stem)."""
    found: dict[str, Path] = {}
    for d in shipped_dirs():
        for p in sorted(d.glob(f"*{WEIGHTS_SUFFIX}")):
            found.setdefault(p.stem, p)
    return found


def default_model_name(task: str, channels: int, scale: int = 1) -> str:
    kind = "rgb" if channels == 3 else "gray"
    return f"sr-x{scale}-{kind}" if task == "sr" else f"{task}-{kind}"


def resolve_model(model: str | Path | None, task: str, channels: int, scale: int = 1) -> Path:
    """Turn a shipped name, a path or None (the task's default) into a weights file path.

    For gray input with no gray model shipped, the colour model is used (the
    caller replicates the channel).
    """
    if model is not None:
        as_path = Path(model)
        if as_path.suffix == WEIGHTS_SUFFIX or as_path.exists():
            return _existing(as_path)
        if str(model) in shipped_models():
            return shipped_models()[str(model)]
        raise WeightsError(f"no shipped model named {model!r}; shipped: {', '.join(shipped_models()) or 'none'}")
    names = [default_model_name(task, channels, scale)]
    if channels == 1:
        names.append(default_model_name(task, 3, scale))
    for name in names:
        if name in shipped_models():
            return shipped_models()[name]
    raise WeightsError(f"no shipped model for task {task!r}" + (f" x{scale}" if task == "sr" else "")
                       + f" (looked for {', '.join(names)}); pass model=PATH to a weights file, "
                       "e.g. one made by `python -m napari_vdir.training`")


def list_models() -> list[ModelInfo]:
    """Metadata of every shipped model."""
    return [read_info(p) for p in shipped_models().values()]
