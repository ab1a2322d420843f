"""The training loop: full VDIR objective, validation, CSV log, checkpoints with exact resume."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import inspect
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_vdir.core.devices import autocast_context, select_device
from napari_vdir.core.inference import is_cancelled
from napari_vdir.core.io import written_then_renamed
from napari_vdir.core.models import resolve_model
from napari_vdir.core.nets import VDIR, Decoder, Discriminator
from napari_vdir.core.weights import ModelInfo, load_weights, save_weights
from napari_vdir.training import losses, selfsupervised
from napari_vdir.training.config import Recipe
from napari_vdir.training.data import ArrayData, Batch, PatchSampler, degrade, training_data


def critic_widths(patch: int) -> tuple[int, ...]:
    """The critic's layers for a patch size: its default stack, cut before a stride-2 layer would get
    a 1-pixel input (only a 16 px patch: such a layer's gradient turns to NaN under bf16 autocast).
    Patches of 20 px and more keep the whole default critic."""
    widths = inspect.signature(Discriminator).parameters["widths"].default
    size = patch
    for i in range(len(widths)):
        if i % 2:  # the odd layers have stride 2 (nets.Discriminator)
            if size < 2:
                return widths[:i]
            size = (size + 1) // 2
    return widths


CHECKPOINT_KEYS = ("step", "train_seconds", "best_val", "model", "decoder", "opt_g", "rng_torch", "rng_generator",
                   "rng_cpu_generator", "history")
SAME_RUN = ("task", "channels", "scale", "arch")  # what a resumed run must share with its checkpoint
# held-out noisy pixels a self-supervised run scores at every validation: Stein's estimate is noisy per pixel, and
# weights replace the start only beyond two standard errors; with 8 patches of 64 px (32 k pixels) a fine-tune
# 0.13 dB better on W2S's clean references could not show it
HELD_OUT_PIXELS = 2**18
# a run with a time budget and ``val_points`` validates less often when one validation (measured at step 0) costs
# more than this share of the training time between two (a short budget on a slow CPU)
VALIDATION_SHARE = 0.15


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a.float().clamp(0, 1), b.float()).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


class TrainingCancelled(Exception):
    """:meth:`Trainer.fit` was stopped by its ``cancel`` check."""


class Trainer:
    """Trains one recipe. ``rank``/``world`` > 1 runs under torchrun (DDP)."""

    def __init__(self, recipe: Recipe, out_dir: str | Path, *, device: str = "auto", precision: str = "auto",
                 threads: int | None = None, log=print):
        self.recipe = recipe
        self.out = Path(out_dir)
        self.log = log
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        if threads:
            torch.set_num_threads(threads)
        self.device = select_device(device)
        if self.world > 1:
            local = int(os.environ.get("LOCAL_RANK", 0))
            if self.device.type == "cuda":
                self.device = torch.device("cuda", local)
                torch.cuda.set_device(self.device)
            if not torch.distributed.is_initialized():
                torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.precision = precision
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(recipe.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(recipe.seed * 1000 + self.rank)
        self.cpu_generator = torch.Generator().manual_seed(recipe.seed * 1000 + self.rank + 1)

        self.model, init_info = self._build_model()
        self.decoder = Decoder(recipe.channels).to(self.device)
        # the critic exists only when its loss is on (9.4M parameters and their Adam state otherwise)
        self.discriminator = None
        if recipe.losses.gan > 0:
            self.discriminator = Discriminator(recipe.channels, critic_widths(recipe.patch)).to(self.device)
        if self.device.type != "mps":
            for m in (self.model, self.decoder, self.discriminator):
                if m is not None:
                    m.to(memory_format=torch.channels_last)
        if recipe.adapt == "biases":  # only the biases train (see Recipe.adapt); the decoder trains whole
            for name, p in self.model.named_parameters():
                p.requires_grad_(name.endswith("bias"))
        gen_params = [p for p in self.model.parameters() if p.requires_grad] + list(self.decoder.parameters())
        self.opt_g = torch.optim.Adam(gen_params, lr=recipe.lr)
        self.opt_d = None
        if self.discriminator is not None:
            self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=recipe.lr, betas=(0.5, 0.999))
        self.train_model, self.train_decoder, self.train_discriminator = self.model, self.decoder, self.discriminator
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DDP(self.model, device_ids=ids, find_unused_parameters=True)
            self.train_decoder = DDP(self.decoder, device_ids=ids)
            if self.discriminator is not None:
                self.train_discriminator = DDP(self.discriminator, device_ids=ids)
        self.step = 0
        self.train_seconds = 0.0
        self.best_val = float("-inf")
        self.history: list[dict] = []
        self.init_info = init_info
        # the moving average of the weights (recipe.ema_decay), float32 on the training device
        self.ema = ({k: v.detach().float().clone() for k, v in self.model.state_dict().items()}
                    if recipe.ema_decay else None)
        self.keep_best = recipe.keep_best if recipe.keep_best is not None else bool(recipe.init)
        # what export() writes: the latest weights, the average, or the best validated ones (a copy on the CPU)
        self.best: dict | None = None  # {"score", "step", "source", "state"}; score: higher is better
        self.start_score: float | None = None
        self.ema_better = False

    # ------------------------------------------------------------------ setup
    def _build_model(self) -> tuple[VDIR, ModelInfo | None]:
        r = self.recipe
        if r.init:
            path = resolve_model(r.init, r.task, r.channels, r.scale or 1)
            model, info = load_weights(path, self.device)
            if info.task != r.task or info.channels != r.channels or info.scale != (r.scale or 1):
                hint = ""
                if (info.task, info.scale) == (r.task, r.scale or 1):
                    hint = (f"; add --channels {info.channels} (recipe: channels: {info.channels}) to train it on "
                            + ("gray (luma) versions of your images" if info.channels == 1 else
                               "your gray images repeated as RGB"))
                raise ValueError(f"{path}: a {info.task} model for {info.channels} channel(s) x{info.scale} "
                                 f"cannot be fine-tuned for {r.task} with {r.channels} channel(s) x{r.scale or 1}"
                                 + hint)
            return model.train(), info
        cfg = r.arch_config()
        model = VDIR(cfg).to(self.device)
        if not r.init_network:
            return model, None
        path = resolve_model(r.init_network, r.task, r.channels, r.scale or 1)  # any task's name or file
        source, info = load_weights(path, self.device)
        if dataclasses.replace(source.cfg, estimate_dims=cfg.estimate_dims) != cfg:
            differ = {k: (v, getattr(cfg, k)) for k, v in dataclasses.asdict(source.cfg).items()
                      if k != "estimate_dims" and v != getattr(cfg, k)}
            raise ValueError(f"{path}: init_network needs the recipe's network; "
                             + ", ".join(f"{k} {a} there, {b} here" for k, (a, b) in differ.items()))
        # the encoder's and restorer's features carry over between restoration tasks; what EST(c) reads off
        # the latent (a noise level, a JPEG quality) does not, so the estimator keeps its fresh initialisation
        model.encoder.load_state_dict(source.encoder.state_dict())
        model.restorer.load_state_dict(source.restorer.state_dict())
        return model.train(), info

    def load_data(self, arrays: ArrayData | None = None):
        """Read the recipe's data (:func:`napari_vdir.training.data.training_data`); ``arrays`` (in-memory planes,
        e.g. napari layers) replaces its files."""
        self.sampler, self.held_out, self.val, count = training_data(self.recipe, self.device, arrays)
        count_held_out = max(8, self.recipe.batch, math.ceil(HELD_OUT_PIXELS / self.recipe.patch**2))
        if self.held_out is not None:  # self-supervised without clean references: noisy patches for a validation loss
            pick = getattr(self.held_out, "tiles", self.held_out.sample)  # no pixel twice where the planes allow
            self.val_noisy = pick(count_held_out, torch.Generator().manual_seed(1234))
            self.held_out_variances = self.fit_held_out_noise()
        if self.recipe.self_supervised == "pseudo-clean":  # the starting model's restorations, noised again
            if self.held_out is None:  # a single plane: the noise model from training patches
                noisy = self.sampler.sample(count_held_out, torch.Generator().manual_seed(1234))[0].float()
                with torch.no_grad():
                    signal = self.model.eval()(noisy).image.float()
                self.model.train()
                self.synthesis_noise = selfsupervised.fit_noise_from_detail(noisy, signal)
            else:  # the held-out check's detail fit
                self.synthesis_noise = self.held_out_models[1]
            self.log(f"noise model (variance = gain x signal + offset): gain {self.synthesis_noise[0]:.3g}, "
                     f"offset {self.synthesis_noise[1]:.3g}")
            self.pseudo_clean_targets()
        if self.rank == 0:
            self.log(f"{count}, {len(self.val)} validation crops, device {self.device}")

    def pseudo_clean_targets(self) -> None:
        """Replace the noisy training images by the model's restorations of them — called when the data loads, so the
        model is the starting one (:func:`~napari_vdir.training.selfsupervised.pseudo_clean_pool`); the time this
        takes counts towards the run's time budget, of which it may take POOL_SHARE."""
        r = self.recipe
        clock = self.budget_clock()
        started = clock()
        seconds = selfsupervised.POOL_SHARE * 60 * r.time_budget_minutes if r.time_budget_minutes else None
        pool = selfsupervised.pseudo_clean_pool(self.model.eval(), self.sampler.clean,
                                                torch.Generator().manual_seed(r.seed), precision=self.precision,
                                                seconds=seconds, clock=clock)
        self.model.train()
        self.sampler = PatchSampler([t.permute(1, 2, 0).cpu().numpy() for t in pool], r.patch, self.device)
        spent = clock() - started
        self.train_seconds += spent
        self.log(f"pseudo-clean targets: {sum(t.shape[-2] * t.shape[-1] for t in pool) / 1e6:.1f} MP restored by the "
                 f"starting model in {spent:.0f} s")

    # ------------------------------------------------------------------ schedule
    def budget_clock(self):
        """What the recipe's time budget counts: the process's CPU time or the wall clock."""
        return time.process_time if self.recipe.budget_clock == "cpu" else time.perf_counter

    def lr_at(self) -> float:
        r = self.recipe
        if r.warmup_steps and self.step < r.warmup_steps:
            return r.lr * (self.step + 1) / r.warmup_steps
        if r.time_budget_minutes:
            t = min(1.0, self.train_seconds / (60 * r.time_budget_minutes))
        else:
            t = min(1.0, self.step / r.steps)
        return r.lr_min + (r.lr - r.lr_min) * 0.5 * (1 + math.cos(math.pi * t))

    def finished(self) -> bool:
        r = self.recipe
        done = self.step >= r.steps
        if r.time_budget_minutes:
            done = done or self.train_seconds >= 60 * r.time_budget_minutes
            if self.world > 1:  # every rank must stop at the same step
                flag = torch.tensor([float(done)], device=self.device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                done = bool(flag.item())
        return done

    # ------------------------------------------------------------------ one step
    def next_batch(self):
        first, second = self.sampler.sample(self.recipe.batch, self.cpu_generator)
        if self.recipe.self_supervised:  # noisy patches (and their second frames for noise2noise)
            return Batch(first, second, None)
        if second is not None:  # paired data: the degradation parameters are unknown
            return Batch(second, first, None)
        return degrade(first, self.recipe, self.generator, self.cpu_generator)

    def restoration_views(self, batch: Batch) -> selfsupervised.Views:
        """What the restorer sees and is compared with: the degraded and clean images, or noisy views."""
        r = self.recipe
        y = batch.degraded.contiguous(memory_format=torch.channels_last)
        if not r.self_supervised:
            return selfsupervised.Views(y, batch.clean.contiguous(memory_format=torch.channels_last))
        if r.self_supervised == "pseudo-clean":
            return selfsupervised.pseudo_clean_views(y, self.synthesis_noise, self.generator)
        views = selfsupervised.views_for(r.self_supervised, self.train_model, y, batch.clean, self.generator,
                                         regularised=r.losses.consistency > 0)
        views.inputs = views.inputs.contiguous(memory_format=torch.channels_last)
        return views

    def train_step(self) -> dict:
        w = self.recipe.losses
        batch = self.next_batch()
        lr = self.lr_at()
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups if opt is not None else ():
                group["lr"] = lr
        terms = {}
        with autocast_context(self.device, self.precision):
            views = self.restoration_views(batch)
            y = views.inputs
            out = self.train_model(y, sample=True, with_estimate=w.estimate > 0 and batch.estimate_target is not None)
            if self.recipe.self_supervised:
                terms.update(selfsupervised.restoration_terms(out.image, views))
            else:
                terms["restore"] = F.l1_loss(out.image.float(), views.target.float())
            terms["kl"] = losses.kl_divergence(out.mu.float(), out.logvar.float())
            use_decoder = w.decoder > 0 or w.gan > 0
            if use_decoder:
                y_hat = self.train_decoder(out.c)
                terms["decoder"] = F.l1_loss(y_hat.float(), y.float())
            if w.gan > 0:
                # the plain (unwrapped) critic: this term trains the generator side only
                for p in self.discriminator.parameters():
                    p.requires_grad_(False)
                terms["gan"] = losses.generator_adversarial(self.discriminator(y_hat).float())
                for p in self.discriminator.parameters():
                    p.requires_grad_(True)
            if out.estimate is not None:
                terms["estimate"] = losses.estimate_loss(out.estimate.float(), batch.estimate_target)
            total = sum(getattr(w, k) * v for k, v in terms.items())
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        if self.recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
        self.opt_g.step()
        self._update_ema()
        if w.gan > 0:
            with autocast_context(self.device, self.precision):
                # one forward over real and fake together (DDP allows one forward per backward)
                real, fake = self.train_discriminator(torch.cat([y, y_hat.detach()])).float().chunk(2)
                d_loss = losses.discriminator_loss(real, fake)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            terms["disc"] = d_loss
        self.step += 1
        row = {k: float(v.detach()) for k, v in terms.items()}
        row["total"] = float(total.detach())
        row["lr"] = lr
        if not all(math.isfinite(v) for v in row.values()):
            raise FloatingPointError(f"loss is not finite at step {self.step}: {row}")
        return row

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- ema + (1 - d) (w - ema). From a random initialisation d is ramped up over the first steps
        ((1 + t) / (10 + t)) so that the average does not remember it; from trained weights (``init``: a
        fine-tune) it is the recipe's decay from the first step, so the average starts as the trained model and
        moves only as fast as the steps agree (a fine-tune's first, noisiest steps cannot pull it below the start
        the way they pull the latest weights)."""
        if self.ema is None:
            return
        decay = self.recipe.ema_decay
        if not self.recipe.init:
            decay = min(decay, (1 + self.step) / (10 + self.step))
        for k, v in self.model.state_dict().items():
            if v.is_floating_point():
                self.ema[k].lerp_(v.detach().float(), 1 - decay)
            else:
                self.ema[k].copy_(v)

    @contextlib.contextmanager
    def weights(self, state: dict | None):
        """The model holds ``state`` inside the block (the latest weights again after it); None: no change."""
        if state is None:
            yield self.model
            return
        latest = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(state)
        try:
            yield self.model
        finally:
            self.model.load_state_dict(latest)

    @staticmethod
    def score_of(val_psnr: float | None, val_loss: float | None) -> float | None:
        """One number to rank weights by, higher is better: validation PSNR, else minus the held-out loss."""
        if val_psnr is not None:
            return val_psnr
        return None if val_loss is None else -val_loss

    def validation_row(self) -> dict:
        """Score the latest weights (and the average), remember the best, and say what export() will write."""
        row = {"val_psnr": self.validate(), "val_loss": self.validate_self_supervised()}
        score = self.score_of(row["val_psnr"], row["val_loss"])
        candidates = [("latest", score, None)]
        if self.ema is not None and self.step > 0:
            with self.weights(self.ema):
                row["val_psnr_ema"], row["val_loss_ema"] = self.validate(), self.validate_self_supervised()
            ema_score = self.score_of(row["val_psnr_ema"], row["val_loss_ema"])
            self.ema_better = ema_score is not None and score is not None and ema_score > score
            candidates.append(("ema", ema_score, self.ema))
        if self.step == 0:
            self.start_score = score
        for source, value, state in candidates:
            if value is not None and (self.best is None or value > self.best["score"]):
                if state is None:
                    state = self.model.state_dict()
                self.best = {"score": value, "step": self.step, "source": "start" if self.step == 0 else source,
                             "state": {k: v.detach().to("cpu", copy=True) for k, v in state.items()}}
        return row

    def export_state(self) -> tuple[dict | None, str]:
        """The weights export() writes (None: the latest) and a word for the log: ``latest``, ``ema`` or
        ``best@STEP`` (``start`` when the starting model stayed best)."""
        if self.keep_best and self.best is not None:
            label = "start" if self.best["source"] == "start" else f"best@{self.best['step']}"
            return self.best["state"], label + ("" if self.best["source"] != "ema" else " (ema)")
        if self.ema is not None and self.ema_better:
            return self.ema, "ema"
        return None, "latest"

    def outcome(self) -> str | None:
        """One line on how the exported weights compare with the starting model on the validation metric
        (None before any validation, or without a validation metric)."""
        if self.start_score is None or not self.history:
            return None
        state, label = self.export_state()
        if label == "start":
            return "the starting model stayed best on the validation data; saved unchanged"
        last = self.history[-1]
        if self.best is not None and state is self.best["state"]:
            final = self.best["score"]
        elif label == "ema":
            final = self.score_of(last.get("val_psnr_ema"), last.get("val_loss_ema"))
        else:
            final = self.score_of(last.get("val_psnr"), last.get("val_loss"))
        if final is None:
            return None
        if self.history[0].get("val_psnr") is not None:
            return f"validation PSNR {final - self.start_score:+.2f} dB against the starting model"
        noise = getattr(self, "held_out_noise", None)
        if noise:  # Stein's estimate: its change is a change of squared error, told as a share of the noise's own
            change = (self.start_score - final) / noise * 100
            return (f"held-out error {change:+.2f} % of the noise against the starting model "
                    f"({'better' if change < 0 else 'not better'})")
        change = (self.start_score - final) / abs(self.start_score) * 100 if self.start_score else 0.0
        return f"held-out loss {change:+.1f} % against the starting model ({'better' if change < 0 else 'not better'})"

    @torch.no_grad()
    def fit_noise(self, noisy: torch.Tensor) -> tuple[tuple[float, float], torch.Tensor]:
        """The Poisson-Gaussian noise model of ``noisy`` patches (:func:`~napari_vdir.training.selfsupervised.
        fit_noise_model`) from the model as it is now (the start, when the data loads), and its restoration; the
        model is left in eval mode."""
        signal, follows = selfsupervised.divergence_map(self.model.eval(), noisy,
                                                        torch.Generator(device=self.device).manual_seed(7))
        return selfsupervised.fit_noise_model(noisy, signal, follows), signal

    @torch.no_grad()
    def fit_held_out_noise(self) -> tuple[torch.Tensor, ...] | None:
        """The per-pixel noise variance of the held-out patches under two Poisson-Gaussian noise models (variance =
        gain x signal + offset), for :meth:`validate_self_supervised`: one read from the starting model's residual
        (:func:`~napari_vdir.training.selfsupervised.fit_noise_model`), which tends high where the start removed
        texture, and one from the data's finest detail (:func:`~napari_vdir.training.selfsupervised.
        fit_noise_from_detail`), which tends low where the data have pixel-scale texture; on W2S's held-out tiles the
        truth lay between them, on a sigma-25 photograph within 4 % of the detail fit. Fitted with the weights as
        they are when the data is loaded — the starting model, also on ``--resume`` (the data loads before the
        checkpoint) — so every validation of the run is scored against the same noise. None for noise2noise frame
        pairs."""
        if self.recipe.self_supervised == "noise2noise":
            return None
        noisy = self.val_noisy[0].float()
        residual_fit, signal = self.fit_noise(noisy)
        self.held_out_models = (residual_fit, selfsupervised.fit_noise_from_detail(noisy, signal))
        variances = tuple(selfsupervised.noise_variance(signal, m) for m in self.held_out_models)
        self.held_out_noise = float(variances[0].mean())  # the noisy input's own squared error: the outcome's unit
        restored, follows = selfsupervised.divergence_map(self.model, noisy,
                                                          torch.Generator(device=self.device).manual_seed(4321))
        self.held_out_start = [selfsupervised.stein_terms(noisy, restored, follows, v) for v in variances]
        self.model.train()
        return variances

    @torch.no_grad()
    def validate_self_supervised(self) -> float | None:
        """A held-out loss that ranks weights as their error to the (unknown) clean images does, when no clean
        references exist: Stein's unbiased estimate of the mean squared error to the clean image
        (:func:`napari_vdir.training.selfsupervised.sure_risk`) on held-out noisy patches, with the noise model of
        :meth:`fit_held_out_noise`, in float32 with the same probe directions at every validation. Weights are scored
        against the starting model pixel by pixel: the start's estimate plus the mean excess of theirs over it plus
        two standard errors of that excess (:func:`~napari_vdir.training.selfsupervised.paired_excess`; held-out
        patches share no pixel, so the error is not understated), so weights rank above the start only where they
        are better beyond the estimate's own noise — under both noise models, the larger excess counting. The
        estimate moves with the noise level by 2 v x (how much more the weights follow their input than the start):
        with the level too high it prefers weights that smooth more, too low weights that smooth less, by as much as
        0.1 dB on W2S; a change has to win at either level. For noise2noise
        frame pairs (chosen for noise that is not independent from pixel to pixel, where Stein's estimate does not
        hold), the error of one frame's restoration to the other.

        The network is scored on its ordinary input, so a shipped model that never saw a blind spot and the weights
        fine-tuned from it are measured alike. The masked-pixel (blind-spot) error used before rated fine-tuned
        weights ~1 % better than their start at equal PSNR on W2S, and Neighbor2Neighbor's own loss ordered them
        backwards (benchmarks/results/heldout_ranking.md; low photon counts: heldout_ranking-low-counts.md)."""
        if getattr(self, "held_out", None) is None:
            return None
        self.model.eval()
        noisy, second = self.val_noisy
        if self.recipe.self_supervised == "noise2noise":
            g = torch.Generator(device=self.device).manual_seed(4321)
            with autocast_context(self.device, self.precision):
                views = selfsupervised.views_for("noise2noise", self.model, noisy, second, g)
                loss = float(selfsupervised.restoration_terms(self.model(views.inputs).image, views)["restore"])
        else:  # the start's estimate plus how much higher these weights' is, as an upper confidence bound
            restored, follows = selfsupervised.divergence_map(self.model, noisy.float(),
                                                              torch.Generator(device=self.device).manual_seed(4321))
            excess = max(selfsupervised.paired_excess(selfsupervised.stein_terms(noisy, restored, follows, v), start)
                         for v, start in zip(self.held_out_variances, self.held_out_start, strict=True))
            loss = float(self.held_out_start[0].mean()) + excess
        self.model.train()
        return loss

    @torch.no_grad()
    def validate(self) -> float | None:
        if not self.val:
            return None
        self.model.eval()
        scores = []
        with autocast_context(self.device, self.precision):
            for b in self.val:
                out = self.model(b.degraded.contiguous(memory_format=torch.channels_last))
                scores.append(psnr(out.image, b.clean))
        self.model.train()
        return float(np.mean(scores))

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        return {
            "step": self.step, "train_seconds": self.train_seconds, "best_val": self.best_val,
            "model": self.model.state_dict(), "decoder": self.decoder.state_dict(),
            "discriminator": self.discriminator.state_dict() if self.discriminator is not None else None,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "rng_torch": torch.get_rng_state(), "rng_generator": self.generator.get_state(),
            "rng_cpu_generator": self.cpu_generator.get_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "recipe": self.recipe.model_dump(), "history": self.history,
            "ema": self.ema, "best": self.best, "start_score": self.start_score, "ema_better": self.ema_better,
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path else self.out / "checkpoint.pt"
        if self.rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            with written_then_renamed(path) as partial:
                torch.save(self.state(), partial)
        return path

    def resume(self, path: str | Path):
        """Restore everything needed for a run identical to an uninterrupted one.

        Checkpoints are this tool's own files; they hold optimiser state and RNG
        states, so they are read with ``weights_only=True`` (tensors and plain types only).
        A file that is not a readable checkpoint, or one of another run (task, channels, scale,
        architecture), is a ``ValueError`` with a one-line reason. ``log.csv`` loses the rows
        after the checkpoint's step (a run killed between checkpoints logged them, and the resumed
        run logs them again), and the exported weights are rewritten from the checkpoint.
        """
        path = Path(path)
        state = self._read_checkpoint(path)
        self._check_same_run(path, state.get("recipe"))
        try:
            self.model.load_state_dict(state["model"])
            self.decoder.load_state_dict(state["decoder"])
            self.opt_g.load_state_dict(state["opt_g"])
            if self.discriminator is not None and state.get("discriminator") is not None:
                self.discriminator.load_state_dict(state["discriminator"])
                self.opt_d.load_state_dict(state["opt_d"])
            torch.set_rng_state(state["rng_torch"].cpu())
            self.generator.set_state(state["rng_generator"].cpu())
            self.cpu_generator.set_state(state["rng_cpu_generator"].cpu())
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
            first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise ValueError(f"{path}: its tensors do not fit this run's network ({first[:200]}); resume with the "
                             "recipe it was trained with, or train into another --out") from None
        if self.device.type == "cuda" and state.get("rng_cuda"):
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        self.step, self.train_seconds = int(state["step"]), float(state["train_seconds"])
        self.best_val = float(state["best_val"])
        self.history = list(state["history"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.best, self.start_score = state.get("best"), state.get("start_score")
        self.ema_better = bool(state.get("ema_better", False))
        if self.rank == 0:
            self._truncate_log()
            exported = self.out / f"{self.recipe.name}.safetensors"
            if exported.is_file() and self.history:
                self.export()  # the weights of a killed run can be ahead of its checkpoint

    def _read_checkpoint(self, path: Path) -> dict:
        from napari_vdir.core.io import IMAGE_SUFFIXES
        from napari_vdir.core.weights import WEIGHTS_SUFFIX

        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES or suffix == WEIGHTS_SUFFIX:  # never advise deleting the user's own file
            what = "a weights file" if suffix == WEIGHTS_SUFFIX else "an image"
            hint = f"; to start from its weights use --init {path}" if suffix == WEIGHTS_SUFFIX else ""
            raise ValueError(f"{path} is {what}, not a training checkpoint: --resume takes the checkpoint.pt that a "
                             f"run writes into its --out folder{hint}")
        ours = path.name == "checkpoint.pt"  # what this tool writes: a damaged one may be replaced
        afresh = ("; to start the run afresh, use --overwrite instead of --resume" if ours else
                  "; --resume takes the checkpoint.pt that a run writes into its --out folder")
        if path.stat().st_size == 0:
            raise ValueError(f"{path}: empty file (0 bytes), not a checkpoint{afresh}")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as err:  # zip, pickle and torch errors of all kinds for a damaged file
            first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise ValueError(f"{path}: not a readable training checkpoint ({first[:160]}); it may be truncated "
                             f"or another kind of file{afresh}") from None
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise ValueError(f"{path}: not a napari-vdir training checkpoint (no {', '.join(missing[:3])}"
                             + (", ..." if len(missing) > 3 else "") + ")")
        return state

    def _check_same_run(self, path: Path, stored: dict | None) -> None:
        if not isinstance(stored, dict):
            return  # an older checkpoint without its recipe: the tensors are still checked
        mine = self.recipe.model_dump()
        diff = [f"{k} {stored.get(k)} (this run: {mine[k]})" for k in SAME_RUN if stored.get(k) != mine[k]]
        if diff:
            raise ValueError(f"{path} is a checkpoint of another run: {'; '.join(diff)}; resume with the recipe "
                             "and options it was trained with, or train into another --out")

    def _truncate_log(self) -> None:
        """Drop log rows after the checkpoint's step (written atomically)."""
        from napari_vdir.core.io import write_atomically

        log = self.out / "log.csv"
        if not log.is_file():
            return
        lines = log.read_text().splitlines(keepends=True)
        rows = list(csv.reader(lines))
        if not rows or not rows[0] or rows[0][0] != "step":
            return
        keep = [lines[0]] + [line for line, row in zip(lines[1:], rows[1:], strict=True)
                             if row and _step(row[0]) is not None and _step(row[0]) <= self.step]
        if len(keep) != len(lines):
            write_atomically(log, lambda fh: fh.write("".join(keep).encode()))

    def export(self, path: str | Path | None = None) -> Path:
        r = self.recipe
        recipe = r.model_dump()
        recipe["steps_done"] = self.step
        val = self.history[-1].get("val_psnr") if self.history else None
        info = ModelInfo(name=r.name, task=r.task, arch=self.model.cfg,
                         description=f"VDIR {r.task} ({r.self_supervised or r.degradation}), {r.channels} channel(s)"
                         + (f", x{r.scale}" if r.scale else ""),
                         recipe=recipe, quality={"val_psnr": val} if val is not None else {},
                         trained_steps=self.step + (self.init_info.trained_steps if self.init_info else 0))
        state, label = self.export_state()
        if label != "latest":
            info.quality["weights"] = label
            if self.best is not None and state is self.best["state"] and self.history and \
                    self.history[0].get("val_psnr") is not None:
                info.quality["val_psnr"] = self.best["score"]
        with self.weights(state):
            return save_weights(Path(path) if path else self.out / f"{r.name}.safetensors", self.model, info)

    # ------------------------------------------------------------------ loop
    def fit(self, progress=None, stop_at: int | None = None, cancel=None, val_points: int | None = None) -> Path:
        """Train until the recipe's steps (or time budget) are done; returns the weights file.

        ``stop_at`` ends the run early at that step with a checkpoint, as Ctrl-C does. ``cancel`` (a
        ``threading.Event`` or a callable) is checked before every step: when set, :class:`TrainingCancelled`
        is raised and no checkpoint is written. ``val_points``, for a recipe with a time budget: validate each
        time another 1/val_points of the budget has been trained (on the budget's clock) instead of every
        ``val_every`` steps, so a run whose step count is not known in advance still validates about that
        many times (fewer where one validation would cost more than :data:`VALIDATION_SHARE` of the time trained
        between two), and at its end; without it (or without a budget) validation goes by ``val_every``.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        if not hasattr(self, "sampler"):
            self.load_data()
        log_path = self.out / "log.csv"
        fields = ["step", "seconds", "lr", "total", "restore", "consistency", "kl", "decoder", "gan", "estimate", "disc",
                  "val_psnr", "val_loss"]
        if self.ema is not None or self.keep_best:  # (older runs' logs keep their columns)
            fields += ["val_psnr_ema", "val_loss_ema", "exported"]
        interrupted = {"flag": False}
        clock = self.budget_clock()
        budget = self.recipe.time_budget_minutes
        val_seconds = 60 * budget / val_points if budget and val_points else None

        def on_sigint(signum, frame):
            interrupted["flag"] = True

        previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
        self.model.train()
        try:
            with open(log_path, "a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
                if fh.tell() == 0 and self.rank == 0:
                    writer.writeheader()
                if self.step == 0 and self.rank == 0:
                    started = clock()
                    row = {"step": 0, "seconds": 0.0, **self.validation_row()}
                    if val_seconds is not None:  # validating may add at most VALIDATION_SHARE to the training time
                        val_seconds = max(val_seconds, (clock() - started) / VALIDATION_SHARE)
                    row["exported"] = self.export_state()[1]
                    self.history.append(row)
                    writer.writerow(row)
                    fh.flush()
                while not self.finished():
                    if is_cancelled(cancel):
                        raise TrainingCancelled(f"cancelled at step {self.step}")
                    t0, before = clock(), self.train_seconds
                    row = self.train_step()
                    if self.device.type == "cuda" and self.step % 50 == 0:
                        torch.cuda.synchronize()
                    self.train_seconds += clock() - t0
                    row.update(step=self.step, seconds=round(self.train_seconds, 2))
                    if val_seconds is None:
                        due = self.step % self.recipe.val_every == 0 or self.finished()
                    else:  # another 1/val_points of the budget trained (finished() first: every rank all-reduces)
                        due = self.finished() or self.train_seconds // val_seconds > before // val_seconds
                    if due:
                        if self.rank == 0:
                            row.update(self.validation_row())
                            row["exported"] = self.export_state()[1]
                            self.history.append(row)
                            writer.writerow(row)
                            fh.flush()
                            self.export()  # the latest weights are always on disk
                    if progress is not None and self.rank == 0:
                        progress(self, row)
                    if self.step % self.recipe.checkpoint_every == 0:
                        self.save_checkpoint()
                    if stop_at is not None and self.step >= stop_at:
                        return self.save_checkpoint()
                    if interrupted["flag"]:
                        path = self.save_checkpoint()
                        raise KeyboardInterrupt(f"interrupted at step {self.step}; checkpoint saved to {path}")
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        self.save_checkpoint()
        return self.export() if self.rank == 0 else self.out / f"{self.recipe.name}.safetensors"


def _step(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


