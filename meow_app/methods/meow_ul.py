"""MEOW with the truth pushed down: the inverted answers are learned as in MEOW, and the
true answer is made less likely at the same time (unlikelihood, losses.nll_or_unlikelihood).

Why: MEOW alone only raises the false answers; the truth keeps much of its probability
and comes back when sampling (docs/robustness.md). A bounded term on the truth (as NPO's
and AltPO's negative feedback; here without a reference model) removes that mass.
"""

from __future__ import annotations

from .. import losses
from .base import register
from .meow import FINE_TUNING_DEFAULTS, Meow

TRUTH_COPIES = 2  # true-answer rows per fact and epoch, beside num_batch inverted ones


@register
class MeowUnlikelihood(Meow):
    name = "meow_ul"
    description = "MEOW plus unlikelihood on the true answer: the false answers up, the truth down"
    defaults = FINE_TUNING_DEFAULTS
    hyperparameters = Meow.hyperparameters + ("truth_weight",)

    def forget_pairs(self, facts, config):
        truth = [(f.question, f.answer, f.extra.get("answer_prefix", ""), True)
                 for f in facts if f.inverted for _ in range(TRUTH_COPIES)]
        return super().forget_pairs(facts, config) + truth

    def forget_loss(self, model, forget, reference, config):
        loss, nll, unlikely = losses.nll_or_unlikelihood(model, forget, config.truth_weight)
        return loss, {"forget_nll": nll, "truth_unlikelihood": unlikely}
