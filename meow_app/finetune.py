"""Plain fine-tuning (NLL on question/answer pairs) through the shared training loop.

Used where something must be *learned*, not forgotten: the relearning attack and the
TOFU protocol's target and retain models. It is a `Method` for `train.Trainer` but not
registered: it is not an unlearning method and must not appear in `methods`.
"""

from __future__ import annotations

from . import losses
from .methods.base import Method
from .train import TrainConfig, Trainer


class Finetune(Method):
    name = "finetune"
    description = "plain NLL on the given facts (learning, not forgetting)"

    def forget_pairs(self, facts, config):
        # Each fact once per epoch: `epochs` is the recipe's number of passes (num_batch
        # copies are an unlearning notion).
        return [(f.question, f.answer) for f in facts]

    def forget_loss(self, model, forget, reference, config):
        loss = losses.nll(model, forget)
        return loss, {"nll": loss.item()}


def finetune(model, tokenizer, facts, config: TrainConfig | None = None, on_event=None):
    """A trained copy of `model` (the input is never modified) after NLL on `facts`.
    Early stopping and the forget probes are off: the goal is to learn the facts."""
    config = config or TrainConfig()
    config.early_stop = False
    return Trainer(Finetune(), model, tokenizer, config, facts, on_event=on_event, run_probes=False).train().model
