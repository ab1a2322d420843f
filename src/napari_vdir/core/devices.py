"""Device choice (CUDA, then MPS, then CPU) and the fast-precision context for each."""

from __future__ import annotations

import contextlib

import torch

DEVICE_CHOICES = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def select_device(preference: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device
    are checked for availability. Anything else raises a ``ValueError``/``TypeError`` naming the choices."""
    if isinstance(preference, torch.device):
        device = preference
    elif preference is None or preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    elif not isinstance(preference, str):
        raise TypeError(f"device must be {DEVICE_CHOICES} or a torch.device, got {preference!r}")
    else:
        try:
            device = torch.device(preference.strip().lower())
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"device must be {DEVICE_CHOICES}, got {preference!r}") from err
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be {DEVICE_CHOICES}, got {preference!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {preference!r} was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {preference!r}: there are only {torch.cuda.device_count()} CUDA GPU(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {preference!r} was asked for but Apple MPS is not available; use 'auto' or 'cpu'")
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
    if precision not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"precision must be 'auto', 'float32', 'bfloat16' or 'float16', got {precision!r}")
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
