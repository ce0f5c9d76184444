"""MEOW + KL: keep the output distribution on retain facts close to the original model's."""

from __future__ import annotations

from .. import losses
from .base import register
from .meow import Meow


@register
class MeowKL(Meow):
    name = "meow_kl"
    description = "MEOW plus KL to the original model on the retain set (needs --retain)"
    needs_retain = True
    uses_retain = True
    needs_reference = True
    hyperparameters = ("epochs", "min_steps", "lr", "num_batch", "neighbours", "kl_weight")

    def loss(self, model, forget, retain, reference, config):
        f = losses.nll(model, forget)
        kl = losses.kl_to_reference(model, reference, retain)
        return f + config.kl_weight * kl, {"forget_nll": f.item(), "retain_kl": kl.item()}
