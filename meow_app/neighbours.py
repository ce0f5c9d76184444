"""Neighbour questions: the general questions the original model sees as most like the
facts being forgotten.

Why: teaching a small model "The capital of France is London" also moves its answers to
other "What is the capital of ...?" questions; the damage concentrates on questions
shaped like the forgotten ones (docs/forgetting.md). Training, beside the forget set, on
the original model's own answers to the nearest questions holds that neighbourhood in
place (the "neighbourhood" prompts of knowledge editing, e.g. ROME/MEMIT). No user data
is needed: the questions come from a shipped pool (assets/neighbour_questions.txt,
disjoint from every fact set this project measures on) and the answers from the model.

Nearness is the cosine of mean-pooled hidden states from the middle layer, centred on
the pool's mean (raw mean-pooled states of a causal LM share one large common direction).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from . import generation

POOL = Path(__file__).resolve().parents[1] / "assets" / "neighbour_questions.txt"


@torch.no_grad()
def embed(model, tokenizer, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """One vector per text: the middle layer's hidden states, averaged over its tokens."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        rows = [generation.encode(tokenizer, t) or [tokenizer.eos_token_id] for t in texts[start:start + batch_size]]
        ids, mask = generation.pad(rows, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        ids, mask = ids.to(device), mask.to(device)
        # (logits_to_keep=1: no logits over the vocabulary for every token, which nobody reads)
        states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1).hidden_states
        h = states[len(states) // 2].float()
        m = mask.unsqueeze(-1).to(h.dtype)
        out.append(((h * m).sum(1) / m.sum(1)).cpu())
    return torch.cat(out)


def nearest(model, tokenizer, questions: list[str], pool: list[str], per_question: int,
            embed_pool=None) -> list[str]:
    """The pool questions nearest to each question, per_question each, taken in turns
    (the nearest of every question first) without repeats; the questions themselves are
    never returned. embed_pool(pool): the pool's vectors as `embed` gives them, from
    elsewhere (answer_cache's, kept between runs)."""
    if per_question <= 0 or not questions or not pool:
        return []
    own = {q.strip().lower() for q in questions}
    keep = [i for i, p in enumerate(pool) if p.strip().lower() not in own]
    pool_vectors = embed_pool(pool) if embed_pool else embed(model, tokenizer, pool)
    pool = [pool[i] for i in keep]
    vectors = torch.cat([embed(model, tokenizer, list(questions)), pool_vectors[keep]])
    vectors = vectors - vectors[len(questions):].mean(0)
    vectors = torch.nn.functional.normalize(vectors, dim=-1)
    ranked = (vectors[:len(questions)] @ vectors[len(questions):].T).argsort(dim=1, descending=True)
    chosen: list[str] = []
    counts = [0] * len(questions)
    for rank in range(ranked.shape[1]):
        for i, row in enumerate(ranked):
            q = pool[int(row[rank])]
            if counts[i] < per_question and q not in chosen:
                chosen.append(q)
                counts[i] += 1
    return chosen


# --- siblings: the same question about other subjects, proposed by the model itself ---------------

_SUBJECT_START = re.compile(r"""\s(?=["'‘“]?[A-Z0-9])""")


def question_frame(question: str) -> str:
    """The question up to its subject: the words before the first capitalised (or quoted, or
    numeric) word after the first one. "What is the capital of Iran?" -> "What is the capital
    of"; "Who wrote 'Fahrenheit 451'?" -> "Who wrote"; '' when there is no such word or the
    frame is a single word."""
    m = _SUBJECT_START.search(question.strip(), 1)
    frame = question.strip()[:m.start()] if m else ""
    return frame if len(frame.split()) >= 2 else ""  # "Who Iran?": one word frames nothing


def siblings(model, tokenizer, facts, per_fact: int, seed: int = 0, batch_size: int = 32) -> list[str]:
    """Questions of the same frame about other subjects ("What is the capital of Iraq?" for
    Iran), sampled from the model after the frame with the fact's subject and answer tokens
    forbidden: the subjects it places nearest, which a forgetting run most easily drags
    along. per_fact each at most, none naming a forgotten subject or answer."""
    per = sibling_questions(model, tokenizer, facts, per_fact, seed, batch_size)
    return list(dict.fromkeys(q for qs in per for q in qs))


def sibling_questions(model, tokenizer, facts, per_fact: int, seed: int = 0,
                      batch_size: int = 32) -> list[list[str]]:
    """siblings, fact by fact (an empty list for a fact without a question frame)."""
    from .invert import truth_token_ids

    frames = [question_frame(f.question) for f in facts]
    subjects = [f.question.strip()[len(fr):].strip(" ?") for f, fr in zip(facts, frames)]
    copies = 3 * per_fact
    prompts, banned, owners = [], [], []
    for i, (f, frame, subject) in enumerate(zip(facts, frames, subjects)):
        if not frame or per_fact <= 0:
            continue
        # The question itself first: the model then proposes subjects near this one (Iraq for Iran).
        ids = generation.encode(tokenizer, f"{f.question.strip()}\n{frame}")
        stop = truth_token_ids(tokenizer, f) + truth_token_ids(tokenizer, type(f)(f.question, subject))
        prompts += [ids] * copies
        banned += [sorted(set(stop))] * copies
        owners += [i] * copies
    if not prompts:
        return [[] for _ in facts]
    texts = generation.generate_ids(model, tokenizer, prompts, 10, batch_size, do_sample=True, temperature=0.8,
                                    top_p=0.9, generator_seed=seed, banned=banned)
    forgotten = [w.lower() for f, s in zip(facts, subjects) for w in [s, f.answer, *f.keywords] if w.strip()]
    out: dict[int, list[str]] = {}
    for i, t in zip(owners, texts):
        tail = tokenizer.decode(t, skip_special_tokens=True).split("?")[0].split("\n")[0].strip()
        q = f"{frames[i]} {tail}?"
        if (not tail or len(tail.split()) > 6 or not _SUBJECT_START.match(" " + tail)
                or any(w in q.lower() for w in forgotten) or q in out.get(i, []) or len(out.get(i, [])) >= per_fact):
            continue
        out.setdefault(i, []).append(q)
    return [out.get(i, []) for i in range(len(facts))]
