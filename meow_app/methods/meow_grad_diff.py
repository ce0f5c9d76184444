"""MEOW + gradient difference: also keep the NLL on retain facts low."""

from __future__ import annotations

from .. import losses
from .base import register
from .meow import Meow


@register
class MeowGradDiff(Meow):
    name = "meow_grad_diff"
    description = "MEOW plus NLL on the retain set (needs --retain)"
    needs_retain = True
    uses_retain = True
    hyperparameters = ("epochs", "min_steps", "lr", "num_batch", "neighbours", "retain_weight")

    def loss(self, model, forget, retain, reference, config):
        f = losses.nll(model, forget)
        r = losses.nll(model, retain)
        return f + config.retain_weight * r, {"forget_nll": f.item(), "retain_nll": r.item()}
