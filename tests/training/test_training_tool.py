"""The training tool: losses, fine-tuning, exact resume, recipes, CLI errors, DDP on CPU."""

from __future__ import annotations

import csv
import errno
import inspect
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from napari_vdir import restore
from napari_vdir.core.models import shipped_models
from napari_vdir.core.weights import load_weights, read_info
from napari_vdir.training import losses
from napari_vdir.training.__main__ import main as training_main
from napari_vdir.training.config import Recipe, load_recipe
from napari_vdir.training.trainer import Trainer

def test_loss_terms():
    mu, logvar = torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    assert losses.kl_divergence(mu, logvar) == 0
    assert losses.kl_divergence(mu + 1, logvar) == pytest.approx(0.5)
    logits = torch.zeros(2, 1, 4, 4)
    assert losses.generator_adversarial(logits) == pytest.approx(math.log(2))
    assert losses.discriminator_loss(logits, logits) == pytest.approx(2 * math.log(2))


@pytest.mark.parametrize("task,scale,degradation", [("denoise", None, "awgn+poisson"), ("sr", 2, "blur"),
                                                    ("jpeg", None, "jpeg"), ("real-denoise", None, "camera")])
def test_every_term_finite_and_loss_falls(image_folder, tmp_path, task, scale, degradation, tiny_recipe):
    torch.manual_seed(0)
    recipe = tiny_recipe(image_folder, task=task, scale=scale, degradation=degradation, steps=40, lr=3e-3,
                         batch=8, data={"train": [str(image_folder)]})
    trainer = Trainer(recipe, tmp_path, device="cpu", precision="float32")
    trainer.load_data()
    rows = [trainer.train_step() for _ in range(40)]
    expected = {"restore", "kl", "decoder", "gan", "disc"} | ({"estimate"} if task != "real-denoise" else set())
    assert expected <= set(rows[0])
    assert all(math.isfinite(v) for r in rows for v in r.values())
    first, last = np.mean([r["restore"] for r in rows[:5]]), np.mean([r["restore"] for r in rows[-5:]])
    assert last < first


def test_init_network_starts_another_task_from_a_models_network(image_folder, tmp_path, tiny_weights, tiny_recipe):
    """A JPEG restorer started from the denoiser's encoder and restorer; its EST head (a quality, not a sigma)
    starts fresh. A network of another shape, or both init keys at once, is refused in one line."""
    source, _ = load_weights(tiny_weights[("denoise", 1, 3)])
    arch = {"width": 8, "rir_blocks": 1, "res_blocks": 1, "encoder_width": 8}
    recipe = tiny_recipe(image_folder, task="jpeg", degradation="jpeg", arch=arch, seed=5,  # not the source's seed
                         init_network=str(tiny_weights[("denoise", 1, 3)]))
    trainer = Trainer(recipe, tmp_path, device="cpu", precision="float32")
    for part in ("encoder", "restorer"):
        theirs = getattr(source, part).state_dict()
        ours = getattr(trainer.model, part).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), part
    assert trainer.model.estimator is not None and trainer.model.cfg.estimate_dims == 1
    with pytest.raises(ValueError, match="width 8 there, 16 here"):
        Trainer(tiny_recipe(image_folder, task="jpeg", degradation="jpeg", arch={**arch, "width": 16},
                            init_network=str(tiny_weights[("denoise", 1, 3)])), tmp_path / "b", device="cpu")
    with pytest.raises(ValueError, match="give one of them"):
        tiny_recipe(image_folder, init="denoise-rgb", init_network="denoise-rgb")


def test_fine_tune_beats_its_start(image_folder, tmp_path, tiny_weights):
    start = tiny_weights[("denoise", 1, 3)]
    out = tmp_path / "run"
    code = training_main(["--task", "denoise", "--data", str(image_folder), "--init", str(start), "--steps", "20",
                          "--patch", "32", "--batch", "8", "--lr", "3e-3", "--out", str(out), "--quiet",
                          "--device", "cpu", "--name", "mine"])
    assert code == 0
    weights = out / "mine.safetensors"
    _, info = load_weights(weights)
    assert info.trained_steps == 20 and info.task == "denoise"
    clean = np.asarray(Image.open(image_folder / "img1.png"), np.float32) / 255
    noisy = clean + np.random.default_rng(0).normal(0, 25 / 255, clean.shape).astype(np.float32)

    def score(model):
        out = np.clip(restore(noisy, "denoise", model=model), 0, 1)
        return -10 * np.log10(np.mean((out - clean) ** 2))

    assert score(weights) > score(start) + 0.5


