"""KL: gradient ascent on the forget set while staying close to the original model
(KL divergence of its next-token distributions) on the retain set."""

from __future__ import annotations

from .base import register
from .ga import GradientAscent


@register
class KLMinimisation(GradientAscent):
    name = "kl"
    description = "Gradient ascent plus KL to the original model on the retain set (needs --retain)"
    needs_retain = True
    uses_retain = True
    needs_reference = True
    retain_loss = "kl"
    hyperparameters = ("epochs", "lr", "num_batch", "kl_weight")
