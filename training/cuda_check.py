"""CUDA check of every shipped model: ``restore`` on CUDA against the CPU in float32, and the Restore dock's
worker on CUDA. Writes ``cuda_check.json`` and ``cuda_check.md`` into ``--out``.

    python training/cuda_check.py --out OUT [--size 128]

Per model (``napari_vdir.core.models.shipped_models()``), on a seeded synthetic test image degraded for its task:

* ``float32``: ``restore(device="cuda", precision="float32", backend="torch")`` with TF32 off, against
  ``restore(device="cpu", precision="float32", backend="torch")``: max |difference| <= 1e-3 (a quarter of an
  8-bit level; the values are in [0, 1]).
* ``float32-tf32``: the same with torch's default TF32 convolutions (what a user of ``precision="float32"``
  gets on an Ampere or newer GPU): PSNR against the CPU >= 45 dB.
* ``auto``: ``precision="auto"`` (bf16 autocast; what the dock uses): PSNR against the CPU >= 35 dB.
* ``worker``: the dock's worker function (``_widget._run_job``, or without napari the core it calls,
  ``layers.restore_layer``, with the arguments the dock builds) on a uint8 layer with ``device="cuda"``
  on a worker thread: no error, the result on CUDA, the expected shape, finite, and PSNR against the CPU
  float32 ``restore`` of the same image >= 35 dB.

Without a CUDA device the report says "no CUDA device" and the CPU side still runs: every model in float32 on
the CPU (finite, right shape) and the worker on the CPU for one model. Exit status 0 unless the check itself
broke (a failed comparison is reported, not raised).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

TOLERANCES = {
    "float32": {"max_abs": 1e-3},
    "float32-tf32": {"psnr_min": 45.0},
    "auto": {"psnr_min": 35.0},
    "worker": {"psnr_min": 35.0},
}


def test_image(size: int, channels: int, task: str, seed: int = 0) -> np.ndarray:
    """A seeded synthetic image in [0, 1] (smooth shading, edges, texture), degraded for ``task``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    planes = []
    for c in range(channels):
        base = 0.5 + 0.3 * np.sin(2 * np.pi * (x * (1.5 + c) + y * 0.7))
        base += 0.2 * ((x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.08 - 0.02 * c)  # a disc: hard edges
        base += 0.05 * np.sign(np.sin(2 * np.pi * 9 * x))  # stripes: fine texture
        planes.append(base)
    img = np.clip(np.stack(planes, -1) if channels == 3 else planes[0], 0, 1).astype(np.float32)
    if task in ("denoise", "real-denoise"):
        img = np.clip(img + rng.normal(0, 25 / 255, img.shape), 0, 1).astype(np.float32)
    elif task == "jpeg":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(buf, format="JPEG", quality=20)
        img = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255
    return img


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    mse = float(np.mean(d ** 2))
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "psnr": float("inf") if mse == 0 else float(10 * math.log10(1.0 / mse))}


def within(kind: str, metrics: dict) -> bool:
    tol = TOLERANCES[kind]
    if "max_abs" in tol and not metrics["max_abs"] <= tol["max_abs"]:
        return False
    return not ("psnr_min" in tol and not metrics["psnr"] >= tol["psnr_min"])


def worker_function():
    """The function the dock's worker thread runs, and what it is called."""
    try:
        from napari_vdir.plugin._qt.restore_dock import _run_job

        return _run_job, "napari_vdir.plugin._qt.restore_dock._run_job"
    except Exception as err:  # noqa: BLE001 - no napari / Qt here: the core function the worker calls
        from napari_vdir.plugin import layers as vl

        def run(kwargs):
            try:
                return vl.restore_layer(**kwargs), None
            except Exception as exc:  # noqa: BLE001
                return None, exc
        return run, f"napari_vdir.plugin.layers.restore_layer (the dock's import failed: {type(err).__name__}: {err})"


