"""CPU backends benchmark: s/MP of restore() for torch float32, torch bf16 + channels_last, ONNX Runtime
float32 (and torch.compile float32) on the two shipped model sizes, at 1 and 2 threads.

    python benchmarks/bench_backends.py                 # writes benchmarks/results/backends.md
    python benchmarks/bench_backends.py --quick         # 128², printed only
    python benchmarks/bench_backends.py --threads 1 --sizes 512 --models denoise-rgb

Each (model, size, threads) runs in a fresh subprocess; inside it every backend gets one warm-up restore
(ONNX export, session set-up and torch.compile happen there, not in the timing) and then the minimum of
``--repeats`` timed restores (one at 2048²). Times go through ``napari_vdir.restore`` — padding, tiling
(planes above 1024² run in the fewest tiles of at most 1 MP with their margins, overlapping by the receptive field), and the conversion back — on
a float32 RGB image in [0, 1], so ``max |diff|`` (vs torch float32, same image) is unrounded.
A thread count above the CPUs this process may use (``os.sched_getaffinity``) is skipped, not measured
oversubscribed. The 1-minute load average before and after each run is recorded: on a shared machine
the numbers are only comparable within one table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "backends.md"
MODELS = ("denoise-rgb", "real-denoise-rgb")  # a CPU-size and a paper-size network
BACKENDS = ("torch-fp32", "torch-bf16-cl", "ort-fp32", "torch-compile-fp32", "openvino-fp32")
DEFAULT_BACKENDS = ("torch-fp32", "torch-bf16-cl", "ort-fp32")


def model_info(model: str):
    """The weights' metadata of a shipped model (task, scale, channels, architecture)."""
    from napari_vdir.core.models import shipped_models
    from napari_vdir.core.weights import read_info

    return read_info(shipped_models()[model])


def network(model: str) -> str:
    """The network of a shipped model, from its weights: trunk, width and D x N blocks."""
    arch = model_info(model).arch
    return f"{arch.trunk} trunk, width {arch.width}, {arch.rir_blocks}x{arch.res_blocks} blocks"