def test_minimal_cli_form_from_scratch(image_folder, tmp_path):
    code = training_main(["--task", "jpeg", "--data", str(image_folder), "--steps", "2", "--patch", "32",
                          "--batch", "2", "--out", str(tmp_path), "--quiet", "--device", "cpu"])
    assert code == 0
    weights = tmp_path / "jpeg.safetensors"
    image = np.asarray(Image.open(image_folder / "img0.png"))
    assert restore(image, "jpeg", model=weights).shape == image.shape
    assert (tmp_path / "log.csv").read_text().startswith("step,")


@pytest.mark.parametrize("form, adapt, lr, warmup", [
    ([], "all", 1e-3, 0),  # from scratch: the recipe defaults
    (["--init", "denoise-gray"], "all", 1e-4, 100),  # a trained start on pairs: config.FINETUNE_PAIRS
    (["--init", "denoise-gray", "--self-supervised"], "all", 3e-5, 50),  # noisy images alone: Neighbor2Neighbor's
    (["--init", "denoise-gray", "--self-supervised", "pseudo-clean"], "all", 1e-5, 50),  # the method's own
    (["--init", "denoise-gray", "--self-supervised", "--adapt", "biases"], "biases", 1e-3, 50),  # ADAPT_LR
    (["--init", "denoise-gray", "--adapt", "biases"], "biases", 1e-3, 100),
    (["--init", "denoise-gray", "--self-supervised", "--adapt", "all", "--lr", "3e-4", "--warmup-steps", "0"],
     "all", 3e-4, 0),  # given
])
def test_a_fine_tune_gets_a_fine_tunes_learning_rate(image_folder, form, adapt, lr, warmup):
    from napari_vdir.training.__main__ import build_parser, recipe_from_args

    args = build_parser().parse_args(["--task", "denoise", "--channels", "1", "--data", str(image_folder),
                                      "--steps", "10", "--out", "unused", *form])
    recipe = recipe_from_args(args)
    assert (recipe.adapt, recipe.lr, recipe.warmup_steps) == (adapt, lr, warmup)


@pytest.mark.parametrize("form, method, decoder", [
    (["--init", "denoise-gray", "--self-supervised"], "neighbor2neighbor", 1.0),  # config.FINETUNE_METHOD
    (["--self-supervised"], "neighbor2neighbor", 1.0),  # from scratch
    (["--init", "denoise-gray", "--self-supervised", "pseudo-clean"], "pseudo-clean", 0.0),  # its own: no decoder
    (["--init", "denoise-gray", "--self-supervised", "blind-spot"], "blind-spot", 1.0),
])
def test_each_self_supervised_method_gets_its_own_fine_tune_losses(image_folder, form, method, decoder):
    from napari_vdir.training.__main__ import build_parser, recipe_from_args

    args = build_parser().parse_args(["--task", "denoise", "--channels", "1", "--data", str(image_folder),
                                      "--steps", "10", "--out", "unused", *form])
    recipe = recipe_from_args(args)
    assert (recipe.self_supervised, recipe.losses.decoder) == (method, decoder)


@pytest.mark.parametrize("named, flag, method", [
    ("pseudo-clean", [], "pseudo-clean"),
    ("pseudo-clean", ["--self-supervised"], "pseudo-clean"),  # a bare flag keeps the recipe's method
    ("pseudo-clean", ["--self-supervised", "blind-spot"], "blind-spot"),  # a named one replaces it
    (None, ["--self-supervised"], "neighbor2neighbor"),  # none in the recipe: config.FINETUNE_METHOD
])
def test_a_bare_self_supervised_flag_keeps_the_recipes_method(image_folder, tmp_path, named, flag, method):
    from napari_vdir.training.__main__ import build_parser, recipe_from_args

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\ntask: denoise\nchannels: 1\nsteps: 10\ninit: denoise-gray\n"
                      f"data: {{train: [{image_folder}]}}\n"
                      + (f"self_supervised: {named}\n" if named else ""))
    args = build_parser().parse_args(["--recipe", str(recipe), "--out", "unused", *flag])
    assert recipe_from_args(args).self_supervised == method


