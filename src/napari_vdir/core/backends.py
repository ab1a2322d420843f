"""Where the network runs: PyTorch (the VDIR module itself) or ONNX Runtime on the CPU.

:class:`OrtVDIR` stands in for a :class:`napari_vdir.core.nets.VDIR` with the call signature the tiling code
(:class:`napari_vdir.core.inference.PlaneRestorer`) uses — ``model.cfg``, ``model.encode(y)`` and
``model(y, sample=, latent_shift=, with_estimate=, noise=, between_blocks=)`` — so tiling, progress,
cancel, the x8 ensemble, Monte-Carlo samples and ``strength`` run unchanged. It runs two ONNX graphs:
the encoder ``y -> (mu, logvar)`` and the restorer ``(y, c) -> (image, EST(c))``; c = mu + std * noise and
the strength shift are computed between them exactly as ``VDIR.forward`` computes them.

The graphs are exported (:mod:`napari_vdir.core.graphs`) once per weights file (keyed by the file's SHA-256)
into platformdirs' user cache folder (``$XDG_CACHE_HOME/napari-vdir`` where that is set on Linux and macOS,
else ``~/.cache/napari-vdir``; ``~/Library/Caches/napari-vdir`` on macOS, ``%LOCALAPPDATA%\\napari-vdir\\Cache``
on Windows), never next to the package. The cache is never trusted blindly:

- Each entry holds ``manifest.json`` with the SHA-256 of the weights it was built from and of each graph;
  a graph is used only when both match (read once, checked, and handed to ONNX Runtime as bytes). A
  foreign, truncated, empty or altered graph, or one ONNX Runtime cannot load, is rebuilt.
- Graphs are built one at a time in a process (``torch.onnx.export`` is not thread-safe), in a private
  folder ``onnx/.napari-vdir-build-<host>-<pid>-<random>`` and then renamed into place, manifest last.
  Build folders and ``.partial-<pid>`` files left by killed runs are removed on a later run once their
  process is gone (same host) or after ``STALE_AGE_S``.
- A cache that cannot be written (read-only ``XDG_CACHE_HOME``, a file in its place, a full disk) costs
  nothing but the build time: the graphs are built in a temporary folder, loaded, and the folder removed.
- Graphs that cannot be built at all make ``backend="auto"`` run torch float32 (with a ``RuntimeWarning``);
  an explicit ``backend="onnxruntime"`` raises :class:`GraphError` with a one-line reason.

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
import json
import os
import re
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from napari_vdir.core import graphs as traced
from napari_vdir.core.io import STALE_AGE_S as STALE_AGE_S  # a leftover this old is stale whatever its pid says
from napari_vdir.core.io import host_tag as _host_tag
from napari_vdir.core.io import sweep_stale
from napari_vdir.core.nets import VDIR, ArchConfig, Forward, draw_latent

BACKENDS = ("auto", "torch", "onnxruntime")
GRAPH_VERSION = 1   # bump when the exported graphs change: old cache entries are then ignored
CANCEL_POLL_S = 0.02
GRAPHS = ("encoder", "restorer")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
BUILD_PREFIX = ".napari-vdir-build-"
_BUILD_LOCK = threading.Lock()   # one graph build at a time in this process
_STALE_BUILD = re.compile(r"^\.napari-vdir-build-(?P<host>[^-]*)-(?P<pid>\d+)-[^-]+$")
_STALE_PARTIAL = re.compile(r"^\..+\.partial-(?P<pid>\d+)$")   # write-then-rename leftovers (older versions)
_ENTRY = re.compile(r"^[0-9a-f]{32}-g\d+-opset\d+$")   # a cache entry folder (the only ones swept inside)
_swept: set[str] = set()


class GraphError(ValueError):
    """The ONNX Runtime graphs of a weights file cannot be built (one-line message)."""


def onnxruntime_available() -> bool:
    """ONNX Runtime can run here and torch can export to ONNX (that needs the ``onnx`` package)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def resolve_backend(backend: str, device: torch.device, precision: str = "auto") -> str:
    """``"torch"`` or ``"onnxruntime"`` for a ``restore(backend=...)`` choice; raises for impossible ones."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'torch' or 'onnxruntime', got {backend!r}")
    if backend == "torch":
        return "torch"
    from napari_vdir.core.devices import fast_dtype

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
    """The user cache folder for napari-vdir (created on first use, not here): platformdirs' user cache folder."""
    import platformdirs

    return platformdirs.user_cache_path("napari-vdir", appauthor=False)


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


