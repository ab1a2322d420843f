"""Equal-CPU-time backbone probes: which trunk learns most per CPU-second.

    python benchmarks/probe_backbone.py --minutes 60 --parallel   # writes benchmarks/results/backbone_probe.md
    python benchmarks/probe_backbone.py --minutes 3 --smoke       # end-to-end check, marked as a smoke run
    python benchmarks/probe_backbone.py --probe sr-x2 --minutes 40   # benchmarks/results/sr_backbone_probe.md
    python benchmarks/probe_backbone.py --probe trunk --minutes 60 --parallel   # benchmarks/results/trunk_probe.md

``--probe trunk`` (issue 34) compares the shipped pixel-unshuffle trunk with the multi-scale encoder-decoder
(``trunk: unet``) on the varied training images (CBSD432 + CQ100 + SunHays80), scored on validation images only: all
of Val20 and the slice of CQ100 and SunHays80 that its recipes hold out, per noise level.

``--probe denoise`` (issue 15, the default) compares today's CPU-size trunk with two pixel-unshuffle trunks;
``--probe sr-x2`` (issue 14) the shipped SR models' paper-size trunk with a lighter one, on the blind x2 SR mix.

Denoise: each candidate is one recipe, ``training/stages/probe-<candidate>.yaml``, identical but for ``arch``: blind
colour AWGN with the clean-inclusive ranges (sigma 0-75, 10 % exactly clean), CBSD432 for training, Val20 for
validation, bf16 on the CPU, the shipped CPU recipes' objective (restore L1, KL, decoder, EST; critic off). The
probe runs them through the training CLI with the same ``--time-budget`` and ``--threads``; the budget counts
the process's CPU time (``--budget-clock cpu``), so candidates that run side by side (``--parallel``, more jobs
than cores) or beside other work still get equal compute, and the learning rate is annealed over it:

    python -m napari_vdir.training --recipe training/stages/probe-<candidate>.yaml --out runs/probe-<candidate> \\
        --threads 1 --time-budget MINUTES --budget-clock cpu --val-every N --quiet

then reads each run's ``log.csv`` (the validation curve), scores its final weights on fixed test settings
(CBSD68 sigma 30, Kodak24 sigma 50, Kodak24 clean in; the ``benchmarks/evaluate.py`` protocol, first images
only) and times ``napari_vdir.restore`` of a 512² RGB image at one thread on a random-init network of each
candidate (speed does not depend on the weights) before any training starts, so the timing has the machine
to itself.

SR x2: the recipes ``training/stages/probe-sr-x2-<candidate>.yaml`` train from scratch on the real-world low-res
mix (``sr-mix``), and the final weights are scored on all of Val20 at the real-world settings of
``benchmarks/val20_levels.py --task sr`` (the validation set: an SR architecture is not chosen on test sets);
speed is s/MP of the low-res input.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SMOKE_BELOW_MINUTES = 20  # shorter runs say nothing about which trunk learns better
SPEED_SIDE = 512
# (set, sigma or "clean", images): the issue's throwaway probe used CBSD68's first 12 at sigma 30 and
# Kodak24's first 6 at sigma 50; "clean" is PSNR of restore(clean) against clean (nothing to fix)
TEST_SETTINGS = (("CBSD68", 30, 12), ("Kodak24", 50, 6), ("Kodak24", "clean", 6))


@dataclass(frozen=True)
class Probe:
    """One comparison: its candidates (recipes ``training/stages/probe-<candidate>.yaml``), task and report."""

    title: str
    task: str
    scale: int
    candidates: tuple[str, ...]
    report: Path
    validation: str  # what the trainer's validation number is


PROBES = {
    "denoise": Probe(
        "Backbone probe (issue 15): CPU-size full trunk vs pixel-unshuffle trunks", "denoise", 1,
        ("full", "unshuffle", "unshuffle-fast"), HERE / "results" / "backbone_probe.md",
        "Val20 PSNR: the first 8 Val20 images, 256² centre crops, the recipe's degradation (sigma 0-75 with 10 % "
        "clean, seeded): one number over mixed noise levels, comparable between the candidates, not with the "
        "evaluation tables."),
    "sr-x2": Probe(
        "SR backbone probe (issue 14): the paper-size trunk vs a lighter one, blind x2 on the real-world mix", "sr",
        2, ("sr-x2-paper", "sr-x2-light"), HERE / "results" / "sr_backbone_probe.md",
        "Val20 PSNR (RGB): the first 8 Val20 images, 256² centre crops, one seeded draw of the recipe's "
        "degradation (the sr-mix) each: comparable between the candidates, not with the evaluation tables."),
    "trunk": Probe(
        "Trunk probe (issue 34): the shipped pixel-unshuffle trunk vs the multi-scale encoder-decoder", "denoise", 1,
        ("unshuffle-varied", "unet-varied"), HERE / "results" / "trunk_probe.md",
        "Validation PSNR: all 20 Val20 images and the 18 held-out images of CQ100 and SunHays80 (every 10th by "
        "name), 256² centre crops, one seeded draw of the recipe's degradation (sigma 0-75, 10 % clean) each: one "
        "number over mixed noise levels, comparable between the candidates, not with the evaluation tables."),
}
# The trunk probe is decided on validation images only: Val20 and the slice of the new training sets that its
# recipes hold out (never a test set). Each is scored per noise level with benchmarks/val20_levels.py.
VALIDATION_LEVELS = (15, 30, 50, "clean")


def recipe_path(candidate: str) -> Path:
    return REPO / "training" / "stages" / f"probe-{candidate}.yaml"


def train_command(candidate: str, out: Path, minutes: float, threads: int, val_every: int) -> list[str]:
    return [sys.executable, "-m", "napari_vdir.training", "--recipe", str(recipe_path(candidate).relative_to(REPO)),
            "--out", str(out), "--threads", str(threads), "--time-budget", f"{minutes:g}", "--budget-clock", "cpu",
            "--val-every", str(val_every), "--quiet"]


def check_ranges_in_effect(candidate: str) -> None:
    """The recipes ask for ``ranges: clean-inclusive``; refuse to probe if training would not apply it
    (``training.data.degrade`` must pass ``recipe.ranges`` to the samplers): the runs would silently train
    on other ranges than the report states."""
    import torch

    from napari_vdir.training.config import load_recipe
    from napari_vdir.training.data import degrade

    recipe = load_recipe(recipe_path(candidate))
    g = torch.Generator().manual_seed(0)
    batch = degrade(torch.full((400, 3, 8, 8), 0.5), recipe, g, g)
    if not (batch.estimate_target == 0).any():
        raise SystemExit("training/data.py does not apply the recipe's `ranges` yet (no exactly-clean inputs "
                         "among 400 clean-inclusive draws); the probe would train on the degraded-only ranges")


def train_all(candidates, runs: Path, minutes: float, threads: int, val_every: int, parallel: bool) -> dict:
    """Train each candidate from scratch (all at once with ``parallel``); returns their wall seconds."""
    started, walls = {}, {}
    for c in candidates:
        out = runs / f"probe-{c}"
        if out.exists():
            print(f"removing the previous probe run {out}", flush=True)
            shutil.rmtree(out)
        cmd = train_command(c, out, minutes, threads, val_every)
        print("$ " + shlex.join(cmd), flush=True)
        started[c] = (time.perf_counter(), subprocess.Popen(cmd, cwd=REPO))
        if not parallel:
            walls[c] = finish(c, *started.pop(c))
    while started:  # poll, so each run's wall time ends when it does, not when the one waited for first does
        for c in [c for c, (_, proc) in started.items() if proc.poll() is not None]:
            walls[c] = finish(c, *started.pop(c))
        time.sleep(1)
    return walls


def finish(candidate: str, t0: float, proc: subprocess.Popen) -> float:
    if proc.wait() != 0:
        raise SystemExit(f"training {candidate} failed (exit status {proc.returncode})")
    return time.perf_counter() - t0


def read_curve(log: Path) -> list[dict]:
    """The validation rows of a trainer's log.csv: step, training seconds, val PSNR, learning rate and the
    mean restore L1 of the steps since the previous validation."""
    rows, losses = [], []
    with open(log, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("restore"):
                losses.append(float(row["restore"]))
            if row.get("val_psnr"):
                rows.append({"step": int(row["step"]), "seconds": float(row["seconds"] or 0.0),
                             "val_psnr": float(row["val_psnr"]), "lr": float(row["lr"]) if row["lr"] else None,
                             "restore": statistics.fmean(losses) if losses else None})
                losses = []
    return rows


def arch_of(candidate: str):
    from napari_vdir.training.config import load_recipe

    return load_recipe(recipe_path(candidate)).arch_config()


def describe(candidate: str) -> dict:
    """Parameters, multiply-adds per (input) pixel (inference: encoder + restorer + EST) and receptive radius."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from napari_vdir.core.nets import VDIR

    cfg = arch_of(candidate)
    model = VDIR(cfg).eval()
    y = torch.rand(1, cfg.channels, 128, 128)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(y, with_estimate=True)
    return {"arch": cfg, "params": sum(p.numel() for p in model.parameters()),
            "restorer_params": sum(p.numel() for p in model.restorer.parameters()),
            "macs_per_pixel": counter.get_total_flops() / 2 / (128 * 128), "radius": cfg.receptive_radius}