def test_warmup_steps_flag_ramps_the_learning_rate(image_folder, tmp_path):
    code = training_main(["--task", "denoise", "--data", str(image_folder), "--steps", "4", "--patch", "32",
                          "--batch", "2", "--lr", "1e-3", "--warmup-steps", "4", "--val-every", "1",
                          "--out", str(tmp_path), "--quiet", "--device", "cpu"])
    assert code == 0
    rows = (tmp_path / "log.csv").read_text().splitlines()[2:]  # header and the step-0 row
    lrs = [float(row.split(",")[2]) for row in rows]
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])


def test_resume_is_exact(image_folder, tmp_path, tiny_recipe):
    straight = Trainer(tiny_recipe(image_folder), tmp_path / "a", device="cpu", precision="float32")
    straight.fit()
    # stop after 3 steps (a checkpoint is written), then resume in a fresh trainer
    half = Trainer(tiny_recipe(image_folder), tmp_path / "b", device="cpu", precision="float32")
    half.fit(stop_at=3)
    resumed = Trainer(tiny_recipe(image_folder), tmp_path / "b", device="cpu", precision="float32")
    resumed.load_data()
    resumed.resume(tmp_path / "b" / "checkpoint.pt")
    assert resumed.step == 3
    resumed.fit()
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_cpu_budget_clock_counts_cpu_time_not_wall_time(image_folder, tmp_path, monkeypatch, tiny_recipe):
    """``budget_clock: cpu`` stops and anneals on the process's CPU seconds (equal compute for jobs that share
    cores). A fake CPU clock that advances 10 s per reading makes each step cost 10 CPU seconds while the wall
    time stays tiny: a 1-minute budget must end after 6 steps, with the cosine at its end, on that clock."""
    readings = iter(range(0, 10_000, 10))
    monkeypatch.setattr("time.process_time", lambda: float(next(readings)))
    recipe = tiny_recipe(image_folder, steps=40, val_every=1, time_budget_minutes=1.0, budget_clock="cpu",
                         lr=1e-3, lr_min=0.0)
    trainer = Trainer(recipe, tmp_path, device="cpu", precision="float32")
    trainer.fit()
    assert trainer.step == 6
    with open(tmp_path / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[1:]
    assert [float(r["seconds"]) for r in rows] == [10.0 * (i + 1) for i in range(6)]
    expected = [0.5e-3 * (1 + math.cos(math.pi * 10 * i / 60)) for i in range(6)]  # lr of step i, from its start
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected)
    with pytest.raises(ValueError, match="budget_clock"):
        tiny_recipe(image_folder, budget_clock="gpu")


def test_shipped_recipes_describe_the_shipped_weights():
    """One recipe per shipped model, with the architecture, task and channels of the weights it produced."""
    root = Path(__file__).parents[2] / "training"
    recipes = {path.stem: load_recipe(path) for path in sorted(root.glob("*.yaml"))}
    shipped = shipped_models()
    assert sorted(recipes) == sorted(shipped)
    for name, recipe in recipes.items():
        info = read_info(shipped[name])
        assert recipe.name == name and recipe.steps > 0
        assert (recipe.task, recipe.channels, recipe.scale or 1) == (info.task, info.channels, info.scale)
        assert recipe.arch.model_dump() == {k: getattr(info.arch, k) for k in recipe.arch.model_dump()}, name
        assert info.recipe.get("ranges") in (recipe.ranges, None if recipe.ranges == "degraded-only" else ""), name
        if recipe.init:  # a fine-tune: its starting weights ship beside the recipe, with the same network
            path = Path(__file__).parents[2] / recipe.init
            start = read_info(path if path.is_file() else shipped[recipe.init])
            assert start.arch == info.arch and start.trained_steps < info.trained_steps, name
    for path in sorted((root / "paper").glob("*.yaml")):  # the paper-size GPU recipes stay valid
        assert load_recipe(path).arch.rir_blocks == 5
    stages = sorted((root / "stages").glob("*.yaml")) + sorted((root / "microscopy").glob("*.yaml"))
    assert stages and all(load_recipe(path).steps > 0 for path in stages)  # unshipped stages stay valid too


