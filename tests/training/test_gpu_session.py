"""training/gpu_session.sh, the one command a lent GPU runs (docs/gpu.md), rehearsed on the CPU: the CUDA check
(no CUDA device here: the CPU side), two real recipes trained for seconds from the shipped weights, and what
comes back in $OUT. No GPU needed; tiny synthetic datasets stand in for ../shared."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from napari_vdir.core.models import shipped_models
from napari_vdir.core.weights import read_info

REPO = Path(__file__).resolve().parents[2]
SMOKE_RECIPES = ("training/denoise-gray.yaml", "training/jpeg-gray.yaml")


def _session_module():
    spec = importlib.util.spec_from_file_location("gpu_session", REPO / "training" / "gpu_session.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(folder: Path, count: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:72, 0:80]
    for i in range(count):
        base = 127 + 80 * np.sin(x / (5 + i)) * np.cos(y / 7)
        rgb = np.stack([base, np.roll(base, 3, 0), np.roll(base, 5, 1)], -1) + rng.normal(0, 8, (72, 80, 3))
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")


def _tiny_shared(root: Path, recipes) -> Path:
    """A stand-in for ../shared: three small images in every dataset folder the recipes name."""
    for k, recipe in enumerate(recipes):
        data = yaml.safe_load((REPO / recipe).read_text())["data"]
        for key in ("train", "val", "val_degraded", "degraded"):
            v = data.get(key)
            for item in (v if isinstance(v, list) else [v] if v else []):
                assert item.startswith("../shared/"), item
                _images(root / item[len("../shared/"):], 3, k)
    return root


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def test_gpu_session_end_to_end_on_cpu(tmp_path):
    """The command as a lent GPU runs it, with a tiny budget on the CPU; fails if any part is broken."""
    shared = _tiny_shared(tmp_path / "shared", SMOKE_RECIPES)
    out = tmp_path / "out"
    cmd = ["bash", str(REPO / "training" / "gpu_session.sh"), "4", "--recipes", " ".join(SMOKE_RECIPES),
           "--train-minutes", "0.02", "--device", "cpu", "--precision", "float32", "--patch", "32", "--batch", "2",
           "--check-size", "32", "--threads", "1", "--work", str(tmp_path / "work")]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(OUT=str(out), NAPARI_VDIR_SHARED=str(shared)),
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert time.monotonic() - t0 < 4 * 60, "the session ran past its own minutes"

    # what the device tool returns: at most 8 plain files, named in letters, digits, '.', '_' and '-'
    files = sorted(p.name for p in out.iterdir())
    assert all((out / f).is_file() and re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    assert len(files) <= 8 and {"summary.md", "cuda_check.json", "cuda_check.md", "logs.tgz"} <= set(files), files
    assert all((out / f).stat().st_size <= 16 * 2**20 for f in files)

    # the CUDA check: every shipped model; without CUDA it says so and the CPU side still ran
    report = json.loads((out / "cuda_check.json").read_text())
    assert [m["model"] for m in report["models"]] == list(shipped_models())
    assert report["ok"] is True, (out / "cuda_check.md").read_text()
    assert all(m["cpu_ok"] for m in report["models"])
    if torch.cuda.is_available():
        assert report["outcome"] == "PASS"
    else:
        assert report["cuda_available"] is False and report["outcome"] == "no CUDA device; CPU side ok"
        worker = report["models"][0]["checks"]["worker"]
        assert worker["ok"] and worker["device"] == "CPU" and worker["dtype"] == "uint8"
    assert report["outcome"] in (out / "cuda_check.md").read_text()

    # the weights: one per recipe, continued from the shipped weights, a few steps further
    names = [Path(r).stem for r in SMOKE_RECIPES]
    got = {}
    for part in (p for p in out.iterdir() if p.name.startswith("weights-")):
        with tarfile.open(part) as tar:
            for member in tar.getmembers():
                target = tmp_path / "weights" / member.name
                target.parent.mkdir(exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
                got[Path(member.name).stem] = target
    assert sorted(got) == sorted(names)
    for name in names:
        info, shipped = read_info(got[name]), read_info(shipped_models()[name])
        assert info.arch == shipped.arch and info.trained_steps > shipped.trained_steps

    # the logs, and the summary read from them
    with tarfile.open(out / "logs.tgz") as tar:
        members = set(tar.getnames())
        rows = {n: list(csv.DictReader(io.TextIOWrapper(tar.extractfile(f"runs/{n}/log.csv"))))
                for n in names}
    assert {f"runs/{n}.log" for n in names} <= members and {f"recipes/{n}.yaml" for n in names} <= members
    summary = (out / "summary.md").read_text()
    assert f"CUDA check: **{report['outcome']}**" in summary
    for name in names:
        steps = int(rows[name][-1]["step"])
        assert steps > 0 and rows[name][-1]["val_psnr"]
        line = next(ln for ln in summary.splitlines() if ln.startswith(f"| {name} |"))
        assert f"| {steps} |" in line and "finished" in line and "→" in line, line
        assert "continued from models/" in line or "as written" in line, line


def test_cuda_check_rehearsed_on_the_cpu(tmp_path):
    """The comparisons that run on a GPU, with the CPU standing in for it (no GPU here to run them)."""
    done = subprocess.run([sys.executable, str(REPO / "training" / "cuda_check.py"), "--out", str(tmp_path),
                           "--size", "24", "--models", "denoise-rgb", "sr-x2-rgb", "--rehearse"],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "cuda_check.json").read_text())
    assert report["outcome"].startswith("PASS"), (tmp_path / "cuda_check.md").read_text()
    for model in report["models"]:
        assert set(model["checks"]) == {"float32", "float32-tf32", "auto", "worker"}
        assert model["checks"]["float32"]["max_abs"] <= 1e-3
        assert model["checks"]["worker"]["shape"][:2] == [24 * model["scale"]] * 2


def test_recipes_rewritten_for_the_session(tmp_path, monkeypatch):
    """Dataset root from NAPARI_VDIR_SHARED; continue from the shipped weights only where the network is the
    recipe's (init_network dropped, learning rate capped); GPU sizes and a wall-clock budget; missing data skips."""
    gs = _session_module()
    shared = tmp_path / "shared"
    _images(shared / "datasets" / "A", 1, 0)
    _images(shared / "datasets" / "V", 1, 1)
    monkeypatch.setenv("NAPARI_VDIR_SHARED", str(shared))
    root = gs.shared_root(None)
    assert root == shared.resolve()
    info = read_info(shipped_models()["denoise-rgb"])
    arch = {k: getattr(info.arch, k) for k in ("width", "rir_blocks", "res_blocks", "encoder_width", "trunk")}
    base = dict(name="denoise-rgb", task="denoise", channels=3, arch=arch, steps=100, lr=1e-3,
                budget_clock="cpu", init_network="jpeg-rgb",
                data={"train": ["../shared/datasets/A"], "val": "../shared/datasets/V"})
    args = gs.argparse.Namespace(mode="continue", continue_lr=1e-4, patch=96, batch=24, sr_patch=48, sr_batch=16)
    src = tmp_path / "src"
    src.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()

    (src / "denoise-rgb.yaml").write_text(yaml.safe_dump(base))
    entry = gs.prepare_recipe(src / "denoise-rgb.yaml", dest, args, root)
    written = yaml.safe_load((dest / "denoise-rgb.yaml").read_text())
    assert entry["start"] == "continued from models/denoise-rgb.safetensors"
    assert written["init"] == str(REPO / "models" / "denoise-rgb.safetensors") and "init_network" not in written
    assert written["data"] == {"train": [str(root / "datasets" / "A")], "val": str(root / "datasets" / "V")}
    assert (written["patch"], written["batch"], written["lr"], written["budget_clock"]) == (96, 24, 1e-4, "wall")
    assert written["steps"] >= 10_000_000 and written["warmup_steps"] >= 100

    other = dict(base, arch=dict(arch, width=arch["width"] // 2))  # a new network: trained as the recipe says
    (src / "denoise-rgb.yaml").write_text(yaml.safe_dump(other))
    entry = gs.prepare_recipe(src / "denoise-rgb.yaml", dest, args, root)
    written = yaml.safe_load((dest / "denoise-rgb.yaml").read_text())
    assert "as written" in entry["start"] and "width" in entry["start"]
    assert written["init_network"] == "jpeg-rgb" and "init" not in written and written["lr"] == 1e-3

    retrain = gs.argparse.Namespace(**{**vars(args), "mode": "retrain"})
    (src / "denoise-rgb.yaml").write_text(yaml.safe_dump(base))
    assert "as written" in gs.prepare_recipe(src / "denoise-rgb.yaml", dest, retrain, root)["start"]

    (src / "denoise-rgb.yaml").write_text(yaml.safe_dump(dict(base, data={"train": ["../shared/datasets/NO"]})))
    assert "missing data" in gs.prepare_recipe(src / "denoise-rgb.yaml", dest, args, root)["skip"]


def test_train_shipped_deadline_ends_the_runs_and_collects(tmp_path):
    """DEADLINE: runs still going are interrupted, then killed, and the logs are collected all the same."""
    fake = tmp_path / "fake-python"
    fake.write_text("#!/usr/bin/env bash\necho started \"$@\"\nexec sleep 60\n")
    fake.chmod(0o755)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\n")
    t0 = time.monotonic()
    done = subprocess.run(["bash", str(REPO / "training" / "train_shipped.sh"), str(tmp_path / "out"), "1"],
                          cwd=REPO, env=_env(PYTHON=str(fake), RECIPES=str(recipe), RUNS_DIR=str(tmp_path / "runs"),
                                             DEADLINE="1", KILL_GRACE="1"),
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < 20, done.stderr
    assert "deadline" in done.stderr
    with tarfile.open(tmp_path / "out" / "logs.tgz") as tar:
        assert tar.getnames() == ["r.log"]
        assert "started -m napari_vdir.training --recipe" in tar.extractfile("r.log").read().decode()


def test_datasets_are_packed_to_fit_what_travels(tmp_path):
    """Validation folders and named files come whole (BMP as the same pixels in PNG); every training folder gives
    the same share of its images, the largest that fits; with room enough, everything."""
    gs = _session_module()
    source = tmp_path / "shared"
    _images(source / "datasets" / "T", 12, 0)
    _images(source / "datasets" / "U", 6, 1)
    val = source / "datasets" / "V"
    val.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(val / f"v{i}.bmp")
    roles = {"T": "train", "U": "train", "V": "val"}
    files = {"U/5.png"}  # a held-out image a recipe names one by one
    size = lambda folder: sum(p.stat().st_size for p in folder.glob("*.png"))  # noqa: E731
    dest = tmp_path / "pack"
    everything = gs.pack_datasets(roles, files, source, dest, budget=10**9)
    assert everything["share"] == 1 and len(list((dest / "datasets" / "T").glob("*.png"))) == 12
    fixed = size(dest / "datasets" / "V") + (dest / "datasets" / "U" / "5.png").stat().st_size
    budget = fixed + (size(source / "datasets" / "T") + size(source / "datasets" / "U")) // 3
    packed = gs.pack_datasets(roles, files, source, dest, budget=budget)
    assert packed["bytes"] <= budget and packed["share"] <= 1 / 3
    step = round(1 / packed["share"])
    assert sorted(p.name for p in (dest / "datasets" / "T").glob("*.png")) == sorted(
        p.name for p in sorted((source / "datasets" / "T").glob("*.png"))[::step])
    assert (dest / "datasets" / "U" / "5.png").is_file()
    pngs = sorted((dest / "datasets" / "V").glob("*"))
    assert [p.name for p in pngs] == ["v0.png", "v1.png"]
    assert np.array_equal(np.asarray(Image.open(pngs[1])), np.asarray(Image.open(val / "v1.bmp")))
    assert "every" in (dest / "datasets" / "PACK.md").read_text()


def test_park_moves_tracked_weights_outside_models_and_unpark_puts_them_back(tmp_path, monkeypatch):
    gs = _session_module()
    repo = tmp_path / "repo"
    for rel, content in {"models/a.safetensors": b"shipped", "training/stages/b.safetensors": b"stage" * 100,
                         "README.md": b"text", ".gitignore": b"/.parked/\n"}.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(content)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=repo, check=True)
    monkeypatch.setattr(gs, "REPO", repo)
    monkeypatch.setattr(gs, "PARKED", repo / ".parked")
    assert [p.relative_to(repo).as_posix() for p in gs.parkable()] == ["training/stages/b.safetensors"]
    assert gs.park() == 500
    assert not (repo / "training/stages/b.safetensors").exists() and (repo / "models/a.safetensors").exists()
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)  # a careless add while parked records no deletion
    staged = subprocess.run(["git", "diff", "--cached", "--name-status"], cwd=repo, capture_output=True, text=True)
    assert staged.stdout.strip() == ""
    assert gs.unpark() == 1
    assert (repo / "training/stages/b.safetensors").read_bytes() == b"stage" * 100 and not (repo / ".parked").exists()
    flags = subprocess.run(["git", "ls-files", "-v"], cwd=repo, capture_output=True, text=True).stdout.split()
    assert "S" not in flags  # the skip-worktree mark is cleared again


def test_a_recipe_whose_start_weights_are_parked_is_skipped(tmp_path, monkeypatch):
    gs = _session_module()
    shared = tmp_path / "shared"
    _images(shared / "datasets" / "A", 1, 0)
    recipe = dict(name="not-shipped", task="denoise", channels=3, steps=10, init="training/stages/gone.safetensors",
                  data={"train": ["../shared/datasets/A"]})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    args = gs.argparse.Namespace(mode="retrain", continue_lr=1e-4, patch=96, batch=24, sr_patch=48, sr_batch=16)
    entry = gs.prepare_recipe(tmp_path / "r.yaml", tmp_path, args, shared)
    assert "missing start weights" in entry["skip"]
