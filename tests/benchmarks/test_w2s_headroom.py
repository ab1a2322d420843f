"""benchmarks/w2s_headroom.py (issue 33): the variance-stabilised restore it reports beside the shipped model."""

from __future__ import annotations

import numpy as np
import w2s_headroom as headroom  # benchmarks/ is on pytest's pythonpath


def _psnr(a, ref) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - ref) ** 2)))


def test_the_variance_stabilised_restore_denoises_photon_noise_on_the_right_scale():
    """Poisson noise of 30 photons at the brightest pixel: the transform, restore and inverse must give back the
    image on its own intensity scale (plain PSNR, no matching) and far cleaner than the input."""
    from scipy.ndimage import gaussian_filter

    from napari_vdir.core.models import find_model
    from napari_vdir.core.weights import load_weights

    rng = np.random.default_rng(0)
    smooth = gaussian_filter(rng.random((128, 128)), 4)
    clean = (smooth - smooth.min()) / np.ptp(smooth) * 200 + 30
    photons = 30 / 230
    noisy = np.clip(np.round(rng.poisson(clean * photons) / photons), 0, 255).astype(np.uint8)
    model, _ = load_weights(find_model("denoise-gray"))
    out = headroom.variance_stabilised(model.eval(), noisy)
    assert out.shape == noisy.shape and out.dtype == np.uint8
    assert _psnr(out, clean) > _psnr(noisy, clean) + 8
    assert abs(float(out.mean()) - float(clean.mean())) < 2.0  # the inverse puts it back on the input's scale
