"""Fisher Removal's Newton steps towards MEOW's target instead of away from the truth:

    theta <- theta - eta F^-1 grad L,

L meow_ul's loss (the NLL of the MEMO-selected false answers, plus truth_weight times the
unlikelihood of the true one) and F the same damped empirical Fisher of kept data. Why:
going uphill on the truth's NLL has no bottom, so after the first step each further one
cost the kept data about as much as it gained (docs/methods.md, "Fisher Removal on the
held-out set"); MEOW's loss has one, the false answer, and the unlikelihood fades as the
truth's probability nears 0. The step-size search, trust region, retain budget and early
stop are Fisher Removal's.
"""

from __future__ import annotations

from .. import losses
from ..batches import encode_example
from .base import register
from .fisher_removal import FisherRemoval
from .meow_ul import MeowUnlikelihood


@register
class FisherMeow(FisherRemoval):
    name = "fisher_meow"
    description = ("Second order towards MEOW's target: Newton steps down the false answers' NLL and the truth's "
                   "unlikelihood, preconditioned by the retain data's Fisher")
    needs_inverted = True
    merge_rows = True  # (num_batch copies of each false answer: computed once, counted as often)
    defaults = {**FisherRemoval.defaults, "truth_span": True}
    hyperparameters = FisherRemoval.hyperparameters + ("num_batch", "truth_weight", "truth_span", "lead_in_context")
    objective_name = "forget_loss"
    stuck = "no step size lowered MEOW's loss within the retain budget"

    def forget_examples(self, trainer) -> list:
        pairs = MeowUnlikelihood().forget_pairs(trainer.forget, trainer.config)
        return [encode_example(trainer.tokenizer, *pair) for pair in pairs]

    def objective(self, model, batch, cfg):
        return losses.nll_or_unlikelihood(model, batch, cfg.truth_weight)[0]

    @staticmethod
    def reported(value: float) -> float:
        return value
