"""Fine-tuning on real widefield fluorescence (W2S) by CPU-minutes, against CAREamics Noise2Void (issue 33).

Train on the NOISY frames of some fields of view, score other fields against their 400-frame averages; no clean
image ever reaches training. One thread; budgets in CPU-minutes of training steps (the process's CPU time, as the
trainer's ``budget_clock: cpu`` counts it; validation and scoring are not counted, for either method).

    # ours: fine-tune the shipped denoise-gray (a fine-tune's method, Neighbor2Neighbor, unless --method), one run
    # per budget and setting; a grid is the product of the comma lists
    OMP_NUM_THREADS=1 python benchmarks/finetune_w2s.py ours --lr 3e-4,1e-4,3e-5 --warmup 0,50 --budgets 1,2,5,10,20,60
    # CAREamics Noise2Void and N2V2, documented defaults, from scratch, the same images and budgets (one run each,
    # snapshots at every budget: N2V's learning rate does not follow the budget)
    OMP_NUM_THREADS=1 python benchmarks/finetune_w2s.py n2v --budgets 1,2,5,10,20,60
    # the table again from the stored results
    python benchmarks/finetune_w2s.py report
    # a smoke run of the harness (seconds): written to results/finetune_w2s-smoke.{md,json}, marked as no result
    OMP_NUM_THREADS=1 python benchmarks/finetune_w2s.py ours --smoke

Every run adds its rows to ``results/finetune_w2s.json`` (a rerun of the same method, setting and budget replaces
its row) and rewrites ``results/finetune_w2s.md`` from all of them: method x CPU-minutes -> affine-matched PSNR,
with plain PSNR and SSIM beside it, the starting model with no training and the noisy input.

Split (W2S: fields of view 001-040, three stains each, 512^2 8-bit): ``--train-fields`` (default 031-040, 30 noisy
frames) and ``--score-fields`` (default 021-030, 30 pairs); they may not overlap unless ``--allow-overlap`` (training
on the very frames that are scored is still self-supervised, but not what the issue measures). The shipped models
never saw W2S. File names and reading: ``eval_w2s.py`` (imported, not copied).

Score: **affine-matched PSNR** -- the result mapped onto the reference by the least-squares scale and offset before
the PSNR (``eval_w2s.affine_match``, as CARE / CSBDeep normalise), because W2S's 8-bit files were contrast-stretched
one by one and plain PSNR rewards only methods that saw clean files; plain PSNR beside it; SSIM (data range 255)
of the matched result. Mean over the scored images; every output is an 8-bit image (ours: ``restore`` of uint8
gives uint8; N2V's float output rounded and clipped the same way).

Mode ``ours``: ``napari_vdir.training.trainer.Trainer`` on a recipe made as ``finetune()`` / the CLI make one
(MINIMAL_DEFAULTS: no critic, grad clip 1, lr_min 1e-6), with ``time_budget_minutes`` = the budget and
``budget_clock: cpu``: the learning rate anneals over the budget, as ``--time-budget`` gives a user. Per budget the
exported weights are scored (best-validated on the held-out noisy images when ``keep_best`` is on, the default with
an init; the log says ``start`` or ``best@STEP``), and with ``--latest`` the last weights too. ``--schedule
one-run`` trains once for the largest budget and snapshots at each smaller one (cheaper; an early snapshot then had
a learning rate annealed for the largest budget). Flags taking comma lists form a grid: ``--lr --warmup --patch
--batch --consistency`` (Neighbor2Neighbor's regulariser weight, ``losses.consistency``); ``--adapt``
``all`` or ``biases`` is the recipe's ``adapt``; any other value is a probe, a REGEX (repeatable) of the parameters
that train (``--list-params`` prints them), done here by ``requires_grad``, not a trainer option.

Mode ``n2v``: CAREamics 0.3.5 ``create_advanced_n2v_config`` with its defaults (UNet depth 2, 32 filters, Adam,
ReduceLROnPlateau, mean/std normalisation, 0.2 % masked pixels, ROI 11, flips and 90-degree rotations, 8 validation
patches from the training data) and the patch and batch of CAREamics' napari plugin (64^2, 16); changed: the epoch
cap (30 by default) lifted so that the CPU budget ends the run, dataloader workers 0 (their CPU time would escape the
budget and the one thread), CPU accelerator. It runs in its own virtual environment (careamics pins
``torchvision<=0.26``, which exists only for torch 2.11, not beside the project's torch 2.13), as a worker process
of this script (``n2v-worker``), which trains, snapshots and predicts; this process scores. Install, from the
repository root (``.venv-n2v/`` is git-ignored; none of it is a dependency of the project or its tests):

    python -m venv .venv-n2v
    .venv-n2v/bin/python -m pip install torch==2.13.0            # the CPU build this machine has on disk
    .venv-n2v/bin/python -m pip install --no-deps careamics==0.3.5
    .venv-n2v/bin/python -m pip install "lightning>=2.2,<=2.6.6,!=2.6.2,!=2.6.3" "torchmetrics>0.7,<1.9" \
        "zarr>=3,<4" "microssim<=0.0.5" "pydantic>=2.11,<=2.14.1" "numpy<=2.4.6" "tifffile<=2026.3.3" \
        "scikit-image<=0.26.0" "pyyaml<=6.0.3" "psutil<=7.2.2" "matplotlib<=3.11.2" "bioimageio-core>=0.9,<=0.11.0"

(pip then reports the missing torchvision as a conflict; expected.) ``import careamics`` needs all of these
(bioimageio.spec/core for its configuration and export modules, matplotlib for a patch filter); torchvision it
imports for its LVAE models and export only: the worker imports torchmetrics and lightning first (they then record
torchvision as absent) and places a stand-in ``torchvision`` package in ``sys.modules`` before importing careamics.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "finetune_w2s.md"
SMOKE_RESULTS = HERE / "results" / "finetune_w2s-smoke.md"
N2V_PYTHON = REPO / ".venv-n2v" / "bin" / "python"
BUDGETS = "1,2,5,10,20,60"
SMOKE = {"budgets": "0.05,0.1", "train_fields": "31-32", "score_fields": "21", "crop": 128}
DECODER_WEIGHT = 1.0  # losses.decoder's default (training/config.py; not imported: the CAREamics worker runs this file)
N2V_VARIANTS = {"n2v": "CAREamics Noise2Void", "n2v2": "CAREamics N2V2"}
N2V_PATCH, N2V_BATCH = 64, 16  # CAREamics' napari plugin (get_default_n2v_config)
N2V_EPOCHS = 100_000  # the budget ends the run


# ---------------------------------------------------------------------------------------------- split and score
def parse_fields(text: str) -> list[int]:
    """``"031-040"``, ``"1-30"``, ``"21,25,31-33"`` -> field-of-view numbers (1-40)."""
    fields = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            lo, hi = int(first), int(last or first)
        except ValueError:
            raise argparse.ArgumentTypeError(f"fields {text!r}: give numbers and ranges, e.g. 031-040 or 1,5,7-9") \
                from None
        if not 1 <= lo <= hi <= 40:
            raise argparse.ArgumentTypeError(f"fields {text!r}: W2S has fields of view 001-040")
        fields.update(range(lo, hi + 1))
    return sorted(fields)


def parse_floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def fields_text(fields: list[int]) -> str:
    runs, start = [], None
    for k, f in enumerate(fields):
        start = f if start is None else start
        if k + 1 == len(fields) or fields[k + 1] != f + 1:
            runs.append(f"{start:03d}" if start == f else f"{start:03d}-{f:03d}")
            start = None
    return ",".join(runs)


def _eval_w2s():
    """benchmarks/eval_w2s.py: W2S names and reading, psnr, affine_match (needs the project's environment)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import eval_w2s

    return eval_w2s


def centre_crop(a: np.ndarray, size: int | None) -> np.ndarray:
    if not size:
        return a
    top, left = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return a[top:top + size, left:left + size]


def split(args) -> tuple[list[Path], list[tuple[str, np.ndarray, np.ndarray]]]:
    """Training files (noisy frames only) and the scored (key, noisy, clean float64) pairs."""
    ev = _eval_w2s()
    overlap = sorted(set(args.train_fields) & set(args.score_fields))
    if overlap and not args.allow_overlap:
        raise SystemExit(f"error: fields {fields_text(overlap)} are both trained on and scored; score other fields "
                         "(--score-fields) or pass --allow-overlap")
    if not (args.w2s / "noisy").is_dir():
        raise SystemExit(f"error: no W2S data at {args.w2s} (expected noisy/ and clean/); give --w2s")
    train = [ev.w2s_paths(args.w2s, f, c)[1] for f in args.train_fields for c in range(ev.CHANNELS)]
    pairs = [(key, centre_crop(noisy, args.crop), centre_crop(clean, args.crop))
             for key, noisy, clean in ev.validation_pairs(args.w2s, args.score_fields)]
    return train, pairs


def scores(outputs: list[np.ndarray], pairs) -> dict:
    """Mean matched PSNR, plain PSNR and SSIM (of the matched result) over the pairs, and the matched PSNR of each."""
    from skimage.metrics import structural_similarity

    ev = _eval_w2s()
    rows, per_image = [], {}
    for out, (key, _, clean) in zip(outputs, pairs, strict=True):
        matched = ev.affine_match(out, clean)
        rows.append((ev.psnr(matched, clean), ev.psnr(out, clean),
                     structural_similarity(clean, matched, data_range=255.0)))
        per_image[key] = round(rows[-1][0], 4)
    mean = np.mean(rows, axis=0)
    return {"matched": float(mean[0]), "plain": float(mean[1]), "ssim": float(mean[2]), "per_image": per_image}


def restore_all(model, pairs) -> list[np.ndarray]:
    import napari_vdir

    return [napari_vdir.restore(noisy, "denoise", model=str(model)) for _, noisy, _ in pairs]


# ---------------------------------------------------------------------------------------------- ours
def grid(args) -> list[dict]:
    """The product of the comma lists; a learning rate, warm-up or decoder weight not given is a fine-tune's default
    for the method and the setting's adapt (``config.finetune_defaults``, as the CLI and ``finetune()`` give it)."""
    from napari_vdir.training.config import finetune_defaults

    keys = ("lr", "warmup", "patch", "batch", "consistency", "decoder", "adapt")
    values = [args.lr or [None], args.warmup or [None], args.patch, args.batch, args.consistency, args.decoder,
              args.adapt or [None]]
    settings = []
    for combo in itertools.product(*values):
        s = dict(zip(keys, combo, strict=True))
        defaults = finetune_defaults(args.method, s["adapt"] if s["adapt"] in RECIPE_ADAPT else None)
        s["adapt"] = s["adapt"] or defaults["adapt"]
        s["lr"] = defaults["lr"] if s["lr"] is None else s["lr"]
        s["warmup"] = defaults["warmup_steps"] if s["warmup"] is None else s["warmup"]
        if s["decoder"] is None:
            s["decoder"] = defaults.get("losses", {}).get("decoder", DECODER_WEIGHT)
        settings.append(s)
    return settings


RECIPE_ADAPT = ("all", "biases")  # Recipe.adapt; anything else is a regex probe (freeze)


def short(v: float) -> str:
    """3e-4, not 0.0003."""
    return f"{v:.0e}".replace("e-0", "e-") if 0 < abs(v) < 1e-3 else f"{v:g}"


def setting_label(s: dict, args) -> str:
    method = {"neighbor2neighbor": "Neighbor2Neighbor", "blind-spot": "blind-spot",
              "pseudo-clean": "pseudo-clean (start's output noised again)"}[args.method]
    text = (f"{method} from {args.init}: lr {short(s['lr'])}, warm-up {s['warmup']}, patch {s['patch']}, "
            f"batch {s['batch']}")
    if args.method == "neighbor2neighbor":
        text += f", consistency {s['consistency']:g}"
    if s.get("decoder", DECODER_WEIGHT) != DECODER_WEIGHT:
        text += f", decoder {s['decoder']:g}"
    if s["adapt"] == "biases":
        text += ", biases only"
    elif s["adapt"] != "all":
        text += f", adapt /{s['adapt']}/"
    if args.ema:
        text += f", ema {args.ema:g}"
    if args.keep_best is False:
        text += ", no keep-best"
    if args.schedule == "one-run":
        text += " [one run, snapshots]"
    return text


def make_recipe(s: dict, args, train: list[Path], budget: float, name: str):
    from napari_vdir.core.models import resolve_model
    from napari_vdir.core.weights import read_info
    from napari_vdir.training.__main__ import MINIMAL_DEFAULTS
    from napari_vdir.training.config import Recipe

    start = read_info(resolve_model(args.init, "denoise", 1))
    values = dict(MINIMAL_DEFAULTS)
    values.update(name=name, task=start.task, channels=start.channels,
                  init=str(resolve_model(args.init, start.task, start.channels, start.scale)),
                  data={"train": [str(p) for p in train]}, steps=10**9, patch=s["patch"], batch=s["batch"],
                  lr=s["lr"], warmup_steps=s["warmup"], time_budget_minutes=budget, budget_clock="cpu",
                  self_supervised=args.method, val_every=args.val_every, checkpoint_every=10**9, seed=args.seed,
                  ema_decay=args.ema, keep_best=args.keep_best,
                  adapt=s["adapt"] if s["adapt"] in RECIPE_ADAPT else "all",
                  losses={**MINIMAL_DEFAULTS.get("losses", {}), "consistency": s["consistency"],
                          "decoder": s.get("decoder", DECODER_WEIGHT)})
    return Recipe.model_validate(values)


def freeze(model, pattern: str) -> int:
    """Only the parameters whose names match ``pattern`` train; returns how many tensors do. ``all`` and
    ``biases`` are the recipe's own ``adapt`` (the trainer has already set them)."""
    if pattern in RECIPE_ADAPT:
        return sum(1 for p in model.parameters() if p.requires_grad)
    rx = re.compile(pattern)
    kept = 0
    for name, p in model.named_parameters():
        p.requires_grad_(bool(rx.search(name)))
        kept += p.requires_grad
    if not kept:
        names = [n for n, _ in model.named_parameters()]
        raise SystemExit(f"error: --adapt {pattern!r} matches no parameter (e.g. {', '.join(names[:4])}, ...; "
                         "see --list-params)")
    return kept


def train_ours(s: dict, points: list[float], args, train: list[Path], folder: Path) -> list[dict]:
    """One training run for ``max(points)`` CPU-minutes; weights at each point (exported, and the latest)."""
    from napari_vdir.core.weights import read_info, save_weights
    from napari_vdir.training.trainer import Trainer

    recipe = make_recipe(s, args, train, max(points), "finetune-w2s")
    log = (lambda *a: print("   ", *a, flush=True)) if not args.quiet else (lambda *a: None)
    trainer = Trainer(recipe, folder, device="cpu", precision=args.precision, threads=args.threads, log=log)
    trainer.load_data()
    trained = freeze(trainer.model, s["adapt"])
    pending, snaps = sorted(points), []
    cpu0 = time.process_time()

    def snapshot(tr, row):
        while pending and tr.train_seconds >= 60 * pending[0] - 1e-9:
            budget = pending.pop(0)
            if row is None or ("val_loss" not in row and "val_psnr" not in row):
                tr.validation_row()  # the exported weights may be these: score them first, as a run ending here would
            exported = tr.export(folder / f"exported-{budget:g}min.safetensors")
            latest = None
            if args.latest:
                latest = save_weights(folder / f"latest-{budget:g}min.safetensors", tr.model, read_info(exported))
            snaps.append({"budget": budget, "steps": tr.step, "train_cpu_s": round(tr.train_seconds, 2),
                          "exported_as": tr.export_state()[1], "outcome": tr.outcome(), "weights": exported,
                          "latest": latest, "trained_tensors": trained})
            if not args.quiet:
                print(f"    {budget:g} CPU-min: step {tr.step}, exported {snaps[-1]['exported_as']}; "
                      f"{snaps[-1]['outcome']}", flush=True)

    trainer.fit(lambda tr, row: snapshot(tr, row))
    if pending:  # a budget the last step reached only with rounding
        snapshot(trainer, None)
    run_cpu = time.process_time() - cpu0
    for snap in snaps:
        snap["run_cpu_s"] = round(run_cpu, 1)
    return snaps


def list_params(init: str) -> None:
    from napari_vdir.core.models import resolve_model
    from napari_vdir.core.weights import load_weights

    model, _ = load_weights(resolve_model(init, "denoise", 1))
    for name, p in model.named_parameters():
        print(f"{name}\t{tuple(p.shape)}")


def run_ours(args, train, pairs, work: Path, save) -> None:
    save([start_entry(args, pairs)])
    budgets = sorted(args.budgets)
    for k, s in enumerate(grid(args)):
        label = setting_label(s, args)
        print(f"[{k + 1}] {label}", flush=True)
        runs = [budgets] if args.schedule == "one-run" else [[b] for b in budgets]
        for points in runs:
            folder = work / f"setting{k}-{max(points):g}min"
            entries = []
            for snap in train_ours(s, points, args, train, folder):
                kinds = [("exported", snap["weights"])] + ([("latest", snap["latest"])] if snap["latest"] else [])
                for kind, weights in kinds:
                    t0 = time.process_time()
                    result = scores(restore_all(weights, pairs), pairs)
                    entries.append({
                        "family": "ours", "label": label, "weights": kind, "budget": snap["budget"],
                        "setting": {**s, "method": args.method, "init": args.init, "ema": args.ema,
                                    "keep_best": args.keep_best, "schedule": args.schedule,
                                    "val_every": args.val_every, "seed": args.seed},
                        "steps": snap["steps"], "train_cpu_s": snap["train_cpu_s"], "run_cpu_s": snap["run_cpu_s"],
                        "exported_as": snap["exported_as"] if kind == "exported" else "latest",
                        "outcome": snap["outcome"], "score_cpu_s": round(time.process_time() - t0, 1), **result})
                    print(f"    -> {snap['budget']:g} min, {kind}: matched {result['matched']:.2f} dB "
                          f"(plain {result['plain']:.2f}, SSIM {result['ssim']:.3f})", flush=True)
            save(entries)


def start_entry(args, pairs) -> dict:
    t0 = time.process_time()
    result = scores(restore_all(args.init, pairs), pairs)
    print(f"start model {args.init}, no training: matched {result['matched']:.2f} dB (plain {result['plain']:.2f})",
          flush=True)
    return {"family": "start", "label": f"{args.init}, no training", "weights": "start", "budget": 0,
            "score_cpu_s": round(time.process_time() - t0, 1), **result}


def noisy_entry(pairs) -> dict:
    return {"family": "noisy", "label": "noisy input", "weights": "-", "budget": 0,
            **scores([noisy for _, noisy, _ in pairs], pairs)}


# ---------------------------------------------------------------------------------------------- n2v
def run_n2v(args, train, pairs, work: Path, save) -> None:
    from napari_vdir.core.io import read_image

    python = Path(args.n2v_python)
    if not python.exists():
        raise SystemExit(f"error: no CAREamics environment at {python}; install it as this script's docstring says "
                         "(python benchmarks/finetune_w2s.py --help), or give --n2v-python")
    np.save(work / "train.npy", np.stack([read_image(p) for p in train]))
    np.save(work / "score.npy", np.stack([noisy for _, noisy, _ in pairs]))
    for variant in args.variants:
        folder = work / variant
        folder.mkdir(exist_ok=True)
        spec = {"variant": variant, "budgets": sorted(args.budgets), "patch": args.n2v_patch,
                "batch": args.n2v_batch, "threads": args.threads, "seed": args.seed, "epochs": N2V_EPOCHS,
                "train": str(work / "train.npy"), "score": str(work / "score.npy"), "out": str(folder)}
        (folder / "spec.json").write_text(json.dumps(spec))
        print(f"[{variant}] {N2V_VARIANTS[variant]}, worker {python}", flush=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        worker = subprocess.run([str(python), str(Path(__file__).resolve()), "n2v-worker", str(folder / "spec.json")],
                                env=env, cwd=folder)
        if worker.returncode:
            raise SystemExit(f"error: the CAREamics worker ({variant}) failed with exit status {worker.returncode}")
        report = json.loads((folder / "result.json").read_text())
        entries = []
        label = f"{N2V_VARIANTS[variant]} {report['careamics']} (defaults, from scratch, patch {args.n2v_patch}, " \
                f"batch {args.n2v_batch})"
        for point in report["points"]:
            outputs = [np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in np.load(point["predictions"])]
            result = scores(outputs, pairs)
            entries.append({"family": "n2v", "label": label, "weights": "latest", "budget": point["budget"],
                            "setting": {"variant": variant, "patch": args.n2v_patch, "batch": args.n2v_batch,
                                        "seed": args.seed, "config": report["config"]},
                            "steps": point["steps"], "epochs": point["epoch"], "train_cpu_s": point["train_cpu_s"],
                            "run_cpu_s": report["run_cpu_s"], "predict_cpu_s": point["predict_cpu_s"],
                            "exported_as": "latest", **result})
            print(f"    -> {point['budget']:g} min: matched {result['matched']:.2f} dB (plain {result['plain']:.2f}, "
                  f"SSIM {result['ssim']:.3f}), step {point['steps']}", flush=True)
        save(entries)


def torchvision_standin() -> None:
    """CAREamics 0.3.5 imports torchvision in modules N2V never runs (LVAE, BMZ export). torchmetrics and lightning
    are imported first, so they see no torchvision and skip it; then an empty stand-in package takes its place."""
    import importlib.machinery
    import types

    import lightning  # noqa: F401
    import torchmetrics  # noqa: F401

    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    for name in names:
        if name in sys.modules:
            raise SystemExit(f"error: a real {name} is imported; this worker expects none")
        module = types.ModuleType(name, "stand-in: CAREamics' N2V never calls torchvision")
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module.__path__ = []
        sys.modules[name] = module
    sys.modules["torchvision"].__version__ = "0+stand-in"
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]


def n2v_worker(spec_path: str) -> None:
    """Runs in the CAREamics environment: train for the largest budget, checkpoint at each, predict with each."""
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    torchvision_standin()
    import careamics
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config
    from lightning.pytorch.callbacks import Callback

    out = Path(spec["out"])
    config = create_advanced_n2v_config(
        experiment_name=f"w2s_{spec['variant']}", data_type="array", axes="SYX",
        patch_size=[spec["patch"], spec["patch"]], batch_size=spec["batch"], num_epochs=spec["epochs"],
        use_n2v2=spec["variant"] == "n2v2", num_workers=0, seed=spec["seed"] + 1,  # careamics: seed > 0
        trainer_params={"accelerator": "cpu", "devices": 1})

    class CpuBudget(Callback):
        """CPU seconds of the training batches (data loading included; validation and checkpoints not);
        a checkpoint at each budget, stop after the last."""

        def __init__(self):
            self.pending, self.seconds, self.last, self.points = list(spec["budgets"]), 0.0, None, []

        def on_train_epoch_start(self, trainer, module):
            self.last = time.process_time()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.seconds += time.process_time() - self.last
            while self.pending and self.seconds >= 60 * self.pending[0] - 1e-9:
                budget = self.pending.pop(0)
                path = out / f"at-{budget:g}min.ckpt"
                trainer.save_checkpoint(path)
                self.points.append({"budget": budget, "steps": trainer.global_step, "epoch": trainer.current_epoch,
                                    "train_cpu_s": round(self.seconds, 2), "checkpoint": str(path)})
                print(f"    {budget:g} CPU-min: step {trainer.global_step}, epoch {trainer.current_epoch}", flush=True)
            if not self.pending:
                trainer.should_stop = True
            self.last = time.process_time()

    budget = CpuBudget()
    cpu0 = time.process_time()
    careamist = CAREamist(config, work_dir=out, callbacks=[budget], enable_progress_bar=False)
    careamist.train(train_data=np.load(spec["train"]).astype(np.float32))
    run_cpu = time.process_time() - cpu0
    if budget.pending:
        raise SystemExit(f"error: N2V stopped at {budget.seconds:.0f} CPU-s, before the budgets {budget.pending}")
    noisy = np.load(spec["score"]).astype(np.float32)
    for point in budget.points:
        t0 = time.process_time()
        predictions, _ = careamist.predict(noisy, data_type="array", axes="SYX", checkpoint=point["checkpoint"],
                                           batch_size=1)
        # one array per source: here the whole (S, Y, X) stack, possibly with singleton sample/channel axes
        stack = np.concatenate([np.asarray(p, np.float32).reshape(-1, *noisy.shape[1:]) for p in predictions])
        if stack.shape != noisy.shape:
            raise SystemExit(f"error: CAREamics predicted {stack.shape} for {noisy.shape}")
        point["predict_cpu_s"] = round(time.process_time() - t0, 1)
        point["predictions"] = str(out / f"pred-{point['budget']:g}min.npy")
        np.save(point["predictions"], stack)
    (out / "result.json").write_text(json.dumps({
        "careamics": careamics.__version__, "torch": torch.__version__, "run_cpu_s": round(run_cpu, 1),
        "points": budget.points, "config": json.loads(config.model_dump_json())}))


# ---------------------------------------------------------------------------------------------- results
def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


def relative(arg: str) -> str:
    """A path argument inside the repository as a relative path (no machine paths in the committed report)."""
    path = Path(arg.partition("=")[2] or arg)
    if path.is_absolute():
        with contextlib.suppress(ValueError):
            return arg.replace(str(path), str(path.relative_to(REPO)))
    return arg


def entry_key(e: dict) -> tuple:
    return e["family"], e["label"], e["weights"], float(e["budget"])


def store(entries: list[dict], json_path: Path, run: dict) -> list[dict]:
    """Merge entries into the stored ones (same method, setting and budget: replaced) and record ``run`` (once per
    ``run["id"]``); returns all. Called as results come, so a long run that is stopped keeps what it measured."""
    import fcntl
    import hashlib

    json_path.parent.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha1(str(json_path.resolve()).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"finetune_w2s-{tag}.lock", "w") as lock:  # runs may end together
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(json_path.read_text()) if json_path.is_file() else {"runs": [], "entries": []}
        split_of = ("train_fields", "score_fields", "crop", "threads")
        other = next((r for r in data["runs"] if any(r[k] != run[k] for k in split_of)), None)
        if other is not None:  # one table, one protocol
            raise SystemExit(f"error: {json_path} holds results of another split or thread count ("
                             + ", ".join(f"{k} {other[k]}" for k in split_of) + "); give another --out")
        index = next((k for k, r in enumerate(data["runs"]) if r["id"] == run["id"]), None)
        if index is None:
            data["runs"].append(run)
            index = len(data["runs"]) - 1
        data["runs"][index] = run
        for e in entries:
            e["run"] = index
        new = {entry_key(e) for e in entries}
        data["entries"] = [e for e in data["entries"] if entry_key(e) not in new] + entries
        tmp = json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(json_path)
    return data


def cell(e: dict | None) -> str:
    if e is None:
        return ""
    return f"{e['matched']:.2f} ({e['plain']:.2f} · {e['ssim']:.3f})"


def render(data: dict, smoke: bool) -> str:
    entries, runs = data["entries"], data["runs"]
    budgets = sorted({float(e["budget"]) for e in entries if e["family"] in ("ours", "n2v")})
    rows: dict[tuple, dict] = {}
    order = {"noisy": 0, "start": 1, "ours": 2, "n2v": 3}
    for e in sorted(entries, key=lambda e: (order[e["family"]], e["label"], e["weights"] != "exported")):
        rows.setdefault((e["family"], e["label"], e["weights"]), {})[float(e["budget"])] = e
    lines = []
    if smoke:
        lines += ["> **SMOKE RUN -- a check of the harness at budgets of seconds on a few cropped images; these "
                  "numbers are no result.** The real table is `finetune_w2s.md`.", ""]
    scored = {(r["score_fields"], r["crop"]) for r in runs}
    trained = {r["train_fields"] for r in runs}
    lines += [
        "# Fine-tuning on W2S widefield fluorescence by CPU-minutes, and CAREamics Noise2Void",
        "",
        f"Trained on the noisy frames of W2S fields {', '.join(sorted(trained))} (no clean image), scored on fields "
        + "; ".join(f"{f}" + (f" ({c}^2 centre crops)" if c else " (whole 512^2 images)") for f, c in sorted(scored))
        + " against their 400-frame averages. One thread; budgets are CPU-minutes of training steps (validation and "
        "scoring not counted).",
        "",
        "Each cell: **affine-matched PSNR** (dB) (plain PSNR · SSIM of the matched result). Matched = the result "
        "mapped onto the reference by the least-squares scale and offset first, as CARE/CSBDeep do: W2S's 8-bit "
        "files were contrast-stretched one by one, so noisy frames and references do not share an intensity scale "
        "and plain PSNR rewards only a method that saw clean files. Mean over the scored images.",
        "",
        "| method | weights | " + " | ".join(["no training"] + [f"{b:g} CPU-min" for b in budgets]) + " |",
        "|---|---|" + "---|" * (len(budgets) + 1),
    ]
    for (family, label, weights), by_budget in rows.items():
        if family in ("noisy", "start"):
            text = cell(by_budget.get(0.0))
            lines.append(f"| {label} | {weights} | {f'**{text}**' if family == 'start' else text} |"
                         + " |" * len(budgets))
        else:
            lines.append(f"| {label} | {weights} | | " + " | ".join(cell(by_budget.get(b)) for b in budgets) + " |")
    lines += ["", "Details (training steps; CPU seconds of training steps / of the whole run with validation; what "
              "was exported):", "", "| method | weights | CPU-min | steps | train CPU-s | run CPU-s | exported |",
              "|---|---|---|---|---|---|---|"]
    for (family, label, weights), by_budget in rows.items():
        if family in ("ours", "n2v"):
            for b, e in sorted(by_budget.items()):
                lines.append(f"| {label} | {weights} | {b:g} | {e['steps']} | {e['train_cpu_s']:.0f} | "
                             f"{e['run_cpu_s']:.0f} | {e.get('exported_as', '')} |")
    lines += ["", "## Runs", ""]
    for k, r in enumerate(runs):
        lines.append(f"{k}. `{r['command']}` -- {r['date']}, {r['machine']}, {r['threads']} thread(s), torch "
                     f"{r['torch']}")
    lines += ["", "## Notes", "",
              "- Ours: `napari_vdir.training` Trainer, self-supervised, from the shipped model; the learning rate "
              "anneals over each budget (`time_budget_minutes`, `budget_clock: cpu`); 'exported' = the weights the "
              "trainer exports (with keep_best: the best on held-out noisy images, the start included; "
              "`start` = the starting model stayed best), 'latest' = the last weights. Every tenth training image "
              "is held out for that (noisy, as the CLI does without `--val`). Precision: the CLI's default (`auto`: "
              "bf16 autocast on a CPU that has it); CAREamics trains in Lightning's default float32.",
              "- CAREamics: `create_advanced_n2v_config` defaults with the patch (64) and batch (16) of its napari "
              "plugin, from scratch (its 8 validation patches taken from the training images); epoch cap lifted and "
              "the CPU budget ending the run, dataloader workers 0, CPU. "
              "Its learning-rate schedule (ReduceLROnPlateau) does not depend on the budget, so one run with a "
              "checkpoint at each budget stands for a run of each budget.",
              "- CAREamics 0.3.5 cannot be installed beside torch 2.13 by its own requirements (it pins "
              "torchvision<=0.26, built only for torch 2.11): it runs from its own virtual environment, installed "
              "without dependencies plus the dozen it imports (lightning, torchmetrics, zarr, microssim, "
              "bioimageio.spec/core, matplotlib, ...), with an empty stand-in for torchvision (see the script's "
              "docstring for the commands).",
              "- The held-out set: the lr 1e-4 rows were run when a fine-tune scored 8 held-out patches of 64 px "
              "(32 k pixels); the later rows score 2^18 pixels (`trainer.HELD_OUT_PIXELS`). With the small set, "
              "weights 0.13 dB better than the start could not show it beyond two standard errors, and the start "
              "was saved.",
              "- N2V2 ran to 20 CPU-minutes only (the session's time); Noise2Void to 60.",
              "- The held-out check: runs 8-10 (2026-12-08) were made with the check that must pass under both "
              "noise fits, on tiles that share no pixel (commit 3900894); written to their own reports, their "
              "entries were merged into this one (`store`), replacing the same settings' earlier cells. "
              "Pseudo-clean's exported model at 20 minutes, chosen by the earlier check, was removed; the "
              "60-minute Neighbor2Neighbor cells are the earlier check's.",
              ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["ours", "n2v", "report", "n2v-worker"])
    p.add_argument("spec", nargs="?", help=argparse.SUPPRESS)  # n2v-worker's spec file
    p.add_argument("--w2s", type=Path, default=None, help="the W2S folder (default: eval_w2s.py's, ../shared/...)")
    p.add_argument("--train-fields", type=parse_fields, default=None, help="fields of view trained on (031-040)")
    p.add_argument("--score-fields", type=parse_fields, default=None, help="fields of view scored (021-030)")
    p.add_argument("--allow-overlap", action="store_true", help="let trained and scored fields overlap")
    p.add_argument("--crop", type=int, default=None, help="score centre crops of this size (default: whole images)")
    p.add_argument("--budgets", type=parse_floats, default=None,
                   help=f"CPU-minutes of training, comma list ({BUDGETS})")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="the markdown report; its .json beside it "
                   "(default: results/finetune_w2s.md, results/finetune_w2s-smoke.md with --smoke)")
    p.add_argument("--work", type=Path, default=None, help="keep weights, logs and predictions here "
                   "(default: a temporary folder, removed)")
    p.add_argument("--smoke", action="store_true", help="a harness check in seconds: budgets "
                   f"{SMOKE['budgets']} min, train fields {SMOKE['train_fields']}, score field {SMOKE['score_fields']} "
                   f"cropped to {SMOKE['crop']}^2, unless given; written to the smoke report")
    p.add_argument("--quiet", action="store_true")
    g = p.add_argument_group("ours")
    g.add_argument("--init", default="denoise-gray", help="the starting model")
    g.add_argument("--method", choices=["neighbor2neighbor", "blind-spot", "pseudo-clean"],
                   help="self-supervised method (default: a fine-tune's, config.FINETUNE_METHOD)")
    g.add_argument("--lr", type=parse_floats, default=None,
                   help="peak learning rate(s), comma list (a fine-tune's default, config.FINETUNE_NOISY)")
    g.add_argument("--warmup", type=parse_ints, default=None,
                   help="warm-up steps, comma list (a fine-tune's default, config.FINETUNE_NOISY)")
    g.add_argument("--patch", type=parse_ints, default=[64], help="patch size(s), comma list (64)")
    g.add_argument("--batch", type=parse_ints, default=[8], help="batch size(s), comma list (8)")
    g.add_argument("--decoder", type=parse_floats, default=[None],
                   help="weight(s) of VDIR's decoder term (losses.decoder; 0 skips the decoder), comma list "
                        "(default: the method's, config.FINETUNE_NOISY)")
    g.add_argument("--consistency", type=parse_floats, default=[1.0],
                   help="Neighbor2Neighbor regulariser weight(s), losses.consistency, comma list (1)")
    g.add_argument("--adapt", action="append", metavar="REGEX",
                   help="all or biases (the recipe's adapt), or a probe: train only the parameters whose names "
                        "match (repeatable: a grid axis; default: a fine-tune's, config.FINETUNE_NOISY)")
    g.add_argument("--list-params", action="store_true", help="print the starting model's parameter names and stop")
    g.add_argument("--ema", type=float, default=None, help="keep a moving average of the weights (decay)")
    g.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=None,
                   help="export the best-validated weights (default: the trainer's, on with an init)")
    g.add_argument("--latest", action="store_true", help="also score the last weights at each budget")
    g.add_argument("--val-every", type=int, default=25, help="held-out validation every N steps (25)")
    g.add_argument("--schedule", choices=["separate", "one-run"], default="separate",
                   help="one run per budget (what --time-budget gives a user), or one run with snapshots")
    g.add_argument("--precision", default="auto", help="training precision, as the training CLI's "
                   "(auto: bf16 autocast on CPUs that have it)")
    g = p.add_argument_group("n2v")
    g.add_argument("--variants", type=lambda t: [v for v in t.split(",") if v], default=["n2v", "n2v2"],
                   help="n2v, n2v2 or both (comma list)")
    g.add_argument("--n2v-patch", type=int, default=N2V_PATCH)
    g.add_argument("--n2v-batch", type=int, default=N2V_BATCH)
    g.add_argument("--n2v-python", default=str(N2V_PYTHON), help="python of the CAREamics environment "
                   "(default: .venv-n2v/bin/python in the repository)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.mode == "n2v-worker":
        n2v_worker(args.spec)
        return 0
    defaults = dict(budgets=BUDGETS, train_fields="31-40", score_fields="21-30")
    defaults.update(SMOKE if args.smoke else {})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, parse_floats(value) if key == "budgets" else
                    parse_fields(value) if key.endswith("fields") else value)
    out = args.out or (SMOKE_RESULTS if args.smoke else RESULTS)
    json_path = out.with_suffix(".json")
    if args.mode == "report":
        out.write_text(render(json.loads(json_path.read_text()), args.smoke))
        print(out.read_text())
        return 0
    if any(b <= 0 for b in args.budgets):
        raise SystemExit("error: budgets are CPU-minutes above 0")
    if unknown := [v for v in args.variants if v not in N2V_VARIANTS]:
        raise SystemExit(f"error: --variants {','.join(unknown)}: choose n2v, n2v2")
    if args.list_params:
        list_params(args.init)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    if args.mode == "ours" and args.method is None:
        from napari_vdir.training.config import FINETUNE_METHOD

        args.method = FINETUNE_METHOD
    args.w2s = args.w2s or _eval_w2s().W2S
    train, pairs = split(args)
    command = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} python benchmarks/finetune_w2s.py " \
        + " ".join(shlex.quote(relative(a)) for a in (sys.argv[1:] if argv is None else argv))
    t0 = time.time()
    run = {"id": f"{time.time():.6f}-{os.getpid()}", "command": command, "mode": args.mode,
           "date": datetime.date.today().isoformat(), "machine": machine(), "threads": args.threads,
           "torch": torch.__version__, "train_fields": fields_text(args.train_fields),
           "score_fields": fields_text(args.score_fields), "crop": args.crop, "smoke": args.smoke}

    def save(entries: list[dict]) -> None:
        run["wall_s"] = round(time.time() - t0, 1)
        out.write_text(render(store(entries, json_path, run), args.smoke))

    save([noisy_entry(pairs)])  # also checks, before any training, that the report is of this split
    with tempfile.TemporaryDirectory(prefix="finetune-w2s-") as tmp:
        work = (args.work or Path(tmp)).resolve()  # the CAREamics worker runs in a subfolder
        work.mkdir(parents=True, exist_ok=True)
        (run_ours if args.mode == "ours" else run_n2v)(args, train, pairs, work, save)
    print(f"wrote {out} and {json_path.name}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
