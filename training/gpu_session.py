"""One GPU session in one command (training/gpu_session.sh runs this; docs/gpu.md).

    python training/gpu_session.py run --out OUT [--minutes 9] [--recipes GLOB ...] [-- extra training flags]
    python training/gpu_session.py prepare      # here, before a device call: park stage weights, pack data, wheels
    python training/gpu_session.py unpark       # after it: the parked weights back

``run``, within ``--minutes`` of wall time in all:

1. the CUDA check (training/cuda_check.py, in a subprocess with its own time limit): ``cuda_check.json`` and
   ``cuda_check.md`` in OUT;
2. every recipe (default ``training/*.yaml``, the shipped models) trained at once on the one device by
   ``training/train_shipped.sh``: recipes are rewritten into a work folder with the dataset root resolved
   (``../shared/...`` -> ``--shared``, ``$NAPARI_VDIR_SHARED``, ``./shared``, ``./.data/shared`` or ``../shared``,
   the first that is given or exists), GPU-size patches and batches, a wall-clock time budget that leaves time to
   collect, and — with ``--mode continue``, the default — ``init: models/<name>.safetensors`` where that file
   exists with the recipe's task and architecture (a recipe whose network differs, e.g. a new trunk, is trained
   as written). The runs are interrupted at a deadline whatever happens;
3. OUT gets ``summary.md`` (per model: how it started, steps, val PSNR at the start and the end, the CUDA check's
   outcome), ``logs.tgz`` (each run's log and log.csv) and ``weights-N.tar`` (the weights, at most 15 MiB per
   file: the device tool returns at most 8 files of 16 MiB).
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))
DATA_KEYS = ("train", "val", "val_degraded", "degraded")
PART_BYTES = 15 * 2**20  # weights per returned file
PACK_SECONDS = 25  # tar, summary and the device tool's copy, after the runs end
TRAVEL_LIMIT = 64 * 2**20  # what the device tool sends: tracked + untracked files, shared/ and carried paths
WHEELS = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions", "platformdirs")


def log(msg: str) -> None:
    print(f"[gpu_session {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- recipes

def shared_root(given: str | None) -> Path | None:
    """The folder holding ``datasets/``: the first given (``--shared``, ``$NAPARI_VDIR_SHARED``) or else the
    first of ./shared, ./.data/shared, ../shared that holds ``datasets/``."""
    for explicit in (given, os.environ.get("NAPARI_VDIR_SHARED")):
        if explicit:
            return Path(explicit).resolve()
    for path in (REPO / "shared", REPO / ".data" / "shared", REPO.parent / "shared"):
        if (path / "datasets").is_dir():
            return path.resolve()
    return None


def rewrite_path(value: str, root: Path | None) -> str:
    """``../shared/X`` -> ``ROOT/X``; any other path stays (the runs start in the repository root)."""
    if root is not None and value.replace("\\", "/").startswith("../shared/"):
        return str(root / value[len("../shared/"):])
    return value


def path_exists(value: str) -> bool:
    return bool(glob.glob(value)) if glob.has_magic(value) else Path(value).exists()


def recipe_files(patterns: list[str]) -> list[Path]:
    found = []
    for pattern in patterns:
        for item in pattern.split():
            hits = sorted(glob.glob(item, root_dir=REPO)) if not Path(item).is_absolute() else sorted(glob.glob(item))
            found += [REPO / h if not Path(h).is_absolute() else Path(h) for h in hits if h.endswith(".yaml")]
    return list(dict.fromkeys(found))


def same_network(values: dict, info) -> str | None:
    """None when the shipped model ``info`` has the recipe's task, channels, scale and arch; else the difference."""
    from napari_vdir.core.nets import ArchConfig

    task, channels, scale = values.get("task"), values.get("channels", 3), values.get("scale") or 1
    if (info.task, info.channels, info.scale) != (task, channels, scale):
        return (f"the shipped model is {info.task} {info.channels}ch x{info.scale}, "
                f"the recipe {task} {channels}ch x{scale}")
    default = ArchConfig()
    arch = values.get("arch") or {}
    for key in ("width", "rir_blocks", "res_blocks", "encoder_width", "trunk"):
        want, have = arch.get(key, getattr(default, key)), getattr(info.arch, key)
        if want != have:
            return f"the recipe's {key} is {want}, the shipped model's {have}"
    return None


