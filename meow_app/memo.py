"""MEMO: how verbatim a model reproduces a text from any cut of it (Gu et al. 2024).

Suffix mode (default): prompt = q + " " + t[:k], target = t[k:] for k = 1, 1+stride, ...
Prefix mode: prompt = q[:k], target = q[k:] + " " + t. Each cut is greedily continued
(raw text, no chat template), and scored by ROUGE-1 precision against the target; MEMO
is the mean over cuts. Length of each continuation: the target's length in tokens + 4
(`length="target"`, our default) or a fixed number of tokens (200 = the published one).

All cuts of all texts are generated together in left-padded batches; `memo_reference`
is the straightforward one-cut-at-a-time loop the batched one must agree with.
Beside MEMO: MA (teacher-forced next-token accuracy on the answer) and EL (extraction
likelihood: n-gram overlap of greedy continuations from every answer-token prefix).
"""

from __future__ import annotations

import torch
from rouge_score import rouge_scorer

from . import generation
from .errors import MeowError

_scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)


def rouge1_precision(prediction: str, target: str) -> float:
    return _scorer.score(target, prediction)["rouge1"].precision


def cuts(question: str, text: str, mode: str = "suffix", stride: int = 5) -> list[tuple[str, str]]:
    """The (prompt, target) pairs MEMO generates from."""
    if stride < 1:
        raise MeowError(f"stride must be >= 1, got {stride}")
    if mode == "suffix":
        return [(f"{question} {text[:k]}", text[k:]) for k in range(1, len(text), stride)]
    if mode == "prefix":
        return [(question[:k], f"{question[k:]} {text}") for k in range(1, len(question), stride)]
    raise MeowError(f"MEMO mode must be 'suffix' or 'prefix', got '{mode}'")


def _budget(tokenizer, target: str, length) -> int:
    return len(generation.encode(tokenizer, target)) + 4 if length == "target" else int(length)


def memo_scores(model, tokenizer, items: list[tuple[str, str]], mode: str = "suffix", stride: int = 5,
                length="target", batch_size: int = generation.ANSWER_BATCH) -> list[float]:
    """MEMO of each (question, text) pair, every cut of every pair generated in batches."""
    jobs, owner = [], []
    for i, (q, t) in enumerate(items):
        for prompt, target in cuts(q, t, mode, stride):
            jobs.append((prompt, target))
            owner.append(i)
    prompts = [generation.encode(tokenizer, p) for p, _ in jobs]
    budgets = [_budget(tokenizer, t, length) for _, t in jobs]
    outs = generation.generate_ids(model, tokenizer, prompts, budgets, batch_size)
    sums, counts = [0.0] * len(items), [0] * len(items)
    for (prompt, target), ids, i in zip(jobs, outs, owner):
        sums[i] += rouge1_precision(tokenizer.decode(ids, skip_special_tokens=True), target)
        counts[i] += 1
    return [s / c if c else 0.0 for s, c in zip(sums, counts)]


def score_facts(model, tokenizer, facts, mode: str = "suffix", stride: int = 5, length="target",
                batch_size: int = generation.ANSWER_BATCH) -> list[tuple[float, list[float]]]:
    """(MEMO of the true answer, MEMO of each inverted answer) per fact, all in one batched pass."""
    items = []
    for f in facts:
        items += [(f.question, f.answer)] + [(f.question, c) for c in f.inverted]
    scores = memo_scores(model, tokenizer, items, mode, stride, length, batch_size)
    out, pos = [], 0
    for f in facts:
        out.append((scores[pos], scores[pos + 1: pos + 1 + len(f.inverted)]))
        pos += 1 + len(f.inverted)
    return out


@torch.no_grad()
def memo_reference(model, tokenizer, question: str, text: str, mode: str = "suffix", stride: int = 5,
                   length="target") -> float:
    """The plain loop, one greedy generation per cut at batch size 1 (as the authors' code)."""
    device = next(model.parameters()).device
    eos = generation.eos_ids(model, tokenizer)
    scores = []
    for prompt, target in cuts(question, text, mode, stride):
        ids = torch.tensor([generation.encode(tokenizer, prompt)], device=device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=_budget(tokenizer, target, length), eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        new = out[0, ids.shape[1]:].tolist()
        new = new[:next((j for j, t in enumerate(new) if t in eos), len(new))]
        scores.append(rouge1_precision(tokenizer.decode(new, skip_special_tokens=True), target))
    return sum(scores) / len(scores) if scores else 0.0


@torch.no_grad()
def memorization_accuracy(model, tokenizer, items: list[tuple[str, str]], batch_size: int = 32) -> list[float]:
    """MA: fraction of answer tokens the model predicts exactly under teacher forcing."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        rows, spans = [], []
        for q, t in chunk:
            p = generation.encode(tokenizer, q + " ")
            a = generation.encode(tokenizer, t)
            rows.append(p + a)
            spans.append((len(p), len(p) + len(a)))
        ids, mask = generation.pad(rows, tokenizer.pad_token_id)
        pred = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.argmax(-1).cpu()
        for j, (s, e) in enumerate(spans):
            hits = (pred[j, s - 1:e - 1] == ids[j, s:e]).float()
            out.append(hits.mean().item() if e > s else 0.0)
    return out


def _ngrams(tokens: list[int], n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def extraction_likelihood(model, tokenizer, items: list[tuple[str, str]], n: int = 2, stride: int = 1,
                          batch_size: int = generation.ANSWER_BATCH) -> list[float]:
    """EL_n: from every answer-token prefix, greedily continue as long as the rest of the
    answer, and count the share of the true rest's n-grams the continuation reproduces."""
    jobs, owner = [], []
    for i, (q, t) in enumerate(items):
        p = generation.encode(tokenizer, q + " ")
        a = generation.encode(tokenizer, t)
        for k in range(0, max(len(a) - n, 0) + 1, stride):
            jobs.append((p + a[:k], a[k:]))
            owner.append(i)
    outs = generation.generate_ids(model, tokenizer, [p for p, _ in jobs], [len(r) for _, r in jobs], batch_size)
    sums, counts = [0.0] * len(items), [0] * len(items)
    for (_, rest), got, i in zip(jobs, outs, owner):
        true = _ngrams(rest, n)
        if true:
            have = set(_ngrams(got, n))
            sums[i] += sum(g in have for g in true) / len(true)
        counts[i] += 1
    return [s / c if c else 0.0 for s, c in zip(sums, counts)]