def time_restore(candidate: str, probe: Probe, repeats: int = 5, large: int | None = None) -> dict:
    """Median seconds per megapixel (of input) of ``napari_vdir.restore`` on a 512² RGB image (one warm-up first):
    the fast path (precision "auto": bf16 on CPUs with it) and exact float32 (ONNX Runtime when installed).

    Wall seconds and the process's CPU seconds: on a core shared with other jobs the wall time also counts
    the time slices they took, the CPU time (one thread) does not."""
    import torch

    from napari_vdir import restore
    from napari_vdir.core.nets import VDIR
    from napari_vdir.core.weights import ModelInfo, save_weights

    cfg = arch_of(candidate)
    torch.manual_seed(0)
    image = np.random.default_rng(0).random((SPEED_SIDE, SPEED_SIDE, 3), dtype=np.float32)
    megapixels = SPEED_SIDE * SPEED_SIDE / 1e6
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = save_weights(Path(tmp) / f"{candidate}.safetensors", VDIR(cfg),
                            ModelInfo(name=f"probe-{candidate}", task=probe.task, arch=cfg))
        scale = probe.scale if probe.task == "sr" else None
        for label, options in (("fast", {"precision": "auto"}), ("float32", {"precision": "float32"}),
                               ("torch32", {"precision": "float32", "backend": "torch"})):
            try:
                restore(image, probe.task, scale=scale, model=path, device="cpu", **options)  # warm-up, ORT export
            except (ImportError, ValueError) as err:
                out[label] = f"n/a ({err})"
                continue
            wall, cpu = [], []
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                restore(image, probe.task, scale=scale, model=path, device="cpu", **options)
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            out[label] = statistics.median(wall) / megapixels
            out[f"{label}_cpu"] = statistics.median(cpu) / megapixels
        if probe.task != "sr":
            one = restore(image, probe.task, model=path, device="cpu", precision="float32", backend="torch")
            tiles = restore(image, probe.task, model=path, device="cpu", precision="float32", backend="torch",
                            tile_size=128)
            out["tiled_delta"] = float(np.abs(one - tiles).max())
        if large:  # tiles and their overlap: a 2048² image runs as several tiles whose margins are recomputed
            big = np.random.default_rng(1).random((large, large, 3), dtype=np.float32)
            t0, c0 = time.perf_counter(), time.process_time()
            restore(big, probe.task, scale=scale, model=path, device="cpu", precision="float32")
            out["large"] = (time.perf_counter() - t0) / (large * large / 1e6)
            out["large_cpu"] = (time.process_time() - c0) / (large * large / 1e6)
    return out


