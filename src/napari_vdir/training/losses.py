"""The VDIR objective's terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(c|y) || N(0, I)), mean over elements (the paper's beta = 0.01 applies to this mean)."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).mean()


def generator_adversarial(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss: -log D(fake)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def estimate_loss(estimate_map: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between EST(c)'s per-pixel map (N, D, H, W) and the per-image target (N, D)."""
    return (estimate_map - target[:, :, None, None].to(estimate_map)).abs().mean()
