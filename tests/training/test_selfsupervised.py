"""Self-supervised training: the noisy views are what each method says, and a short run learns to denoise."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

import napari_vdir
from napari_vdir.training import selfsupervised
from napari_vdir.training.__main__ import main as training_main
from napari_vdir.training.config import Recipe

GRAY = ["--channels", "1"]  # the minimal form trains its small network from scratch


def blobs(rng: np.random.Generator, size: int = 64, count: int = 6) -> np.ndarray:
    """A smooth 'cells' image in [0.05, 0.9]: Gaussian blobs of random size on a dim background."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    image = np.full((size, size), 0.05)
    for _ in range(count):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(3, 9)
        image += rng.uniform(0.2, 0.6) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.clip(image, 0, 0.9)


def poisson_gaussian(clean: np.ndarray, rng: np.random.Generator, photons: float = 12.0, read: float = 0.03):
    return rng.poisson(clean * photons) / photons + rng.normal(0, read, clean.shape)


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    return float(10 * np.log10(peak**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def test_neighbor_subsampling_takes_two_adjacent_pixels_of_each_cell():
    h = w = 8
    # every pixel holds its position in its 2x2 cell (0 tl, 1 tr, 2 bl, 3 br) plus 10x its cell number
    yy, xx = np.mgrid[:h, :w]
    code = torch.tensor((yy % 2) * 2 + (xx % 2) + 10 * ((yy // 2) * (w // 2) + xx // 2), dtype=torch.float32)
    x = code[None, None].repeat(3, 2, 1, 1)
    first, second = selfsupervised.neighbor_indices(x.shape, torch.Generator().manual_seed(0), x.device)
    a, b = selfsupervised.subsample(x, first), selfsupervised.subsample(x, second)
    assert a.shape == b.shape == (3, 2, h // 2, w // 2)
    assert torch.equal(a // 10, b // 10)  # same cell
    step = (a % 10 - b % 10).abs()
    assert set(step.unique().tolist()) <= {1.0, 2.0}  # horizontal or vertical neighbour, never itself or diagonal
    assert torch.equal(a[:, 0], a[:, 1])  # the same choice for every channel
    assert set(first.unique().tolist()) == {0, 1, 2, 3}


def test_the_regulariser_reference_costs_a_forward_pass_only_when_it_is_used():
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls.append(tuple(x.shape))
            return type("Out", (), {"image": x * 0.5})()

    y = torch.rand(2, 1, 16, 16)
    g = torch.Generator().manual_seed(0)
    with_reference = selfsupervised.views_for("neighbor2neighbor", Counting(), y, None, g)
    assert calls == [(2, 1, 16, 16)] and with_reference.reference is not None
    calls.clear()
    plain = selfsupervised.views_for("neighbor2neighbor", Counting(), y, None, torch.Generator().manual_seed(0),
                                     regularised=False)
    assert calls == [] and plain.reference is None
    assert torch.equal(plain.inputs, with_reference.inputs) and torch.equal(plain.target, with_reference.target)
    assert set(selfsupervised.restoration_terms(plain.inputs, plain)) == {"restore"}


def test_blind_spot_replaces_only_masked_pixels_by_a_neighbour():
    g = torch.Generator().manual_seed(1)
    y = torch.rand(2, 1, 64, 64, generator=g)
    views = selfsupervised.blind_spot_views(y, g)
    masked = views.mask.bool()
    assert 0.005 < masked.float().mean() < 0.05
    assert torch.equal(views.inputs[~masked], y[~masked])
    assert not torch.equal(views.inputs[masked], y[masked])  # random values: a copy of itself is impossible
    assert torch.equal(views.target, y)


def test_pseudo_clean_pairs_are_the_targets_and_the_targets_noised_by_the_fitted_model():
    g = torch.Generator().manual_seed(3)
    clean = torch.rand(4, 1, 64, 64, generator=g)
    gain, offset = 0.04, 0.002
    views = selfsupervised.pseudo_clean_views(clean, (gain, offset), g)
    assert torch.equal(views.target, clean)
    residual = views.inputs.float() - views.target
    variance = gain * views.target + offset
    standardised = residual / variance.sqrt()
    assert abs(float(standardised.mean())) < 0.02 and abs(float(standardised.std()) - 1) < 0.02
    bright = views.target > views.target.median()  # signal-dependent: brighter pixels are noisier
    assert float(residual[bright].var()) > float(residual[~bright].var())


def test_the_pseudo_clean_pool_is_the_starts_restoration_of_whole_planes_or_of_regions_in_context(tiny_weights):
    """Targets are what a user's restore gives: a small plane whole, a large one as regions restored with the
    receptive field's context around them, equal to the whole plane's restoration there; the pool stops at its
    pixel cap."""
    from napari_vdir.core.weights import load_weights

    model = load_weights(tiny_weights[("denoise", 1, 1)])[0].eval()
    g = torch.Generator().manual_seed(0)
    small, large = torch.rand(1, 96, 80, generator=g), torch.rand(1, 700, 600, generator=g)
    whole = {id(x): torch.from_numpy(napari_vdir.restore(x[0].numpy(), "denoise", model=tiny_weights[("denoise", 1, 1)],
                                                         precision="float32", tile_size=4096))
             for x in (small, large)}
    pool = selfsupervised.pseudo_clean_pool(model, [small, large], torch.Generator().manual_seed(1),
                                            precision="float32")
    shapes = sorted(tuple(t.shape[-2:]) for t in pool)
    assert shapes == [(96, 80)] + [(512, 512)] * 4  # the large plane's regions overlap to fit inside it
    assert any(torch.allclose(t[0], whole[id(small)], atol=1e-5) for t in pool if t.shape[-2:] == (96, 80))
    regions = [t[0] for t in pool if t.shape[-2:] != (96, 80)]
    covered = torch.zeros(700, 600, dtype=torch.bool)
    for t in regions:  # each region is the whole restoration somewhere in the large plane
        hits = [(top, left) for top in (0, 188) for left in (0, 88)
                if top + t.shape[0] <= 700 and left + t.shape[1] <= 600
                and torch.allclose(t, whole[id(large)][top:top + t.shape[0], left:left + t.shape[1]], atol=1e-4)]
        assert hits, "a region differs from the whole plane's restoration"
        top, left = hits[0]
        covered[top:top + t.shape[0], left:left + t.shape[1]] = True
    assert covered.all()
    capped = selfsupervised.pseudo_clean_pool(model, [small, large], torch.Generator().manual_seed(1),
                                              precision="float32", max_pixels=1)
    assert len(capped) == 1


def test_pseudo_clean_needs_a_start(tmp_path):
    base = dict(name="t", task="denoise", channels=1, steps=1, data={"train": [str(tmp_path)]},
                self_supervised="pseudo-clean")
    with pytest.raises(ValueError, match="pseudo-clean .* give init"):
        Recipe.model_validate(base)
    assert Recipe.model_validate({**base, "init": "denoise-gray"}).self_supervised == "pseudo-clean"


def test_recipe_rejects_self_supervised_sr_and_odd_patches(tmp_path):
    base = dict(name="t", task="denoise", channels=1, steps=1, data={"train": [str(tmp_path)]})
    with pytest.raises(ValueError, match="needs clean images"):
        Recipe.model_validate({**base, "task": "jpeg", "self_supervised": "neighbor2neighbor"})
    with pytest.raises(ValueError, match="multiple of 8"):
        Recipe.model_validate({**base, "patch": 36, "self_supervised": "neighbor2neighbor"})
    r = Recipe.model_validate({**base, "pairs_from": 0})
    assert r.self_supervised == "noise2noise" and r.estimate_dims == 0


def _stack(tmp_path, rng, frames_axis: bool):
    """uint16 counts of blobs images with Poisson-Gaussian noise: (Z, Y, X) planes, or (T, Y, X) repeats of one field."""
    clean = [blobs(rng) for _ in range(4)]
    if frames_axis:  # two fields of view, six repeats each
        clean = [clean[0]] * 6 + [clean[1]] * 6
    noisy = np.stack([poisson_gaussian(c, rng) for c in clean])
    scale = 4000.0
    counts = np.clip(np.rint(noisy * scale + 100), 0, 65535).astype(np.uint16)
    folder = tmp_path / "noisy"
    folder.mkdir()
    if frames_axis:
        counts = counts.reshape(2, 6, *counts.shape[1:]).transpose(1, 0, 2, 3)  # (T, Z, Y, X)
        clean = np.stack(clean).reshape(2, 6, *counts.shape[2:]).transpose(1, 0, 2, 3)
    else:
        clean = np.stack(clean)
    tifffile.imwrite(folder / "stack.tif", counts, photometric="minisblack")
    return folder, counts, clean * scale + 100


@pytest.mark.parametrize("method", ["neighbor2neighbor", "pairs"])
def test_short_self_supervised_run_denoises_a_poisson_gaussian_stack(tmp_path, method):
    """Trained from scratch on the noisy uint16 stack alone, the model must beat both the noisy stack and the
    untrained network by a margin an identity or a mis-normalised model cannot reach."""
    rng = np.random.default_rng(3)
    folder, noisy, clean = _stack(tmp_path, rng, frames_axis=method == "pairs")
    flags = ["--self-supervised"] if method == "neighbor2neighbor" else ["--pairs-from", "0"]
    out = tmp_path / "run"
    code = training_main(["--task", "denoise", "--data", str(folder), *flags, *GRAY, "--steps", "100",
                          "--patch", "32", "--batch", "8", "--lr", "2e-3", "--seed", "0", "--out", str(out),
                          "--threads", "1", "--quiet"])
    assert code == 0
    weights = out / "denoise.safetensors"
    info = napari_vdir.core.weights.read_info(weights)
    assert info.recipe["self_supervised"] == ("neighbor2neighbor" if method == "neighbor2neighbor" else "noise2noise")
    peak = float(clean.max() - clean.min())
    restored = napari_vdir.restore(noisy, "denoise", model=weights, precision="float32")
    assert restored.dtype == np.uint16 and restored.shape == noisy.shape
    before, after = psnr(noisy, clean, peak), psnr(restored, clean, peak)
    print(f"{method}: noisy {before:.2f} dB, restored {after:.2f} dB")
    assert after > before + 4.0, (before, after)
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0].split(",")[-1] == "val_loss" and rows[-1].split(",")[-1] != ""  # held-out loss is logged


def test_validation_pairs_are_the_real_noisy_twins_of_the_clean_images(tmp_path):
    """--val with --val-degraded: validation crops are the given noisy files (different names, sorted order),
    not the clean ones with synthetic noise."""
    from napari_vdir.training.data import validation_set

    rng = np.random.default_rng(5)
    clean_dir, noisy_dir = tmp_path / "clean", tmp_path / "noisy"
    clean_dir.mkdir(), noisy_dir.mkdir()
    pairs = []
    for k in range(2):
        c = np.rint(blobs(rng, 64) * 255).astype(np.uint8)
        n = np.clip(c + rng.normal(0, 20, c.shape), 0, 255).astype(np.uint8)
        tifffile.imwrite(clean_dir / f"target_{k}.tif", c)
        tifffile.imwrite(noisy_dir / f"input_{k}.tif", n)
        pairs.append((c, n))
    recipe = Recipe.model_validate(dict(name="t", task="denoise", channels=1, steps=1, self_supervised="blind-spot",
                                        data={"train": [str(noisy_dir)], "val": str(clean_dir),
                                              "val_degraded": str(noisy_dir), "val_crop": 32}))
    val = validation_set(recipe, "cpu")
    assert len(val) == 2
    for batch, (c, n) in zip(val, pairs, strict=True):
        assert torch.equal(batch.clean[0, 0], torch.from_numpy(c[16:48, 16:48] / np.float32(255)))
        assert torch.equal(batch.degraded[0, 0], torch.from_numpy(n[16:48, 16:48] / np.float32(255)))


def test_frame_pairs_are_two_different_frames_of_the_same_crop():
    from napari_vdir.training.data import FramePairSampler

    frames = np.arange(5)[:, None, None, None] * 1000 + np.arange(40 * 40).reshape(1, 40, 40, 1)
    sampler = FramePairSampler([frames.astype(np.float32)], 16, "cpu")
    a, b = sampler.sample(32, torch.Generator().manual_seed(0))
    frame_a, frame_b = a // 1000, b // 1000
    assert (frame_a != frame_b).all()  # never the same frame twice (its noise would be copied)
    assert torch.equal(a % 1000, b % 1000)  # the same pixels of the field, same flip/rotation


def test_readme_noisy_stack_commands_work(tmp_path, monkeypatch):
    """The "No clean images?" commands of docs/fine-tuning.md, with fewer steps: example stack, fine-tune, restore."""
    import subprocess
    import sys
    from pathlib import Path

    from napari_vdir.cli import main as cli_main

    script = Path(__file__).resolve().parents[2] / "examples" / "noisy_stack.py"
    monkeypatch.chdir(tmp_path)
    subprocess.run([sys.executable, str(script), "my_noisy/", "--planes", "3", "--size", "64"], check=True)
    assert training_main(["--task", "denoise", "--data", "my_noisy/", "--self-supervised", "--init", "denoise-gray",
                          "--steps", "2", "--patch", "32", "--batch", "2", "--out", "runs/my-microscope",
                          "--quiet"]) == 0
    model = Path("runs/my-microscope/denoise.safetensors")
    assert napari_vdir.core.weights.read_info(model).trained_steps > 2  # the shipped model's steps plus these two
    assert cli_main(["restore", "my_noisy/stack.tif", "--task", "denoise", "--model", str(model),
                     "-o", "restored/"]) == 0
    (out,) = Path("restored").iterdir()
    restored, noisy = tifffile.imread(out), tifffile.imread("my_noisy/stack.tif")
    assert restored.shape == noisy.shape == (3, 64, 64) and restored.dtype == np.uint16
    assert tifffile.imread("my_noisy_clean/stack.tif").shape == noisy.shape



def test_a_single_stack_file_is_training_data(tmp_path):
    from napari_vdir.training.data import image_paths

    folder, _, _ = _stack(tmp_path, np.random.default_rng(0), frames_axis=False)
    assert image_paths(str(folder / "stack.tif")) == [folder / "stack.tif"]


class _Blur(torch.nn.Module):
    """A fixed linear denoiser with the network's output type: a separable Gaussian blur of width ``sigma``."""

    def __init__(self, sigma: float):
        super().__init__()
        r = max(1, int(3 * sigma))
        k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
        self.register_buffer("k", (k / k.sum()).view(1, 1, 1, -1))

    def forward(self, y):
        pad = self.k.shape[-1] // 2
        y = torch.nn.functional.conv2d(torch.nn.functional.pad(y, (pad, pad, 0, 0), mode="reflect"), self.k)
        y = torch.nn.functional.conv2d(torch.nn.functional.pad(y, (0, 0, pad, pad), mode="reflect"),
                                       self.k.transpose(-1, -2))
        return type("Out", (), {"image": y})()


def test_stein_estimate_tracks_the_error_to_the_clean_image_without_seeing_it():
    """For independent Gaussian noise of known variance, sure_risk is within a few % of the true squared error
    of each denoiser and orders three blurs as the clean error does (the noisy-only fidelity term alone,
    |f(y) - y|^2, orders them backwards: it always prefers the lightest blur)."""
    rng = np.random.default_rng(0)
    clean = torch.tensor(np.stack([blobs(rng, 96, 10) for _ in range(4)])[:, None], dtype=torch.float32)
    sigma = 0.08
    noisy = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    variance = torch.full_like(noisy, sigma**2)
    true, estimate, fidelity = [], [], []
    for width in (0.4, 1.2, 6.0):
        model = _Blur(width)
        out = model(noisy).image
        true.append(float(((out - clean) ** 2).mean()))
        fidelity.append(float(((out - noisy) ** 2).mean()))
        estimate.append(selfsupervised.sure_risk(model, noisy, variance, torch.Generator().manual_seed(2)))
    np.testing.assert_allclose(estimate, true, rtol=0.1)
    assert np.argsort(estimate).tolist() == np.argsort(true).tolist()
    assert np.argmin(fidelity) != np.argmin(true)


def test_the_noise_model_is_fitted_from_a_denoised_estimate():
    """Poisson (12 photons at 1.0) + Gaussian read noise: variance = signal / 12 + 0.03². Fitted from the clean
    signal, the model predicts it within 5 % across the image's intensities; fitted from a denoiser's output (a
    light blur, which follows the noise by df/dy) it does so only with the divergence correction — the bare
    residual underestimates the noise by about 2 df/dy."""
    rng = np.random.default_rng(3)
    clean = np.stack([blobs(rng, 128, 12) for _ in range(4)])[:, None] + 0.1
    noisy = torch.tensor(poisson_gaussian(clean, rng), dtype=torch.float32)
    clean = torch.tensor(clean, dtype=torch.float32)
    levels = torch.quantile(clean.flatten(), torch.tensor([0.1, 0.5, 0.9]))
    truth = levels / 12 + 0.03**2

    def predicted(model):
        return selfsupervised.noise_variance(levels, model)

    from_clean = selfsupervised.fit_noise_model(noisy, clean)
    np.testing.assert_allclose(predicted(from_clean), truth, rtol=0.05)
    restored, follows = selfsupervised.divergence_map(_Blur(1.5), noisy, torch.Generator().manual_seed(4))
    assert 0.05 < float(follows.mean()) < 0.45
    np.testing.assert_allclose(predicted(selfsupervised.fit_noise_model(noisy, restored, follows)), truth, rtol=0.1)
    bare = predicted(selfsupervised.fit_noise_model(noisy, restored))
    assert float((bare / truth).min()) < 0.9


def test_pseudo_clean_noise_is_read_from_the_finest_detail_not_the_residual():
    """A photograph full of fine texture (grass, a coat) with Gaussian noise of sigma 25/255: pseudo-clean's noise
    model, read from the 2x2 diagonal detail of the smoother windows, is within 4 % of the truth; read from the
    shipped denoiser's residual it also holds the texture the denoiser removed (>= 8 % high), and synthetic noise
    that strong teaches the network to over-smooth."""
    from skimage import data

    clean = data.camera()[96:352, 96:352].astype(np.float32) / 255
    noisy = torch.tensor(clean + np.random.default_rng(0).normal(0, 25 / 255, clean.shape), dtype=torch.float32)
    signal = torch.tensor(napari_vdir.restore(noisy.numpy(), "denoise", model="denoise-gray", device="cpu",
                                              backend="torch"))[None, None]

    def mean_variance(fit):
        return float(selfsupervised.noise_variance(torch.tensor(clean), fit).mean())

    truth = (25 / 255) ** 2
    np.testing.assert_allclose(mean_variance(selfsupervised.fit_noise_from_detail(noisy[None, None], signal)),
                               truth, rtol=0.04)
    from napari_vdir.core.models import find_model
    from napari_vdir.core.weights import load_weights

    model = load_weights(find_model("denoise-gray"))[0].eval()
    with torch.no_grad():  # as the held-out check fits it: the residual, corrected for how much it follows the noise
        restored, follows = selfsupervised.divergence_map(model, noisy[None, None], torch.Generator().manual_seed(7))
    assert mean_variance(selfsupervised.fit_noise_model(noisy[None, None], restored, follows)) > 1.08 * truth


def test_weights_rank_above_the_start_only_beyond_the_estimates_noise():
    """paired_excess: zero against itself, positive for a 'gain' smaller than the estimate's noise (a coin-flip
    improvement must not replace the start), negative for a clear one."""
    g = torch.Generator().manual_seed(0)
    start = torch.randn(8, 1, 64, 64, generator=g)
    assert selfsupervised.paired_excess(start, start) == 0.0
    jitter = 0.5 * torch.randn(start.shape, generator=g)
    assert selfsupervised.paired_excess(start + jitter - 0.002, start) > 0  # mean lower by 0.002, noise 0.5/px
    assert selfsupervised.paired_excess(start + jitter - 0.2, start) < 0


@pytest.mark.parametrize("planes", [4, 1])
def test_a_pseudo_clean_run_fits_the_noise_of_the_data_and_trains_from_its_start(tmp_path, tiny_weights, planes):
    """From a trained start on a Poisson-Gaussian stack: the noise model is fitted before training (from the
    held-out planes, or from training patches when there is a single plane) and finds the noise signal-dependent;
    the run trains and exports weights that restore."""
    from napari_vdir.training.data import ArrayData
    from napari_vdir.training.trainer import Trainer

    rng = np.random.default_rng(4)
    noisy = [poisson_gaussian(blobs(rng), rng).astype(np.float32)[..., None] for _ in range(planes)]
    recipe = Recipe.model_validate(dict(name="pc", task="denoise", channels=1, steps=6, patch=32, batch=4,
                                        init=str(tiny_weights[("denoise", 1, 1)]), self_supervised="pseudo-clean",
                                        data={"train": ["arrays"]}, val_every=3, checkpoint_every=6,
                                        losses={"gan": 0.0}))
    logged = []
    trainer = Trainer(recipe, tmp_path / "run", device="cpu", log=logged.append)
    trainer.load_data(ArrayData(noisy, None))
    gain, offset = trainer.synthesis_noise
    assert gain > 0 and any(line.startswith("noise model") for line in logged)
    # it trains on the start's restorations, and the time to make them counts
    assert trainer.train_seconds > 0 and any(line.startswith("pseudo-clean targets") for line in logged)
    restored = [napari_vdir.restore(x[..., 0], "denoise", model=recipe.init) for x in noisy]
    for target in trainer.sampler.clean:  # restorations of training planes, not the noisy planes
        t = target[0].numpy()
        assert any(np.abs(t - r).max() < 2e-2 for r in restored)
        assert all(np.abs(t - x[..., 0]).max() > 0.1 for x in noisy)
    path = trainer.fit()
    assert trainer.step == 6
    restored = napari_vdir.restore(noisy[0][..., 0], "denoise", model=path)
    assert restored.shape == (64, 64) and np.isfinite(restored).all()
