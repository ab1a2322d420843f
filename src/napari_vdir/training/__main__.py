"""python -m napari_vdir.training — train a VDIR model, or fine-tune a shipped one on your images."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from napari_vdir.core.tasks import TASKS

EPILOG = """\
examples:
  # fine-tune the shipped denoiser on a folder of your own clean images (noise is added on the fly)
  python -m napari_vdir.training --task denoise --data my_clean_images/ --init denoise-gray --steps 500 --out runs/mine

  # train from scratch, minimal form (a small, CPU-friendly network)
  python -m napari_vdir.training --task denoise --data DIR --steps 2000 --out OUT

  # no clean images: fine-tune the gray denoiser on your noisy images alone for 10 minutes (Neighbor2Neighbor)
  python -m napari_vdir.training --task denoise --data my_noisy_stacks/ --self-supervised --init denoise-gray \
      --steps 100000 --time-budget 10 --out runs/my-microscope

  # repeated acquisitions of each field (axis 0 of every stack): Noise2Noise on frame pairs
  python -m napari_vdir.training --task denoise --data my_timelapses/ --pairs-from 0 --init denoise-gray \
      --steps 2000 --out runs/my-microscope-n2n

  # paired data: degraded images matched by file name with the clean ones
  python -m napari_vdir.training --task real-denoise --data clean/ --degraded noisy/ --steps 1000 --out OUT

  # reproduce a shipped model from its recipe
  python -m napari_vdir.training --recipe training/denoise-rgb.yaml --out runs/denoise-rgb

  # resume an interrupted run (Ctrl-C saves OUT/checkpoint.pt); --overwrite instead starts it again
  python -m napari_vdir.training --recipe training/denoise-rgb.yaml --out runs/denoise-rgb --resume

The result, OUT/<name>.safetensors, loads with napari_vdir.restore(..., model=PATH) and in the plugin's
model chooser. OUT/log.csv has the loss terms and validation PSNR; several GPUs: torchrun --nproc_per_node N -m
napari_vdir.training ...
"""

SMALL_ARCH = {"width": 32, "rir_blocks": 2, "res_blocks": 2, "encoder_width": 32}
# what the minimal form (no --recipe) adds: the CPU recipes' settings (training/denoise-gray.yaml);
# the GAN critic is off (--critic turns it on): 9.4M parameters beside a 0.15M-parameter generator
MINIMAL_DEFAULTS = {"losses": {"gan": 0.0}, "grad_clip": 1.0, "lr_min": 1e-6}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description and examples as written, and each option's default (unless it has none)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _default(field: str) -> str:
    from napari_vdir.training.config import Recipe

    return f"(default: {Recipe.model_fields[field].default:g})"


BARE_SELF_SUPERVISED = "default"  # ``--self-supervised`` without a method: the recipe's, else FINETUNE_METHOD
SELF_SUPERVISED_FLAGS = ("neighbor2neighbor", "pseudo-clean", "blind-spot")  # noise2noise: --pairs-from


def self_supervised_method(value: str) -> str:
    """``--self-supervised``'s value: a method, or ``default`` (what the bare flag gives)."""
    if value not in (*SELF_SUPERVISED_FLAGS, BARE_SELF_SUPERVISED):
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(SELF_SUPERVISED_FLAGS)})")
    return value


def build_parser() -> argparse.ArgumentParser:
    from napari_vdir.training.config import ADAPT_LR, FINETUNE_METHOD, FINETUNE_NOISY, FINETUNE_PAIRS

    noisy = FINETUNE_NOISY[FINETUNE_METHOD]

    p = argparse.ArgumentParser(prog="python -m napari_vdir.training", description=__doc__, epilog=EPILOG,
                                formatter_class=HelpFormatter)
    p.add_argument("--recipe", help="YAML recipe (see training/*.yaml); flags below override its values")
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--data", action="append",
                   help="folder or glob pattern of training images (repeatable): clean ones, or noisy ones with "
                        "--self-supervised / --pairs-from")
    p.add_argument("--degraded", help="folder of degraded images paired with --data (by file name, else in sorted order)")
    p.add_argument("--val", help="folder or glob pattern of clean held-out images for validation PSNR")
    p.add_argument("--val-degraded", help="their real degraded twins (else --val gets the task's synthetic degradation)")
    p.add_argument("--self-supervised", nargs="?", const=BARE_SELF_SUPERVISED, type=self_supervised_method,
                   metavar="{" + ",".join(SELF_SUPERVISED_FLAGS) + "}",
                   help=f"train on noisy images alone (default method: the recipe's, else {FINETUNE_METHOD}; "
                        "pseudo-clean, which learns from the --init model's own restorations, learns faster on "
                        "microscopy but the held-out check keeps its start longer: see docs/fine-tuning.md); without "
                        "--val the self-supervised loss on held-out noisy images is logged")
    p.add_argument("--pairs-from", type=int, metavar="AXIS",
                   help="Noise2Noise: the axis of each stack that holds repeated frames of the same field")
    p.add_argument("--channels", type=int, choices=[1, 3], help="1 = gray, 3 = colour (default: from the data)")
    p.add_argument("--scale", type=int, choices=[2, 4], help="upscaling factor for --task sr")
    p.add_argument("--degradation", help="awgn, poisson, awgn+poisson, camera, blur or jpeg (default: the task's)")
    p.add_argument("--init", help="shipped model name or weights file to fine-tune from "
                   "(default: none, a small network from scratch)")
    p.add_argument("--steps", type=int, help="training steps (needed without --recipe)")
    p.add_argument("--patch", type=int, help=f"patch size in pixels (multiple of 4) {_default('patch')}")
    p.add_argument("--batch", type=int, help=f"patches per step {_default('batch')}")
    p.add_argument("--lr", type=float, help=f"peak learning rate (cosine decay) {_default('lr')}; with --init "
                   f"{noisy['lr']:g} on noisy images alone ({FINETUNE_NOISY['pseudo-clean']['lr']:g} with "
                   f"pseudo-clean, {ADAPT_LR['biases']:g} with --adapt biases), "
                   f"{FINETUNE_PAIRS['lr']:g} on pairs")
    p.add_argument("--warmup-steps", type=int,
                   help="linear learning-rate warm-up (spares fine-tuned weights Adam's large first steps) "
                        + _default("warmup_steps") + f"; with --init {noisy['warmup_steps']} on noisy "
                        f"images alone, {FINETUNE_PAIRS['warmup_steps']} on pairs")
    p.add_argument("--val-every", type=int, help="validate every N steps (default: steps/5, at most 500)")
    p.add_argument("--critic", action=argparse.BooleanOptionalAction,
                   help="train with the GAN critic on the latent's decoder output (default: off without --recipe, "
                        "else the recipe's losses.gan)")
    p.add_argument("--seed", type=int, help=f"random seed {_default('seed')}")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="anneal the learning rate over this much training time and stop there (default: none)")
    p.add_argument("--budget-clock", choices=["wall", "cpu"],
                   help="what --time-budget counts: wall time (default) or this process's CPU time, which gives "
                        "jobs sharing cores equal compute")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="keep a moving average of the weights (e.g. 0.999) and export it where it validates better")
    p.add_argument("--adapt", choices=["all", "biases"],
                   help="which parameters of the --init model train: all, or only the biases (default with --init: "
                        f"{noisy['adapt']} on noisy images alone, {FINETUNE_PAIRS['adapt']} on pairs)")
    p.add_argument("--keep-best", action=argparse.BooleanOptionalAction,
                   help="export the best-validated weights, the starting model's included (default: on with --init, "
                        "so a fine-tune never ends below its start on the validation metric)")
    p.add_argument("--name", help="name of the weights file (default: the task)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", nargs="?", const="", metavar="CKPT",
                   help="resume from a checkpoint (default: OUT/checkpoint.pt)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run OUT holds (its checkpoint.pt, log.csv and weights); without it (or "
                        "--resume) an OUT that holds a run is refused")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bf16/AMP where the device supports it")
    p.add_argument("--threads", type=int, help="CPU threads (use 1 when another job shares a 2-core machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def recipe_from_args(args):
    from napari_vdir.core.io import read_image
    from napari_vdir.training.config import FINETUNE_METHOD, Recipe, load_recipe
    from napari_vdir.training.data import array_layout, image_paths

    if args.self_supervised == BARE_SELF_SUPERVISED:  # the recipe's method, else the default one
        named = load_recipe(args.recipe).self_supervised if args.recipe else None
        args.self_supervised = named or FINETUNE_METHOD
    overrides = {"task": args.task, "channels": args.channels, "scale": args.scale, "degradation": args.degradation,
                 "init": args.init, "steps": args.steps, "patch": args.patch, "batch": args.batch, "lr": args.lr,
                 "warmup_steps": args.warmup_steps, "val_every": args.val_every, "seed": args.seed, "name": args.name,
                 "time_budget_minutes": args.time_budget, "budget_clock": args.budget_clock, "self_supervised": args.self_supervised,
                 "pairs_from": args.pairs_from, "ema_decay": args.ema, "keep_best": args.keep_best,
                 "adapt": args.adapt}
    if args.recipe:
        recipe = load_recipe(args.recipe, **overrides)
        given = {"train": args.data, "val": args.val, "val_degraded": args.val_degraded, "degraded": args.degraded}
        if any(given.values()):
            data = recipe.data.model_dump()
            data.update({k: v for k, v in given.items() if v})
            recipe = Recipe.model_validate({**recipe.model_dump(), "data": data})
        return with_critic(recipe, args.critic)
    if not args.task or not args.data or not args.steps:
        raise ValueError("without --recipe, give at least --task, --data and --steps")
    values = {k: v for k, v in overrides.items() if v is not None}
    values.update(MINIMAL_DEFAULTS)
    values.setdefault("name", args.task + (f"-x{args.scale}" if args.scale else ""))
    if "channels" not in values:
        first = image_paths(args.data[0])
        if not first:
            raise ValueError(f"{args.data[0]} holds no PNG/JPEG/TIFF images")
        img = read_image(first[0])
        values["channels"] = 3 if array_layout(img.shape)[1] else 1  # RGB (or RGBA) as restore reads it
    if not args.init:
        values["arch"] = SMALL_ARCH
    else:  # a trained start: its method's learning rate and warm-up (config.FINETUNE_NOISY / FINETUNE_PAIRS)
        from napari_vdir.training.config import with_finetune_defaults

        method = "noise2noise" if args.pairs_from is not None else values.get("self_supervised")
        values = with_finetune_defaults(values, method, args.adapt)
    values.setdefault("val_every", max(1, min(500, values["steps"] // 5)))
    values.setdefault("checkpoint_every", max(1, min(1000, values["steps"])))
    values["data"] = {"train": args.data, "val": args.val, "val_degraded": args.val_degraded, "degraded": args.degraded}
    return with_critic(Recipe.model_validate(values), args.critic)


def with_critic(recipe, critic: bool | None):
    """--critic / --no-critic: the GAN term at its default weight, or off; None keeps the recipe's."""
    from napari_vdir.training.config import LossWeights, Recipe

    if critic is None or critic == (recipe.losses.gan > 0):
        return recipe
    gan = LossWeights.model_fields["gan"].default if critic else 0.0
    values = recipe.model_dump()
    values["losses"]["gan"] = gan
    return Recipe.model_validate(values)


def _fail(err: Exception) -> int:
    from napari_vdir.training.config import one_line

    print(f"error: {one_line(err)}", file=sys.stderr)
    return 2


RUN_FILES = ("checkpoint.pt", "log.csv")  # with OUT/<name>.safetensors: what a run writes into OUT


def check_out_folder(out: Path) -> None:
    """``--out`` must be (or become) a folder we can write: not a file, not under a file."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the run's weights, log and checkpoint")
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ValueError(f"--out {out}: {existing} is a file, so no folder can be made under it; give another --out")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {existing} is not writable; give a folder you can write to")


def run_files(out: Path, name: str) -> list[Path]:
    """The files of an earlier run in OUT (its checkpoint, log and weights of this name)."""
    return [p for p in (*(out / f for f in RUN_FILES), out / f"{name}.safetensors") if p.exists()]


def check_earlier_run(out: Path, name: str, resume: str | None, overwrite: bool) -> None:
    """An OUT that holds a run is continued (``--resume``) or replaced (``--overwrite``), never silently both."""
    if resume is not None and overwrite:
        raise ValueError("--resume continues the run in OUT and --overwrite replaces it; give one of them")
    found = run_files(out, name)
    if found and resume is None and not overwrite:
        raise ValueError(f"{out} already holds a run ({', '.join(p.name for p in found)}); add --resume to continue "
                         "it, --overwrite to replace it, or give another --out")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    try:
        if args.pairs_from is not None and args.pairs_from < 0:
            raise ValueError(f"--pairs-from {args.pairs_from}: give the frame axis counted from the front (0 for a "
                             "(T, Y, X) stack); the last axes of a stack are its image")
        check_out_folder(out)
        recipe = recipe_from_args(args)
        check_earlier_run(out, recipe.name, args.resume, args.overwrite)
    except (ValueError, FileNotFoundError) as err:
        return _fail(err)
    from napari_vdir.training.trainer import Trainer

    try:
        trainer = Trainer(recipe, out, device=args.device, precision=args.precision, threads=args.threads)
        trainer.load_data()
        if args.resume is not None:
            ckpt = Path(args.resume) if args.resume else out / "checkpoint.pt"
            trainer.resume(ckpt)
            print(f"resumed from {ckpt} at step {trainer.step}")
        elif args.overwrite and trainer.rank == 0:  # the data loaded: now the earlier run is replaced
            for path in run_files(out, recipe.name):
                path.unlink()
    except (ValueError, FileNotFoundError) as err:
        return _fail(err)
    bar = None
    if not args.quiet and trainer.rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=recipe.steps, initial=trainer.step, unit="step", dynamic_ncols=True)
    last_val = [None]

    def progress(tr, row):
        if row.get("val_psnr") is not None:
            last_val[0] = row["val_psnr"]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['total']:.4f}", psnr=f"{last_val[0]:.2f}" if last_val[0] else "-")

    try:
        path = trainer.fit(progress)
    except KeyboardInterrupt as err:
        print(f"\n{err}", file=sys.stderr)
        return 130
    except FloatingPointError as err:  # a diverged run: say so in one line, the last checkpoint stays
        ckpt = out / "checkpoint.pt"
        kept = (f"{ckpt} holds the last good state: --resume from it" if ckpt.is_file()
                else "no checkpoint was written before it")
        print(f"\nerror: {err}; lower --lr or try --precision float32 ({kept})", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {path} (step {trainer.step}, validation PSNR {last_val[0] if last_val[0] else 'n/a'})")
    if trainer.rank == 0:
        kept = trainer.export_state()[1]
        outcome = trainer.outcome()
        if kept != "latest" or outcome:
            print(f"weights: {kept}" + (f"; {outcome}" if outcome else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
