"""Device choice (CUDA, then MPS, then CPU) and the fast-precision context for each."""

from __future__ import annotations

import contextlib

import torch

from napari_vdir.core.errors import OptionTypeError, OptionValueError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def check_device(preference: str | torch.device | None = "auto") -> torch.device | None:
    """The device ``preference`` names (None for "auto"), without checking that it is there; a ``ValueError`` /
    ``TypeError`` naming the choices for anything else."""
    if isinstance(preference, torch.device):
        device = preference
    elif preference is None or preference == "auto":
        return None
    elif not isinstance(preference, str):
        raise OptionTypeError("device", "{device} must be {choices} or a torch.device, got {value}", preference,
                              DEVICES)
    else:
        try:
            device = torch.device(preference.strip().lower())
        except (RuntimeError, ValueError):
            device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise OptionValueError("device", "{device} must be {choices}, got {value}", preference, DEVICES)
    return device


def select_device(preference: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device
    are checked for availability. Anything else raises a ``ValueError``/``TypeError`` naming the choices."""
    device = check_device(preference)
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionValueError("device", "{device} {value} was asked for but no CUDA GPU is available; use "
                                   "{choices}", preference, ("auto", "cpu"))
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionValueError("device", f"{{device}} {{value}}: there are only {torch.cuda.device_count()} CUDA "
                                   f"GPU(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})", preference)
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise OptionValueError("device", "{device} {value} was asked for but Apple MPS is not available; use "
                               "{choices}", preference, ("auto", "cpu"))
    return device


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    return {"mps": "MPS (Apple GPU)", "cpu": "CPU"}.get(device.type, str(device))


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def fast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype used for ``precision='auto'`` (None means plain float32)."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise OptionValueError("precision", "{precision} must be {choices}, got {value}", precision, PRECISIONS)
    if precision == "float32":
        return None
    if precision != "auto":
        return getattr(torch, precision)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_supports_bf16() else None
    return torch.float16


def autocast_context(device: torch.device, precision: str = "auto"):
    dtype = fast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
