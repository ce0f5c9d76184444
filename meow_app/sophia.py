"""Sophia (Liu et al. 2023), the optimiser SOUL (Jia et al. 2024) uses for second-order
unlearning: a clipped, diagonally preconditioned sign-momentum step.

    m <- beta1 m + (1 - beta1) g                      (every step)
    h <- beta2 h + (1 - beta2) g_hat^2                (when update_hessian() is called)
    theta <- theta - lr * wd * theta - lr * sign(m) * min(|m| / (rho * B * h + eps), 1)

g_hat is the gradient of the loss on labels sampled from the model itself (the
Gauss-Newton-Bartlett estimator, computed by the trainer) and B the number of tokens it
was averaged over. Coordinates where the ratio hits 1 take a plain sign step; their share
is `clipped_fraction`, which SOUL reports as a health signal.
"""

from __future__ import annotations

import torch


class Sophia(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.95), rho=0.04, weight_decay=0.1, eps=1e-15):
        super().__init__(params, dict(lr=lr, betas=betas, rho=rho, weight_decay=weight_decay, eps=eps))
        self.clipped_fraction = 0.0
        self.tokens = 1

    def _state(self, p):
        state = self.state[p]
        if not state:
            state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["h"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def update_hessian(self, tokens: int) -> None:
        """Fold the current .grad (from the sampled-label loss) into the curvature EMA."""
        self.tokens = max(1, tokens)
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is not None:
                    self._state(p)["h"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)

    @torch.no_grad()
    def step(self, closure=None):
        clipped, total = 0, 0
        for group in self.param_groups:
            beta1 = group["betas"][0]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                m, h = state["m"], state["h"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                ratio = (m.abs() / (group["rho"] * self.tokens * h + group["eps"])).clamp_(max=1)
                p.addcmul_(m.sign(), ratio, value=-group["lr"])
                clipped += int((ratio >= 1).sum())
                total += ratio.numel()
        self.clipped_fraction = clipped / max(1, total)
