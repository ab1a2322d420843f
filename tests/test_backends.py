"""ONNX Runtime backend: the same results as torch float32 (tiling, ensemble, samples, strength, SR,
estimates), the same progress and cancel behaviour, backend/precision rules, and the export cache."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from napari_vdir import backends, restore  # noqa: E402
from napari_vdir.inference import RestorationCancelled  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def user_cache(tmp_path_factory, monkeypatch):
    """Every test exports into its own cache folder (never the real user cache, never the package)."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    backends._ort_model.cache_clear()
    yield folder
    backends._ort_model.cache_clear()


@pytest.fixture
def no_bf16(monkeypatch):
    """A CPU without bf16 support: precision 'auto' means float32 there."""
    from napari_vdir import devices

    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)


def test_backend_and_precision_rules(monkeypatch):
    from napari_vdir import devices

    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)
    assert backends.resolve_backend("auto", CPU, "auto") == "onnxruntime"   # the exact float32 path
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)
    assert backends.resolve_backend("auto", CPU, "auto") == "torch"         # bf16 fast path stays torch
    assert backends.resolve_backend("auto", CPU, "float32") == "onnxruntime"
    assert backends.resolve_backend("auto", CPU, "bfloat16") == "torch"     # the bf16 fast path stays torch
    assert backends.resolve_backend("auto", torch.device("cuda"), "auto") == "torch"
    assert backends.resolve_backend("torch", CPU, "auto") == "torch"
    assert backends.resolve_backend("onnxruntime", CPU, "float32") == "onnxruntime"
    with pytest.raises(ValueError, match="computes in float32"):
        backends.resolve_backend("onnxruntime", CPU, "bfloat16")
    with pytest.raises(ValueError, match="runs on the CPU"):
        backends.resolve_backend("onnxruntime", torch.device("cuda"), "auto")
    with pytest.raises(ValueError, match="backend must be 'auto', 'torch' or 'onnxruntime'"):
        backends.resolve_backend("openvino", CPU, "auto")
    monkeypatch.setattr(backends, "onnxruntime_available", lambda: False)
    assert backends.resolve_backend("auto", CPU, "float32") == "torch"
    with pytest.raises(ValueError, match=r"pip install 'napari-vdir\[onnx\]'"):
        backends.resolve_backend("onnxruntime", CPU, "auto")


def test_restore_reports_and_refuses_backends(tiny_weights, rng, no_bf16):
    x = rng.random((32, 32, 3)).astype(np.float32)
    path = tiny_weights[("denoise", 1, 3)]
    assert restore(x, "denoise", model=path, details=True).backend == "onnxruntime"  # default, CPU without bf16
    assert restore(x, "denoise", model=path, details=True, precision="float32").backend == "onnxruntime"
    assert restore(x, "denoise", model=path, details=True, precision="bfloat16").backend == "torch"
    assert restore(x, "denoise", model=path, details=True, backend="torch").backend == "torch"
    with pytest.raises(ValueError, match="computes in float32"):
        restore(x, "denoise", model=path, backend="onnxruntime", precision="float16")
    with pytest.raises(ValueError, match="backend must be"):
        restore(x, "denoise", model=path, backend="tensorrt")


def test_auto_runs_torch_while_hooks_watch_the_torch_module(tiny_weights, rng, no_bf16):
    from napari_vdir.inference import cached_model

    path = tiny_weights[("denoise", 1, 3)]
    net, _ = cached_model(str(path), "cpu", path.stat().st_mtime)  # the module restore() uses
    x = rng.random((32, 32, 3)).astype(np.float32)
    seen = []
    handle = net.restorer.tail.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    try:
        assert restore(x, "denoise", model=path, details=True).backend == "torch" and len(seen) == 1
        assert restore(x, "denoise", model=path, details=True, backend="onnxruntime").backend == "onnxruntime"
        assert len(seen) == 1  # an explicit backend is honoured (the hook does not see ONNX Runtime)
    finally:
        handle.remove()
    assert restore(x, "denoise", model=path, details=True).backend == "onnxruntime"