def held_out_images(candidate: str) -> list[str]:
    """The recipe's validation sources other than Val20: the held-out slice of the new training sets."""
    from napari_vdir.training.config import load_recipe

    val = load_recipe(recipe_path(candidate)).data.val
    return [v for v in ([val] if isinstance(val, str) else val) if Path(v).name != "Val20"]


def score_validation(weights: Path, shared: Path, candidate: str) -> dict:
    """PSNR per noise level on all of Val20 and on the recipe's held-out slice (``val20_levels.score``)."""
    sys.path.insert(0, str(HERE))
    import val20_levels

    from napari_vdir.training.data import load_folder

    out = {}
    held = [str(REPO / v) if not Path(v).is_absolute() else v for v in held_out_images(candidate)]
    for name, source in (("Val20", shared / "datasets" / "Val20"), (f"held-out ({len(held)})", held)):
        images = [x for _, x in load_folder(source, 3)]
        for level, value in val20_levels.score(weights, images, "denoise", levels=VALIDATION_LEVELS).items():
            out[(name, level, len(images))] = value
    return out


def score_weights(weights: Path, shared: Path, probe: Probe, candidate: str) -> dict:
    """Mean PSNR of restore() on the fixed test settings (benchmarks/evaluate.py's images and noise); for SR,
    Y-PSNR on all of Val20 at ``val20_levels``' real-world settings; for the trunk probe, validation images only."""
    if probe.task == "sr":
        return score_sr(weights, shared, probe.scale)
    if probe is PROBES["trunk"]:
        return score_validation(weights, shared, candidate)
    from napari_vdir import restore
    from evaluate import Setting, degrade, load_images, score

    results = {}
    for dataset, level, count in TEST_SETTINGS:
        setting = Setting(dataset, 30 if level == "clean" else level)
        values = []
        for i, (_, clean) in enumerate(load_images(shared / "datasets", setting, count)):
            ref, x = (clean, clean) if level == "clean" else degrade(setting, clean, i)
            out = np.clip(np.asarray(restore(x, "denoise", model=weights, device="cpu"), np.float64), 0, 1)
            values.append(score(setting, ref, out)["psnr"])
        results[(dataset, level, count)] = statistics.fmean(values)
    return results