def test_image(size: int, channels: int = 3) -> np.ndarray:
    """A noisy float32 image in [0, 1], ``size`` x ``size`` (astronaut, tiled; its luma when ``channels`` is 1),
    the same on every run. For an SR model it is the low-resolution input: s/MP counts input pixels."""
    from skimage import data

    clean = data.astronaut().astype(np.float32) / 255
    if channels == 1:
        clean = clean @ np.array([0.299, 0.587, 0.114], np.float32)
    reps = -(-size // clean.shape[0])
    tiled = np.tile(clean, (reps, reps) + (1,) * (clean.ndim - 2))[:size, :size]
    noise = np.random.default_rng(0).normal(0, 25 / 255, tiled.shape).astype(np.float32)
    return np.clip(tiled + noise, 0, 1)


def run_backend(name: str, image: np.ndarray, model: str, backend: str) -> np.ndarray:
    import torch

    from napari_vdir import restore

    info = model_info(model)
    if backend == "torch-fp32":
        return restore(image, info.task, scale=info.scale, model=model,
                       backend="torch", precision="float32", device="cpu")
    if backend == "torch-bf16-cl":  # restore()'s torch path is channels_last on the CPU
        return restore(image, info.task, scale=info.scale, model=model,
                       backend="torch", precision="bfloat16", device="cpu")
    if backend == "ort-fp32":
        return restore(image, info.task, scale=info.scale, model=model,
                       backend="onnxruntime", precision="float32", device="cpu")
    if backend == "torch-compile-fp32":
        from napari_vdir.core.inference import PlaneRestorer, cached_model
        from napari_vdir.core.models import shipped_models

        path = shipped_models()[model]
        net, _ = cached_model(str(path), "cpu", path.stat().st_mtime)
        compiled = _COMPILED.setdefault(model, torch.compile(net))
        runner = PlaneRestorer(compiled, torch.device("cpu"), precision="float32")
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return runner.restore_plane(x).image.permute(1, 2, 0).numpy()
    if backend == "openvino-fp32":
        from napari_vdir.core.inference import PlaneRestorer

        model = _OPENVINO.get(name) or _OPENVINO.setdefault(name, OpenVinoVDIR(name, torch.get_num_threads()))
        runner = PlaneRestorer(model, torch.device("cpu"), precision="float32")
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return runner.restore_plane(x).image.permute(1, 2, 0).numpy()
    raise ValueError(backend)


_COMPILED: dict = {}
_OPENVINO: dict = {}


class OpenVinoVDIR:
    """Benchmark only: the OpenVINO runtime (CPU plugin, f32 inference precision) on the same encoder and
    restorer ONNX graphs as napari_vdir.core.backends.OrtVDIR, called as the tiling code calls a VDIR."""

    def __init__(self, name: str, threads: int):
        import openvino as ov

        from napari_vdir.core.backends import onnx_graphs
        from napari_vdir.core.models import shipped_models
        from napari_vdir.core.weights import load_weights

        net, _ = load_weights(shipped_models()[name])
        self.cfg = net.cfg
        encoder, restorer = onnx_graphs(shipped_models()[name], net)
        core, config = ov.Core(), {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
        self.encoder = core.compile_model(str(encoder), "CPU", config)
        self.restorer = core.compile_model(str(restorer), "CPU", config)

    def encode(self, y):
        import torch

        out = self.encoder(np.ascontiguousarray(y.float().numpy()))
        return torch.from_numpy(out[self.encoder.output(0)]), torch.from_numpy(out[self.encoder.output(1)])

    def __call__(self, y, *, sample=False, latent_shift=None, with_estimate=False, noise=None, between_blocks=None):
        import torch

        from napari_vdir.core.nets import Forward

        mu, logvar = self.encode(y)
        c = mu if noise is None else mu + torch.exp(0.5 * logvar) * noise
        c = c if latent_shift is None else c + latent_shift
        out = self.restorer([np.ascontiguousarray(y.float().numpy()), c.numpy()])
        has_estimate = len(self.restorer.outputs) > 1
        estimate = torch.from_numpy(out[self.restorer.output(1)]) if with_estimate and has_estimate else None
        return Forward(torch.from_numpy(out[self.restorer.output(0)]), mu, logvar, c, estimate)


def child(args) -> None:
    """One (model, size, threads): every backend, warm-up then timed runs; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    channels = model_info(args.model).arch.channels
    image, warm = test_image(args.size, channels), test_image(min(args.size, 256), channels)
    rows, reference = [], None
    for backend in args.backends:
        try:
            run_backend(args.model, warm if backend != "torch-compile-fp32" else image, args.model, backend)
            times, cpu, out = [], [], None
            load = os.getloadavg()[0]
            for _ in range(args.repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                out = run_backend(args.model, image, args.model, backend)
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
            if reference is None and backend == "torch-fp32":
                reference = out
            diff = None if reference is None else float(np.abs(out - reference).max())
            rows.append(dict(backend=backend, seconds=min(times), cpu_seconds=min(cpu), runs=len(times),
                             load_before=load,
                             load_after=os.getloadavg()[0], max_diff=diff))
        except Exception as err:  # noqa: BLE001 — an optional backend that cannot run is reported, not fatal
            rows.append(dict(backend=backend, error=" ".join(str(err).split())[:160]))
    print("RESULT " + json.dumps(dict(model=args.model, size=args.size, threads=args.threads, rows=rows)))


def environment() -> dict:
    import onnxruntime
    import torch

    from napari_vdir.core.devices import cpu_supports_bf16

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import openvino

        ov = (f"openvino {openvino.__version__} runtime (backend `openvino-fp32`, f32 precision hint, same ONNX "
              "graphs); its ONNX Runtime execution provider (onnxruntime-openvino) is not on the package registry")
    except ImportError:
        ov = "not installed"
    return dict(cpu=cpu, cores=os.cpu_count(), usable=len(os.sched_getaffinity(0)), python=platform.python_version(),
                torch=torch.__version__, onnxruntime=onnxruntime.__version__, bf16=cpu_supports_bf16(), openvino=ov)


def parent(args) -> list[dict]:
    usable = len(os.sched_getaffinity(0))
    results = []
    for model in args.models:
        for size in args.sizes:
            for threads in args.threads:
                if threads > usable:
                    results.append(dict(model=model, size=size, threads=threads,
                                        skipped=f"{usable} CPU(s) usable by this process"))
                    print(f"{model} {size}² {threads} threads: skipped ({usable} CPU usable)", flush=True)
                    continue
                repeats = 1 if size >= 2048 else args.repeats
                cmd = [sys.executable, __file__, "--child", "--model", model, "--size", str(size),
                       "--threads", str(threads), "--repeats", str(repeats), "--backends", *args.backends]
                env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                if done.returncode or not line:
                    raise SystemExit(f"{model} {size}: child failed:\n{done.stderr[-2000:]}")
                result = json.loads(line[0][7:])
                results.append(result)
                for r in result["rows"]:
                    print(model, f"{size}²", threads, r, flush=True)
    return results


def markdown(results: list[dict], env: dict, command: str) -> str:
    lines = [
        "# CPU backends: s/MP of restore() (`benchmarks/bench_backends.py`)",
        "",
        f"Command: `{command}`. CPU: {env['cpu']} ({env['cores']} cores, {env['usable']} usable by the run); "
        f"Python {env['python']}, torch {env['torch']}, onnxruntime {env['onnxruntime']}; "
        f"bf16 supported: {env['bf16']}. OpenVINO: {env['openvino']}.",
        "",
        "Float32 RGB input in [0, 1]; one warm-up restore per backend (ONNX export, session set-up, "
        "torch.compile excluded); min of the timed runs (one at 2048²). 2048² planes run in restore()'s automatic "
        "tiles, overlapping by the receptive field (3 x 3 tiles of 684²; tables made before issue 18's tile-plan "
        "change used 4 x 4 of 512²). `max |diff|`: largest difference to torch float32 on the same "
        "image, [0, 1] scale. `load`: 1-minute load average before/after the timed runs. On a shared machine the "
        "wall time includes waiting for the CPU; the CPU time of the process (all its threads) does not, so "
        "s/MP is CPU time / threads / megapixels — the wall time an idle machine would give if the threads "
        "scale perfectly.",
        "",
        "| model | size | threads | backend | wall s | CPU s | s/MP (CPU s / threads / MP) | max abs diff vs torch fp32 "
        "| load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for res in results:
        label = f"{res['model']} ({network(res['model'])})"
        if "skipped" in res:
            lines.append(f"| {label} | {res['size']}² | {res['threads']} | all | - | - | - | - | "
                         f"not measured: {res['skipped']} |")
            continue
        mp = res["size"] ** 2 / 1e6
        for r in res["rows"]:
            if "error" in r:
                lines.append(f"| {label} | {res['size']}² | {res['threads']} | {r['backend']} | - | - | - | - | "
                             f"failed: {r['error']} |")
                continue
            diff = "-" if r["max_diff"] is None else ("0 (reference)" if r["backend"] == "torch-fp32"
                                                       else f"{r['max_diff']:.1e}")
            per_mp = r["cpu_seconds"] / res["threads"] / mp
            lines.append(f"| {label} | {res['size']}² | {res['threads']} | {r['backend']} | {r['seconds']:.2f} | "
                         f"{r['cpu_seconds']:.2f} | {per_mp:.2f} | {diff} | "
                         f"{r['load_before']:.1f} / {r['load_after']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--sizes", nargs="+", type=int, default=[512, 2048])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", nargs="+", default=list(DEFAULT_BACKENDS), choices=BACKENDS)
    p.add_argument("--quick", action="store_true", help="128², one repeat, printed only")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--append", action="store_true", help="add this run's table to the output file")
    args = p.parse_args(argv)
    if args.child:
        args.threads = args.threads[0]
        return child(args)
    if args.quick:
        args.sizes, args.repeats = [128], 1
    command = "python benchmarks/bench_backends.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = parent(args)
    text = markdown(results, environment(), command.strip())
    print(text)
    if not args.quick:
        if args.append and args.output.exists():
            text = args.output.read_text(encoding="utf-8") + "\n" + text.replace("# CPU backends", "## Also", 1)
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