CASES = {
    "whole": dict(),
    "tiled": dict(tile_size=32),
    "ensemble": dict(ensemble=True, tile_size=48),
    "samples": dict(samples=3, seed=7),
    "strength": dict(strength=2.0),
    "gentle-tiled": dict(strength=0.5, tile_size=32),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnxruntime_equals_torch_float32(tiny_weights, rng, case):
    options = CASES[case]
    x = rng.random((70, 90, 3)).astype(np.float32)
    path = tiny_weights[("denoise", 1, 3)]
    calls = {"torch": [], "onnxruntime": []}
    results = {b: restore(x, "denoise", model=path, details=True, backend=b, precision="float32",
                          progress=lambda d, t, b=b: calls[b].append((d, t)), **options)
               for b in ("torch", "onnxruntime")}
    a, b = results["torch"], results["onnxruntime"]
    assert a.backend == "torch" and b.backend == "onnxruntime"
    assert calls["torch"] == calls["onnxruntime"] and len(calls["torch"]) >= 1
    np.testing.assert_allclose(b.image, a.image, atol=1e-4, rtol=0)
    np.testing.assert_allclose(b.latent, a.latent, atol=1e-4, rtol=0)
    np.testing.assert_allclose(b.estimate["noise_sigma"], a.estimate["noise_sigma"], atol=1e-3, rtol=0)
    if options.get("samples", 1) > 1:
        np.testing.assert_allclose(b.uncertainty, a.uncertainty, atol=1e-4, rtol=0)
        assert a.uncertainty.max() > 1e-3  # the draws really differ
    if options.get("strength", 1.0) != 1.0:  # steering really changed the result
        plain = restore(x, "denoise", model=path, backend="onnxruntime", tile_size=options.get("tile_size"))
        effect = np.abs(plain - b.image).max()
        assert effect > 0 and np.abs(b.image - a.image).max() < 0.05 * effect  # far below what steering moves


@pytest.mark.parametrize("key", [("sr", 2, 1), ("sr", 4, 3), ("jpeg", 1, 1), ("real-denoise", 1, 3)])
def test_onnxruntime_equals_torch_for_every_kind_of_model(tiny_weights, rng, key):
    task, scale, channels = key
    shape = (38, 50, 3) if channels == 3 else (38, 50)
    x = (rng.random(shape) * 255).astype(np.uint8)
    kwargs = dict(scale=scale if task == "sr" else None, model=tiny_weights[key], details=True,
                  precision="float32", tile_size=24)
    a = restore(x.astype(np.float32) / 255, task, backend="torch", **kwargs)
    b = restore(x.astype(np.float32) / 255, task, backend="onnxruntime", **kwargs)
    assert b.image.shape == a.image.shape == (38 * scale, 50 * scale) + shape[2:]
    np.testing.assert_allclose(b.image, a.image, atol=1e-4, rtol=0)
    assert a.estimate.keys() == b.estimate.keys()
    for k in a.estimate:
        np.testing.assert_allclose(b.estimate[k], a.estimate[k], atol=1e-3, rtol=1e-5)


def test_cancel_between_tiles_stops_at_the_same_tile(tiny_weights, rng):
    x = rng.random((96, 96, 3)).astype(np.float32)
    seen = {}
    for backend in ("torch", "onnxruntime"):
        event, ticks = threading.Event(), []

        def progress(done, total, event=event, ticks=ticks):
            ticks.append(done)
            if done == 2:
                event.set()

        with pytest.raises(RestorationCancelled):
            restore(x, "denoise", model=tiny_weights[("denoise", 1, 3)], backend=backend, precision="float32",
                    tile_size=32, cancel=event, progress=progress)
        seen[backend] = ticks
    assert seen["torch"] == seen["onnxruntime"] == [1, 2]


def test_cancel_stops_an_onnxruntime_pass_while_it_runs(tmp_path, rng):
    """A single-tile pass is stopped from the watcher thread (RunOptions.terminate), not after it ends."""
    from napari_vdir.nets import VDIR, ArchConfig
    from napari_vdir.weights import ModelInfo, save_weights

    torch.manual_seed(0)
    cfg = ArchConfig(channels=3, width=32, rir_blocks=2, res_blocks=2, encoder_width=16, estimate_dims=1)
    path = save_weights(tmp_path / "mid.safetensors", VDIR(cfg), ModelInfo(name="mid", task="denoise", arch=cfg))
    y = torch.rand(1, 3, 512, 512)
    model = backends.ort_model(path)
    start = time.perf_counter()
    model(y, with_estimate=True)
    full = time.perf_counter() - start
    state = {}

    def between_blocks():
        if "start" not in state:
            state["start"] = time.perf_counter()
        if time.perf_counter() - state["start"] > full / 10:
            state["set"] = time.perf_counter()
            raise RestorationCancelled("restoration cancelled")

    with pytest.raises(RestorationCancelled):
        model(y, with_estimate=True, between_blocks=between_blocks)
    stopped = time.perf_counter() - state["set"]
    assert stopped < 0.5 * full, (stopped, full)


def test_graphs_are_exported_once_per_weights_file_into_the_user_cache(tiny_weights, user_cache, monkeypatch,
                                                                       tmp_path):
    from napari_vdir import export

    path = tiny_weights[("denoise", 1, 1)]
    from napari_vdir.weights import load_weights

    net, _ = load_weights(path)
    encoder, restorer = backends.onnx_graphs(path, net)
    assert encoder.is_file() and restorer.is_file()
    assert encoder.parent.parent == user_cache / "napari-vdir" / "onnx"
    assert encoder.parent.name.startswith(backends.weights_digest(path)[:32])
    writes = []
    monkeypatch.setattr(export, "write_onnx", lambda *a, **k: writes.append(a))
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())  # same content, other name: same cache entry
    assert backends.onnx_graphs(copy, net) == (encoder, restorer) and writes == []
    other = tiny_weights[("denoise", 1, 3)]
    backends.onnx_graphs(other, load_weights(other)[0])  # other weights: exported anew
    assert len(writes) == 2


def test_cache_folder_follows_the_platform_convention(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert backends.cache_dir() == tmp_path / "napari-vdir"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(backends.sys, "platform", "linux")
    assert backends.cache_dir() == backends.Path.home() / ".cache" / "napari-vdir"


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_dask_blocks_run_on_the_backend_asked_for(tiny_weights, rng, monkeypatch, backend):
    da = pytest.importorskip("dask.array")
    path = tiny_weights[("denoise", 1, 3)]
    image = rng.random((48, 40, 3)).astype(np.float32)
    ort_calls = []
    real_ort_model = backends.ort_model
    monkeypatch.setattr(backends, "ort_model", lambda *a, **k: ort_calls.append(a) or real_ort_model(*a, **k))
    lazy = restore(da.from_array(image, chunks=(24, 40, 3)), "denoise", model=path, backend=backend,
                   precision="float32", tile_size=None)
    ort_calls.clear()  # the up-front option check ran one dummy block; count the real ones
    out = lazy.compute(scheduler="synchronous")
    assert bool(ort_calls) == (backend == "onnxruntime")
    whole = restore(image, "denoise", model=path, backend="torch", precision="float32")
    np.testing.assert_allclose(out, whole, atol=1e-4)
