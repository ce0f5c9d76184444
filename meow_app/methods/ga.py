"""Gradient ascent (GA): make the true answers unlikely by climbing their NLL.
The simplest baseline; with nothing holding the rest in place it soon damages the model."""

from __future__ import annotations

from .. import losses
from .base import Method, register


@register
class GradientAscent(Method):
    name = "ga"
    description = "Gradient ascent on the true answers (baseline; tends to break the rest of the model)"
    defaults = {"num_batch": 2, "epochs": 10, "lr": 1e-5}
    hyperparameters = ("epochs", "lr", "num_batch")
    merges_duplicates = True  # its forget term is losses.nll

    def forget_loss(self, model, forget, reference, config):
        f = losses.nll(model, forget)
        return -f, {"forget_nll": f.item()}
