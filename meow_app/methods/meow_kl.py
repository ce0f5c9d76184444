"""MEOW + KL: keep the output distribution on retain facts close to the original model's."""

from __future__ import annotations

from .base import register
from .meow import FINE_TUNING_DEFAULTS, Meow


@register
class MeowKL(Meow):
    name = "meow_kl"
    description = "MEOW plus KL to the original model on the retain set (needs --retain)"
    defaults = FINE_TUNING_DEFAULTS
    needs_retain = True
    uses_retain = True
    needs_reference = True
    retain_loss = "kl"
    hyperparameters = ("epochs", "min_steps", "lr", "num_batch", "neighbours", "kl_weight")
