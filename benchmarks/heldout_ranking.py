"""Does the held-out loss of a self-supervised fine-tune rank weights as their error to the clean image does?

    OMP_NUM_THREADS=1 python benchmarks/heldout_ranking.py            # writes benchmarks/results/heldout_ranking.md

A fine-tune that keeps its best-validated weights (issue 33: "never worse than the start") is only as good as its
validation metric. Without clean images that metric is a loss on held-out noisy data. This script fine-tunes
``denoise-gray`` on the noisy frames of W2S training fields (Neighbor2Neighbor, as the Fine-tune dock does, at a
from-scratch and a fine-tuning learning rate, so the weights get both worse and better), and at every validation
scores the weights three ways:

- ``masked``: the trainer's held-out loss (the masked-pixel, blind-spot error on held-out noisy patches at full
  resolution; ``Trainer.validate_self_supervised``);
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


def run(lr: float, steps: int, val_every: int, args, train, pairs) -> list[dict]:
    """One fine-tune; every ``val_every`` steps (and at step 0) the latest weights are scored three ways."""
    import finetune_w2s

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
        masked = tr.validate_self_supervised()
        path = tr.export(folder / f"step{tr.step}.safetensors")
        result = finetune_w2s.scores(finetune_w2s.restore_all(path, pairs), pairs)
        rows.append({"step": tr.step, "masked": masked, "n2n": n2n_loss(tr), "matched": result["matched"]})
        print(f"  lr {lr:g} step {tr.step}: masked {masked:.6f}  n2n {rows[-1]['n2n']:.6f}  "
              f"matched {result['matched']:.2f} dB", flush=True)

    snapshot(trainer)  # the starting model
    trainer.fit(lambda tr, row: snapshot(tr) if tr.step % val_every == 0 else None)
    return rows


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
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
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
             f"averages. `masked`: the trainer's held-out loss (blind-spot error at full resolution); `n2n`: "
             "Neighbor2Neighbor's loss on the same held-out patches. Spearman ρ of each loss with −matched PSNR "
             "over the run's snapshots (1: same order); 'keeps' = matched PSNR of the weights with the lowest loss.",
             "", "| lr | snapshots | matched PSNR: start → best (at step) | ρ masked | keeps (masked) | ρ n2n | "
             "keeps (n2n) |", "|---|---|---|---|---|---|---|"]
    details = []
    for lr in [float(v) for v in args.lrs.split(",")]:
        rows = run(lr, args.steps, args.val_every, args, train, pairs)
        m = np.array([r["matched"] for r in rows])
        masked, n2n = np.array([r["masked"] for r in rows]), np.array([r["n2n"] for r in rows])
        best = int(np.argmax(m))
        lines.append(f"| {lr:g} | {len(rows)} | {m[0]:.2f} → {m[best]:.2f} ({rows[best]['step']}) | "
                     f"{spearman(masked, -m):.2f} | {m[int(np.argmin(masked))]:.2f} | {spearman(n2n, -m):.2f} | "
                     f"{m[int(np.argmin(n2n))]:.2f} |")
        details += [f"| {lr:g} | {r['step']} | {r['masked']:.6f} | {r['n2n']:.6f} | {r['matched']:.2f} |" for r in rows]
    lines += ["", "## Every snapshot", "", "| lr | step | masked | n2n | matched PSNR |", "|---|---|---|---|---|"]
    lines += details
    lines += ["", f"CPU time: {(time.process_time() - t0) / 60:.1f} min on one thread; "
              f"{time.strftime('%Y-%m-%d %H:%M %Z')}."]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
