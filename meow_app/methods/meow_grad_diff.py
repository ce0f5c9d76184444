"""MEOW + gradient difference: also keep the NLL on retain facts low."""

from __future__ import annotations

from .base import register
from .meow import FINE_TUNING_DEFAULTS, Meow


@register
class MeowGradDiff(Meow):
    name = "meow_grad_diff"
    description = "MEOW plus NLL on the retain set (needs --retain)"
    defaults = FINE_TUNING_DEFAULTS
    needs_retain = True
    uses_retain = True
    retain_loss = "nll"
    hyperparameters = ("epochs", "min_steps", "lr", "num_batch", "neighbours", "retain_weight")
