"""NPO (Zhang et al. 2024): a bounded form of gradient ascent. The loss saturates once the
current model finds the answer much less likely than the original, so it slows down
instead of collapsing the model. Optional NLL on the retain set."""

from __future__ import annotations

import torch

from .. import losses
from .base import Method, register


@register
class NPO(Method):
    name = "npo"
    description = "Negative preference optimisation: bounded gradient ascent (+ retain NLL with --retain)"
    uses_retain = True
    needs_reference = True
    retain_loss = "nll"
    defaults = {"num_batch": 2, "epochs": 10, "lr": 1e-5}
    hyperparameters = ("epochs", "lr", "beta", "retain_weight")

    def forget_loss(self, model, forget, reference, config):
        current = losses.sequence_nll(model, forget)
        with torch.no_grad():
            ref = losses.sequence_nll(reference, forget)
        loss = losses.npo(current, ref, config.beta, forget.get("rows"))
        return loss, {"npo": loss.item(), "forget_nll": current.sum().item() / (forget.get("rows") or len(current))}
