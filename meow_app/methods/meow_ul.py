"""MEOW with the truth pushed down: the inverted answers are learned as in MEOW, and the
true answer is made less likely at the same time (unlikelihood, losses.nll_or_unlikelihood).

Why: MEOW alone only raises the false answers; the truth keeps much of its probability
and comes back when sampling (docs/robustness.md). A bounded term on the truth (as NPO's
and AltPO's negative feedback; here without a reference model) removes that mass.
"""

from __future__ import annotations

import dataclasses

from .. import losses, probes
from .base import register
from .meow import FINE_TUNING_DEFAULTS, Meow

TRUTH_COPIES = 2  # true-answer rows per fact and epoch, beside num_batch inverted ones


def truth_pairs(facts, config) -> list[tuple]:
    """TRUTH_COPIES rows a fact (with false answers) that push its truth down: the model's own
    sentence from the truth on, its lead-in as context; with config.truth_span, the truth's own
    words alone, at each place the sentence says it (truth_mentions): the rest of the sentence
    ("player who has been known for...") is the model's ordinary text, and pushing it down
    teaches the neurons or weights that do it to push down ordinary text (docs/forgetting.md,
    twenty-sixth round)."""
    out = []
    for f in facts:
        if not f.inverted:
            continue
        whole = (f.extra.get("answer_prefix", ""), f.answer)
        spans = truth_mentions("".join(whole), f) if config.truth_span else []
        for lead, said in spans or [whole]:
            out += [(f.question, said, lead, True)] * TRUTH_COPIES
    return out


def truth_mentions(sentence: str, fact) -> list[tuple[str, str]]:
    """Each place the sentence states the fact, as (the sentence before it, the truth as said
    there): "... is a legendary" + " tennis", "... in the sport of" + " tennis". By its keywords
    alone: its answer here may be the model's whole sentence."""
    marked, out, start = dataclasses.replace(fact, answer=""), [], 0
    while cut := probes.said_truth(sentence[start:], marked, whole_words=True):
        before, said = sentence[:start] + cut[0], cut[1]
        out.append((before, said))
        start = len(before) + len(said)
    return out


@register
class MeowUnlikelihood(Meow):
    name = "meow_ul"
    description = "MEOW plus unlikelihood on the true answer: the false answers up, the truth down"
    defaults = FINE_TUNING_DEFAULTS
    hyperparameters = Meow.hyperparameters + ("truth_weight", "truth_span")

    def forget_pairs(self, facts, config):
        return super().forget_pairs(facts, config) + truth_pairs(facts, config)

    def forget_loss(self, model, forget, reference, config):
        loss, nll, unlikely = losses.nll_or_unlikelihood(model, forget, config.truth_weight)
        return loss, {"forget_nll": nll, "truth_unlikelihood": unlikely}
