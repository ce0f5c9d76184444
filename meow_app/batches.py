"""Training examples: a question in the chat template followed by an answer, prompt masked.

Batches are grouped by length (shuffled within and across groups, seeded), so a batch of
short answers is not padded to the longest one in the set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from . import generation

IGNORE = -100


@dataclass
class Example:
    ids: list[int]
    labels: list[int]  # IGNORE on the prompt, the token ids on the answer (+ end of turn)
    unlikely: bool = False  # an answer to make less likely (losses.nll_or_unlikelihood), not to learn


def encode_example(tokenizer, question: str, answer: str, prefix: str = "", unlikely: bool = False) -> Example:
    """`prefix`: the start of the answer, given as context (masked) rather than trained on."""
    prompt = generation.encode(tokenizer, generation.chat_prompt(tokenizer, question) + prefix)
    target = generation.encode(tokenizer, answer) + [tokenizer.eos_token_id]
    return Example(prompt + target, [IGNORE] * len(prompt) + target, unlikely)


def merged(examples: list[Example]) -> tuple[list[Example], list[int]]:
    """The distinct rows, in first-seen order, and how many times each came: MEOW repeats
    each (question, false answer) pair num_batch / top_k times, IDK and GA each question."""
    found: dict[tuple, list] = {}
    for e in examples:
        found.setdefault((tuple(e.ids), tuple(e.labels), e.unlikely), [e, 0])[1] += 1
    return [e for e, _ in found.values()], [n for _, n in found.values()]


def collate(examples: list[Example], pad_id: int, merge: bool = False) -> dict:
    """Left-padded batch. Answers then all end at the last position, so the loss needs the
    vocabulary projection (a fifth of the model's compute) only on the last `keep` ones.

    It also says which prompt tokens rows have in common, so losses.answer_logits can compute
    them once (same results, less work): `shared`, the leading tokens every prompt has
    (the chat template's system prompt, about half of a short example; 0 if fewer than
    generation.MIN_SHARED), and the rest of each prompt but its last token, once per
    distinct prompt (`middle_ids` / `middle_mask`, left-padded; MEOW repeats each question
    num_batch times with different false answers), with `group` giving each row's. A
    row's own part is its last prompt token (whose logits predict the answer) and its
    answer: the last `keep` columns, where `own_mask` is set.

    merge: identical rows are computed once, `weight` holding each one's count and `tokens`
    the answer tokens of the whole batch; losses.nll weighs them back, so the loss and its
    gradient are the unmerged batch's (tests/test_losses.py) for a fraction of the work.
    """
    counts = None
    if merge:
        examples, counts = merged(examples)
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for j, e in enumerate(examples):
        ids[j, width - len(e.ids):] = torch.tensor(e.ids)
        labels[j, width - len(e.labels):] = torch.tensor(e.labels)
        mask[j, width - len(e.ids):] = 1
    prompt_lens = [next((k for k, t in enumerate(e.labels) if t != IGNORE), len(e.labels)) for e in examples]
    own = [len(e.ids) - max(p - 1, 0) for e, p in zip(examples, prompt_lens)]
    keep = max(own)
    shared = min(generation.shared_start([e.ids for e in examples]), max(min(prompt_lens) - 1, 0))
    shared = shared if shared >= generation.MIN_SHARED else 0
    middles: dict[tuple, int] = {}
    group = [middles.setdefault(tuple(e.ids[shared:max(p - 1, shared)]), len(middles))
             for e, p in zip(examples, prompt_lens)]
    middle_ids, middle_mask = generation.pad([list(m) for m in middles], pad_id, left=True)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0), "keep": keep,
            "shared": shared, "group": torch.tensor(group), "middle_ids": middle_ids, "middle_mask": middle_mask,
            "own_mask": (torch.arange(keep) >= keep - torch.tensor(own)[:, None]).long(),
            "unlikely": torch.tensor([e.unlikely for e in examples])}
    if counts is not None:
        batch["weight"] = torch.tensor(counts, dtype=torch.float32)
        batch["tokens"] = float(sum(n * sum(t != IGNORE for t in e.labels) for e, n in zip(examples, counts)))
    return batch


def to_device(batch: dict, device) -> dict:
    """The batch's tensors on `device` (the counts `keep` and `shared` stay ints)."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def length_grouped(examples: list[Example], batch_size: int, rng: random.Random) -> list[list[Example]]:
    """Shuffle, sort within windows of 8 batches by length, cut into batches, shuffle batches."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * 8
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: len(examples[i].ids))
        batches += [[examples[i] for i in chunk[b:b + batch_size]] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches
