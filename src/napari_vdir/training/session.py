"""Fine-tuning from in-memory arrays (napari layers): the headless API behind the "Fine-tune (VDIR)" dock.

One call, :func:`finetune`, trains a shipped or user model on arrays for some minutes (or a number of steps)
with the training package's own loop (:class:`~napari_vdir.training.trainer.Trainer`, its losses and its
self-supervised methods, exactly as ``python -m napari_vdir.training``), reports each step to a callback,
stops when a ``threading.Event`` is set, and saves the result in the user models folder
(:mod:`napari_vdir.core.models`), where ``restore(model=NAME)`` and the plugin's model lists find it.

- Noisy arrays alone: self-supervised (Neighbor2Neighbor by default, or blind-spot), as
  ``--self-supervised``; the validation metric is the self-supervised loss on held-out planes.
- Noisy arrays and their clean twins: supervised pairs, as ``--degraded``; the metric is validation PSNR.

Intensities are mapped as ``napari_vdir.restore`` maps them (:func:`napari_vdir.training.data.array_planes`),
so the model is trained on the scale it will see when it restores the same data. No napari, no Qt.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_vdir.core import models
from napari_vdir.core.inference import is_cancelled
from napari_vdir.training.config import FINETUNE_METHOD
from napari_vdir.training.trainer import Trainer, TrainingCancelled

__all__ = ["finetune", "check_destination", "StepRecord", "FineTuneResult", "TrainingCancelled", "ModelNotSaved",
           "METHODS", "DEFAULT_MINUTES", "DEFAULT_STEPS"]

METHODS = ("neighbor2neighbor", "pseudo-clean", "blind-spot")  # the first: config.FINETUNE_METHOD
# training time when neither minutes nor steps are given: what a biologist plans around (wall clock of the
# training steps; the ~VAL_POINTS validations and preparing the data come on top)
DEFAULT_MINUTES = 5.0
DEFAULT_STEPS = 300  # the dock's suggestion when steps are chosen instead of time
STEP_CAP = 10**9  # the recipe's steps in a run that the time budget ends
DEFAULT_PATCH = 64
DEFAULT_BATCH = 8
VAL_POINTS = 20  # validations per run: the live curve's points


@dataclass(frozen=True)
class StepRecord:
    """One training step as the callback sees it. ``val`` is set on validation steps (and step 0)."""

    step: int
    steps: int | None  # the run's steps; None in a run with a time budget (``minutes``)
    loss: float | None  # the training objective of this step (None at step 0, before training)
    val: float | None
    seconds: float  # wall seconds since the call began (data preparation and validations included)
    train_seconds: float = 0.0  # seconds of the training steps: what the ``minutes`` budget counts
    minutes: float | None = None  # the run's time budget (None: it runs ``steps`` steps)


@dataclass
class FineTuneResult:
    name: str
    path: Path
    info: object  # weights.ModelInfo of the saved file
    metric: str  # what ``val`` measures: "val_loss" (self-supervised, lower is better) or "val_psnr" (dB)
    history: list[StepRecord] = field(default_factory=list)
    # how the saved weights compare with the starting model on the held-out data, in one line: "held-out error
    # -0.42 % of the noise against the starting model (better)" or "the starting model stayed best ...; saved
    # unchanged"
    outcome: str | None = None
    start_kept: bool = False  # the starting model validated best and was saved unchanged


def metric_of(clean) -> str:
    return "val_psnr" if clean is not None else "val_loss"


class ModelNotSaved(OSError):
    """Training finished but the model could not be saved in the user models folder; it was kept at ``path``."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


def check_destination(name: str, overwrite: bool = False) -> Path:
    """Where :func:`finetune` will save the model ``name``, checked before any training: a valid name that no
    shipped model has, free in the user models folder (unless ``overwrite``), and a folder that is a folder
    and can be written (it is created if missing). One-line ``ValueError``/``FileExistsError``/``OSError``."""
    import os

    from napari_vdir.core.models import shipped_models
    from napari_vdir.core.weights import WEIGHTS_SUFFIX

    name = models.check_model_name(name)
    if name in shipped_models():
        raise ValueError(f"{name!r} is the name of a shipped model; choose another name")
    folder = models.user_models_dir()
    fix = f"move it away or set {models.ENV_VAR} to a folder you can write to"
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == folder else f"is under {existing}, which is a file"
        raise NotADirectoryError(f"your models folder {folder} {where}, not a folder; {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")  # hidden: never listed as a model
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PermissionError(f"your models folder {folder} cannot be written ({err.strerror or err}); "
                              f"{fix}") from None
    target = folder / f"{name}{WEIGHTS_SUFFIX}"
    if target.exists() and not overwrite:
        raise FileExistsError(f"a user model named {name!r} exists; choose another name")
    return target


