"""Gradient difference (GD): gradient ascent on the forget set, descent on the retain set."""

from __future__ import annotations

from .. import losses
from .base import register
from .ga import GradientAscent


@register
class GradientDifference(GradientAscent):
    name = "gd"
    description = "Gradient ascent on the true answers plus NLL on the retain set (needs --retain)"
    needs_retain = True
    uses_retain = True
    hyperparameters = ("epochs", "lr", "num_batch", "retain_weight")

    def loss(self, model, forget, retain, reference, config):
        f = losses.nll(model, forget)
        r = losses.nll(model, retain)
        return -f + config.retain_weight * r, {"forget_nll": f.item(), "retain_nll": r.item()}
