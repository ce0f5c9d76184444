"""MEOW: fine-tune on the selected inverted facts, so the truth loses its probability mass."""

from __future__ import annotations

from .. import losses
from .base import Method, register


# The recipe before null_space (issue 19): the neighbour answers trained on beside the
# forget set at lr 1e-4, stopping once the greedy answers no longer leak. The MEOW variants
# keep it: their retain and truth terms were measured with it (docs/methods.md).
FINE_TUNING_DEFAULTS = {"lr": 1e-4, "epochs": 3, "min_steps": 12, "neighbours": 32}


@register
class Meow(Method):
    name = "meow"
    description = "MEOW: fine-tune on inverted (false) answers chosen by MEMO; no retain data needed"
    needs_inverted = True
    # CPU defaults measured on the embedded model on held-out fact sets (docs/forgetting.md):
    # 3 epochs, at least 12 steps (so 1-3 facts also go), the original model's answers to 32
    # neighbour questions as preserved text that each step's change is projected away from
    # (null_space), a higher lr to make up for the projected-away part, and early stopping
    # only once each true answer has lost half its probability, not just left greedy answers.
    defaults = {"lr": 5e-4, "epochs": 3, "min_steps": 12, "neighbours": 32, "null_space": 0.99,
                "anchor_weight": 0.0, "stop_depth": 0.5}
    # Those are tuned for real-world facts; on a TOFU fine-tune the recipe used before
    # applies: no neighbours, lr 5e-5, up to 6 epochs (what docs/evaluation.md used).
    tofu_defaults = {"lr": 5e-5, "epochs": 6, "min_steps": 0, "neighbours": 0, "null_space": 0.0,
                     "anchor_weight": 1.0, "stop_depth": 0.0}
    hyperparameters = ("epochs", "min_steps", "lr", "num_batch", "neighbours", "train_only", "null_space",
                       "stop_depth")
    merges_duplicates = True  # each (question, false answer) pair comes num_batch / top_k times a batch

    def forget_pairs(self, facts, config):
        # Each fact's question num_batch times, cycling through its selected inverted answers.
        pairs = []
        for f in facts:
            if not f.inverted:
                continue
            lead = f.extra.get("answer_prefix", "") if config.lead_in_context else ""
            for j in range(config.num_batch):
                c = f.inverted[j % len(f.inverted)]
                if lead and c.startswith(lead) and c[len(lead):].strip():
                    pairs.append((f.question, c[len(lead):], lead))  # the lead-in is context, not a target
                else:
                    pairs.append((f.question, c))
        return pairs

    def forget_loss(self, model, forget, reference, config):
        loss = losses.nll(model, forget)
        return loss, {"forget_nll": loss.item()}
