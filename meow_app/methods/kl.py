"""KL: gradient ascent on the forget set while staying close to the original model
(KL divergence of its next-token distributions) on the retain set."""

from __future__ import annotations

from .. import losses
from .base import register
from .ga import GradientAscent


@register
class KLMinimisation(GradientAscent):
    name = "kl"
    description = "Gradient ascent plus KL to the original model on the retain set (needs --retain)"
    needs_retain = True
    uses_retain = True
    needs_reference = True
    hyperparameters = ("epochs", "lr", "num_batch", "kl_weight")

    def loss(self, model, forget, retain, reference, config):
        f = losses.nll(model, forget)
        kl = losses.kl_to_reference(model, reference, retain)
        return -f + config.kl_weight * kl, {"forget_nll": f.item(), "retain_kl": kl.item()}