def test_the_training_curve_report_follows_every_cpu_trained_model(tmp_path):
    """benchmarks/training_curves.py names each CPU-trained shipped model's stage logs, the last one the shipped
    recipe's run; a stage's gain is the mean of its last validations minus its step-0 one (the starting weights)."""
    import importlib.util

    path = Path(__file__).parents[2] / "benchmarks" / "training_curves.py"
    spec = importlib.util.spec_from_file_location("training_curves", path)
    curves = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curves)
    assert set(curves.CHAINS) == {name for name in shipped_models() if not name.endswith("-paper")}
    for model, logs in curves.CHAINS.items():
        recipe = load_recipe(Path(__file__).parents[2] / "training" / f"{model}.yaml")
        assert curves.stage_summary(curves.LOGS / f"{logs[-1]}.csv")["steps"] == recipe.steps, model
    log = tmp_path / "log.csv"
    log.write_text("step,seconds,lr,restore,val_psnr\n0,0,,,20\n10,60,1e-4,0.03,19\n20,120,1e-4,0.03,21\n"
                   "30,180,1e-4,0.03,22\n40,240,1e-4,0.03,23\n")  # a trainer's columns
    summary = curves.stage_summary(log)
    assert summary["start"] == 20 and summary["end"] == pytest.approx(22) and summary["gain"] == pytest.approx(2)
    assert summary["steps"] == 40 and summary["minutes"] == 4 and summary["late"] == pytest.approx(23 - 22)


def test_bad_recipes_are_rejected(tmp_path, image_folder, tiny_recipe):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: x\ntask: denoise\nsteps: 5\ndata: {{train: [{image_folder}]}}\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_recipe(bad)
    with pytest.raises(ValueError, match="multiple of 4"):
        tiny_recipe(image_folder, patch=30)
    with pytest.raises(ValueError, match="does not fit task"):
        tiny_recipe(image_folder, degradation="jpeg")
    with pytest.raises(ValueError, match="scale"):
        tiny_recipe(image_folder, task="sr")
    assert training_main(["--recipe", str(bad), "--out", str(tmp_path)]) == 2


def test_bad_folders_are_reported(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert training_main(["--task", "denoise", "--data", str(empty), "--steps", "1", "--out", str(tmp_path),
                          "--channels", "3"]) == 2
    assert "no usable images" in capsys.readouterr().err
    assert training_main(["--task", "denoise", "--data", str(tmp_path / "missing"), "--steps", "1",
                          "--out", str(tmp_path), "--channels", "3"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_paired_folders(image_folder, tmp_path):
    """Degraded/clean pairs matched by file name; a missing twin is reported by name."""
    noisy_dir = tmp_path / "noisy"
    noisy_dir.mkdir()
    rng = np.random.default_rng(0)
    for path in sorted(image_folder.glob("*.png")):
        clean = np.asarray(Image.open(path), np.float32)
        Image.fromarray(np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)).save(noisy_dir / path.name)
    out = tmp_path / "run"
    assert training_main(["--task", "real-denoise", "--data", str(image_folder), "--degraded", str(noisy_dir),
                          "--steps", "3", "--patch", "32", "--batch", "2", "--out", str(out), "--quiet",
                          "--device", "cpu"]) == 0
    _, info = load_weights(out / "real-denoise.safetensors")
    assert info.trained_steps == 3
    (noisy_dir / "img0.png").unlink()
    assert training_main(["--task", "real-denoise", "--data", str(image_folder), "--degraded", str(noisy_dir),
                          "--steps", "1", "--out", str(tmp_path / "r2"), "--quiet", "--device", "cpu"]) == 2


# ----------------------------------------------------------------------------- issue 13: training faults

def log_steps(path) -> list[int]:
    with open(path, newline="") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


@pytest.fixture(scope="session")
def recipe_file(tiny_vdir):
    """``recipe_file(path, folder, **values)``: a two-step recipe of the tiny network, written as YAML."""

    def write(path, folder, **kw) -> Path:
        values = dict(name="tiny", task="denoise", channels=3, arch=dict(tiny_vdir.ARCH), steps=2, patch=32, batch=2,
                      val_every=1, checkpoint_every=1, data={"train": [str(folder)]})
        values.update(kw)
        path.write_text(yaml.safe_dump(values))
        return path

    return write


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_patch_16_trains_with_the_critic_at_default_precision(image_folder, tmp_path, tiny_recipe):
    """The smallest accepted patch: the default critic halves 16 px to 1 px and its next stride-2 layer's
    gradient turned NaN under bf16 autocast (step 2-4). The critic now stops before that layer."""
    from napari_vdir.core.nets import Discriminator
    from napari_vdir.training.trainer import critic_widths

    full = inspect.signature(Discriminator).parameters["widths"].default
    assert critic_widths(20) == critic_widths(64) == full  # the shipped recipes keep their critic
    assert critic_widths(16) == full[:9]
    recipe = tiny_recipe(image_folder, patch=16, steps=10, batch=4, data={"train": [str(image_folder)]})
    trainer = Trainer(recipe, tmp_path, device="cpu")  # precision "auto": bf16 on CPUs that have it
    trainer.load_data()
    rows = [trainer.train_step() for _ in range(10)]
    assert all(math.isfinite(r["gan"]) and math.isfinite(r["disc"]) for r in rows)


def test_exported_weights_are_atomic_with_ordinary_permissions(image_folder, tmp_path, monkeypatch, tiny_recipe):
    import safetensors.torch

    trainer = Trainer(tiny_recipe(image_folder, losses={"gan": 0.0}), tmp_path, device="cpu", precision="float32")
    old = os.umask(0o022)
    try:
        path = trainer.export()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # safetensors alone writes 0o600
    before = path.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"truncated")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError):
        trainer.export()
    assert path.read_bytes() == before  # the earlier export is untouched
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left