def score_sr(weights: Path, shared: Path, scale: int) -> dict:
    sys.path.insert(0, str(HERE))
    import val20_levels

    from napari_vdir.training.data import load_folder

    images = [x for _, x in load_folder(shared / "datasets" / "Val20", 3)]
    return {("Val20", f"x{scale}_{level}", len(images)): val20_levels.sr_psnr(weights, images, scale, level)
            for level in val20_levels.LEVELS["sr"]}


def curve_table(curves: dict[str, list[dict]]) -> list[str]:
    lines = ["| candidate | step | training minutes | lr | restore L1 (since last val) | validation PSNR (dB) |",
             "|---|---|---|---|---|---|"]
    for cand, rows in curves.items():
        for r in rows:
            lr = "" if r["lr"] is None else f"{r['lr']:.2e}"
            loss = "" if r["restore"] is None else f"{r['restore']:.4f}"
            lines.append(f"| {cand} | {r['step']} | {r['seconds'] / 60:.1f} | {lr} | {loss} | {r['val_psnr']:.2f} |")
    return lines


def at_fractions(curves: dict[str, list[dict]], minutes: float) -> list[str]:
    """Val20 PSNR of each candidate at the last validation before 1/4, 1/2, 3/4 and all of the budget."""
    fractions = (0.25, 0.5, 0.75, 1.0)
    lines = ["| candidate | " + " | ".join(f"≤ {f * minutes:g} min" for f in fractions) + " |",
             "|---|" + "---|" * len(fractions)]
    for cand, rows in curves.items():
        cells = []
        for f in fractions:
            before = [r for r in rows if r["seconds"] <= f * minutes * 60 + 1e-6 and r["step"] > 0]
            if f == 1.0 and rows:
                before = rows[-1:]
            cells.append(f"{before[-1]['val_psnr']:.2f} (step {before[-1]['step']})" if before else "—")
        lines.append(f"| {cand} | " + " | ".join(cells) + " |")
    return lines


def fmt_speed(measured: dict, label: str) -> str:
    value = measured.get(label)
    if value is None or isinstance(value, str):
        return value or "—"
    return f"{measured[label + '_cpu']:.2f} ({value:.2f})"