def finetune(noisy, clean=None, *, name: str, init: str | Path = "denoise-gray", minutes: float | None = None,
             steps: int | None = None, method: str | None = None, patch: int | None = None,
             batch: int = DEFAULT_BATCH, lr: float | None = None, adapt: str | None = None,
             rgb: bool | None = None, channel_axis=None,
             intensity_range=None, callback=None, cancel=None, device: str = "auto", precision: str = "auto",
             seed: int = 0, labels: list[str] | None = None, overwrite: bool = False,
             notify: bool = True) -> FineTuneResult:
    """Fine-tune ``init`` on arrays and save it as the user model ``name``.

    Parameters
    ----------
    noisy : array or list of arrays
        Images to train on (2-D, stacks with leading Z/T axes, RGB, channels): every 2-D plane is a training
        image, and so is every channel that is not RGB colour (an ``(H, W, 2)`` array gives two planes).
    clean : array or list of arrays, optional
        Clean twins of ``noisy`` (same shapes, ``scale`` times larger for super-resolution): supervised
        pairs. Without them the run is self-supervised (denoising only).
    name : the new model's name in the user models folder (letters, digits, ``._-``).
    init : shipped or user model name, or a weights file, to start from; it sets task and channels.
    minutes : how long to train (wall-clock minutes of the training steps, as ``--time-budget`` with
        ``--budget-clock wall``; validating about :data:`VAL_POINTS` times and preparing the data come on top).
        The default when neither ``minutes`` nor ``steps`` is given: :data:`DEFAULT_MINUTES`.
    steps : the alternative to ``minutes``: a fixed number of training steps. Give one of the two; both
        is a ``ValueError``.
    patch, batch, lr, adapt, seed : as ``python -m napari_vdir.training``; ``patch`` defaults to 64 px
        (less for smaller images); ``lr`` is the peak of the cosine schedule, after a short warm-up; ``adapt``
        is which parameters train ("all" or "biases"). Defaults (None): a fine-tune's,
        :data:`~napari_vdir.training.config.FINETUNE_NOISY` on noisy images alone for the method (every
        parameter; pseudo-clean at 1e-5, Neighbor2Neighbor and blind-spot at 3e-5: measured on real microscopy;
        ``adapt="biases"`` trains only the biases, at 1e-3) or
        :data:`~napari_vdir.training.config.FINETUNE_PAIRS` with clean twins (every parameter, 1e-4).
    method : self-supervised runs (None: :data:`~napari_vdir.training.config.FINETUNE_METHOD`):
        "neighbor2neighbor", "pseudo-clean" (the start's own restorations of the images, noised again by the noise
        model fitted to them, are the targets: learns faster on real microscopy, but the held-out check keeps its
        start longer, see docs/fine-tuning.md) or "blind-spot".
    rgb : whether the last axis is colour. None: ``restore``'s rule (with 3+ dimensions a last axis of 3 is
        RGB, of 4 RGBA, of 2 two channels); False (napari's ``layer.rgb``): never colour, a last axis of 2 or 4
        holds channels. See :func:`~napari_vdir.training.data.array_layout`.
    channel_axis : ``restore``'s option of that name (False: none), or a list with one per noisy array.
    intensity_range : ``restore``'s option of that name (e.g. a layer's contrast limits), or a list with one
        per noisy array; None: restore's default mapping (uint8 / 255, other integers by their robust range,
        per channel for channels, floats as they are). Each clean twin is mapped by its noisy array's range,
        so a pair keeps one scale. Floats far outside [0, 1] need a range (they are refused without one).
    callback : ``callback(StepRecord)`` after step 0's validation and after every training step.
    cancel : ``threading.Event`` or callable; checked before every step, raises :class:`TrainingCancelled`
        and saves nothing.
    overwrite : replace an existing user model of that name. ``notify``: tell the
        :func:`~napari_vdir.core.models.on_user_models_changed` subscribers once the model is saved.

    Everything that can be checked is checked before training (the data as ``restore`` checks it, the
    destination by :func:`check_destination`). If saving still fails at the end (the folder turned
    read-only, another process took the name), :class:`ModelNotSaved` names where the model was kept.
    """
    from napari_vdir.core.models import resolve_model
    from napari_vdir.core.weights import load_weights, read_info
    from napari_vdir.training.__main__ import MINIMAL_DEFAULTS
    from napari_vdir.training.config import Recipe, one_line, with_finetune_defaults
    from napari_vdir.training.data import ArrayData, array_planes

    if minutes is not None and steps is not None:
        raise ValueError("give minutes (a training-time budget) or steps (a fixed number of steps), not both")
    if steps is None:
        minutes = DEFAULT_MINUTES if minutes is None else minutes
        number = isinstance(minutes, (int, float, np.floating)) and not isinstance(minutes, bool)
        if not number or not 0 < minutes < math.inf:
            raise ValueError(f"minutes must be a positive number of minutes, got {minutes!r}")
        minutes = float(minutes)
    elif isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a whole number of at least 1, got {steps!r}")
    name = check_destination(name, overwrite).stem
    method = method or FINETUNE_METHOD
    if method not in METHODS:
        raise ValueError(f"method {method!r}: choose {' or '.join(METHODS)}")
    start = read_info(resolve_model(init, "denoise", 1))
    init_path = resolve_model(init, start.task, start.channels, start.scale)
    if clean is None and start.task not in ("denoise", "real-denoise"):
        raise ValueError(f"{start.name} is a {start.task} model: without clean images only denoisers can be "
                         "fine-tuned (add the clean layer for pairs)")

    noisy_arrays = _as_list(noisy)
    clean_arrays = None if clean is None else _as_list(clean)
    if clean_arrays is not None and len(clean_arrays) != len(noisy_arrays):
        raise ValueError(f"{len(noisy_arrays)} noisy images but {len(clean_arrays)} clean ones; give one clean "
                         "image for each noisy one")
    axes = _per_array(channel_axis, len(noisy_arrays), "channel axes")
    given = _per_array(intensity_range, len(noisy_arrays), "intensity ranges")
    _check_arrays(noisy_arrays, clean_arrays, given, labels)
    if start.channels == 1 and any(_is_rgb(a, rgb, ax) for a, ax in zip(noisy_arrays, axes, strict=True)):
        raise ValueError(f"{start.name} is a gray model; start from an RGB model to train on colour images")
    ranges = _ranges_for(noisy_arrays, given, rgb, axes)
    noisy_planes, clean_planes = [], None if clean_arrays is None else []
    for k, array in enumerate(noisy_arrays):
        layout = dict(rgb=rgb, channel_axis=axes[k], intensity_range=ranges[k])
        noisy_planes += array_planes(array, start.channels, **layout)
        if clean_arrays is not None:  # mapped by its noisy twin's range: the pair keeps one intensity scale
            clean_planes += array_planes(clean_arrays[k], start.channels, **layout)
    smallest = min(min(p.shape[:2]) for p in noisy_planes)
    if patch is None:
        patch = min(DEFAULT_PATCH, smallest // 8 * 8)
        if patch < 16:
            raise ValueError(f"images of {smallest} px are too small to train on (at least 16 px on each side)")

    run = int(steps) if minutes is None else STEP_CAP  # a budgeted run validates by time (fit's val_points)
    values = dict(MINIMAL_DEFAULTS, name=name, task=start.task, channels=start.channels,
                  scale=start.scale if start.task == "sr" else None, init=str(init_path),
                  data={"train": list(labels or ["arrays"])}, steps=run, patch=patch, batch=batch, seed=seed,
                  self_supervised=method if clean is None else None,
                  val_every=max(1, run // VAL_POINTS), checkpoint_every=run,
                  time_budget_minutes=minutes, budget_clock="wall", **({} if lr is None else {"lr": lr}))
    values = with_finetune_defaults(values, values["self_supervised"], adapt)
    try:
        recipe = Recipe.model_validate(values)
    except ValueError as err:
        raise ValueError(one_line(err)) from None

    metric = metric_of(clean)
    history: list[StepRecord] = []
    t0 = time.perf_counter()

    def report(trainer, row):
        if not history and trainer.history:  # step 0: the starting model's validation
            first = trainer.history[0]
            history.append(StepRecord(0, steps, None, first.get(metric), 0.0, 0.0, minutes))
            if callback is not None:
                callback(history[-1])
        history.append(StepRecord(trainer.step, steps, row.get("total"), row.get(metric),
                                  time.perf_counter() - t0, trainer.train_seconds, minutes))
        if callback is not None:
            callback(history[-1])

    out = Path(tempfile.mkdtemp(prefix="napari-vdir-finetune-"))
    keep = False
    try:
        trainer = Trainer(recipe, out, device=device, precision=precision, log=lambda *_: None)
        trainer.load_data(ArrayData(noisy_planes, clean_planes))
        exported = trainer.fit(report, cancel=cancel, val_points=VAL_POINTS)
        if is_cancelled(cancel):
            raise TrainingCancelled(f"cancelled at step {trainer.step}")  # pressed during the last step
        model, info = load_weights(exported)
        info.description += f"; fine-tuned from {start.name} on {', '.join(recipe.data.train)}"
        try:
            path = models.save_user_model(name, model, info, overwrite=overwrite, notify=notify)
        except OSError as err:  # read-only meanwhile, the name taken meanwhile, a full disk: keep the model
            keep = True
            kept = _keep(out, exported, name, model, info)
            raise ModelNotSaved(f"the model {name!r} could not be saved in your models folder "
                                f"({' '.join(str(err).split())}); it is kept at {kept}: copy it into "
                                f"{models.user_models_dir()} under a free name, or restore with "
                                f"model='{kept}'", kept) from err
    finally:
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    return FineTuneResult(name, path, read_info(path), metric, history, outcome=trainer.outcome(),
                          start_kept=trainer.export_state()[1] == "start")


def _keep(out: Path, exported: Path, name: str, model, info) -> Path:
    """The trained model, kept in the run's own folder when the models folder would not take it: as the
    user model would have been written; the training's last export if even that fails (a full disk)."""
    from dataclasses import replace

    from napari_vdir.core.weights import save_weights

    (out / "checkpoint.pt").unlink(missing_ok=True)  # the optimiser state is not needed to use the model
    try:
        return save_weights(out / f"{name}.safetensors", model, replace(info, name=name))
    except OSError:
        return exported


def _check_arrays(noisy: list, clean: list | None, ranges: list, labels) -> None:
    """Each array checked as ``restore`` checks it (:func:`~napari_vdir.training.data.check_training_image`);
    the message names the array when there are several."""
    from napari_vdir.training.data import check_training_image

    several = len(noisy) > 1 or clean is not None
    for kind, arrays in (("noisy", noisy), ("clean", clean or [])):
        for k, array in enumerate(arrays):
            try:
                check_training_image(np.asarray(array), ranges[k])
            except (TypeError, ValueError) as err:
                if not several:
                    raise
                name = repr(labels[k]) if labels and k < len(labels) else f"image {k + 1}"
                raise type(err)(f"{kind} {name}: {err}") from None


def _per_array(value, count: int, what: str) -> list:
    """One value per array: a list (checked against ``count``) or one value for all."""
    if isinstance(value, list):
        if len(value) != count:
            raise ValueError(f"{len(value)} {what} for {count} images")
        return value
    return [value] * count


def _ranges_for(arrays: list, intensity_range, rgb: bool | None, channel_axis=None) -> list:
    """One explicit range (``(low, high)``, a ``(C, 2)`` array for channels, or None: floats as they are) per
    noisy array: ``intensity_range`` (one for all, or a list with one per array) resolved as ``restore``
    resolves it for that array (:func:`~napari_vdir.training.data.array_range`)."""
    from napari_vdir.training.data import array_range

    given = _per_array(intensity_range, len(arrays), "intensity ranges")
    axes = _per_array(channel_axis, len(arrays), "channel axes")
    return [array_range(np.asarray(array), rgb=rgb, channel_axis=ax, intensity_range=rng)
            for array, rng, ax in zip(arrays, given, axes, strict=True)]


def _is_rgb(array, rgb: bool | None, channel_axis=None) -> bool:
    """As :func:`~napari_vdir.training.data.array_layout` decides."""
    from napari_vdir.training.data import array_layout

    return array_layout(tuple(np.shape(array)), rgb, channel_axis)[1]


def _as_list(arrays) -> list:
    if isinstance(arrays, (list, tuple)):
        if not arrays:
            raise ValueError("no images given")
        return list(arrays)
    return [arrays]
