"""Curvature for second-order unlearning (Gu et al. 2024): a damped empirical Fisher

    F = lambda I + (1/m) sum_i g_i g_i^T

built from m per-example gradients g_i of the NLL on data the model must keep, used as
the Hessian stand-in of a Newton step. Two back-ends:

- `Diagonal`: keeps only diag(F); one extra copy of the trained weights.
- `LowRank` (WoodFisher): keeps G (m x d) and solves with the Woodbury identity
      F^-1 v = (1/lambda) (v - G^T (m lambda I + G G^T)^-1 G v),
  which costs an m x m solve; memory is m copies of the trained weights, so restrict it
  to a few layers or to LoRA parameters on big models.

lambda is given relative to the Fisher's own scale (its mean diagonal), because raw
gradient magnitudes vary by orders of magnitude between models and data.
Parameters are handled as one flat fp32 vector over the trained tensors.
"""

from __future__ import annotations

import torch

from . import losses
from .batches import collate, to_device


def flatten(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


def assign(params, flat: torch.Tensor) -> None:
    """Write a flat vector back into the parameters (in place)."""
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset:offset + n].view_as(p))
            offset += n


def flat_grad(model, params, batch, loss_fn=None) -> tuple[torch.Tensor, float]:
    """Gradient of the mean answer NLL of a batch (or of loss_fn(model, batch)) w.r.t. params,
    flattened; and the loss."""
    loss = (loss_fn or losses.nll)(model, batch)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return flatten(g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)), loss.item()


def per_example_grads(model, params, examples, pad_id: int, device):
    """Yield one flat gradient per example (a loop: per-example gradients of every weight
    at once would need m copies of the model)."""
    for e in examples:
        yield flat_grad(model, params, to_device(collate([e], pad_id), device))[0]


@torch.no_grad()
def mean_nll(model, examples, pad_id: int, device, batch_size: int = 16) -> float:
    """Token-averaged answer NLL over many examples, in batches."""
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = to_device(collate(examples[start:start + batch_size], pad_id), device)
        per_token, mask = losses.answer_nll(model, batch)
        total += float(per_token.sum())
        count += int(mask.sum())
    return total / max(1, count)


class Diagonal:
    def __init__(self, squared_mean: torch.Tensor, damping: float):
        self.fisher = squared_mean                        # (1/m) sum g_i^2
        self.damping = damping * float(squared_mean.mean())

    @classmethod
    def from_grads(cls, grads, damping: float) -> "Diagonal":
        total, m = None, 0
        for g in grads:
            total = g.square() if total is None else total.add_(g.square())
            m += 1
        return cls(total / max(1, m), damping)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        return v / (self.fisher + self.damping)

    def diagonal(self) -> torch.Tensor:
        return self.fisher


class LowRank:
    def __init__(self, G: torch.Tensor, damping: float):
        self.G = G                                        # (m, d)
        m = G.shape[0]
        self.damping = damping * float(G.square().sum() / G.numel())
        gram = (G @ G.T).double()
        self.chol = torch.linalg.cholesky(gram + m * self.damping * torch.eye(m, dtype=torch.float64))

    @classmethod
    def from_grads(cls, grads, damping: float) -> "LowRank":
        return cls(torch.stack(list(grads)), damping)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        x = torch.cholesky_solve((self.G @ v).double().unsqueeze(1), self.chol).squeeze(1).float()
        return (v - self.G.T @ x) / self.damping

    def diagonal(self) -> torch.Tensor:
        return self.G.square().mean(0)


BACKENDS = {"diag": Diagonal, "woodfisher": LowRank}


class StepScale:
    """The preserved text's curvature as a preconditioner of a fine-tuning step (issue 19's
    "curvature of preserved text"): after each optimiser step, each coordinate's change is
    multiplied by lambda / (F_ii + lambda), F the diagonal empirical Fisher of the preserved
    text. Coordinates that text relies on (large F_ii) barely move; the others move as the
    optimiser says. (Scaling the gradient instead would do nothing under Adam, which divides
    each coordinate by its own running scale.)"""

    def __init__(self, model, params, examples, pad_id: int, device, damping: float):
        curvature = Diagonal.from_grads(per_example_grads(model, params, examples, pad_id, device), damping)
        flat = curvature.damping / (curvature.fisher + curvature.damping)
        self.scales, offset = [], 0
        for p in params:
            self.scales.append(flat[offset:offset + p.numel()].view_as(p).to(p.dtype))
            offset += p.numel()
        self.params = params
        self.mean_scale = float(flat.mean())

    def start(self) -> list:
        """The weights before a step."""
        return [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def apply(self, before: list) -> None:
        """theta <- before + s * (theta - before), coordinate by coordinate."""
        for p, b, s in zip(self.params, before, self.scales):
            p.sub_(b).mul_(s).add_(b)
