"""Training recipes: one validated YAML file per shipped model (unknown keys are rejected)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_serializer, model_validator

from napari_vdir.core.degradations import DEFAULT_RANGES
from napari_vdir.core.nets import ARCH_CHOICES, ARCH_LIMITS, ArchConfig
from napari_vdir.core.tasks import ESTIMATES, Task, check_task

Adapt = Literal["all", "biases"]
SelfSupervised = Literal["neighbor2neighbor", "blind-spot", "noise2noise", "pseudo-clean"]
Degradation = Literal["awgn", "awgn+poisson", "poisson", "camera", "blur", "sr-mix", "jpeg"]
# sr: "sr-mix" is how low-resolution images are really made (binning, resizes, blurs; pixel-centred grid);
# "blur" is the paper's protocol (Gaussian blur, keep the top-left pixel of each block), the shipped SR models' recipe
DEFAULT_DEGRADATION = {"denoise": "awgn", "real-denoise": "camera", "sr": "sr-mix", "jpeg": "jpeg"}


# Fine-tuning a trained model (``init``): the self-supervised method, which parameters train, the peak learning rate
# and the warm-up that replace the from-scratch defaults (every parameter, lr 1e-3, no warm-up), in the CLI's minimal
# form, ``finetune()`` and the Fine-tune dock.
# - noisy images alone: chosen on W2S widefield microscopy (trained on the noisy frames of fields 031-040, scored on
#   fields 021-030 against their 400-frame averages, matched PSNR, start 32.72 dB; benchmarks/results/finetune_w2s.md
#   and the grid finetune_w2s-grid.md) and on the README's synthetic stack, far from anything the start has seen
#   (benchmarks/results/selfsupervised_example.md). Neighbor2Neighbor, every parameter at 3e-5 (the best of
#   1e-5 ... 3e-4), is the method. pseudo-clean (the start's own restorations, noised again by the noise model fitted
#   to the data, as targets) at 1e-5 without the latent's decoder is ahead of it on W2S up to 10 CPU-minutes and by
#   0.8 dB on the stack, but it is an option, not the default: its weights restore more smoothly than the start, and
#   whether that is better hangs on the noise level to a few per cent, which the held-out check cannot pin down; with
#   the check passing under both noise fits (trainer.validate_self_supervised) it keeps the start on a sigma-25
#   photograph (it saved -0.17 dB with one fit: tests/training/test_keep_best.py) but also on W2S up to 5 CPU-minutes,
#   where the weights were +0.23..+0.32 dB (benchmarks/results/heldout_check.md).
#   Only the biases (adapt: biases, a few thousand numbers that shift what each filter responds
#   to) at 1e-3 was measured with Neighbor2Neighbor: +0.23 dB on W2S, +0.73 on the stack.
# - clean pairs: every parameter, at the rate the shipped models' later training stages continue at
#   (training/denoise-rgb.yaml).
FINETUNE_METHOD = "neighbor2neighbor"  # the self-supervised method of a fine-tune (and from scratch)
FINETUNE_NOISY = {  # per self-supervised method; ``losses`` are merged into the recipe's
    "pseudo-clean": {"adapt": "all", "lr": 1e-5, "warmup_steps": 50, "losses": {"decoder": 0.0}},
    "neighbor2neighbor": {"adapt": "all", "lr": 3e-5, "warmup_steps": 50},
    "blind-spot": {"adapt": "all", "lr": 3e-5, "warmup_steps": 50},
}
FINETUNE_PAIRS = {"adapt": "all", "lr": 1e-4, "warmup_steps": 100}
ADAPT_LR = {"biases": 1e-3}  # the rate of an adapt the caller chose over the default's


def finetune_defaults(method: str | None, adapt: str | None = None) -> dict:
    """What a fine-tune from a trained model trains and at which rate and warm-up (a copy): ``method`` is the
    self-supervised method (None: clean pairs; "noise2noise" fine-tunes as Neighbor2Neighbor does); ``adapt``, where
    the caller chose it, keeps its own rate (:data:`ADAPT_LR`) when it is not the default's."""
    if method is None:
        defaults = dict(FINETUNE_PAIRS)
    else:
        defaults = dict(FINETUNE_NOISY.get(method, FINETUNE_NOISY["neighbor2neighbor"]))
    if adapt is not None and adapt != defaults["adapt"]:
        defaults.update(adapt=adapt, lr=ADAPT_LR[adapt])
    return defaults


def with_finetune_defaults(values: dict, method: str | None, adapt: str | None = None) -> dict:
    """``values`` (recipe fields) completed by :func:`finetune_defaults`: a field given wins, and so does a loss
    weight given in ``values["losses"]``."""
    values = dict(values)
    for key, value in finetune_defaults(method, adapt).items():
        if key == "losses":
            values["losses"] = {**value, **values.get("losses", {})}
        else:
            values.setdefault(key, value)
    return values


class Strict(BaseModel):
    """Unknown keys and non-finite numbers (``lr: .inf``, ``.nan``) are rejected."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# A recipe sets the network's size: these fields of nets.ArchConfig, with its defaults (the paper's) and its bounds
# (nets.ARCH_LIMITS and ARCH_CHOICES, those a weights file may declare), so every recipe trains a loadable model.
# The other fields follow from the recipe: channels, scale and estimate_dims (Recipe.arch_config).
RECIPE_ARCH = ("width", "rir_blocks", "res_blocks", "encoder_width", "trunk")
MIN_WIDTH = 4  # a recipe's layers are at least this wide (a weights file may declare narrower ones)
_DEFAULT = ArchConfig()


class _Arch(Strict):
    @model_serializer(mode="wrap")
    def _default_trunk_unwritten(self, handler):
        """As ``ArchConfig.to_dict``: the default trunk is not written, so a full-trunk recipe dumps (and a
        checkpoint's stored recipe compares on resume) exactly as before the field existed."""
        values = handler(self)
        if values.get("trunk") == _DEFAULT.trunk:
            del values["trunk"]
        return values


def _arch_field(name: str):
    default = getattr(_DEFAULT, name)
    if name in ARCH_CHOICES:
        return Literal[ARCH_CHOICES[name]], Field(default)
    low, high = ARCH_LIMITS[name]
    return int, Field(default, ge=max(low, MIN_WIDTH) if name.endswith("width") else low, le=high)


ArchSpec = create_model("ArchSpec", __base__=_Arch, __doc__="The network's size in a recipe: the fields "
                        f"{', '.join(RECIPE_ARCH)} of nets.ArchConfig, with its defaults and bounds.",
                        **{name: _arch_field(name) for name in RECIPE_ARCH})


class DataSpec(Strict):
    """Each image source is a folder or a glob pattern of files (``W2S/noisy/input_avg1_03[1-9]_*.tif``), or a list."""

    train: list[str] = Field(min_length=1, description="clean training images (noisy ones for a self-supervised run)")
    val: str | list[str] | None = Field(None, description="clean held-out images for validation PSNR")
    val_degraded: str | list[str] | None = Field(
        None, description="degraded twins of `val` (paired by file name, else in sorted order); without it the "
        "recipe's degradation is applied to `val`")
    degraded: str | None = Field(None, description="degraded images paired with `train` (by file name, else in "
                                 "sorted order)")
    exclude: list[str] = Field(default_factory=list, description="file names or patterns to leave out of training")
    val_images: int = Field(8, ge=1)
    val_crop: int = Field(256, ge=32)


class LossWeights(Strict):
    """Each term can be switched off (weight 0) for ablations."""

    restore: float = 1.0
    kl: float = 0.01
    decoder: float = 1.0
    gan: float = 0.001
    estimate: float = 1.0
    consistency: float = Field(1.0, ge=0, description="Neighbor2Neighbor's regulariser (gamma); self-supervised only")


class Recipe(Strict):
    name: str
    task: Task
    channels: Literal[1, 3] = 3
    scale: int | None = None
    degradation: Degradation | None = None
    ranges: Literal["degraded-only", "clean-inclusive", "clean-inclusive-jpeg-hq"] = Field(
        DEFAULT_RANGES, description="what the noise, camera and JPEG degradations draw from "
        "(degradations.NOISE_RANGES): 'clean-inclusive' reaches down to nothing to fix (10% exactly clean, "
        "sigma 0-75, low-ISO camera, JPEG 10-95 and uncompressed); 'clean-inclusive-jpeg-hq' also draws half "
        "the JPEG qualities log-uniformly in 100 - q (near-lossless as common as heavy)")
    arch: ArchSpec = ArchSpec()
    data: DataSpec
    steps: int = Field(ge=1)
    patch: int = Field(64, ge=16, description="input patch size (low-resolution side for sr)")
    batch: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_min: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(0.0, ge=0, description="max gradient norm; 0 disables")
    time_budget_minutes: float | None = Field(
        None, gt=0, description="anneal the learning rate over training time instead of steps, stop at the budget")
    budget_clock: Literal["wall", "cpu"] = Field(
        "wall", description="what time_budget_minutes counts: wall seconds of the training steps, or the "
                            "process's CPU seconds (equal compute for jobs that share cores)")
    seed: int = 0
    losses: LossWeights = LossWeights()
    val_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    init: str | None = Field(None, description="shipped model name or weights file to fine-tune from")
    init_network: str | None = Field(
        None, description="shipped model name or weights file of another task (same channels, scale and arch) whose "
                          "encoder and restorer start this run — e.g. a JPEG restorer from the denoiser; EST starts anew")
    self_supervised: SelfSupervised | None = Field(
        None, description="train on noisy images alone (`data.train` holds noisy images); see training/selfsupervised.py")
    pairs_from: int | None = Field(
        None, description="noise2noise: the axis of each training file that holds repeated frames of one field")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="keep an exponential moving average of the network's weights with this decay "
        "(e.g. 0.999); every validation scores it beside the trained weights and the better of the two is exported")
    adapt: Adapt = Field(
        "all", description="which of the network's parameters train: all, or only the biases (a fine-tune on data "
        "close to what the start knows: a few thousand numbers that shift what every filter responds to, so a noisy "
        "gradient moves the model less out of it; see FINETUNE_NOISY). The latent's decoder, a training aid, always "
        "trains")
    keep_best: bool | None = Field(
        None, description="export the best-validated weights so far, the starting model's included, instead of the "
        "latest (default: on when fine-tuning from `init`, off from scratch): a fine-tune never ends below its start "
        "on the validation metric")

    @model_validator(mode="after")
    def _consistent(self):
        check_task(self.task, self.scale)
        if self.ranges != DEFAULT_RANGES and self.task == "sr":
            raise ValueError(f"ranges {self.ranges!r} are for the noise and JPEG degradations, not sr")
        if self.arch.trunk != "full" and self.task == "sr":
            raise ValueError(f"arch.trunk {self.arch.trunk!r} is for restoration tasks; super-resolution uses 'full'")
        if self.patch % 4:
            raise ValueError("patch must be a multiple of 4 (the latent is at 1/4 resolution)")
        if self.adapt != "all" and not self.init:
            raise ValueError(f"adapt: {self.adapt} fine-tunes part of a trained model; give init (a shipped model name "
                             "or weights file)")
        if self.init and self.init_network:
            raise ValueError("init fine-tunes a model of this task, init_network starts from another task's "
                             "network: give one of them")
        if self.degradation is None:
            self.degradation = DEFAULT_DEGRADATION[self.task]
        allowed = {"denoise": {"awgn", "awgn+poisson", "poisson"}, "real-denoise": {"camera"},
                   "sr": {"blur", "sr-mix"}, "jpeg": {"jpeg"}}[self.task]
        if self.degradation not in allowed:
            raise ValueError(f"degradation {self.degradation!r} does not fit task {self.task!r} "
                             f"(choose {sorted(allowed)})")
        if self.degradation == "camera" and self.channels != 3:
            raise ValueError("camera noise needs channels: 3")
        if self.pairs_from is not None:
            if self.self_supervised not in (None, "noise2noise"):
                raise ValueError("pairs_from trains Noise2Noise on frame pairs; it cannot be combined with "
                                 f"self_supervised: {self.self_supervised}")
            self.self_supervised = "noise2noise"
        if self.self_supervised:
            if self.task not in ("denoise", "real-denoise"):
                raise ValueError(f"self-supervised training is for noise; task {self.task!r} needs clean images")
            if self.data.degraded:
                raise ValueError("self-supervised training reads noisy images from `data.train`; drop `degraded`")
            if self.self_supervised == "noise2noise" and self.pairs_from is None:
                raise ValueError("noise2noise needs pairs_from: the axis that holds repeated frames")
            if self.self_supervised == "pseudo-clean" and not (self.init or self.init_network):
                raise ValueError("pseudo-clean learns from a trained model's restorations: give init")
            if self.self_supervised == "neighbor2neighbor" and self.patch % 8:
                raise ValueError("neighbor2neighbor halves the patch: patch must be a multiple of 8")
        if self.data.val_degraded and not self.data.val:
            raise ValueError("val_degraded needs val: the clean references it is compared with")
        return self

    @property
    def estimate_dims(self) -> int:
        """EST(c) outputs; none in a self-supervised run, where the degradation is unknown."""
        if self.self_supervised or self.losses.estimate <= 0:
            return 0
        return len(ESTIMATES[self.task])

    def arch_config(self) -> ArchConfig:
        """The network this recipe trains: ``arch`` with the channels, scale and estimator size the recipe implies."""
        return ArchConfig(channels=self.channels, scale=self.scale or 1, estimate_dims=self.estimate_dims,
                          **self.arch.model_dump())


def load_recipe(path: str | Path, **overrides) -> Recipe:
    """Read and validate a recipe; every problem is a ``ValueError`` (or ``FileNotFoundError``)
    whose message fits on one line (see :func:`one_line`)."""
    import yaml
    from pydantic import ValidationError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML ({where}{what})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; a recipe is a YAML file") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping of keys to values")
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Recipe.model_validate(values)
    except ValidationError as err:
        raise ValueError(f"{path}: {one_line(err)}") from None


def one_line(err: Exception) -> str:
    """A pydantic ValidationError as ``key: reason; key: reason`` (others: their first line)."""
    from pydantic import ValidationError

    if not isinstance(err, ValidationError):
        return " ".join(str(err).split())
    parts = []
    for e in err.errors():
        where = ".".join(str(k) for k in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "finite_number":
            msg += f", got {e['input']!r}"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
