"""Per-fact measures of how well a model still knows an answer (spec: the project's shared
spec, ../shared/spec/EVALUATION.md next to the repository).

Everything that needs the model's likelihoods comes from ONE teacher-forced forward pass
per (question, answer) pair, batched and left-padded with the training code's own
`batches.collate` + `losses.token_nll`: from the per-token NLLs and argmax hits of a
pair we get answer probability, truth ratio, exact memorization, extraction strength and
the membership-inference scores. The functions below that take token lists are plain
arithmetic, so tests can check them against hand-computed values.

Answers are scored without the end-of-turn token, as TOFU does, so numbers are
comparable with its logs.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer

from . import generation, losses
from .batches import IGNORE, Example, collate, encode_example, to_device

_rougeL = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
MIN_K = 0.4  # Min-k% membership score: mean of the lowest 40% token log-probs


@dataclass
class Scored:
    """One answer under teacher forcing: per answer token, its NLL and whether argmax hit it."""
    nll: list[float]
    hit: list[bool]


def answer_example(tokenizer, question: str, answer: str, prefix: str = "") -> Example:
    """teacher_forced's row for one answer: the answer's tokens labelled, no end of turn."""
    if prefix:
        # The answer's tokens as they are in the whole text prefix + answer: that text is
        # tokenised whole and the tokens it starts with as the prefix alone does are the
        # context. (Tokenising " Paris" alone gives Llama-2-style tokenizers an extra "▁".)
        whole, head = generation.encode(tokenizer, prefix + answer), generation.encode(tokenizer, prefix)
        shared = next((i for i, (a, b) in enumerate(zip(whole, head)) if a != b), min(len(whole), len(head)))
        prompt = generation.encode(tokenizer, generation.chat_prompt(tokenizer, question)) + whole[:shared]
        return Example(prompt + whole[shared:], [IGNORE] * len(prompt) + whole[shared:])
    ex = encode_example(tokenizer, question, answer)
    return Example(ex.ids[:-1], ex.labels[:-1])  # drop the end-of-turn token (TOFU scores the answer only)


@torch.no_grad()
def teacher_forced(model, tokenizer, pairs: list[tuple[str, ...]], batch_size: int = 16) -> list[Scored]:
    """Per-token NLL and argmax hits of each answer given its question, in length-sorted
    batches. A pair may carry a third item, text the answer follows, given as context (not
    scored; computed once for the rows that share it, see batches.collate)."""
    device = next(model.parameters()).device
    examples = [answer_example(tokenizer, *pair) for pair in pairs]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    out: list[Scored | None] = [None] * len(examples)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = to_device(collate([examples[i] for i in rows], tokenizer.pad_token_id), device)
        # the loss code's own alignment of logits and labels, at the labelled positions only
        logits, labels, mask = losses.labelled_logits(model, batch)
        nll = F.cross_entropy(logits, labels, reduction="none").split(mask.sum(1).tolist())
        hits = (logits.argmax(-1) == labels).split(mask.sum(1).tolist())
        for j, i in enumerate(rows):
            out[i] = Scored(nll[j].tolist(), hits[j].tolist())
    return out


def mean_nll(s: Scored) -> float:
    return sum(s.nll) / len(s.nll)


def answer_prob(s: Scored) -> float:
    """p(y|x) = exp(-mean token NLL): the per-token probability of the true answer."""
    return math.exp(-mean_nll(s))


def truth_ratio(right: Scored, wrong: list[Scored]) -> float:
    """P_wrong / P_right; P_wrong the geometric mean of the wrong answers' p(a|x).
    Near 1 (or above): the model no longer prefers the truth; near 0: it knows it."""
    return math.exp(mean_nll(right) - sum(mean_nll(w) for w in wrong) / len(wrong))


def exact_memorization(s: Scored) -> float:
    """Share of answer positions where the teacher-forced argmax is the true token."""
    return sum(s.hit) / len(s.hit)


def extraction_strength(s: Scored) -> float:
    """1 - k/|y| for the smallest k with argmax == label at every position from k on:
    how short a prefix of the answer the model needs to reproduce the rest by itself."""
    k = len(s.hit)
    while k > 0 and s.hit[k - 1]:
        k -= 1
    return 1.0 - k / len(s.hit)


def rougeL_recall(generated: str, reference: str) -> float:
    """Share of the reference's words found, in order, in the generated answer (stemmed)."""
    return _rougeL.score(reference, generated)["rougeL"].recall


# Membership-inference scores: higher = more like text the model was trained on.
def mia_loss(s: Scored) -> float:
    return -mean_nll(s)


def mia_zlib(s: Scored, text: str) -> float:
    # Dividing by the compressed length discounts answers that are just easy (repetitive) text.
    return -mean_nll(s) / len(zlib.compress(text.encode("utf-8")))


def mia_min_k(s: Scored, k: float = MIN_K) -> float:
    logp = sorted(-x for x in s.nll)
    n = max(1, int(len(logp) * k))
    return sum(logp[:n]) / n