def run_worker(path: Path, info, image_u8: np.ndarray, device: str) -> tuple[object, float]:
    """The dock's job on a worker thread: a LayerSnapshot of a uint8 layer, the keyword arguments the dock's
    ``job()`` builds, progress and cancel as the dock passes them. Returns (LayerRestoration, seconds)."""
    from napari_vdir.plugin import layers as vl

    fn, _ = worker_function()
    rgb = image_u8.ndim == 3
    snap = vl.LayerSnapshot(
        name="check", data=image_u8, rgb=rgb, scale=(1.0, 1.0), translate=(0.0, 0.0), rotate=np.eye(2),
        shear=np.zeros(1), affine=np.eye(3), units=("pixel", "pixel"), axis_labels=("y", "x"),
        contrast_limits=(0.0, 255.0))
    ticks = []
    kwargs = dict(layer=snap, task=info.task, scale=info.scale if info.task == "sr" else None, model=str(path),
                  device=device, plane=None, channel_axis=None, range_plane=None, tile_size=None, ensemble=False,
                  samples=1, latent=False, uncertainty=False, strength=1.0,
                  progress=lambda done, total: ticks.append((done, total)), cancel=threading.Event())
    box = {}

    def target():
        box["out"] = fn(kwargs)

    t0 = time.perf_counter()
    th = threading.Thread(target=target, name="restore-worker")
    th.start()
    th.join()
    seconds = time.perf_counter() - t0
    out = box.get("out")
    if isinstance(out, tuple):  # the fallback's (result, error)
        result, error = out
    else:  # the docks' worker.Outcome
        if out.cancelled:
            raise RuntimeError("the worker reported the job cancelled")
        result, error = out.result, out.error
    if error is not None:
        raise error
    if not ticks:
        raise RuntimeError("the worker never reported progress")
    return result, seconds


def check_model(name: str, path: Path, size: int, cuda: bool, worker_on_cpu: bool, device: str = "cuda") -> dict:
    """``device`` is the device under test (``cuda``; ``cpu`` only to rehearse this code without a GPU)."""
    import torch

    from napari_vdir import restore
    from napari_vdir.core.weights import read_info

    info = read_info(path)
    s = info.scale if info.task == "sr" else 1
    img = test_image(size, info.channels, info.task)
    common = dict(scale=info.scale if info.task == "sr" else None, model=str(path), backend="torch", seed=0)
    rec = {"model": name, "task": info.task, "channels": info.channels, "scale": s,
           "arch": info.arch.to_dict(), "input": list(img.shape), "checks": {}}
    t0 = time.perf_counter()
    ref = restore(img, info.task, device="cpu", precision="float32", **common)
    rec["cpu_float32_seconds"] = round(time.perf_counter() - t0, 3)
    expected = (size * s, size * s) + ((3,) if info.channels == 3 else ())
    rec["cpu_ok"] = bool(ref.shape == expected and np.isfinite(ref).all())
    if not rec["cpu_ok"]:
        rec["cpu_problem"] = f"output {ref.shape} (expected {expected}), finite: {bool(np.isfinite(ref).all())}"
    image_u8 = np.round(img * 255).astype(np.uint8)
    if cuda:
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            t0 = time.perf_counter()
            out = restore(img, info.task, device=device, precision="float32", **common)
            if device != "cpu":
                torch.cuda.synchronize()
            m = compare(out, ref) | {"seconds": round(time.perf_counter() - t0, 3)}
            rec["checks"]["float32"] = m | {"ok": within("float32", m)}
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
        for kind, precision in (("float32-tf32", "float32"), ("auto", "auto")):
            out = restore(img, info.task, device=device, precision=precision, **common)
            m = compare(out, ref)
            rec["checks"][kind] = m | {"ok": within(kind, m)}
    if cuda or worker_on_cpu:
        on = device if cuda else "cpu"
        try:
            result, seconds = run_worker(path, info, image_u8, on)
            data, meta, _ = result.layers[0]
            data = np.asarray(data)
            ref_u8 = restore(image_u8, info.task, device="cpu", precision="float32", **common)
            m = compare(data.astype(np.float64) / 255, ref_u8.astype(np.float64) / 255)
            on_device = ("CUDA" in result.device) if on != "cpu" else ("CPU" in result.device)
            ok = (within("worker", m) and on_device and data.shape == expected and np.isfinite(data).all()
                  and data.dtype == np.uint8)
            rec["checks"]["worker"] = m | {"ok": bool(ok), "device": result.device, "backend": result.backend,
                                           "shape": list(data.shape), "dtype": str(data.dtype),
                                           "layer": meta["name"], "seconds": round(seconds, 3)}
        except Exception as err:  # noqa: BLE001
            rec["checks"]["worker"] = {"ok": False, "error": f"{type(err).__name__}: {err}",
                                       "traceback": traceback.format_exc(limit=6)}
    rec["ok"] = rec["cpu_ok"] and all(c["ok"] for c in rec["checks"].values())
    return rec