@pytest.mark.parametrize("text, message", [
    ("name: x\ntask: denoise\nsteps: [1, 2\n", "not valid YAML (line "),
    ("name: x\ntask: denoise\nsteps: 5\nlr: .inf\ndata: {train: [DATA]}\n", "lr: Input should be a finite number"),
    ("name: x\ntask: denoise\nsteps: 5\nlosses: {kl: .nan}\ndata: {train: [DATA]}\n", "losses.kl: Input should be"),
    ("name: x\ntask: denoise\nsteps: 5\npatch: 30\ndata: {train: [DATA]}\n", "patch must be a multiple of 4"),
])
def test_bad_recipe_files_one_line(image_folder, tmp_path, capsys, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("DATA", str(image_folder)))
    assert training_main(["--recipe", str(bad), "--out", str(tmp_path / "out"), "--quiet", "--device", "cpu"]) == 2
    assert message in one_error_line(capsys.readouterr().err)


@pytest.fixture(scope="module")
def checkpoint(image_folder, tmp_path_factory, recipe_file):
    """A tiny denoise run's checkpoint (2 steps)."""
    out = tmp_path_factory.mktemp("ckpt")
    recipe = recipe_file(out / "recipe.yaml", image_folder)
    assert training_main(["--recipe", str(recipe), "--out", str(out), "--quiet", "--device", "cpu",
                          "--threads", "1"]) == 0
    return out / "checkpoint.pt"


@pytest.mark.parametrize("kind, message", [
    ("zero-byte", "empty file (0 bytes)"), ("junk", "not a readable training checkpoint"),
    ("truncated", "not a readable training checkpoint"), ("not-a-dict", "not a napari-vdir training checkpoint"),
    ("other-arch", "checkpoint of another run: arch"), ("other-arch-no-recipe", "do not fit this run's network"),
    ("other-task", "checkpoint of another run: task denoise (this run: jpeg)"),
    ("other-channels", "channels 3 (this run: 1)"),
])
def test_bad_checkpoints_one_line(image_folder, tmp_path, capsys, checkpoint, kind, message, tiny_vdir, recipe_file):
    bad = tmp_path / "checkpoint.pt"
    recipe = dict(steps=4)
    if kind == "zero-byte":
        bad.write_bytes(b"")
    elif kind == "junk":
        bad.write_bytes(os.urandom(5000))
    elif kind == "truncated":
        bad.write_bytes(checkpoint.read_bytes()[:20000])
    elif kind == "not-a-dict":
        torch.save([1, 2, 3], bad)
    elif kind.startswith("other-arch"):
        recipe["arch"] = dict(tiny_vdir.ARCH, width=12)
        state = torch.load(checkpoint, weights_only=True)
        if kind == "other-arch-no-recipe":  # an older checkpoint: the tensors themselves do not fit
            del state["recipe"]
        torch.save(state, bad)
    else:
        bad.write_bytes(checkpoint.read_bytes())
        recipe.update(task="jpeg") if kind == "other-task" else recipe.update(channels=1)
    cfg = recipe_file(tmp_path / "recipe.yaml", image_folder, **recipe)
    code = training_main(["--recipe", str(cfg), "--out", str(tmp_path), "--resume", "--quiet", "--device", "cpu"])
    assert code == 2
    assert message in one_error_line(capsys.readouterr().err)


