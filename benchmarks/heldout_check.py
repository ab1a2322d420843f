"""How the fine-tune's held-out check sees weights on W2S, against the truth it cannot see (issue 33).

    OMP_NUM_THREADS=1 python benchmarks/heldout_check.py WEIGHTS... --out benchmarks/results/heldout_check.md

The check (``Trainer.validate_self_supervised``) scores weights by Stein's estimate of their squared error on
held-out noisy tiles, paired against the starting model, with the noise level fitted two ways (the start's
residual: ``fit_noise_model``; the finest 2x2 detail: ``fit_noise_from_detail``). This script builds the held-out
tiles exactly as a ``benchmarks/finetune_w2s.py`` run does (W2S fields 031-040, every tenth plane held out), finds
each tile's 400-frame average (affine-matched onto the noisy file's scale, as the files were stretched one by one)
and prints, for each WEIGHTS file (e.g. the ``latest-*.safetensors`` a ``finetune_w2s.py --work DIR --latest`` run
leaves), the true change of the squared error against the start and the check's estimate of it under each noise
fit, with 2 and 8 probe directions of the divergence, in per cent of the noise variance (negative: better).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))


def held_out_tiles(trainer, ev, train: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """The trainer's held-out noisy tiles and their clean twins (same crop of the matched 400-frame average)."""
    noisy = trainer.val_noisy[0].float()
    p = noisy.shape[-1]
    held = [path for i, path in enumerate(train) if i % 10 == 0]  # as training_data holds out
    twins = []
    for path in held:
        field, stain = path.stem.split("_")[-2:]
        pair = next((n, c) for k, n, c in ev.validation_pairs(ev.W2S, [int(field)]) if k == f"{field}_{stain}")
        twins.append(ev.affine_match(pair[1], pair[0].astype(np.float64)) / 255.0)
    clean = []
    for tile in noisy:
        for plane, twin in zip(trainer.held_out.clean, twins, strict=True):
            hits = [(t, l_) for t in range(0, plane.shape[-2] - p + 1, p) for l_ in range(0, plane.shape[-1] - p + 1, p)
                    if torch.equal(plane[:, t:t + p, l_:l_ + p].float(), tile)]
            if hits:
                t, l_ = hits[0]
                clean.append(torch.tensor(twin[t:t + p, l_:l_ + p], dtype=torch.float32)[None])
                break
        else:
            raise SystemExit("error: a held-out tile was not found in the held-out planes")
    return noisy, torch.stack(clean)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", nargs="+", type=Path, help="fine-tuned weights to score against denoise-gray")
    p.add_argument("--out", type=Path, default=HERE / "results" / "heldout_check.md")
    args = p.parse_args(argv)

    import finetune_w2s as fw
    from napari_vdir.core.models import find_model
    from napari_vdir.core.weights import load_weights
    from napari_vdir.training import selfsupervised
    from napari_vdir.training.trainer import Trainer

    torch.set_num_threads(1)
    ev = fw._eval_w2s()
    train = [ev.w2s_paths(ev.W2S, f, c)[1] for f in range(31, 41) for c in range(ev.CHANNELS)]
    opts = argparse.Namespace(w2s=ev.W2S, init="denoise-gray", method="neighbor2neighbor", val_every=25, seed=0,
                              ema=None, keep_best=None)
    setting = dict(patch=64, batch=8, lr=3e-5, warmup=50, adapt="all", consistency=1.0, decoder=1.0)
    with __import__("tempfile").TemporaryDirectory() as tmp:
        trainer = Trainer(fw.make_recipe(setting, opts, train, 1.0, "check"), Path(tmp), device="cpu",
                          threads=1, log=lambda *a: None)
        trainer.load_data()
    noisy, clean = held_out_tiles(trainer, ev, train)
    variances = trainer.held_out_variances
    unit = float(variances[0].mean())
    true_noise = float(((noisy - clean) ** 2).mean())
    start = load_weights(find_model("denoise-gray"))[0].eval()

    def parts(model, probes):
        with torch.no_grad():
            return selfsupervised.divergence_map(model, noisy, torch.Generator().manual_seed(4321), probes)

    reference = {k: parts(start, k) for k in (2, 8)}
    fits = ("residual", "detail")
    lines = ["# The held-out check on W2S against the truth (`benchmarks/heldout_check.py`)", "",
             f"Command: `OMP_NUM_THREADS=1 python benchmarks/heldout_check.py "
             + " ".join(str(w.resolve().relative_to(REPO)) if w.resolve().is_relative_to(REPO) else w.name
                        for w in args.weights)
             + "`; " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()) + ".", "",
             f"Held-out tiles: {noisy.shape[0]} x {noisy.shape[-1]}² px of W2S planes "
             f"{', '.join(pth.stem.split('avg1_')[-1] for i, pth in enumerate(train) if i % 10 == 0)} (every tenth "
             "plane of fields 031-040, as a `finetune_w2s.py` run holds them out). Noise variance on them, mean: "
             f"true {true_noise:.5f} (against the matched 400-frame average), "
             + ", ".join(f"{f} fit {float(v.mean()):.5f} ({100 * (float(v.mean()) / true_noise - 1):+.1f} %)"
                         for f, v in zip(fits, variances, strict=True)) + ".", "",
             "Each cell: change of the mean squared error against denoise-gray on these tiles, in % of the noise "
             "variance (negative = better); the check's estimate as mean (upper bound: mean + 2 standard errors, "
             "what must be negative for the weights to replace the start).", "",
             "| weights | true | " + " | ".join(f"{f} fit, {k} probes" for k in (2, 8) for f in fits) + " |",
             "|---|---|" + "---|" * 4]
    for path in args.weights:
        model = load_weights(path)[0].eval()
        true = float(((parts(model, 1)[0] - clean) ** 2).mean() - ((reference[2][0] - clean) ** 2).mean())
        cells = []
        for k in (2, 8):
            restored, follows = parts(model, k)
            for v in variances:
                mine = selfsupervised.stein_terms(noisy, restored, follows, v)
                theirs = selfsupervised.stein_terms(noisy, *reference[k], v)
                cells.append(f"{100 * float((mine - theirs).mean()) / unit:+.3f} "
                             f"({100 * selfsupervised.paired_excess(mine, theirs) / unit:+.3f})")
        label = "/".join(path.parts[-3:])
        lines.append(f"| {label} | {100 * true / unit:+.3f} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