def _finite(value):
    """Strict JSON: an infinite PSNR (identical outputs) is written as the string "inf"."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def markdown(report: dict) -> str:
    lines = [f"# CUDA check: {report['outcome']}", "",
             f"- device: {report['device']}; torch {report['torch']}; Python {report['python']}",
             f"- test image {report['size']}² (synthetic, degraded for each task; SR output ×scale); "
             f"dock worker: {report['worker_function']}",
             "- tolerances against CPU float32 (values in [0, 1]): float32 (TF32 off) max |Δ| ≤ "
             f"{TOLERANCES['float32']['max_abs']:g}; float32 with torch's default TF32 convolutions PSNR ≥ "
             f"{TOLERANCES['float32-tf32']['psnr_min']:g} dB; auto (bf16 autocast) PSNR ≥ "
             f"{TOLERANCES['auto']['psnr_min']:g} dB; dock worker (uint8 layer) PSNR ≥ "
             f"{TOLERANCES['worker']['psnr_min']:g} dB", ""]
    if report.get("error"):
        lines += [f"**The check broke:** {report['error']}", ""]
    lines += ["| model | CPU float32 | float32 max abs Δ | TF32 PSNR | auto PSNR | worker | ok |",
              "|---|---|---|---|---|---|---|"]

    def cell(rec, kind, key, fmt):
        c = rec["checks"].get(kind)
        if c is None:
            return "—"
        if "error" in c:
            return f"error: {c['error'][:80]}"
        return fmt.format(c[key]) + ("" if c["ok"] else " ✗")

    for rec in report["models"]:
        if "error" in rec:
            lines.append(f"| {rec['model']} | error: {rec['error'][:100]} | | | | | ✗ |")
            continue
        cpu = f"{rec['cpu_float32_seconds']:.2f} s" + ("" if rec["cpu_ok"] else " ✗")
        w = rec["checks"].get("worker")
        worker = "—" if w is None else (f"error: {w['error'][:80]}" if "error" in w else
                                        f"{w['psnr']:.1f} dB on {w['device']}" + ("" if w["ok"] else " ✗"))
        lines.append(f"| {rec['model']} | {cpu} | {cell(rec, 'float32', 'max_abs', '{:.2e}')} | "
                     f"{cell(rec, 'float32-tf32', 'psnr', '{:.1f}')} | {cell(rec, 'auto', 'psnr', '{:.1f}')} | "
                     f"{worker} | {'yes' if rec['ok'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for cuda_check.json and cuda_check.md")
    p.add_argument("--size", type=int, default=128, help="test image side in pixels (input; SR output is x scale)")
    p.add_argument("--models", nargs="*", help="shipped model names (default: all)")
    p.add_argument("--cpu-worker-models", type=int, default=1,
                   help="without CUDA, run the dock's worker on the CPU for this many models (default 1)")
    p.add_argument("--rehearse", action="store_true",
                   help="no GPU here: run the CUDA comparisons with the CPU standing in for the GPU (tests this "
                        "script; the outcome says REHEARSAL)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # the CPU worker may build ONNX graphs: keep them out of the user's cache (and need no platformdirs)
    os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="napari-vdir-check-cache-"))
    import torch

    from napari_vdir.core.models import shipped_models

    cuda = torch.cuda.is_available() or args.rehearse
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {"size": args.size, "torch": torch.__version__, "python": platform.python_version(),
              "cuda_available": cuda, "tolerances": TOLERANCES, "models": [],
              "device": (f"CUDA: {torch.cuda.get_device_name(0)}" if device == "cuda" else
                         "CPU standing in for the GPU (rehearsal)" if cuda else "no CUDA device (CPU side only)")}
    report["worker_function"] = worker_function()[1]
    t_start = time.perf_counter()
    try:
        models = shipped_models()
        names = args.models or list(models)
        for i, name in enumerate(names):
            try:
                rec = check_model(name, models[name], args.size, cuda, i < args.cpu_worker_models, device)
            except Exception as err:  # noqa: BLE001 - one model's failure is reported, the others still run
                rec = {"model": name, "ok": False, "error": f"{type(err).__name__}: {err}",
                       "traceback": traceback.format_exc(limit=6)}
            report["models"].append(rec)
            print(f"cuda_check: {name}: {'ok' if rec['ok'] else 'FAILED'}", flush=True)
    except Exception as err:  # noqa: BLE001
        report["error"] = f"{type(err).__name__}: {err}"
    all_ok = bool(report["models"]) and all(r["ok"] for r in report["models"]) and "error" not in report
    if not cuda:
        report["outcome"] = ("no CUDA device; CPU side ok" if all_ok else "no CUDA device; CPU side FAILED")
    else:
        report["outcome"] = ("PASS" if all_ok else "FAIL") + (" (REHEARSAL: CPU as the GPU)" if device == "cpu" else "")
    report["ok"] = all_ok
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "cuda_check.json").write_text(json.dumps(_finite(report), indent=1, default=str) + "\n")
    (out / "cuda_check.md").write_text(markdown(report))
    print(f"cuda_check: {report['outcome']} ({report['seconds']} s)", flush=True)
    return 0 if "error" not in report else 1


if __name__ == "__main__":
    sys.exit(main())