def prepare_recipe(src: Path, dest_dir: Path, args, root: Path | None) -> dict:
    """Write the GPU version of one recipe; returns what the summary says of it (``skip`` when it cannot run)."""
    from napari_vdir.core.weights import WeightsError, read_info

    values = yaml.safe_load(src.read_text()) or {}
    stem = src.stem
    entry = {"recipe": str(src.relative_to(REPO)) if src.is_relative_to(REPO) else str(src), "name": stem}
    data = dict(values.get("data") or {})
    missing = []
    for key in DATA_KEYS:
        v = data.get(key)
        if v is None:
            continue
        items = [rewrite_path(x, root) for x in (v if isinstance(v, list) else [v])]
        missing += [x for x in items if not path_exists(x)]
        data[key] = items if isinstance(v, list) else items[0]
    values["data"] = data
    if missing:
        entry["skip"] = "missing data: " + ", ".join(missing)
        return entry
    shipped = REPO / "models" / f"{values.get('name', stem)}.safetensors"
    start = "the recipe as written" + (f" (init {values['init']})" if values.get("init") else
                                       f" (init_network {values['init_network']})" if values.get("init_network")
                                       else " (from scratch)")
    if args.mode == "continue":
        if not shipped.is_file():
            start += "; no shipped weights of that name"
        else:
            try:
                why = same_network(values, read_info(shipped))
            except WeightsError as err:
                why = f"the shipped weights do not load ({err})"
            if why is None:
                values.pop("init_network", None)
                values["init"] = str(shipped)
                values["lr"] = min(float(values.get("lr", 1e-3)), args.continue_lr)
                values["warmup_steps"] = max(int(values.get("warmup_steps", 0)), 100)
                start = f"continued from models/{shipped.name}"
            else:
                start += f"; not continued: {why}"
    init = str(values.get("init") or "")
    if init.endswith(".safetensors") and not (REPO / init).is_file() and not Path(init).is_file():
        entry["skip"] = f"missing start weights {init} (parked by prepare? --mode continue starts from models/)"
        return entry
    sr = values.get("task") == "sr"
    values["patch"] = args.sr_patch if sr else args.patch
    values["batch"] = args.sr_batch if sr else args.batch
    values["budget_clock"] = "wall"  # the CPU recipes count CPU time; on a GPU the wall clock is the budget
    values["steps"] = max(int(values.get("steps", 1)), 10_000_000)  # the time budget ends each run
    entry.update(start=start, lr=values.get("lr"), patch=values["patch"], batch=values["batch"])
    (dest_dir / f"{stem}.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    return entry


# ----------------------------------------------------------------------------- results

def read_log(path: Path) -> dict:
    """Steps, training seconds and the first and last validation PSNR of a run's log.csv."""
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    val = [r for r in rows if r.get("val_psnr") not in (None, "")]
    out = {"steps": int(float(rows[-1]["step"])), "seconds": float(rows[-1].get("seconds") or 0)}
    if val:
        out["psnr_start"], out["psnr_end"] = float(val[0]["val_psnr"]), float(val[-1]["val_psnr"])
        out["psnr_end_step"] = int(float(val[-1]["step"]))
    return out


def run_outcome(path: Path) -> str:
    if not path.is_file():
        return "no log"
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    if not lines:
        return "no output"
    for ln in reversed(lines):
        if ln.startswith("wrote "):
            return "finished"
        if ln.startswith("error") or "Error" in ln or "interrupted at step" in ln:
            return ln[:160]
    return lines[-1][:160]


def pack_weights(files: list[Path], out: Path, max_parts: int) -> list[str]:
    """Tar the weights into at most ``max_parts`` files of at most PART_BYTES each; returns the notes."""
    parts: list[list[Path]] = []
    notes = []
    for f in sorted(files, key=lambda p: p.stat().st_size, reverse=True):
        size = f.stat().st_size
        for part in parts:
            if sum(p.stat().st_size for p in part) + size <= PART_BYTES:
                part.append(f)
                break
        else:
            if len(parts) < max_parts and size <= PART_BYTES:
                parts.append([f])
            else:
                notes.append(f"{f.name} not returned (the device tool's file limits)")
    for i, part in enumerate(parts, 1):
        with tarfile.open(out / f"weights-{i}.tar", "w") as tar:
            for f in sorted(part):
                tar.add(f, arcname=f.name)
        notes.append(f"weights-{i}.tar: " + ", ".join(sorted(p.name for p in part)))
    return notes


def summary(out: Path, entries: list[dict], runs: Path, check: dict, info: dict, notes: list[str]) -> str:
    lines = ["# GPU session", "",
             f"- device: {info['device']}; {info['when']}; whole session {info['minutes']:g} min "
             f"(took {info['took']:.0f} s)",
             f"- CUDA check: **{check.get('outcome', 'not run')}**"
             + (" (cuda_check.md, cuda_check.json)" if check else ""),
             f"- training: {info['train']}", ""]
    if entries:
        lines += ["| model | start | patch × batch | steps | train s | val PSNR start → end (dB) | Δ | run |",
                  "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        if "skip" in e:
            lines.append(f"| {e['name']} | skipped: {e['skip']} | | | | | | |")
            continue
        r = read_log(runs / e["name"] / "log.csv")
        psnr = delta = "—"
        if "psnr_start" in r:
            psnr = f"{r['psnr_start']:.3f} → {r['psnr_end']:.3f} (step {r['psnr_end_step']})"
            delta = f"{r['psnr_end'] - r['psnr_start']:+.3f}"
        lines.append(f"| {e['name']} | {e['start']} | {e['patch']}² × {e['batch']} | {r.get('steps', 0)} | "
                     f"{r.get('seconds', 0):.0f} | {psnr} | {delta} | {run_outcome(runs / (e['name'] + '.log'))} |")
    lines += ["", "Val PSNR: the recipe's validation set and degradation (seeded), as in its log.csv; the start is "
              "the starting weights (for a continued model, the shipped one).", ""]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- run

def run(args, extra: list[str]) -> int:
    t0 = time.monotonic()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    end = t0 + 60 * args.minutes
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="napari-vdir-gpu-"))
    recipes_dir, runs, collected = work / "recipes", work / "runs", work / "collected"
    for d in (recipes_dir, runs, collected):
        d.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("XDG_CACHE_HOME", str(work / "cache"))
    import torch

    cuda = torch.cuda.is_available()
    device = args.device if args.device != "auto" else ("cuda" if cuda else "cpu")
    info = {"device": f"CUDA: {torch.cuda.get_device_name(0)}" if cuda else "no CUDA device (CPU)",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "minutes": args.minutes}
    notes = [f"work folder (checkpoints, not returned): {work}"]
    log(f"{info['device']}; {args.minutes:g} min in all; OUT {out}")

    # 1. the CUDA check
    check = {}
    if not args.no_check:
        limit = max(10.0, min(args.check_seconds, end - time.monotonic() - 60))
        cmd = [py, str(REPO / "training" / "cuda_check.py"), "--out", str(out), "--size", str(args.check_size)]
        try:
            subprocess.run(cmd, cwd=REPO, env=env, timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            log(f"the CUDA check ran past {limit:.0f} s and was stopped")
        try:
            import json

            check = json.loads((out / "cuda_check.json").read_text())
        except (OSError, ValueError):
            check = {"outcome": f"did not finish (limit {limit:.0f} s)"}
            (out / "cuda_check.md").write_text(f"# CUDA check: {check['outcome']}\n")
        log(f"CUDA check: {check.get('outcome')}")

    # 2. the runs
    root = shared_root(args.shared)
    entries = []
    names = set()
    for src in recipe_files(args.recipes or [os.environ.get("RECIPES", "training/*.yaml")]):
        if src.stem in names:
            entries.append({"name": src.stem, "skip": f"{src}: a recipe of that name is already in this session"})
            continue
        names.add(src.stem)
        try:
            entries.append(prepare_recipe(src, recipes_dir, args, root))
        except Exception as err:  # noqa: BLE001 - one bad recipe never stops the others
            entries.append({"name": src.stem, "skip": f"{type(err).__name__}: {err}"})
    ready = [e for e in entries if "skip" not in e]
    remaining = end - time.monotonic()
    deadline = remaining - PACK_SECONDS - args.kill_grace
    budget = (args.train_minutes if args.train_minutes is not None else (deadline - args.overhead) / 60)
    info["train"] = "none"
    if args.no_train or not ready:
        info["train"] = "not run" + ("" if ready else " (no recipe could run)")
    elif budget <= 0 or deadline <= 0:
        info["train"] = f"not run: {remaining:.0f} s left is too little"
    else:
        threads = args.threads or max(1, (os.cpu_count() or 1) // len(ready))
        flags = ["--device", device, "--precision", args.precision, "--budget-clock", "wall",
                 "--threads", str(threads), *extra]
        info["train"] = (f"{len(ready)} run(s) at once on {device}, {budget:.2f} min of training steps each "
                         f"(wall clock), precision {args.precision}, {threads} CPU thread(s) each; flags "
                         f"{' '.join(flags)}; root of the datasets {root}")
        log(f"training: {info['train']}")
        tenv = dict(env, RECIPES=" ".join(str(recipes_dir / f"{e['name']}.yaml") for e in ready),
                    RUNS_DIR=str(runs), DEADLINE=str(int(deadline)), KILL_GRACE=str(int(args.kill_grace)),
                    PYTHON=py)
        proc = subprocess.Popen(["bash", str(REPO / "training" / "train_shipped.sh"), str(collected),
                                 f"{budget:.4f}", *flags], cwd=REPO, env=tenv, start_new_session=True)
        try:
            proc.wait(timeout=deadline + args.kill_grace + 10)
        except subprocess.TimeoutExpired:  # train_shipped.sh itself hung: end its whole group, collect here
            log("train_shipped.sh did not end at its deadline: killing its process group")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            notes.append("train_shipped.sh was killed at the deadline; weights and logs collected from the runs")
        for f in runs.glob("*/*.safetensors"):  # what train_shipped.sh collected, and anything written since
            if not (collected / f.name).exists() or f.stat().st_mtime > (collected / f.name).stat().st_mtime:
                shutil.copy2(f, collected / f.name)

    # 3. what comes back
    with tarfile.open(out / "logs.tgz", "w:gz") as tar:
        for f in sorted([*runs.glob("*.log"), *runs.glob("*/log.csv"), *recipes_dir.glob("*.yaml")]):
            tar.add(f, arcname=str(f.relative_to(work)))
    fixed = ["summary.md", "cuda_check.json", "cuda_check.md", "logs.tgz"]
    notes += pack_weights(sorted(collected.glob("*.safetensors")), out, 8 - len(fixed))
    notes.append("logs.tgz: runs/<name>.log, runs/<name>/log.csv and the recipes as run (recipes/<name>.yaml)")
    info["took"] = time.monotonic() - t0
    (out / "summary.md").write_text(summary(out, entries, runs, check, info, notes))
    log(f"done in {info['took']:.0f} s: {', '.join(sorted(p.name for p in out.iterdir()))}")
    print((out / "summary.md").read_text(), flush=True)
    return 0


# ----------------------------------------------------------------------------- prepare

def tree_bytes() -> int:
    """What the device tool sends of this checkout: tracked and untracked-not-ignored files (and shared/)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.split(b"\0")
    total = sum((REPO / os.fsdecode(p)).stat().st_size for p in listed if p and (REPO / os.fsdecode(p)).is_file())
    shared = REPO / "shared"
    if shared.is_dir():
        total += sum(f.stat().st_size for f in shared.rglob("*") if f.is_file())
    return total


PARKED = REPO / ".parked"  # git-ignored: tracked weights a GPU session never reads, kept out of what travels
PACK_MARGIN = 2**20  # bytes kept free under TRAVEL_LIMIT


def parkable() -> list[Path]:
    """Tracked weights files a GPU session never reads: every ``*.safetensors`` outside ``models/`` (earlier
    training stages, probes; ~85 MiB, more than the device tool's whole limit)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--", "*.safetensors"], cwd=REPO, capture_output=True,
                            check=True).stdout.split(b"\0")
    paths = [REPO / os.fsdecode(p) for p in listed if p]
    return [p for p in paths if not p.relative_to(REPO).parts[0] == "models" and p.is_file()]


def _skip_worktree(paths: list[Path], on: bool) -> None:
    """Mark tracked ``paths`` so that git ignores their absence (a ``git add -A`` or ``commit -a`` while they are
    parked must not record them as deleted), or clear the mark."""
    if paths:
        flag = "--skip-worktree" if on else "--no-skip-worktree"
        subprocess.run(["git", "update-index", flag, "--", *[str(p.relative_to(REPO)) for p in paths]], cwd=REPO,
                       check=True, capture_output=True)


def park() -> int:
    """Move :func:`parkable` files into .parked/ (same relative paths), marked skip-worktree for git meanwhile;
    returns the bytes moved. ``unpark`` puts them back."""
    moved, paths = 0, parkable()
    _skip_worktree(paths, True)
    for path in paths:
        target = PARKED / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        moved += path.stat().st_size
        os.replace(path, target)
    return moved


def unpark() -> int:
    """Move every file under .parked/ back to its place in the checkout; returns how many."""
    count = 0
    for path in sorted(PARKED.rglob("*")) if PARKED.is_dir() else []:
        if path.is_file():
            target = REPO / path.relative_to(PARKED)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            _skip_worktree([target], False)
            count += 1
    if PARKED.is_dir():
        shutil.rmtree(PARKED)
    return count


def recipe_data(patterns: list[str]) -> tuple[dict[str, str], set[str]]:
    """The datasets the recipes read, ``{name: "train" | "val"}`` ("val" where a whole folder validates), and the
    files they name one by one (``DATASET/FILE``, e.g. held-out validation images)."""
    roles, files = {}, set()
    for src in recipe_files(patterns):
        data = (yaml.safe_load(src.read_text()) or {}).get("data") or {}
        for key in DATA_KEYS:
            v = data.get(key)
            for item in (v if isinstance(v, list) else [v] if v else []):
                item = item.replace("\\", "/")
                if not item.startswith("../shared/datasets/"):
                    continue
                parts = item[len("../shared/datasets/"):].split("/")
                if len(parts) > 1 and parts[1]:
                    files.add("/".join(parts[:2]))
                    roles.setdefault(parts[0], "train")
                elif key.startswith("val"):
                    roles[parts[0]] = "val"
                else:
                    roles.setdefault(parts[0], "train")
    return roles, files


def pack_datasets(roles: dict[str, str], files: set[str], source: Path, dest: Path, budget: int) -> dict:
    """Copy the recipes' datasets from ``source`` into ``dest`` within ``budget`` bytes.

    Validation folders and the files recipes name one by one always come whole (BMP stored as PNG, the same
    pixels in half the bytes); of each training folder the same share of its images, every k-th by name, the
    largest share that fits (all of them when they fit). Returns ``{"share": s, "bytes": n, "datasets": {...}}``.
    """
    from PIL import Image

    from napari_vdir.core.io import list_images

    shutil.rmtree(dest, ignore_errors=True)
    (dest / "datasets").mkdir(parents=True)
    written, kept = 0, {}

    def copy(path: Path, name: str) -> int:
        target = dest / "datasets" / name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".bmp":  # lossless and ~2x smaller; loaders read a folder's images by content
            target = target.with_suffix(".png")
            Image.open(path).save(target, optimize=True)
        else:
            shutil.copy2(path, target)
        return target.stat().st_size

    present = {n: list_images(source / "datasets" / n) for n in roles if (source / "datasets" / n).is_dir()}
    fixed = {n: [p for p in ps if roles[n] == "val" or f"{n}/{p.name}" in files] for n, ps in present.items()}
    for name, paths in fixed.items():
        written += sum(copy(p, name) for p in paths)
        kept[name] = len(paths)
    pool = {n: [p for p in ps if p not in fixed[n]] for n, ps in present.items() if roles[n] == "train"}
    room = budget - written

    def chosen(step):
        return {n: ps[::step] for n, ps in pool.items()}

    for step in range(1, 101):
        if sum(p.stat().st_size for ps in chosen(step).values() for p in ps) <= room:
            break
    share = 1 / step
    for name, paths in chosen(step).items():
        written += sum(copy(p, name) for p in paths)
        kept[name] = kept.get(name, 0) + len(paths)
    info = {"share": share, "bytes": written,
            "datasets": {n: f"{kept.get(n, 0)} of {len(present[n])}" for n in present}}
    lines = ["# Datasets packed for a GPU session (training/gpu_session.py prepare)", "",
             f"Training folders: every {step}. image by name (share {share:.2f}) to fit the "
             "device tool's limit; validation folders and files the recipes name: all (BMP as PNG).", ""]
    lines += [f"- {n}: {v} images" for n, v in info["datasets"].items()]
    (dest / "datasets" / "PACK.md").write_text("\n".join(lines) + "\n")
    return info


def prepare(args) -> int:
    """Stage, in this checkout, what a lent GPU machine lacks and make it fit the device tool's limit: park the
    tracked weights it never reads (.parked/; ``unpark`` restores them), wheels of the packages its Python has not
    got (.whl), then the recipes' datasets packed into what is left (.data/shared/datasets); print what travels
    and the device call."""
    from importlib import metadata

    dest = REPO / ".data" / "shared"
    source = shared_root(args.shared)
    if source is None or source == dest.resolve():  # never pack the pack (a session's ./.data/shared) into itself
        source = next((p for p in (REPO / "shared", REPO.parent / "shared") if (p / "datasets").is_dir()),
                      REPO.parent / "shared")
    if not args.no_park:
        moved = park()
        if moved:
            log(f"parked {moved / 2**20:.1f} MiB of tracked weights the session does not read in .parked/ "
                "(put back: python training/gpu_session.py unpark)")
    wheels = REPO / ".whl"
    if not args.no_wheels:
        wheels.mkdir(exist_ok=True)
        pins = []
        for dist in WHEELS:
            try:
                pins.append(f"{dist.replace('_', '-')}=={metadata.version(dist.replace('_', '-'))}")
            except metadata.PackageNotFoundError:
                log(f"{dist} is not installed here: not staged")
        have = {p.name.split("-")[0].lower() for p in wheels.glob("*.whl")}
        todo = [p for p in pins if p.split("==")[0].replace("-", "_").lower() not in have]
        if todo:
            platforms = [x for n in ("2_28", "2_27", "2_17", "2014", "1") for x in
                         ("--platform", f"manylinux{'_' if '_' in n else ''}{n}_x86_64")]
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                   "3.12", "--implementation", "cp", *platforms, "-d", str(wheels), *todo]
            if subprocess.run(cmd, check=False).returncode:
                log("pip download failed: the machine then needs these packages already: " + " ".join(todo))
        log("wheels: " + ", ".join(sorted(p.name for p in wheels.glob("*.whl"))))
    whl = sum(f.stat().st_size for f in wheels.rglob("*") if f.is_file()) if wheels.is_dir() else 0
    tree = tree_bytes()
    roles, files = recipe_data(args.recipes or [os.environ.get("RECIPES", "training/*.yaml")])
    for name in sorted(roles):
        if not (source / "datasets" / name).is_dir():
            log(f"{source / 'datasets' / name} is missing: the recipes that need it will be skipped")
    budget = args.data_mib * 2**20 if args.data_mib else TRAVEL_LIMIT - PACK_MARGIN - tree - whl
    packed = pack_datasets(roles, files, source, dest, budget)
    log(f"datasets ({packed['bytes'] / 2**20:.1f} MiB in .data/shared/datasets, training share "
        f"{packed['share']:.2f}): " + "; ".join(f"{n} {v}" for n, v in packed["datasets"].items()))
    carried = whl + packed["bytes"] + (dest / "datasets" / "PACK.md").stat().st_size
    total = tree + carried
    log(f"travels: checkout {tree / 2**20:.1f} MiB + carried .data and .whl {carried / 2**20:.1f} MiB = "
        f"{total / 2**20:.1f} MiB (the device tool's limit: {TRAVEL_LIMIT / 2**20:.0f} MiB)")
    if total > TRAVEL_LIMIT:
        log("OVER THE LIMIT: the device tool will refuse this call; shrink what the checkout tracks or carries")
    log("device call: command 'bash training/gpu_session.sh 9', carry ['.data', '.whl'], timeout_s 600; "
        "afterwards: python training/gpu_session.py unpark")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="the CUDA check, then every recipe trained at once; results in --out")
    r.add_argument("--out", default=os.environ.get("OUT"), help="results folder (default: $OUT)")
    r.add_argument("--minutes", type=float, default=9.0, help="wall time of the whole session (default 9)")
    r.add_argument("--mode", choices=["continue", "retrain"], default="continue",
                   help="continue each model from models/<name>.safetensors where its network matches the "
                        "recipe's (default), or train every recipe as written")
    r.add_argument("--continue-lr", type=float, default=1e-4,
                   help="peak learning rate of a continued model, at most the recipe's (default 1e-4)")
    r.add_argument("--train-minutes", type=float,
                   help="training time per run (default: what the session's minutes leave)")
    r.add_argument("--overhead", type=float, default=75.0,
                   help="seconds kept for start-up and validations beyond the runs' training time (default 75)")
    r.add_argument("--kill-grace", type=float, default=20.0)
    r.add_argument("--device", default="auto", help="training device (default: cuda when there is one)")
    r.add_argument("--precision", default="bfloat16", choices=["auto", "float32", "bfloat16", "float16"])
    r.add_argument("--patch", type=int, default=128, help="patch of denoise / real-denoise / jpeg runs")
    r.add_argument("--batch", type=int, default=32, help="batch of denoise / real-denoise / jpeg runs")
    r.add_argument("--sr-patch", type=int, default=64, help="low-resolution patch of SR runs")
    r.add_argument("--sr-batch", type=int, default=32, help="batch of SR runs")
    r.add_argument("--threads", type=int, help="CPU threads per run (default: the cores shared out)")
    r.add_argument("--check-size", type=int, default=128, help="CUDA check test image side")
    r.add_argument("--check-seconds", type=float, default=120.0, help="time limit of the CUDA check")
    r.add_argument("--no-check", action="store_true")
    r.add_argument("--no-train", action="store_true")
    r.add_argument("--work", help="work folder for the runs (default: a new temporary folder)")
    for q in (r, sub.add_parser("prepare", help="stage datasets and wheels here for a lent GPU")):
        q.add_argument("--recipes", nargs="+", help="recipe globs (default: $RECIPES or training/*.yaml)")
        q.add_argument("--shared", help="folder holding datasets/ (default: $NAPARI_VDIR_SHARED, ./shared, "
                                        "./.data/shared, ../shared)")
    sub.choices["prepare"].add_argument("--no-wheels", action="store_true")
    sub.choices["prepare"].add_argument("--no-park", action="store_true",
                                        help="leave the tracked weights outside models/ in place")
    sub.choices["prepare"].add_argument("--data-mib", type=float,
                                        help="datasets budget in MiB (default: what the limit leaves)")
    sub.add_parser("unpark", help="put the weights prepare parked back into the checkout")
    args = p.parse_args(argv)
    if args.command == "prepare":
        return prepare(args)
    if args.command == "unpark":
        log(f"put back {unpark()} files")
        return 0
    if not args.out:
        p.error("run needs --out (or $OUT)")
    return run(args, extra)


if __name__ == "__main__":
    sys.exit(main())
