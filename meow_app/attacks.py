"""Robustness attacks on an unlearned model: is the fact gone, or only hidden?

Relearning (the project's shared spec, ../shared/spec/EVALUATION.md): fine-tune the unlearned model briefly on
one part of the forget set and measure how much of the *other* part comes back. Facts that were
truly removed stay gone; facts only suppressed return after a few steps, because the
training un-suppresses the whole neighbourhood. (Membership inference lives in
evaluate.mia: it needs no training, only the likelihoods every evaluation computes.)
"""

from __future__ import annotations

from . import scoring
from .errors import MeowError
from .finetune import finetune
from .train import TrainConfig

RELEARN_DEFAULTS = dict(epochs=3, lr=1e-4, batch_size=8, train_only="", seed=0)


def split(facts: list, fraction: float = 0.5) -> tuple[list, list]:
    """(trained on, tested on): every other fact, so both halves mix every topic."""
    if len(facts) < 2:
        raise MeowError("the relearning attack needs at least 2 forget facts (one to train on, one to test)")
    step = max(2, round(1 / fraction)) if 0 < fraction < 1 else 2
    train = [f for i, f in enumerate(facts) if i % step == 0]
    test = [f for i, f in enumerate(facts) if i % step != 0]
    return train, test


def relearn(unlearned, tokenizer, forget: list, fraction: float = 0.5, max_new_tokens: int = scoring.MAX_NEW_TOKENS,
            on_event=None, **config) -> dict:
    """Scores on the held-out part of the forget set before and after relearning on the rest."""
    train, test = split(forget, fraction)
    cfg = TrainConfig(**{**RELEARN_DEFAULTS, **config})
    before = scoring.score_set(unlearned, tokenizer, test, max_new_tokens, with_memo=False)
    relearned = finetune(unlearned, tokenizer, train, cfg, on_event)
    after = scoring.score_set(relearned, tokenizer, test, max_new_tokens, with_memo=False)
    del relearned
    return {"trained_on": [f.question for f in train], "settings": {"fraction": fraction, **cfg.to_dict()},
            "before": before["aggregate"], "after": after["aggregate"],
            "rows": [{"question": a["question"], "generated_before": b["generated"], "generated": a["generated"],
                      "leak_before": b["leak"], "leak": a["leak"], "answer_prob_before": b["answer_prob"],
                      "answer_prob": a["answer_prob"]} for b, a in zip(before["rows"], after["rows"])]}
