"""Where the network runs: PyTorch (the VDIR module itself) or ONNX Runtime on the CPU.

:class:`OrtVDIR` stands in for a :class:`napari_vdir.nets.VDIR` with the call signature the tiling code
(:class:`napari_vdir.inference.PlaneRestorer`) uses — ``model.cfg``, ``model.encode(y)`` and
``model(y, sample=, latent_shift=, with_estimate=, noise=, between_blocks=)`` — so tiling, progress,
cancel, the x8 ensemble, Monte-Carlo samples and ``strength`` run unchanged. It runs two ONNX graphs:
the encoder ``y -> (mu, logvar)`` and the restorer ``(y, c) -> (image, EST(c))``; c = mu + std * noise and
the strength shift are computed between them exactly as ``VDIR.forward`` computes them.

The graphs are exported once per weights file (keyed by the file's SHA-256) into the user cache folder,
``$XDG_CACHE_HOME/napari-vdir`` or ``~/.cache/napari-vdir`` (``%LOCALAPPDATA%\\napari-vdir\\Cache`` on
Windows, ``~/Library/Caches/napari-vdir`` on macOS), never next to the package.

Backend and precision (``restore(backend=, precision=)``):

- ``"torch"``: PyTorch with ``precision`` as before ("auto": bf16 autocast on CPUs that support it).
- ``"onnxruntime"``: ONNX Runtime's CPU provider, float32 (exact: within ~1e-6 of torch float32). Needs the
  CPU device and ``precision`` "auto" or "float32"; bf16/fp16 are torch paths.
- ``"auto"`` (default): ONNX Runtime whenever the CPU would otherwise run torch in float32 — ``precision=
  "float32"``, or ``"auto"`` on a CPU without bf16 support (most laptops) — and onnx and onnxruntime are
  installed: it is the fastest exact path (benchmarks/results/backends.md: 1.5x torch float32 on this
  project's CPU). Where ``precision="auto"`` resolves to bf16 (CPUs with bf16, GPUs) it keeps that torch
  fast path: on this project's bf16 CPU it is faster still (max abs difference ~5e-3 of the range). A torch
  module with forward hooks on it (someone is looking at its layers) runs as torch under "auto", so the
  hooks see the pass.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .nets import VDIR, ArchConfig, Forward, draw_latent

BACKENDS = ("auto", "torch", "onnxruntime")
GRAPH_VERSION = 1   # bump when the exported graphs change: old cache entries are then ignored
CANCEL_POLL_S = 0.02


def onnxruntime_available() -> bool:
    """ONNX Runtime can run here and torch can export to ONNX (that needs the ``onnx`` package)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def resolve_backend(backend: str, device: torch.device, precision: str = "auto") -> str:
    """``"torch"`` or ``"onnxruntime"`` for a ``restore(backend=...)`` choice; raises for impossible ones."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'torch' or 'onnxruntime', got {backend!r}")
    if backend == "torch":
        return "torch"
    from .devices import fast_dtype

    if backend == "onnxruntime":
        exact = precision in ("auto", "float32")  # ONNX Runtime always computes in float32
        if device.type != "cpu":
            raise ValueError(f"backend='onnxruntime' runs on the CPU, not {device.type}; use device='cpu' "
                             "or backend='torch'")
        if not exact:
            raise ValueError(f"backend='onnxruntime' computes in float32; precision={precision!r} is a torch "
                             "path (use precision='auto' or 'float32', or backend='torch')")
        if not onnxruntime_available():
            raise ValueError("backend='onnxruntime' needs onnxruntime and onnx: pip install 'napari-vdir[onnx]'")
        return "onnxruntime"
    float32 = fast_dtype(device, precision) is None  # torch would run this request in plain float32
    return "onnxruntime" if device.type == "cpu" and float32 and onnxruntime_available() else "torch"


def cache_dir() -> Path:
    """The user cache folder for napari-vdir (created on first use, not here)."""
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "napari-vdir"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "napari-vdir" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "napari-vdir"
    return Path.home() / ".cache" / "napari-vdir"


@lru_cache(maxsize=32)
def _digest(path: str, mtime: float, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_digest(path: str | Path) -> str:
    """SHA-256 of a weights file (cached while its mtime and size stay the same)."""
    st = Path(path).stat()
    return _digest(str(path), st.st_mtime, st.st_size)


def onnx_graphs(path: str | Path, net: VDIR) -> tuple[Path, Path]:
    """(encoder, restorer) ONNX files for the weights file ``path`` (whose network is ``net``), exported
    into the cache folder the first time and reused after."""
    from .export import ONNX_OPSET, write_onnx

    folder = cache_dir() / "onnx" / f"{weights_digest(path)[:32]}-g{GRAPH_VERSION}-opset{ONNX_OPSET}"
    encoder, restorer = folder / "encoder.onnx", folder / "restorer.onnx"
    if not (encoder.is_file() and restorer.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        write_onnx(net, encoder, "encoder")   # each written beside its name, then renamed
        write_onnx(net, restorer, "restorer")
    return encoder, restorer


class OrtVDIR:
    """ONNX Runtime (CPU, float32) version of a VDIR, called as the tiling code calls the torch module."""

    backend = "onnxruntime"

    def __init__(self, encoder: str | Path, restorer: str | Path, cfg: ArchConfig, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        # Each session has its own thread pool; spinning threads of the one that just ran would take the
        # cores from the other (encoder and restorer alternate, tile by tile).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        self._ort = ort
        self.cfg = cfg
        self.encoder = ort.InferenceSession(str(encoder), options, providers=providers)
        self.restorer = ort.InferenceSession(str(restorer), options, providers=providers)
        self.has_estimate = len(self.restorer.get_outputs()) > 1

    def encode(self, y: torch.Tensor, between_blocks=None) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self._run(self.encoder, {"input": _array(y)}, between_blocks)
        return torch.from_numpy(mu), torch.from_numpy(logvar)

    def __call__(self, y: torch.Tensor, *, sample: bool = False, latent_shift: torch.Tensor | None = None,
                 with_estimate: bool = False, noise: torch.Tensor | None = None, between_blocks=None) -> Forward:
        """Same contract as ``VDIR.forward``; ``between_blocks()`` is called after the encoder and, while a
        graph runs, every ``CANCEL_POLL_S`` seconds from a watcher thread (an exception it raises stops
        the run and is raised here)."""
        mu, logvar = self.encode(y, between_blocks)
        if between_blocks is not None:
            between_blocks()
        c = draw_latent(mu, logvar, sample, noise, latent_shift)
        outputs = self._run(self.restorer, {"input": _array(y), "c": _array(c)}, between_blocks)
        estimate = torch.from_numpy(outputs[1]) if (with_estimate and self.has_estimate) else None
        return Forward(torch.from_numpy(outputs[0]), mu, logvar, c, estimate)

    def _run(self, session, feeds: dict, between_blocks):
        if between_blocks is None:
            return session.run(None, feeds)
        options = self._ort.RunOptions()
        done, raised = threading.Event(), []

        def watch():
            while not done.wait(CANCEL_POLL_S):
                try:
                    between_blocks()
                except BaseException as err:  # noqa: BLE001 — handed to the caller's thread below
                    raised.append(err)
                    options.terminate = True
                    return

        watcher = threading.Thread(target=watch, name="napari-vdir-ort-cancel", daemon=True)
        watcher.start()
        try:
            result = session.run(None, feeds, options)
        except Exception:
            if raised:
                raise raised[0] from None
            raise
        finally:
            done.set()
            watcher.join()
        if raised:
            raise raised[0]
        return result


def _array(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


@lru_cache(maxsize=8)
def _ort_model(path: str, mtime: float, threads: int) -> OrtVDIR:
    from .weights import load_weights

    net, _ = load_weights(path, "cpu")
    encoder, restorer = onnx_graphs(path, net)
    return OrtVDIR(encoder, restorer, net.cfg, threads)


def ort_model(path: str | Path, threads: int | None = None) -> OrtVDIR:
    """The cached :class:`OrtVDIR` of a weights file (sessions with ``threads`` intra-op threads,
    default ``torch.get_num_threads()``)."""
    path = Path(path)
    return _ort_model(str(path), path.stat().st_mtime, int(threads or torch.get_num_threads()))


def observed(net: torch.nn.Module) -> bool:
    """True when forward hooks are registered on ``net`` or one of its layers (or globally)."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def select(net: VDIR, path: str | Path, device: torch.device, backend: str = "auto", precision: str = "auto"):
    """(model for the tiling code, backend used, precision to run it with) for ``restore``."""
    used = resolve_backend(backend, device, precision)
    if backend == "auto" and used == "onnxruntime" and observed(net):
        used = "torch"  # hooks on the torch module must see the pass
    if used == "torch":
        return net, used, precision
    return ort_model(path), used, "float32"
