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


def encode_example(tokenizer, question: str, answer: str, prefix: str = "") -> Example:
    """`prefix`: the start of the answer, given as context (masked) rather than trained on."""
    prompt = generation.encode(tokenizer, generation.chat_prompt(tokenizer, question) + prefix)
    target = generation.encode(tokenizer, answer) + [tokenizer.eos_token_id]
    return Example(prompt + target, [IGNORE] * len(prompt) + target)


def collate(examples: list[Example], pad_id: int) -> dict:
    """Left-padded batch. Answers then all end at the last position, so the loss needs the
    vocabulary projection (a fifth of the model's compute) only on the last `keep` ones.
    `shared`: how many leading tokens every row's prompt has in common (the chat template's
    system prompt, about half of a short example), which losses._shifted encodes once."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for j, e in enumerate(examples):
        ids[j, width - len(e.ids):] = torch.tensor(e.ids)
        labels[j, width - len(e.labels):] = torch.tensor(e.labels)
        mask[j, width - len(e.ids):] = 1
    answer_len = max(sum(t != IGNORE for t in e.labels) for e in examples)
    # Shared tokens stay within every prompt and leave each row at least its last prompt
    # token, whose logits predict the first answer token.
    prompt_len = min(next((k for k, t in enumerate(e.labels) if t != IGNORE), len(e.labels)) for e in examples)
    shared = min(generation.shared_start([e.ids for e in examples]), max(prompt_len - 1, 0))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0), "keep": min(answer_len + 1, width),
            "shared": shared}


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
