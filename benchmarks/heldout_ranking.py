"""Does the held-out loss of a self-supervised fine-tune rank weights as their error to the clean image does?

    OMP_NUM_THREADS=1 python benchmarks/heldout_ranking.py            # writes benchmarks/results/heldout_ranking.md

A fine-tune that keeps its best-validated weights (issue 33: "never worse than the start") is only as good as its
validation metric. Without clean images that metric is a loss on held-out noisy data. This script fine-tunes
``denoise-gray`` on the noisy frames of W2S training fields (Neighbor2Neighbor, as the Fine-tune dock does, at a
from-scratch and a fine-tuning learning rate, so the weights get both worse and better), and at every validation
scores the weights four ways:

- ``masked``: the masked-pixel (blind-spot) error on held-out noisy patches at full resolution (the trainer's
  held-out loss until Stein's estimate replaced it);
- ``sure``: Stein's unbiased estimate of the squared error to the clean image on the same patches
  (``selfsupervised.sure_risk``; the trainer's held-out loss is it, scored against the start's with a margin of two
  standard errors: ``Trainer.validate_self_supervised``), with a Poisson-Gaussian noise model fitted to them with the starting model's
  output (its residual corrected for how much the output follows the noise), float32, the same two probe directions at every snapshot. It scores the network on its ordinary input,
  so a shipped model that never saw a blind spot and the weights fine-tuned from it are measured alike; it assumes
  independent noise and, through Stein's lemma, a Gaussian shape (see the note under the table);
- ``n2n``: Neighbor2Neighbor's own loss on the same held-out patches (restore + consistency terms on the
  half-resolution sub-images), the metric used before;
- ``matched``: affine-matched PSNR against the 400-frame averages of other fields (the truth, unknown to a user).

It reports Spearman's rank correlation of each loss with -matched PSNR over the snapshots of each run (1 = the loss
orders the weights exactly as the clean error does), and whether the weights each loss would keep are the best
by matched PSNR. Scored fields are never trained on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def n2n_loss(trainer) -> float:
    """Neighbor2Neighbor's objective (restore + consistency x weight) on the trainer's held-out noisy patches."""
    import torch

    from napari_vdir.training import selfsupervised

    model = trainer.model.eval()
    noisy, _ = trainer.val_noisy
    with torch.no_grad():
        views = selfsupervised.neighbor2neighbor_views(model, noisy, torch.Generator().manual_seed(4321))
        terms = selfsupervised.restoration_terms(model(views.inputs).image, views)
    model.train()
    return float(terms["restore"] + trainer.recipe.losses.consistency * terms["consistency"])


def masked_loss(trainer, masks: int = 8) -> float:
    """The masked-pixel (blind-spot) error on the held-out noisy patches at full resolution, over ``masks`` fixed
    masks (2 % of the pixels each): the trainer's held-out loss before Stein's estimate replaced it."""
    import torch

    from napari_vdir.core.devices import autocast_context
    from napari_vdir.training import selfsupervised

    model = trainer.model.eval()
    noisy, _ = trainer.val_noisy
    g = torch.Generator().manual_seed(4321)
    with torch.no_grad(), autocast_context(trainer.device, trainer.precision):
        losses = [selfsupervised.restoration_terms(model(views.inputs).image, views)["restore"]
                  for views in (selfsupervised.blind_spot_views(noisy, g) for _ in range(masks))]
    model.train()
    return float(torch.stack(losses).mean())


def run(lr: float, steps: int, val_every: int, args, train, pairs) -> list[dict]:
    """One fine-tune; every ``val_every`` steps (and at step 0) the latest weights are scored four ways."""
    import finetune_w2s
    import torch

    from napari_vdir.training import selfsupervised
    from napari_vdir.training.trainer import Trainer

    setting = {"lr": lr, "warmup": 0, "patch": 64, "batch": 8, "consistency": 1.0, "adapt": "all"}
    fargs = argparse.Namespace(init="denoise-gray", method="neighbor2neighbor", val_every=val_every, seed=0, ema=None,
                               keep_best=False)  # export() writes the latest weights
    recipe = finetune_w2s.make_recipe(setting, fargs, train, 10**6, "ranking")
    recipe = recipe.model_copy(update={"steps": steps, "time_budget_minutes": None})
    folder = Path(args.work) / f"lr{lr:g}"
    trainer = Trainer(recipe, folder, device="cpu", precision="auto", threads=1, log=lambda *a: None)
    trainer.load_data()
    rows = []

    def snapshot(tr):
        masked = masked_loss(tr)
        with torch.no_grad():  # Stein's estimate itself (the trainer ranks by it plus 2 standard errors vs the start)
            risk = selfsupervised.sure_risk(tr.model.eval(), tr.val_noisy[0], tr.held_out_variances[0],
                                            torch.Generator().manual_seed(4321))
        tr.model.train()
        path = tr.export(folder / f"step{tr.step}.safetensors")
        result = finetune_w2s.scores(finetune_w2s.restore_all(path, pairs), pairs)
        rows.append({"step": tr.step, "masked": masked, "n2n": n2n_loss(tr), "sure": risk,
                     "matched": result["matched"]})
        print(f"  lr {lr:g} step {tr.step}: masked {masked:.6f}  n2n {rows[-1]['n2n']:.6f}  sure {rows[-1]['sure']:.6f}  "
              f"matched {result['matched']:.2f} dB", flush=True)

    snapshot(trainer)  # the starting model
    trainer.fit(lambda tr, row: snapshot(tr) if tr.step % val_every == 0 else None)
    return rows


def cells_counts(rng, planes: int = 4, size: int = 128, photons: float = 12.0):
    """(noisy, clean) uint16 camera counts: blobs on a dim background (0.05, i.e. 0.6 photons), Poisson with
    ``photons`` at 1.0 plus Gaussian read noise, on a 100-count offset (tests/training/test_finetune_session.py
    fine-tunes on it too)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    clean = np.full((planes, size, size), 0.05)
    for z in range(planes):
        for _ in range(size // 8):
            cy, cx = rng.uniform(0, size, 2)
            r = rng.uniform(3, 12)
            clean[z] += rng.uniform(0.2, 0.6) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    clean = np.clip(clean, 0, 0.9)
    noisy = rng.poisson(clean * photons) / photons + rng.normal(0, 0.03, clean.shape)
    return [np.clip(np.rint(x * 4000 + 100), 0, 65535).astype(np.uint16) for x in (noisy, clean)]


def low_counts(args) -> list[str]:
    """The same three scores on a synthetic low-photon stack, where the error to the clean planes is known exactly:
    the Fine-tune dock's Neighbor2Neighbor run (session defaults) from ``denoise-gray-full-trunk``, scored every 20
    steps on all four planes (true squared error, Stein's estimate) and on the held-out patches (masked)."""
    import tempfile

    import torch

    from napari_vdir.training import selfsupervised, session
    from napari_vdir.training.__main__ import MINIMAL_DEFAULTS
    from napari_vdir.training.config import Recipe
    from napari_vdir.training.data import ArrayData, array_planes
    from napari_vdir.training.trainer import Trainer

    noisy, clean = cells_counts(np.random.default_rng(0))
    (rng,) = session._ranges_for([noisy], None, None, [None])
    planes = [array_planes(a, 1, rgb=None, channel_axis=None, intensity_range=rng) for a in (noisy, clean)]
    y, x = (torch.tensor(np.stack([p[..., 0] for p in ps])[:, None], dtype=torch.float32) for ps in planes)
    init = REPO / "training" / "stages" / "denoise-gray-full-trunk.safetensors"
    recipe = Recipe.model_validate(dict(
        MINIMAL_DEFAULTS, name="low-counts", task="denoise", channels=1, init=str(init), data={"train": ["arrays"]},
        steps=args.low_count_steps, patch=48, batch=4, seed=0, lr=session.DEFAULT_LR,
        self_supervised="neighbor2neighbor", val_every=20, checkpoint_every=args.low_count_steps))
    trainer = Trainer(recipe, tempfile.mkdtemp(), device="cpu", precision="auto", threads=1, log=lambda *a: None)
    trainer.load_data(ArrayData(planes[0], None))
    with torch.no_grad():
        signal, follows = selfsupervised.divergence_map(trainer.model.eval(), y, torch.Generator().manual_seed(7))
    trainer.model.train()
    fit = selfsupervised.fit_noise_model(y, signal, follows)
    variance = selfsupervised.noise_variance(signal, fit)
    rows = []

    def snapshot(tr, row=None):
        if row is not None and tr.step % 20:
            return
        model = tr.model.eval()
        with torch.no_grad():
            true = float(((model(y).image.float() - x) ** 2).mean())
        risk = selfsupervised.sure_risk(model, y, variance, torch.Generator().manual_seed(4321))
        model.train()
        rows.append((tr.step, true, risk, masked_loss(tr)))
        print(f"  low counts step {tr.step}: true {true:.3e}  sure {risk:.3e}  masked {rows[-1][3]:.3e}", flush=True)

    snapshot(trainer)
    trainer.fit(snapshot)
    true, risk, masked = (np.array([r[k] for r in rows]) for k in (1, 2, 3))
    lines = ["", "## Low photon counts (synthetic, clean planes known)", "",
             f"Four 128² planes of blobs, Poisson with 12 photons at 1.0 (background 0.6 photons) plus Gaussian read "
             f"noise 0.03, uint16 counts; `denoise-gray-full-trunk` fine-tuned {args.low_count_steps} Neighbor2Neighbor "
             f"steps with the Fine-tune dock's defaults. `true`: squared error to the clean planes (all four); `sure` "
             f"on the same planes (noise model fitted with the starting model: variance = {fit[0]:.3g} x signal + "
             f"{fit[1]:.3g}); `masked`: the blind-spot error on the held-out patches.", "",
             f"Spearman ρ with the true error: sure {spearman(risk, true):.2f}, masked {spearman(masked, true):.2f}.", "",
             "| step | true | sure | masked |", "|---|---|---|---|"]
    lines += [f"| {s} | {t:.3e} | {r:.3e} | {m:.3e} |" for s, t, r, m in rows]
    return lines


def main(argv=None) -> int:
    import finetune_w2s

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--w2s", type=Path, default=REPO.parent / "shared" / "datasets" / "W2S")
    p.add_argument("--train-fields", default="31-40")
    p.add_argument("--score-fields", default="21-30")
    p.add_argument("--crop", type=int, default=256, help="centre crop of the scored images (speed)")
    p.add_argument("--lrs", default="1e-3,1e-4")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--val-every", type=int, default=20)
    p.add_argument("--work", default="runs/heldout-ranking")
    p.add_argument("--out", type=Path, default=HERE / "results" / "heldout_ranking.md")
    p.add_argument("--low-counts", action="store_true",
                   help="score a synthetic low-photon stack instead (the clean planes known): writes --out")
    p.add_argument("--low-count-steps", type=int, default=60)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.low_counts:
        t0 = time.process_time()
        lines = ["# Held-out losses at low photon counts (`benchmarks/heldout_ranking.py --low-counts`)", "",
                 "Command: `OMP_NUM_THREADS=1 python benchmarks/heldout_ranking.py" + "".join(
                     f" {a}" for a in (argv if argv is not None else sys.argv[1:])) + "`"]
        lines += low_counts(args)
        lines += ["", f"CPU time: {(time.process_time() - t0) / 60:.1f} min on one thread; "
                  f"{time.strftime('%Y-%m-%d %H:%M %Z')}."]
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
        return 0
    split_args = argparse.Namespace(train_fields=finetune_w2s.parse_fields(args.train_fields),
                                    score_fields=finetune_w2s.parse_fields(args.score_fields),
                                    allow_overlap=False, w2s=args.w2s, crop=args.crop)
    train, pairs = finetune_w2s.split(split_args)
    t0 = time.process_time()
    lines = ["# Held-out losses against the clean error (`benchmarks/heldout_ranking.py`)", "",
             "Command: `OMP_NUM_THREADS=1 python benchmarks/heldout_ranking.py" + "".join(
                 f" {a}" for a in (argv if argv is not None else sys.argv[1:])) + "`", "",
             f"`denoise-gray` fine-tuned with Neighbor2Neighbor (patch 64, batch 8, no warm-up, {args.steps} steps, "
             f"validation every {args.val_every}) on the noisy frames of W2S fields {args.train_fields}; truth: "
             f"affine-matched PSNR on fields {args.score_fields} ({args.crop}² centre crops) against their 400-frame "
             f"averages. `masked`: the blind-spot error at full resolution (the trainer's held-out loss before); `n2n`: "
             "Neighbor2Neighbor's loss on the same held-out patches; `sure`: Stein's unbiased estimate of the error to the "
             "clean image on the same patches (Poisson-Gaussian noise model fitted to them with the starting model, "
             "Monte-Carlo divergence, float32). Spearman ρ of each loss with −matched PSNR "
             "over the run's snapshots (1: same order); 'keeps' = matched PSNR of the weights with the lowest loss.",
             "", "| lr | snapshots | matched PSNR: start → best (at step) | ρ masked | keeps (masked) | ρ n2n | "
             "keeps (n2n) | ρ sure | keeps (sure) |", "|---|---|---|---|---|---|---|---|---|"]
    details = []
    for lr in [float(v) for v in args.lrs.split(",")]:
        rows = run(lr, args.steps, args.val_every, args, train, pairs)
        m = np.array([r["matched"] for r in rows])
        masked, n2n = np.array([r["masked"] for r in rows]), np.array([r["n2n"] for r in rows])
        sure = np.array([r["sure"] for r in rows])
        best = int(np.argmax(m))
        lines.append(f"| {lr:g} | {len(rows)} | {m[0]:.2f} → {m[best]:.2f} ({rows[best]['step']}) | "
                     f"{spearman(masked, -m):.2f} | {m[int(np.argmin(masked))]:.2f} | {spearman(n2n, -m):.2f} | "
                     f"{m[int(np.argmin(n2n))]:.2f} | {spearman(sure, -m):.2f} | {m[int(np.argmin(sure))]:.2f} |")
        details += [f"| {lr:g} | {r['step']} | {r['masked']:.6f} | {r['n2n']:.6f} | {r['sure']:.7f} | "
                    f"{r['matched']:.2f} |" for r in rows]
    lines += ["", "## Every snapshot", "", "| lr | step | masked | n2n | sure | matched PSNR |",
              "|---|---|---|---|---|---|"]
    lines += details
    lines += ["", f"CPU time: {(time.process_time() - t0) / 60:.1f} min on one thread; "
              f"{time.strftime('%Y-%m-%d %H:%M %Z')}."]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
