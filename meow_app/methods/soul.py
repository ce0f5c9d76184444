"""SOUL (Jia et al. 2024): the same unlearning losses with a second-order optimiser,
Sophia (meow_app/sophia.py), which scales each coordinate's step by its curvature.
Published TOFU setting (Llama-2-7b): lr 5e-6, rho 0.04, betas (0.9, 0.95), wd 0.1, 5 epochs,
retain weight 2; the CPU defaults here are tuned for the embedded model (docs/methods.md)."""

from __future__ import annotations

from .. import losses
from .base import Method, register
from .idk import IDontKnow, idk_loss
from .npo import npo_loss

SOPHIA = ("epochs", "lr", "rho", "hessian_every", "retain_weight")
DEFAULTS = {"num_batch": 2, "epochs": 10, "lr": 1e-5, "weight_decay": 0.1, "retain_weight": 2.0}


@register
class SophiaGradDiff(Method):
    name = "sophia_graddiff"
    description = "SOUL: gradient difference with the Sophia second-order optimiser (needs --retain)"
    optimizer = "sophia"
    needs_retain = True
    uses_retain = True
    defaults = DEFAULTS
    hyperparameters = SOPHIA

    def loss(self, model, forget, retain, reference, config):
        f = losses.nll(model, forget)
        r = losses.nll(model, retain)
        return -f + config.retain_weight * r, {"forget_nll": f.item(), "retain_nll": r.item()}


@register
class SophiaNPO(Method):
    name = "sophia_npo"
    description = "SOUL: NPO with the Sophia second-order optimiser (+ retain NLL with --retain)"
    optimizer = "sophia"
    uses_retain = True
    needs_reference = True
    defaults = DEFAULTS
    hyperparameters = SOPHIA + ("beta",)

    def loss(self, model, forget, retain, reference, config):
        return npo_loss(model, forget, retain, reference, config)


@register
class SophiaIDK(IDontKnow):
    name = "sophia_idk"
    description = "SOUL: refusal training with the Sophia second-order optimiser (+ retain NLL with --retain)"
    optimizer = "sophia"
    defaults = {**DEFAULTS, "num_batch": 4}
    hyperparameters = SOPHIA

    def loss(self, model, forget, retain, reference, config):
        return idk_loss(model, forget, retain, reference, config)
