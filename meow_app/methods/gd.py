"""Gradient difference (GD): gradient ascent on the forget set, descent on the retain set."""

from __future__ import annotations

from .base import register
from .ga import GradientAscent


@register
class GradientDifference(GradientAscent):
    name = "gd"
    description = "Gradient ascent on the true answers plus NLL on the retain set (needs --retain)"
    needs_retain = True
    uses_retain = True
    retain_loss = "nll"
    hyperparameters = ("epochs", "lr", "num_batch", "retain_weight")
