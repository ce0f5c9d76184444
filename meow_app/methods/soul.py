"""SOUL (Jia et al. 2024): the same unlearning losses with a second-order optimiser,
Sophia (meow_app/sophia.py), which scales each coordinate's step by its curvature.
Published TOFU setting (Llama-2-7b): lr 5e-6, rho 0.04, betas (0.9, 0.95), wd 0.1, 5 epochs,
retain weight 2; the CPU defaults here are tuned for the embedded model (docs/methods.md)."""

from __future__ import annotations

from .base import register
from .gd import GradientDifference
from .idk import IDontKnow
from .npo import NPO

SOPHIA = ("epochs", "lr", "rho", "hessian_every", "retain_weight")
DEFAULTS = {"num_batch": 2, "epochs": 10, "lr": 1e-5, "weight_decay": 0.1, "retain_weight": 2.0}


@register
class SophiaGradDiff(GradientDifference):
    name = "sophia_graddiff"
    description = "SOUL: gradient difference with the Sophia second-order optimiser (needs --retain)"
    optimizer = "sophia"
    defaults = DEFAULTS
    hyperparameters = SOPHIA


@register
class SophiaNPO(NPO):
    name = "sophia_npo"
    description = "SOUL: NPO with the Sophia second-order optimiser (+ retain NLL with --retain)"
    optimizer = "sophia"
    defaults = DEFAULTS
    hyperparameters = SOPHIA + ("beta",)


@register
class SophiaIDK(IDontKnow):
    name = "sophia_idk"
    description = "SOUL: refusal training with the Sophia second-order optimiser (+ retain NLL with --retain)"
    optimizer = "sophia"
    defaults = {**DEFAULTS, "num_batch": 4}
    hyperparameters = SOPHIA