@dataclass(frozen=True)
class Graphs:
    """The ONNX graphs of one weights file, checked: ``folder`` is the cache entry holding them, or None
    where they were built in a temporary folder because the cache cannot be written (``note`` says why)."""

    encoder: bytes
    restorer: bytes
    folder: Path | None
    built: bool
    note: str = ""


def graphs(path: str | Path, net: VDIR, rebuild: bool = False) -> Graphs:
    """The verified (encoder, restorer) graphs of the weights file ``path`` (whose network is ``net``): read
    from the cache when its manifest matches the weights and the graphs, else built (``rebuild=True``:
    built whatever the cache holds) and stored in the cache where it can be written."""
    weights = weights_digest(path)
    folder = cache_dir() / "onnx" / f"{weights[:32]}-g{GRAPH_VERSION}-opset{traced.ONNX_OPSET}"
    found = None if rebuild else _read_entry(folder, weights)
    if found and str(folder.parent) in _swept:
        return Graphs(*found, folder, built=False)
    with _BUILD_LOCK:
        if str(folder.parent) not in _swept:  # once per process: leftovers of killed runs
            _swept.add(str(folder.parent))
            _sweep(folder.parent)
        if not (found or rebuild):
            found = _read_entry(folder, weights)  # another thread may have built it meanwhile
        if found:
            return Graphs(*found, folder, built=False)
        return _build(net, folder, weights)


def onnx_graphs(path: str | Path, net: VDIR) -> tuple[Path, Path]:
    """(encoder, restorer) ONNX files in the cache for the weights file ``path`` (whose network is ``net``),
    exported the first time and reused after; OSError where the cache folder cannot be written."""
    found = graphs(path, net)
    if found.folder is None:
        raise OSError(f"cannot write the ONNX graph cache in {cache_dir()}: {found.note}")
    return found.folder / "encoder.onnx", found.folder / "restorer.onnx"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_entry(folder: Path, weights: str) -> tuple[bytes, bytes] | None:
    """The graphs of a cache entry if its manifest names these weights and each graph's digest matches."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if manifest["format"] != MANIFEST_FORMAT or manifest["weights_sha256"] != weights:
            return None
        blobs = tuple((folder / f"{name}.onnx").read_bytes() for name in GRAPHS)
        if any(manifest["graphs"][name] != _sha256(blob) for name, blob in zip(GRAPHS, blobs)):
            return None
    except (OSError, ValueError, KeyError, TypeError):  # missing, unreadable or malformed: not an entry
        return None
    return blobs


def _build(net: VDIR, folder: Path, weights: str) -> Graphs:
    """Export the graphs into a private folder, store them in ``folder`` (manifest last) where the cache
    can be written, and return them; the private folder is always removed. Call with ``_BUILD_LOCK`` held."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=_build_prefix(), dir=folder.parent))
        note = ""
    except OSError as err:  # read-only cache, a file in its way: build in the temporary folder instead
        note = _one_line(err)
        _sweep(Path(tempfile.gettempdir()), entries=False)
        work = Path(tempfile.mkdtemp(prefix=_build_prefix()))
    try:
        for name in GRAPHS:
            traced.write_onnx(net, work / f"{name}.onnx", name)
        blobs = tuple((work / f"{name}.onnx").read_bytes() for name in GRAPHS)
        stored = None
        if not note:
            manifest = {"format": MANIFEST_FORMAT, "weights_sha256": weights, "graph_version": GRAPH_VERSION,
                        "opset": traced.ONNX_OPSET, "torch": torch.__version__,
                        "graphs": {name: _sha256(blob) for name, blob in zip(GRAPHS, blobs)}}
            try:
                _store(work, folder, manifest)
                stored = folder
            except OSError as err:
                note = _one_line(err)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Graphs(*blobs, stored, built=True, note=note)