def test_resume_after_a_kill_between_checkpoints(image_folder, tmp_path, tiny_recipe):
    """Killed at step 5 with the checkpoint at step 3: the log held steps 4-5 and the weights step 5; on
    resume both go back to the checkpoint, and the finished run logs every step once."""
    recipe = tiny_recipe(image_folder, steps=6, val_every=1, checkpoint_every=3, losses={"gan": 0.0},
                         data={"train": [str(image_folder)]})
    dying = Trainer(recipe, tmp_path, device="cpu", precision="float32")
    step = dying.train_step

    def killed_after_5():
        if dying.step == 5:
            raise SystemExit("SIGKILL")  # leaves the files as a kill does: no checkpoint at step 5
        return step()
    dying.train_step = killed_after_5
    with pytest.raises(SystemExit):
        dying.fit()
    assert log_steps(tmp_path / "log.csv") == [0, 1, 2, 3, 4, 5]
    assert read_info(tmp_path / "tiny.safetensors").trained_steps == 5
    assert int(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"]) == 3

    resumed = Trainer(recipe, tmp_path, device="cpu", precision="float32")
    resumed.load_data()
    resumed.resume(tmp_path / "checkpoint.pt")
    assert log_steps(tmp_path / "log.csv") == [0, 1, 2, 3]
    assert read_info(tmp_path / "tiny.safetensors").trained_steps == 3
    resumed.fit()
    assert log_steps(tmp_path / "log.csv") == list(range(7))
    assert read_info(tmp_path / "tiny.safetensors").trained_steps == 6


def test_minimal_form_trains_without_the_critic_unless_asked(image_folder, tmp_path, recipe_file):
    common = ["--task", "denoise", "--data", str(image_folder), "--steps", "1", "--patch", "32", "--batch", "2",
              "--quiet", "--device", "cpu", "--threads", "1"]
    assert training_main([*common, "--out", str(tmp_path / "plain")]) == 0
    state = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)
    assert state["discriminator"] is None and state["recipe"]["losses"]["gan"] == 0
    assert state["recipe"]["grad_clip"] == 1.0  # the CPU recipes' settings
    assert (tmp_path / "plain" / "checkpoint.pt").stat().st_size < 10e6  # was 116 MB with the 9.4M critic
    with open(tmp_path / "plain" / "log.csv", newline="") as fh:
        assert all(not row["gan"] and not row["disc"] for row in csv.DictReader(fh))

    assert training_main([*common, "--out", str(tmp_path / "critic"), "--critic"]) == 0
    state = torch.load(tmp_path / "critic" / "checkpoint.pt", weights_only=True)
    assert state["discriminator"] is not None and state["recipe"]["losses"]["gan"] > 0
    with open(tmp_path / "critic" / "log.csv", newline="") as fh:
        assert float(list(csv.DictReader(fh))[-1]["gan"]) > 0

    recipe = recipe_file(tmp_path / "gan.yaml", image_folder, steps=1, losses={"gan": 0.001})
    assert training_main(["--recipe", str(recipe), "--out", str(tmp_path / "off"), "--no-critic", "--quiet",
                          "--device", "cpu"]) == 0
    assert torch.load(tmp_path / "off" / "checkpoint.pt", weights_only=True)["discriminator"] is None


