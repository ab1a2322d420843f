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

from napari_vdir import restore  # noqa: E402
from napari_vdir.core import backends  # noqa: E402
from napari_vdir.core.inference import RestorationCancelled  # noqa: E402
from tests.conftest import dead_pid, write_leftover  # noqa: E402

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
    from napari_vdir.core import devices

    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)


def test_backend_and_precision_rules(monkeypatch):
    from napari_vdir.core import devices

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
    from napari_vdir.core.inference import cached_model

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


def test_cancel_stops_an_onnxruntime_pass_while_it_runs(tmp_path, rng, tiny_vdir):
    """A single-tile pass is stopped from the watcher thread (RunOptions.terminate), not after it ends."""
    mid = tiny_vdir(width=32, rir_blocks=2, res_blocks=2, encoder_width=16)  # long enough a pass to stop
    path = tiny_vdir.save(mid, tmp_path / "mid.safetensors", half=True)
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
    from napari_vdir.core import graphs as traced

    path = tiny_weights[("denoise", 1, 1)]
    from napari_vdir.core.weights import load_weights

    net, _ = load_weights(path)
    encoder, restorer = backends.onnx_graphs(path, net)
    assert encoder.is_file() and restorer.is_file()
    assert encoder.parent.parent == user_cache / "napari-vdir" / "onnx"
    assert encoder.parent.name.startswith(backends.weights_digest(path)[:32])
    manifest = __import__("json").loads((encoder.parent / backends.MANIFEST).read_text())
    assert manifest["weights_sha256"] == backends.weights_digest(path)
    assert manifest["graphs"]["encoder"] == backends._sha256(encoder.read_bytes())
    writes, real = [], traced.write_onnx
    monkeypatch.setattr(traced, "write_onnx", lambda *a, **k: writes.append(a) or real(*a, **k))
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())  # same content, other name: same cache entry
    assert backends.onnx_graphs(copy, net) == (encoder, restorer) and writes == []
    other = tiny_weights[("denoise", 1, 3)]
    backends.onnx_graphs(other, load_weights(other)[0])  # other weights: exported anew
    assert len(writes) == 2


def test_cache_folder_follows_the_platform_convention(monkeypatch, tmp_path):
    import sys
    from pathlib import Path

    import platformdirs

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert backends.cache_dir() == tmp_path / "napari-vdir"
    monkeypatch.delenv("XDG_CACHE_HOME")
    default = Path(platformdirs.user_cache_dir("napari-vdir", appauthor=False))
    assert backends.cache_dir() == default
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # set but empty: as if unset
    assert backends.cache_dir() == default
    if sys.platform.startswith("linux"):
        assert default == Path.home() / ".cache" / "napari-vdir"


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


# ----------------------------------------------------------------------------- the graph cache (issue 31: 5-7)

def _entry(path):
    """The cache entry folder of a weights file (built by the first ONNX Runtime restore)."""
    entries = [p for p in (backends.cache_dir() / "onnx").iterdir()
               if p.is_dir() and p.name.startswith(backends.weights_digest(path)[:32])]
    assert len(entries) == 1, entries
    return entries[0]




def _same_as_torch(x, path, backend="onnxruntime", **kwargs):
    """restore() on ``backend`` and on torch float32 agree (image and estimate); returns the Restoration."""
    got = restore(x, "denoise", model=path, details=True, backend=backend, precision="float32", **kwargs)
    want = restore(x, "denoise", model=path, details=True, backend="torch", precision="float32")
    np.testing.assert_allclose(got.image, want.image, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.estimate["noise_sigma"], want.estimate["noise_sigma"], atol=1e-3, rtol=0)
    return got


