"""Subject-keyed fine-tuning: the trained weights learn from the forget question's subject alone.

A linear layer's weight gradient is a sum over token positions, g_t x_t^T. In a forget
example ("What is the capital of Ukraine?" -> "The capital of Ukraine is Lviv.") most
positions are words every question of the relation shares ("What is the capital of",
"The capital of ... is"), so a plain step changes how the layer answers the relation, and
neighbours (Iraq, Poland) move with the fact. ROME and MEMIT edit at the subject's token
instead; this does the same inside a fine-tuning run: at every position that is not one of
the subject's tokens, each trained layer's output is recomputed with its weights detached,
so its weights learn only from inputs the subject produces. The loss still reads the answer tokens, and its
gradient still reaches the subject's positions through attention: the change is keyed to
the subject, and carried to the answer the way the model recalls facts.

Positions are found by token identity: ids that occur at a subject's tokens and nowhere
else in the forget examples (so "the" in "the Ford Motor Company" or a subject word the
answers also use elsewhere is left out). Identity works on every forward pass a step makes,
including losses.answer_logits' shared passes, whose rows are not the batch's rows.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch

from .neighbours import question_frame
from .null_space import trained_linears


def subject_of(question: str) -> str:
    """The question's subject: what follows its frame ("What is the capital of" -> "Ukraine";
    "Who wrote" -> "'Fahrenheit 451'"), without quotes or the question mark; '' where there
    is no frame (no telling the subject from the relation's words: the run names the question)."""
    q = question.strip()
    frame = question_frame(q)
    if not frame:  # ("Einstein was born where?": the last word would key the relation's 'where')
        return ""
    return q[len(frame):].strip(" ?!.").strip("'\"‘’“”").strip()


def subject_first(pairs: list[tuple]) -> list[tuple]:
    """Every other copy of each forget question asked with its subject first ("Ukraine: What is
    the capital of Ukraine?"): a word's sentence-initial tokens differ from its tokens after a
    space ("Ukraine" / " Ukraine"), and a question that starts with the subject ("Ukraine's
    government sits in which city?") reaches only the former, which the plain question never has."""
    seen: dict[str, int] = {}
    out = []
    for question, *rest in pairs:
        n = seen[question] = seen.get(question, 0) + 1
        subject = subject_of(question)
        out.append((f"{subject}: {question}" if n % 2 == 0 and subject else question, *rest))
    return out


def subject_positions(tokenizer, ids: list[int], subject: str) -> list[bool]:
    """For each token of ids, whether it covers a character of an occurrence of `subject`
    (case-insensitive) in their decoded text."""
    pieces = [tokenizer.decode([t]) for t in ids]
    ends, n = [], 0
    for p in pieces:
        n += len(p)
        ends.append(n)
    text = "".join(pieces).lower()
    covered = [False] * len(ids)
    if not subject:
        return covered
    for m in re.finditer(re.escape(subject.lower()), text):
        start = 0
        for i, end in enumerate(ends):
            if end > m.start() and start < m.end():
                covered[i] = True
            start = end
    return covered


def key_tokens(tokenizer, examples: list[tuple[list[int], str]]) -> tuple[set[int], list[int]]:
    """For (ids, subject) pairs: the token ids at subjects' positions and at no other position,
    and the indexes of the pairs none of whose subject positions holds one of them."""
    covered = [subject_positions(tokenizer, ids, subject) for ids, subject in examples]
    inside, outside = set(), set()
    for (ids, _), marks in zip(examples, covered):
        for t, c in zip(ids, marks):
            (inside if c else outside).add(t)
    keys = inside - outside
    unkeyed = [i for i, ((ids, _), marks) in enumerate(zip(examples, covered))
               if not any(c and t in keys for t, c in zip(ids, marks))]
    return keys, unkeyed


class SubjectKeys:
    """Hooks on a model: inside `forget_scope()`, every trained linear layer's output is
    recomputed with its weights held at positions whose input token is not a subject token,
    so its weights' gradient comes from the subject's positions alone (`other` > 0: that
    share of it is kept there), while the gradient to its input flows as before.
    Values are unchanged; outside the scope, and without gradients, nothing is touched."""

    def __init__(self, model, token_ids: set[int], other: float = 0.0):
        self.other = other  # the share of the weights' gradient kept at the other positions
        device = next(model.parameters()).device
        self.ids = torch.tensor(sorted(token_ids), dtype=torch.long, device=device)
        self.active, self.mask = False, None
        self.handles = [model.get_input_embeddings().register_forward_pre_hook(self._record)]
        # (not the output layer: it sees only the kept logits' positions, and no position is a subject's there)
        head = model.get_output_embeddings()
        self.handles += [m.register_forward_hook(self._cut) for m in trained_linears(model).values() if m is not head]

    def _record(self, module, args):
        if self.active:  # each forward pass starts at the embedding: its tokens are the layers' positions
            self.mask = torch.isin(args[0], self.ids).unsqueeze(-1)

    def _cut(self, module, inputs, output):
        if not (self.active and torch.is_grad_enabled() and self.mask is not None):
            return None
        # The same values with the weights held: the gradient still flows through the layer to
        # its input at every position (to the subject, through attention), only the weights'
        # own gradient is kept to the subject's positions.
        bias = module.bias.detach() if module.bias is not None else None
        held = torch.nn.functional.linear(inputs[0], module.weight.detach(), bias)
        return torch.where(self.mask, output, held + self.other * (output - held) if self.other else held)

    @contextmanager
    def forget_scope(self):
        self.active = True
        try:
            yield
        finally:
            self.active, self.mask = False, None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