def _store(work: Path, folder: Path, manifest: dict) -> None:
    """Move the graphs built in ``work`` into the cache entry ``folder``: the old manifest goes first and
    the new one comes last, so a reader never takes a half-replaced entry for a whole one."""
    (work / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    folder.mkdir(exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    for name in GRAPHS:
        os.replace(work / f"{name}.onnx", folder / f"{name}.onnx")
    os.replace(work / MANIFEST, folder / MANIFEST)


def _build_prefix() -> str:
    """Build folders are named by host and pid (for the stale sweep), then made unique by mkdtemp."""
    return f"{BUILD_PREFIX}{_host_tag()}-{os.getpid()}-"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _sweep(root: Path, entries: bool = True) -> None:
    """Remove build folders left by killed runs in ``root`` (and partial files in its cache entry folders
    where ``entries``; not in the system's temporary folder, whose subfolders are not ours): those
    whose process is gone (same host), this process's own (all its builds run under ``_BUILD_LOCK``, which
    the caller holds, so none is under way), or older than ``STALE_AGE_S``
    (:func:`napari_vdir.core.io.sweep_stale`). Files that are not this tool's leftovers are never touched."""
    sweep_stale(root, [_STALE_BUILD], own=True)
    try:
        folders = [p for p in root.iterdir() if _ENTRY.match(p.name)] if entries else []
    except OSError:
        return
    for entry in folders:
        if entry.is_dir() and not entry.is_symlink():
            sweep_stale(entry, [_STALE_PARTIAL], own=True)


class OrtVDIR:
    """ONNX Runtime (CPU, float32) version of a VDIR, called as the tiling code calls the torch module."""

    backend = "onnxruntime"

    def __init__(self, encoder: str | Path | bytes, restorer: str | Path | bytes, cfg: ArchConfig,
                 threads: int | None = None):
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
        self.encoder, self.restorer = (ort.InferenceSession(g if isinstance(g, bytes) else str(g), options,
                                                            providers=providers) for g in (encoder, restorer))
        self.has_estimate = len(self.restorer.get_outputs()) > 1
        for session in (self.encoder, self.restorer):
            if session.get_inputs()[0].shape[1] != cfg.channels:
                raise ValueError(f"the graph takes {session.get_inputs()[0].shape[1]} channels, the model "
                                 f"{cfg.channels}")

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
def _ort_model(path: str, mtime: float, threads: int) -> OrtVDIR | GraphError:
    """The OrtVDIR of a weights file, or the GraphError saying why there is none (kept, so that an "auto"
    run does not try to build the graphs again on every call)."""
    from napari_vdir.core.weights import load_weights

    net, _ = load_weights(path, "cpu")
    found = None
    try:
        found = graphs(path, net)
        return OrtVDIR(found.encoder, found.restorer, net.cfg, threads)
    except Exception as first:  # noqa: BLE001 — a cached graph ONNX Runtime cannot load is rebuilt once
        reason = first
        if found is not None and not found.built:
            try:
                found = graphs(path, net, rebuild=True)
                return OrtVDIR(found.encoder, found.restorer, net.cfg, threads)
            except Exception as second:  # noqa: BLE001
                reason = second
    return GraphError(f"cannot build the ONNX Runtime graphs of {Path(path).name} ({_one_line(reason)})")


def ort_model(path: str | Path, threads: int | None = None) -> OrtVDIR:
    """The cached :class:`OrtVDIR` of a weights file (sessions with ``threads`` intra-op threads,
    default ``torch.get_num_threads()``); :class:`GraphError` where its graphs cannot be built."""
    path = Path(path)
    model = _ort_model(str(path), path.stat().st_mtime, int(threads or torch.get_num_threads()))
    if isinstance(model, GraphError):
        err = GraphError(f"{model}; use backend='torch'")
        err.reason = str(model)
        raise err
    return model


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
    try:
        return ort_model(path), used, "float32"
    except GraphError as err:
        if backend != "auto":
            raise
        warnings.warn(f"{getattr(err, 'reason', err)}; running torch float32 instead", RuntimeWarning,
                      stacklevel=3)
        return net, "torch", precision