def _damage(entry, other, how):
    if how == "foreign":            # another model's graphs under this model's key
        for name in ("encoder.onnx", "restorer.onnx"):
            (entry / name).write_bytes((other / name).read_bytes())
    elif how == "foreign-entry":    # another model's whole entry, its record of digests included
        for f in other.iterdir():
            (entry / f.name).write_bytes(f.read_bytes())
    elif how == "flipped":          # bytes flipped inside the weights of the restorer graph
        data = bytearray((entry / "restorer.onnx").read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + 64):
            data[i] ^= 0xFF
        (entry / "restorer.onnx").write_bytes(bytes(data))
    elif how == "truncated":
        data = (entry / "restorer.onnx").read_bytes()
        (entry / "restorer.onnx").write_bytes(data[: len(data) // 3])
    elif how == "empty":
        (entry / "encoder.onnx").write_bytes(b"")
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["foreign", "foreign-entry", "flipped", "truncated", "empty"])
def test_a_damaged_or_foreign_cached_graph_is_rebuilt_never_used(tiny_weights, rng, tmp_path, how, tiny_vdir):
    # a denoise RGB model with the tiny one's architecture and other weights (same graph signature)
    twin = tiny_vdir.save(tiny_vdir(seed=1), tmp_path / "twin1.safetensors", name="twin")
    path = tiny_weights[("denoise", 1, 3)]
    x = rng.random((40, 48, 3)).astype(np.float32)
    _same_as_torch(x, path)
    _same_as_torch(x, twin)
    entry = _entry(path)
    _damage(entry, _entry(twin), how)
    for _ in range(2):  # the damaged entry is rebuilt once, then reused from the cache
        backends._ort_model.cache_clear()  # a new session (a later run)
        assert _same_as_torch(x, path).backend == "onnxruntime"
    from napari_vdir.core import graphs as traced

    writes, real = [], traced.write_onnx
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(traced, "write_onnx", lambda *a, **k: writes.append(a) or real(*a, **k))
        backends._ort_model.cache_clear()
        _same_as_torch(x, path)
    assert writes == []  # the rebuilt entry verifies: nothing exported again


def test_a_graph_that_cannot_be_rebuilt_falls_back_to_torch_under_auto(tiny_weights, rng, no_bf16, monkeypatch):
    from napari_vdir.core import graphs as traced

    path = tiny_weights[("denoise", 1, 3)]
    x = rng.random((40, 48, 3)).astype(np.float32)
    _same_as_torch(x, path)
    _damage(_entry(path), None, "truncated")
    backends._ort_model.cache_clear()

    def broken(*args, **kwargs):
        raise RuntimeError("the exporter broke\nsecond line")

    monkeypatch.setattr(traced, "write_onnx", broken)
    with pytest.warns(RuntimeWarning, match="running torch"):
        assert _same_as_torch(x, path, backend="auto").backend == "torch"
    with pytest.raises(ValueError, match="the exporter broke") as err:
        restore(x, "denoise", model=path, backend="onnxruntime")
    assert "\n" not in str(err.value) and str(err.value).endswith("use backend='torch'")


def _cache_that_cannot_be_written(case, tmp_path, monkeypatch):
    """Point the user cache at a place no graph can be written to (see the test below)."""
    if case == "a-file":
        blocker = tmp_path / "cache-is-a-file"
        blocker.write_text("not a folder")
        monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    elif case == "read-only":
        folder = tmp_path / "ro-cache"
        folder.mkdir()
        folder.chmod(0o555)
        probe = folder / "probe"
        try:
            probe.write_text("x")
        except OSError:
            pass
        else:
            probe.unlink()
            folder.chmod(0o755)
            pytest.skip("running as root (or on a file system without permissions): chmod does not stop writes; "
                        "the 'a-file' and 'write-fails' cases cover this path")
        monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    elif case == "write-fails":  # the cache folder exists, but storing the graphs into it fails
        def refuse(*args, **kwargs):
            raise OSError(30, "Read-only file system")

        monkeypatch.setattr(backends, "_store", refuse)
    else:
        raise AssertionError(case)


@pytest.mark.parametrize("case", ["a-file", "read-only", "write-fails"])
def test_a_cache_folder_that_cannot_be_written_keeps_the_default_path_working(tiny_weights, rng, tmp_path,
                                                                              monkeypatch, no_bf16, case):
    import tempfile

    from napari_vdir.cli import main
    from napari_vdir.core.io import write_image

    _cache_that_cannot_be_written(case, tmp_path, monkeypatch)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    path = tiny_weights[("denoise", 1, 3)]
    x = rng.random((40, 48, 3)).astype(np.float32)
    assert _same_as_torch(x, path, backend="auto").backend == "onnxruntime"  # built in memory
    backends._ort_model.cache_clear()
    assert _same_as_torch(x, path, backend="onnxruntime").backend == "onnxruntime"
    backends._ort_model.cache_clear()
    image = tmp_path / "in.png"
    write_image(image, (x * 255).astype(np.uint8))
    assert main(["restore", str(image), "--task", "denoise", "--model", str(path), "--precision", "float32",
                 "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out").is_dir() and any((tmp_path / "out").iterdir())
    assert list(temp.iterdir()) == []  # the temporary build folders are gone
    if case == "write-fails":
        assert not any((backends.cache_dir() / "onnx").glob("*/*.onnx"))


def test_threads_racing_on_a_fresh_cache_all_succeed(tiny_weights, rng, tmp_path, monkeypatch):
    path = tiny_weights[("sr", 2, 3)]
    x = rng.random((24, 32, 3)).astype(np.float32)
    want = restore(x, "sr", scale=2, model=path, backend="torch", precision="float32")
    for attempt in range(3):  # each attempt on a fresh cache, with fresh sessions
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / f"fresh{attempt}"))
        backends._ort_model.cache_clear()
        barrier, results, errors = threading.Barrier(4), [None] * 4, []

        def work(i):
            try:
                barrier.wait()
                results[i] = restore(x, "sr", scale=2, model=path, backend="onnxruntime")
            except BaseException as err:  # noqa: BLE001 — reported below
                errors.append(f"{type(err).__name__}: {err}")

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for r in results:
            np.testing.assert_allclose(r, want, atol=1e-4, rtol=0)
        root = backends.cache_dir() / "onnx"
        assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # no partial files left
        assert sorted(p.name for p in _entry(path).iterdir() if p.name.startswith(".")) == []