def write_report(path: Path, args, info: dict, speed: dict, curves: dict, scores: dict, walls: dict) -> None:
    smoke = args.smoke or args.minutes < SMOKE_BELOW_MINUTES
    probe = PROBES[args.probe]
    lines = [f"# {probe.title}", ""]
    if smoke:
        lines += [f"> **SMOKE RUN — NOT A RESULT.** {args.minutes:g} minutes per candidate only proves that the probe "
                  "runs end to end (training CLI, curves, scoring, timing). Nothing below the speed table says which "
                  f"trunk learns better; run it with `--minutes 60`.", ""]
    if args.note:
        lines += [args.note, ""]
    lines += ["Command (from the repository root):", "",
              "    python benchmarks/probe_backbone.py" + (f" --probe {args.probe}" if args.probe != "denoise" else "")
              + f" --minutes {args.minutes:g} --threads {args.threads}"
              f" --val-every {args.val_every}" + (" --parallel" if args.parallel else "")
              + (" --smoke" if args.smoke else "") + (" --reuse-runs" if args.reuse_runs else ""), "",
              "Per candidate (same data, CPU minutes, threads, seed and objective; only `arch` differs"
              + ("; all at once, sharing the cores" if args.parallel else "; one after the other") + "):", ""]
    lines += ["    python " + shlex.join(train_command(c, Path("runs") / f"probe-{c}", args.minutes, args.threads,
                                                   args.val_every)[1:]) for c in args.candidates]
    lines += ["", f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch "
              f"{__import__('torch').__version__}; {time.strftime('%Y-%m-%d %H:%M %Z')}; 1-minute load average "
              f"{speed.get('load', '?')} while timing.", "",
              "## Candidates and inference speed", "",
              f"`napari_vdir.restore` of a {SPEED_SIDE}² RGB image, {args.threads} thread(s), random-init weights, "
              + ("s/MP of the low-res input, " if probe.task == "sr" else "") +
              "median of 5 after a warm-up; `fast` = precision auto (bf16 autocast + channels_last on this CPU), "
              "`float32` = exact (ONNX Runtime when installed). CPU seconds of the process per megapixel, wall "
              "seconds in brackets (they also count the time slices other jobs on the same core took). "
              "These timings are real measurements, also in a smoke run.", "",
              "| candidate | arch | parameters (restorer) | multiply-adds / " + ("input " if probe.task == "sr" else "")
              + "pixel | receptive radius (px) "
              "| s/MP fast | s/MP float32 | s/MP float32 torch | s/MP float32 at 2048² (tiled) | tiled − whole |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in args.candidates:
        d, a = info[c], info[c]["arch"]
        arch = f"{a.trunk}, width {a.width}, D{a.rir_blocks}/N{a.res_blocks}"
        tiled = speed[c].get("tiled_delta")
        lines.append(f"| {c} | {arch} | {d['params'] / 1e6:.2f} M ({d['restorer_params'] / 1e6:.2f} M) | "
                     f"{d['macs_per_pixel'] / 1e3:.0f} k | {d['radius']} | {fmt_speed(speed[c], 'fast')} | "
                     f"{fmt_speed(speed[c], 'float32')} | {fmt_speed(speed[c], 'torch32')} | "
                     f"{fmt_speed(speed[c], 'large')} | " + ("—" if tiled is None else f"{tiled:.1e}") + " |")
    lines += ["", "`float32` is the default exact path (ONNX Runtime), `float32 torch` the same in torch; the 2048² "
              "column restores a 2048² image with the automatic tiling (float32, ONNX Runtime), so tile margins "
              "recomputed at every seam are counted; `tiled − whole` is the largest difference between a "
              "tile_size=128 restore and a one-pass restore of a 512² image (float32 torch)."]
    if curves:
        lines += ["", "## Validation curves" + (" (smoke run)" if smoke else ""), "", probe.validation, ""]
        lines += at_fractions(curves, args.minutes) + [""] + curve_table(curves)
        lines += ["", "Training minutes are the process's CPU minutes (`--budget-clock cpu`). "
                  "Wall time per candidate (training incl. validation and start-up): "
                  + (", ".join(f"{c} {walls[c] / 60:.1f} min" for c in walls if c in curves) if walls
                     else "not measured (runs trained beforehand, `--reuse-runs`)") + "."]
    if scores and probe is PROBES["trunk"]:
        keys = list(next(iter(scores.values())))
        lines += ["", "## Final weights on the validation images, per noise level" + (" (smoke run)" if smoke else ""),
                  "", "`napari_vdir.restore` (blind, precision auto) of each run's last weights on whole images: "
                  "all of Val20 and the held-out slice of CQ100 + SunHays80; AWGN seed 3000 + i, not clipped "
                  "(`benchmarks/val20_levels.py`); `clean` = restore(clean) vs clean. No test set is used.", "",
                  "| candidate | " + " | ".join(f"{d} {'clean' if lv == 'clean' else f'σ{lv}'}" for d, lv, _ in keys)
                  + " |", "|---|" + "---|" * len(keys)]
        for c, sc in scores.items():
            lines.append(f"| {c} | " + " | ".join(f"{sc[k]:.2f}" for k in keys) + " |")
    elif scores and probe.task == "sr":
        keys = list(next(iter(scores.values())))
        lines += ["", "## Final weights on all of Val20" + (" (smoke run)" if smoke else ""), "",
                  "`napari_vdir.restore` (blind, precision auto) of the run's last weights on all of Val20 at the "
                  "evaluation's real-world low-res settings, made as `benchmarks/evaluate.py` makes them "
                  "(`benchmarks/val20_levels.py --task sr`): Y-PSNR, scale pixels shaved. The validation set, "
                  "not a test set: this is where an architecture may be chosen.", "",
                  "| candidate | " + " | ".join(lv for _, lv, _ in keys) + " | mean |",
                  "|---|" + "---|" * (len(keys) + 1)]
        for c, s in scores.items():
            lines.append(f"| {c} | " + " | ".join(f"{s[k]:.2f}" for k in keys)
                         + f" | {statistics.fmean(s.values()):.2f} |")
    elif scores:
        keys = list(next(iter(scores.values())))
        lines += ["", "## Final weights on fixed test settings" + (" (smoke run)" if smoke else ""), "",
                  "`napari_vdir.restore` (blind, precision auto) of the run's last weights; the "
                  "`benchmarks/evaluate.py` images and noise (seed 1000 + i, not clipped), first images only; "
                  "`clean` = PSNR of restore(clean image) vs the clean image.", "",
                  "| candidate | " + " | ".join(f"{d} {'clean' if lv == 'clean' else f'σ{lv}'} (first {n})"
                                                 for d, lv, n in keys) + " |",
                  "|---|" + "---|" * len(keys)]
        for c, s in scores.items():
            lines.append(f"| {c} | " + " | ".join(f"{s[k]:.2f}" for k in keys) + " |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0, help="training CPU minutes per candidate (default 60)")
    p.add_argument("--parallel", action="store_true",
                   help="train the candidates at the same time (their budgets count CPU time, so they may share cores)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training and timing (default 1)")
    p.add_argument("--val-every", type=int, default=500, help="validate every N steps (default 500)")
    p.add_argument("--probe", choices=sorted(PROBES), default="denoise",
                   help="which comparison: denoise (issue 15, default), sr-x2 (issue 14) or trunk (issue 34)")
    p.add_argument("--candidates", nargs="+", help="a subset of the probe's candidates (default: all)")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="where the runs go (runs/probe-<candidate>)")
    p.add_argument("--out", type=Path, help="report (default: the probe's, in benchmarks/results)")
    p.add_argument("--speed-only", action="store_true", help="only describe and time the candidates")
    p.add_argument("--reuse-runs", action="store_true",
                   help="score and report runs already in --runs (trained with the commands in the report) "
                   "instead of training them again")
    p.add_argument("--smoke", action="store_true",
                   help=f"mark the report as a smoke run (always so below {SMOKE_BELOW_MINUTES} minutes)")
    p.add_argument("--note", help="a paragraph to put at the top of the report (how this run was made)")
    args = p.parse_args(argv)
    probe = PROBES[args.probe]
    unknown = set(args.candidates or ()) - set(probe.candidates)
    if unknown:
        p.error(f"--probe {args.probe} has the candidates {', '.join(probe.candidates)}, "
                f"not {', '.join(sorted(unknown))}")
    args.candidates = args.candidates or list(probe.candidates)
    args.out = args.out or probe.report
    import torch

    torch.set_num_threads(args.threads)
    shared = Path(os.environ.get("NAPARI_VDIR_SHARED", REPO.parent / "shared"))
    if not args.speed_only:
        if probe.task == "denoise":
            check_ranges_in_effect(args.candidates[0])
    info = {c: describe(c) for c in args.candidates}
    speed = {"load": f"{os.getloadavg()[0]:.2f}"}
    for c in args.candidates:
        speed[c] = time_restore(c, probe, large=2048 if probe is PROBES["trunk"] else None)
        print(f"{c}: {speed[c]} s/MP", flush=True)
    speed["load"] += f" -> {os.getloadavg()[0]:.2f}"
    curves, scores, walls = {}, {}, {}
    if not args.speed_only:
        runs = args.runs if args.runs.is_absolute() else REPO / args.runs
        if args.reuse_runs:
            walls = {}
        else:
            walls = train_all(args.candidates, runs, args.minutes, args.threads, args.val_every, args.parallel)
        for c in args.candidates:
            out = runs / f"probe-{c}"
            curves[c] = read_curve(out / "log.csv")
            scores[c] = score_weights(out / f"probe-{c}.safetensors", shared, probe, c)
            print(f"{c}: {scores[c]}", flush=True)
    write_report(args.out, args, info, speed, curves, scores, walls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
