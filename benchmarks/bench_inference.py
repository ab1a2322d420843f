"""CPU inference benchmark for the default denoising model: speed, memory and the accuracy cost of bf16.

    python benchmarks/bench_inference.py                # writes benchmarks/results/inference.md
    python benchmarks/bench_inference.py --quick        # 128² / 256² smoke run, printed only

Every speed configuration runs in a fresh subprocess, so its peak RSS (``ru_maxrss`` of that process)
is its own. Times are one timed run after a small warm-up restore; the machine is shared, so the
1-minute load average before and after each run is recorded beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "inference.md"
SHARED = Path(os.environ.get("NAPARI_VDIR_SHARED", HERE.parents[1] / "shared"))
ACCURACY_IMAGES = ("CBSD68/101085.png", "CBSD68/102061.png", "CBSD68/108005.png")
SIGMA = 25.0

# (size, precision, tile_size) — tile_size None is restore()'s default (one pass up to 1024², else the fewest tiles of at most 1 MP with margins)
CONFIGS = [
    (512, "auto", None), (512, "float32", None), (512, "auto", 256), (512, "float32", 256),
    (4096, "auto", None), (4096, "float32", None),
]
QUICK_CONFIGS = [(128, "float32", None), (128, "auto", 64), (256, "auto", None)]


def test_image(size: int) -> np.ndarray:
    """A noisy uint8 RGB photo of the requested size (astronaut, tiled), the same on every run."""
    from skimage import data

    photo = data.astronaut()
    reps = -(-size // photo.shape[0])
    big = np.tile(photo, (reps, reps, 1))[:size, :size].astype(np.float32)
    noise = np.random.default_rng(0).normal(0, SIGMA, big.shape).astype(np.float32)
    return np.clip(np.rint(big + noise), 0, 255).astype(np.uint8)


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM starts afresh at exec; ru_maxrss would include the
    parent's RSS at fork time on Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(size: int, precision: str, tile_size: int | None, model: str, budget_s: float | None = None) -> dict:
    """Runs inside the subprocess: time one restore and report this process's peak RSS.

    With ``budget_s`` the restore is cancelled after that many seconds and the speed is
    extrapolated from the tiles done (the peak RSS is then a lower bound).
    """
    import torch

    from napari_vdir import restore
    from napari_vdir.core.inference import PlaneRestorer, RestorationCancelled, cached_model

    image = test_image(size)
    # Warm-up: oneDNN builds its kernels per input shape on the first call. Up to 1024² the same
    # image is restored once untimed; larger images are tiled, and their few tile shapes warm up
    # within the timed run (a few seconds out of minutes).
    warm = image if size <= 1024 else image[:64, :64]
    restore(warm, "denoise", model=model, precision=precision, tile_size=tile_size, device="cpu")
    net, _ = cached_model(model, "cpu", Path(model).stat().st_mtime)
    tiles = PlaneRestorer(net, torch.device("cpu"), tile_size=tile_size).count_steps(size, size)
    done = [0]
    start = time.perf_counter()
    try:
        restore(image, "denoise", model=model, precision=precision, tile_size=tile_size, device="cpu",
                progress=lambda n, total: done.__setitem__(0, n),
                cancel=lambda: budget_s is not None and time.perf_counter() - start > budget_s)
    except RestorationCancelled:
        pass
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tiles": tiles, "tiles_done": done[0], "rss_mb": peak_rss_mb(),
            "threads": torch.get_num_threads()}


def measure(size, precision, tile_size, model, budget_s=None) -> dict:
    load_before = os.getloadavg()[0]
    cmd = [sys.executable, __file__, "--one", json.dumps([size, precision, tile_size, budget_s]), "--model", model]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{size}² {precision} failed:\n{proc.stderr[-2000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    fraction = row["tiles_done"] / row["tiles"]
    row.update(size=size, precision=precision, tile_size=tile_size, load_before=load_before,
               load_after=os.getloadavg()[0], mps=fraction * size * size / 1e6 / row["seconds"])
    print(f"  {size}² {precision:8s} tile {tile_size or 'default'}: {row['seconds']:.1f} s "
          f"({row['tiles_done']}/{row['tiles']} tiles), {row['mps']:.3f} MP/s, {row['rss_mb']:.0f} MB, "
          f"load {load_before:.1f}->{row['load_after']:.1f}", flush=True)
    return row


def accuracy(model: str) -> list[dict]:
    """bf16 (precision auto) vs float32 on real photos with AWGN sigma 25: PSNR and max abs difference."""
    from skimage.metrics import peak_signal_noise_ratio as psnr

    from napari_vdir import restore
    from napari_vdir.core.io import read_image

    rows = []
    for name in ACCURACY_IMAGES:
        path = SHARED / "datasets" / name
        if not path.is_file():
            continue
        clean = read_image(path).astype(np.float32) / 255.0
        noise = np.random.default_rng(0).normal(0, SIGMA / 255.0, clean.shape).astype(np.float32)
        noisy = clean + noise  # float input: results come back unquantised, so differences are exact
        exact = restore(noisy, "denoise", model=model, precision="float32", device="cpu")
        fast = restore(noisy, "denoise", model=model, precision="auto", device="cpu")
        rows.append({"image": name, "psnr_noisy": psnr(clean, noisy, data_range=1.0),
                     "psnr_fp32": psnr(clean, exact, data_range=1.0), "psnr_auto": psnr(clean, fast, data_range=1.0),
                     "max_abs_255": float(np.abs(exact - fast).max() * 255),
                     "mean_abs_255": float(np.abs(exact - fast).mean() * 255)})
        print(f"  {name}: fp32 {rows[-1]['psnr_fp32']:.3f} dB, auto {rows[-1]['psnr_auto']:.3f} dB, "
              f"max |diff| {rows[-1]['max_abs_255']:.2f}/255", flush=True)
    return rows


def machine() -> str:
    import torch

    from napari_vdir.core.devices import cpu_supports_bf16

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"CPU bf16 support: {cpu_supports_bf16()}")


def describe_model(model: str) -> tuple[str, int]:
    """("width W, DxN blocks", tile margin in pixels) of a weights file."""
    from napari_vdir.core.weights import read_info

    arch = read_info(model).arch
    return f"width {arch.width}, {arch.rir_blocks}x{arch.res_blocks} blocks", arch.receptive_radius


def report(rows: list[dict], acc: list[dict], model: str, header: str) -> str:
    size, margin = describe_model(model)
    lines = [
        "# Inference benchmark: default denoise model on the CPU", "",
        f"Generated by `python benchmarks/bench_inference.py` on {time.strftime('%Y-%m-%d %H:%M')}.", "",
        f"- Machine: {header}",
        f"- Model: `{Path(model).name}` ({size}); RGB uint8 input, noisy astronaut tiled to size.",
        "- `auto` = bf16 autocast + channels_last (restore()'s default on this CPU); `float32` = exact path.",
        f"- `default` tiling = one pass up to 1024², else the fewest balanced tiles of at most 1 MP with a {margin} px margin "
        "(whole images are measured at 512² only).",
        "- Peak RSS is that configuration's own process (fresh subprocess, `VmHWM`), torch import included.",
        "- The CPU is shared with other engineers: the 1-minute load average before/after each run is shown; "
        "with 2 cores, a load above ~2 means the run was competing and its time is pessimistic.",
        "- A run with a time budget (`--budget-s`) that ran out is marked *partial*: its MP/s is extrapolated "
        "from the tiles done and its peak RSS is a lower bound (the full-image output buffers are not all "
        "written yet).", "",
        "| size | precision | tiling | tiles done | time (s) | MP/s | peak RSS (MB) | load before → after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tiling = f"{r['tile_size']}² tiles" if r["tile_size"] else "default (whole)" if r["tiles"] == 1 else \
            "default (tiles)"
        done = f"{r['tiles']}" if r["tiles_done"] == r["tiles"] else f"{r['tiles_done']}/{r['tiles']} *partial*"
        lines.append(f"| {r['size']}² | {r['precision']} | {tiling} | {done} | {r['seconds']:.1f} | "
                     f"{r['mps']:.3f} | {r['rss_mb']:.0f} | {r['load_before']:.1f} → {r['load_after']:.1f} |")
    by = {(r["size"], r["precision"], r["tile_size"]): r for r in rows}
    for size in sorted({r["size"] for r in rows}):
        a, b = by.get((size, "float32", None)), by.get((size, "auto", None))
        if a and b:
            lines.append(f"\nSpeed-up of `auto` over `float32` at {size}² (default tiling): {b['mps'] / a['mps']:.2f}x.")
    lines += ["", f"## Accuracy cost of bf16 (`auto`) vs float32 — CBSD68 photos + AWGN σ={SIGMA:g}, float input", ""]
    if acc:
        lines += ["| image | PSNR noisy | PSNR float32 | PSNR auto | Δ PSNR (auto − fp32) | max abs diff (0-255) | "
                  "mean abs diff (0-255) |", "|---|---|---|---|---|---|---|"]
        for r in acc:
            lines.append(f"| {r['image']} | {r['psnr_noisy']:.2f} | {r['psnr_fp32']:.3f} | {r['psnr_auto']:.3f} | "
                         f"{r['psnr_auto'] - r['psnr_fp32']:+.3f} dB | {r['max_abs_255']:.2f} | "
                         f"{r['mean_abs_255']:.3f} |")
    else:
        lines.append("(skipped: ../shared/datasets/CBSD68 not found)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="weights file (default: the shipped denoise-rgb)")
    parser.add_argument("--quick", action="store_true", help="small sizes, print only")
    parser.add_argument("--budget-s", type=float, help="stop a 4096² run after this many seconds and extrapolate "
                        "(for a busy shared machine)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one configuration, in this subprocess
    args = parser.parse_args(argv)
    if args.model is None:
        from napari_vdir.core.models import resolve_model

        args.model = str(resolve_model(None, "denoise", 3))
    if args.one:
        size, precision, tile_size, budget_s = json.loads(args.one)
        print(json.dumps(run_one(size, precision, tile_size, args.model, budget_s)))
        return 0
    header = machine()
    print(header, flush=True)
    acc = accuracy(args.model)
    rows = []
    for size, precision, tile_size in QUICK_CONFIGS if args.quick else CONFIGS:
        rows.append(measure(size, precision, tile_size, args.model, args.budget_s if size > 1024 else None))
        if not args.quick:  # rewritten after every configuration: a long run interrupted keeps its results
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(report(rows, acc, args.model, header))
    if args.quick:
        print(report(rows, acc, args.model, header))
    else:
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
