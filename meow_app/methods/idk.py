"""IDK: teach the model to refuse the forget questions ("I don't know" answers from TOFU,
shipped in meow_app/data/idontknow.txt), plus optional NLL on the retain set."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .. import losses
from .base import Method, register

REFUSALS = Path(__file__).resolve().parents[1] / "data" / "idontknow.txt"


@lru_cache(maxsize=1)
def refusals() -> tuple[str, ...]:
    return tuple(line.strip() for line in REFUSALS.read_text(encoding="utf-8").splitlines() if line.strip())


@register
class IDontKnow(Method):
    name = "idk"
    description = "Train the forget questions towards refusals like \"I don't know\" (+ retain NLL with --retain)"
    uses_retain = True
    retain_loss = "nll"
    defaults = {"num_batch": 4}
    hyperparameters = ("epochs", "lr", "num_batch", "retain_weight")
    merges_duplicates = True  # its forget term is losses.nll

    def forget_pairs(self, facts, config):
        # Each fact num_batch times with different refusals, picked by position so runs repeat.
        r = refusals()
        return [(f.question, r[(i * config.num_batch + j) % len(r)])
                for i, f in enumerate(facts) for j in range(config.num_batch)]

    def forget_loss(self, model, forget, reference, config):
        f = losses.nll(model, forget)
        return f, {"forget_nll": f.item()}
