"""ONNX Runtime thread spinning with two sessions: does it pay to let the intra-op threads spin?

    python benchmarks/probe_ort_spinning.py --out benchmarks/results/ort_spinning.md

``OrtVDIR`` (napari_vdir.core.backends) runs two sessions, the encoder and the restorer, one after the other for
every tile; each has its own intra-op thread pool, and by default a pool's threads spin for a while after a run.
This times encoder + restorer on one 512² RGB image (2 intra-op threads) with spinning on and off per session,
in one process, in alternation; min and median of the timed runs, s/MP of wall time.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from napari_vdir.core.backends import onnx_graphs
from napari_vdir.core.models import shipped_models
from napari_vdir.core.weights import load_weights


def session(path: Path, threads: int, spinning: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="denoise-rgb")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2, help="times each setting is measured, in alternation")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    path = shipped_models()[args.model]
    net, info = load_weights(path, "cpu")
    encoder, restorer = onnx_graphs(path, net)
    image = np.random.default_rng(0).random((1, info.channels, args.size, args.size), dtype=np.float32)
    mp = args.size ** 2 / 1e6
    settings = [(True, True), (False, True), (False, False)]
    times = {s: [] for s in settings}
    for _ in range(args.rounds):
        for spin in settings:
            enc, res = session(encoder, args.threads, spin[0]), session(restorer, args.threads, spin[1])

            def run(enc=enc, res=res):
                mu, _ = enc.run(None, {"input": image})
                res.run(None, {"input": image, "c": mu})

            run()  # warm-up
            for _ in range(args.repeats):
                t = time.perf_counter()
                run()
                times[spin].append((time.perf_counter() - t) / mp)
    lines = ["# ONNX Runtime spinning, encoder + restorer sessions (`benchmarks/probe_ort_spinning.py`)", "",
             f"Command: `python benchmarks/probe_ort_spinning.py {' '.join(sys.argv[1:])}`. "
             f"{args.model}, {args.size}² RGB, {args.threads} intra-op threads, {args.rounds} x {args.repeats} runs per "
             f"setting; CPU: {platform.processor() or platform.machine()} ({_cpu_name()}), onnxruntime {ort.__version__}.",
             "", "| encoder spinning | restorer spinning | min s/MP | median s/MP |", "|---|---|---|---|"]
    for (e, r), ts in times.items():
        lines.append(f"| {'on' if e else 'off'} | {'on' if r else 'off'} | {min(ts):.2f} | {statistics.median(ts):.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
