"""Fisher Forgetting: Fisher Removal plus Fisher-shaped Gaussian noise after each step,

    theta <- theta + eta F^-1 g_forget + (mu sigma^2)^(1/4) (F + lambda)^(-1/4) eps,

which hides what information the Newton step leaves behind (the privacy part): the
noise is largest where the kept data does not constrain the weights. Here the scale is
given as `noise_std`, the noise at the mean curvature, i.e. (mu sigma^2)^(1/4) =
noise_std * mean(F + lambda)^(1/4); eps is clamped to +-noise_clamp and seeded.
"""

from __future__ import annotations

import torch

from .. import fisher
from .base import register
from .fisher_removal import FisherRemoval


@register
class FisherForgetting(FisherRemoval):
    name = "fisher_forgetting"
    description = "Fisher Removal plus Fisher-shaped Gaussian noise that hides what is left (seeded)"
    defaults = {**FisherRemoval.defaults, "noise_std": 1e-3}
    hyperparameters = FisherRemoval.hyperparameters + ("noise_std",)

    def after_step(self, trainer, model, params, curvature, info) -> None:
        cfg = trainer.config
        if cfg.noise_std <= 0:
            return
        curv = curvature.diagonal() + curvature.damping
        scale = cfg.noise_std * (curv.mean() / curv).pow(0.25)
        gen = torch.Generator().manual_seed(cfg.seed + len(info["steps"]))
        eps = torch.randn(curv.shape, generator=gen).clamp_(-cfg.noise_clamp, cfg.noise_clamp).to(curv.device)
        noise = scale * eps
        fisher.assign(params, fisher.flatten(params) + noise)
        info["steps"][-1]["noise_norm"] = float(noise.norm())
        info["noise_scale"] = cfg.noise_std * float(curv.mean()) ** 0.25  # (mu sigma^2)^(1/4)