def test_stale_partial_files_and_build_folders_are_cleaned_up_on_the_next_run(tiny_weights, rng, tmp_path):
    import os
    import re
    import socket

    path = tiny_weights[("denoise", 1, 3)]
    x = rng.random((40, 48, 3)).astype(np.float32)
    _same_as_torch(x, path)
    entry, root = _entry(path), backends.cache_dir() / "onnx"
    host = backends._host_tag()
    dead, alive = dead_pid(), os.getppid()
    old = time.time() - 2 * backends.STALE_AGE_S

    def leftover(folder, name, age=None, is_dir=False):
        return write_leftover(folder, name, age, is_dir, inner=".encoder.onnx.partial-1")

    gone = [leftover(root, f".napari-vdir-build-{host}-{dead}-ab12cd_x", is_dir=True),   # its process is gone
            leftover(root, f".napari-vdir-build-{host}-{alive}-oldone12", old, True),    # alive pid, but hours old
            leftover(root, f".napari-vdir-build-otherhost-{dead}-old2", old, True),      # another host, hours old
            leftover(entry, f".restorer.onnx.partial-{dead}"),                           # an older version's partial
            leftover(entry, f".encoder.onnx.partial-{alive}", old)]
    kept = [leftover(root, f".napari-vdir-build-{host}-{alive}-running1", is_dir=True),  # another process building
            leftover(root, f".napari-vdir-build-otherhost-{dead}-running2", is_dir=True),  # can't tell: too young
            leftover(entry, f".manifest.json.partial-{alive}"),                          # its process runs
            leftover(root, "notes.txt", old), leftover(entry, "mine.txt", old),          # not ours: never touched
            leftover(leftover(root, "a-folder", is_dir=True), f".x.partial-{dead}", old)]  # not a cache entry
    assert host == re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())
    backends._ort_model.cache_clear()
    _same_as_torch(x, path)  # the same process sweeps once only
    assert all(p.exists() for p in gone + kept)
    backends._ort_model.cache_clear()
    backends._swept.clear()  # the next run (a new process), with a valid entry: nothing to build
    _same_as_torch(x, path)
    assert [p for p in gone if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []


def test_a_build_in_the_temporary_folder_sweeps_only_its_own_leftovers_there(tiny_weights, rng, tmp_path,
                                                                               monkeypatch):
    import os
    import tempfile

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    _cache_that_cannot_be_written("a-file", tmp_path, monkeypatch)
    dead = dead_pid()
    ours = temp / f".napari-vdir-build-{backends._host_tag()}-{dead}-zz9"
    ours.mkdir()
    (ours / "encoder.onnx").write_bytes(b"\0" * 1000)
    theirs = temp / "other-tool"
    theirs.mkdir()
    (theirs / f".data.partial-{dead}").write_bytes(b"\0")
    old = time.time() - 2 * backends.STALE_AGE_S
    os.utime(theirs / f".data.partial-{dead}", (old, old))
    _same_as_torch(rng.random((40, 48, 3)).astype(np.float32), tiny_weights[("denoise", 1, 3)])
    assert sorted(p.name for p in temp.iterdir()) == ["other-tool"]
    assert (theirs / f".data.partial-{dead}").exists()