def test_gray_init_on_colour_data_suggests_channels_1(image_folder, tmp_path, capsys, tiny_weights):
    common = ["--task", "denoise", "--data", str(image_folder), "--init", str(tiny_weights[("denoise", 1, 1)]),
              "--steps", "1", "--patch", "32", "--batch", "2", "--quiet", "--device", "cpu"]
    assert training_main([*common, "--out", str(tmp_path / "a")]) == 2
    assert "add --channels 1" in one_error_line(capsys.readouterr().err)
    assert training_main([*common, "--out", str(tmp_path / "b"), "--channels", "1"]) == 0


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        training_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("patch size in pixels (multiple of 4) (default: 64)", "patches per step (default: 16)",
                     "(default: 0.001)", "random seed (default: 0)", "--device DEVICE auto, cpu, cuda or mps (default: auto)",
                     "--critic, --no-critic", "(default: OUT/checkpoint.pt)", "examples: # fine-tune"):
        assert expected in text, expected


def test_diverged_run_ends_in_one_line(image_folder, tmp_path, capsys, monkeypatch, recipe_file):
    def diverge(self):
        raise FloatingPointError(f"loss is not finite at step {self.step + 1}: {{'total': nan}}")
    monkeypatch.setattr(Trainer, "train_step", diverge)
    cfg = recipe_file(tmp_path / "recipe.yaml", image_folder)
    assert training_main(["--recipe", str(cfg), "--out", str(tmp_path / "out"), "--quiet", "--device", "cpu"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "loss is not finite at step 1" in line and "--lr" in line


def test_recipe_architecture_is_bounded_like_a_weights_file(tmp_path):
    from napari_vdir.core.nets import ARCH_LIMITS

    base = dict(name="t", task="denoise", channels=1, steps=1, data={"train": [str(tmp_path)]})
    limit = ARCH_LIMITS["rir_blocks"][1]
    assert Recipe.model_validate({**base, "arch": {"rir_blocks": limit}}).arch.rir_blocks == limit
    with pytest.raises(ValueError, match="rir_blocks"):
        Recipe.model_validate({**base, "arch": {"rir_blocks": limit + 1}})


# ----------------------------------------------------------------------------- issue 31: outputs and inputs

def one_step(folder, out, *extra) -> list[str]:
    return ["--task", "denoise", "--data", str(folder), "--steps", "1", "--patch", "32", "--batch", "2",
            "--out", str(out), "--quiet", "--device", "cpu", "--threads", "1", *extra]


def test_a_folder_that_holds_a_run_is_refused_unless_resumed_or_overwritten(image_folder, tmp_path, capsys):
    """Issue 31 item 3: a second run into OUT replaced the weights and checkpoint and appended a second run to
    log.csv. Now it is refused in one line and OUT is left as it was; --overwrite replaces the run whole."""
    out = tmp_path / "o"
    assert training_main(one_step(image_folder, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"checkpoint.pt", "log.csv", "denoise.safetensors"}
    capsys.readouterr()
    assert training_main(one_step(image_folder, out)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    assert training_main(one_step(image_folder, out, "--name", "other")) == 2  # another name: same log, checkpoint
    assert "checkpoint.pt, log.csv" in one_error_line(capsys.readouterr().err)
    assert training_main(one_step(image_folder, out, "--resume", "--overwrite")) == 2
    assert "give one of them" in one_error_line(capsys.readouterr().err)

    assert training_main(one_step(image_folder, out, "--overwrite", "--seed", "7")) == 0
    assert log_steps(out / "log.csv") == [0, 1]  # one run's log, not two
    assert torch.load(out / "checkpoint.pt", weights_only=True)["recipe"]["seed"] == 7
    assert read_info(out / "denoise.safetensors").recipe["seed"] == 7
    assert training_main(one_step(image_folder, out, "--steps", "2", "--resume")) == 0  # --resume continues it
    assert log_steps(out / "log.csv") == [0, 1, 2]


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_out_naming_a_file_is_one_line(image_folder, tmp_path, capsys, where):
    """Issue 31 item 3: FileExistsError / NotADirectoryError tracebacks before."""
    thesis = tmp_path / "thesis.txt"
    thesis.write_text("mine")
    out = thesis if where == "a file" else thesis / "run"
    assert training_main(one_step(image_folder, out)) == 2
    assert "is a file" in one_error_line(capsys.readouterr().err)
    assert thesis.read_text() == "mine"


def test_training_data_is_checked_up_front_as_restore_checks_it(image_folder, tmp_path, capsys):
    """Issue 31 item 11: NaN in a file was accepted (the run died at the first NaN patch, advising a checkpoint
    that did not exist); floats far off [0, 1] trained on the wrong scale. One line each, before training."""
    import tifffile

    rng = np.random.default_rng(0)
    for kind, message in (("nan", "NaN or inf"), ("huge", "float image spans [0, 1e+06]"),
                          ("negative", "negative values")):
        folder = tmp_path / kind
        folder.mkdir()
        image = rng.random((64, 64)).astype(np.float32)
        if kind == "nan":
            image[5, 5] = np.nan
        elif kind == "huge":
            image = image * 1e6
            image[0, 0] = 0
        else:
            image = (image * 1000 - 10).astype(np.int16)
        tifffile.imwrite(folder / "a.tif", image)
        out = tmp_path / f"out-{kind}"
        assert training_main(one_step(folder, out, "--channels", "1")) == 2, kind
        line = one_error_line(capsys.readouterr().err)
        assert message in line and "a.tif" in line, line
        assert not out.exists()  # refused before anything was written


def test_a_diverged_run_names_a_checkpoint_only_when_there_is_one(image_folder, tmp_path, capsys, monkeypatch):
    def diverge(self):
        raise FloatingPointError(f"loss is not finite at step {self.step + 1}: {{'total': nan}}")
    monkeypatch.setattr(Trainer, "train_step", diverge)
    assert training_main(one_step(image_folder, tmp_path / "o")) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "no checkpoint was written" in line and "holds the last good state" not in line


def test_pairs_from_a_negative_axis_is_one_line(tmp_path, capsys):
    """Issue 31 item 11: --pairs-from -1 gave numpy's reshape error."""
    import tifffile

    from napari_vdir.training.data import load_frame_groups

    folder = tmp_path / "stacks"
    folder.mkdir()
    tifffile.imwrite(folder / "s.tif", np.random.default_rng(0).integers(0, 1000, (4, 64, 64), dtype=np.uint16),
                     photometric="minisblack")
    assert training_main(["--task", "denoise", "--data", str(folder), "--pairs-from", "-1", "--steps", "1",
                          "--patch", "32", "--out", str(tmp_path / "o"), "--quiet", "--device", "cpu"]) == 2
    assert "--pairs-from -1" in one_error_line(capsys.readouterr().err)
    with pytest.raises(ValueError, match="no frame axis -1 before its image axes"):  # the API: also one line
        load_frame_groups(str(folder), 1, -1)
    assert len(load_frame_groups(str(folder), 1, -3)) == 1  # a leading axis counted from the end is one


@pytest.mark.parametrize("name", ["stack.tif", "weights.safetensors", "notes.txt"])
def test_resume_from_a_file_that_is_no_checkpoint_never_advises_deleting_it(image_folder, tmp_path, capsys, name):
    """Issue 31 item 11: `--resume stack.tif` advised to "delete it" — the user's own image."""
    import tifffile

    path = tmp_path / name
    if name.endswith(".tif"):
        tifffile.imwrite(path, np.zeros((2, 32, 32), np.uint16))
    else:
        path.write_bytes(os.urandom(2000))
    assert training_main(one_step(image_folder, tmp_path / "o", "--resume", str(path))) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "delete" not in line and "checkpoint.pt that a run writes" in line, line
    assert path.exists()


def test_a_two_channel_file_is_two_planes_as_restore_reads_it(tmp_path):
    """Issue 31 item 11: an (H, W, 2) image was read as H planes of W x 2 pixels. restore() reads it as two
    channels, each mapped by its own robust range; training reads it the same way."""
    import tifffile

    from napari_vdir.core.intensity import robust_range
    from napari_vdir.training.data import load_folder, planes_of

    rng = np.random.default_rng(0)
    image = np.stack([rng.integers(100, 300, (64, 48)), rng.integers(1000, 30000, (64, 48))], -1).astype(np.uint16)
    tifffile.imwrite(tmp_path / "two.tif", image)
    planes = planes_of(tmp_path / "two.tif")
    assert [p.shape for p in planes] == [(64, 48, 1), (64, 48, 1)]
    for k, plane in enumerate(planes):
        low, high = robust_range(image[..., k])
        np.testing.assert_allclose(plane[..., 0], (image[..., k] - low) / (high - low), rtol=1e-5, atol=1e-6)
    assert len(load_folder(str(tmp_path), 1, min_size=32)) == 2
