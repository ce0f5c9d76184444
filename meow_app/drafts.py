"""The original's greedy answers, checked on a model changed only from one layer up.

A method that changes only decoder layers `layer` and above (meow_patch: the top 3 of the
embedded model's 30) leaves every layer below computing what the original's did, so on the
same tokens the input of layer `layer` is the same in both models. The probes after a run ask
mostly the questions asked before it (the retain set, the everyday questions), and the changed
model mostly answers them word for word as the original did. So the original's answers are
kept with that layer's input at every token they read (recorded while the original decoded
them: generation's `record`), and after the run each is checked by running only the layers
from `layer` up and the output layer on those inputs, all positions at once: where the changed
model's greedy choice at every position is the original's token, its answer is the original's;
where a row leaves its draft, ordinary decoding goes on from there (generation.generate_ids).
The answers are the ones decoding gives. A full-model check of the same drafts cost what
decoding does on a CPU (docs/benchmarks.md, item 1): it is the layers below that are saved.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import generation, patch

# Bytes of logits one checking pass may hold (rows x positions x vocabulary, float32).
LOGITS_BUDGET = 256 << 20


class Drafts:
    """Answers (token ids) by prompt (token ids), each with the input of decoder layer `layer`
    at every token read: the prompt's and the answer's, but for a last token that was never
    read back (an answer cut by its limit or `stop` rather than ended by EOS)."""

    def __init__(self, model, layer: int):
        self.layer = layer
        self.module = model.base_model.layers[layer]  # where generation's `record` reads
        self.rows: dict[tuple, tuple[list[int], torch.Tensor]] = {}
        self.checked = self.whole = 0  # rows checked by `follow`, and of those answered without decoding

    def add(self, prompt: list[int], answer: list[int], states: torch.Tensor) -> None:
        if len(prompt) <= states.shape[0] <= len(prompt) + len(answer):
            self.rows[tuple(prompt)] = (list(answer), states)

    def add_answers(self, model, tokenizer, questions: list[str], answers: list[str], cache=None) -> None:
        """Answers given as text (the original's, from an answer_cache.AnswerCache), their
        layer inputs read through `model` (the original; kept in `cache` by token ids: shipped
        questions only), the whole answer: an EOS is expected after it."""
        rows = [(generation.encode(tokenizer, generation.chat_prompt(tokenizer, q)), generation.encode(tokenizer, a))
                for q, a in zip(questions, answers)]
        rows = [(p, a) for p, a in rows if tuple(p) not in self.rows]
        if not rows:
            return
        device = next(model.parameters()).device

        def read(ids: list[list[int]]) -> list[torch.Tensor]:
            return patch.inputs_at(model, [self.module], [_Row(r) for r in ids], tokenizer.pad_token_id, device)[0]

        whole = [p + a for p, a in rows]
        if cache is None:
            states = read(whole)
        else:
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
            states = cache.states(f"draft_inputs.{self.layer}.{dtype}", whole, read, Path(__file__).read_bytes())
        for (p, a), x in zip(rows, states):
            self.add(p, a, x.to(device=device, dtype=next(model.parameters()).dtype))

    @classmethod
    def for_model(cls, original, model) -> "Drafts | None":
        """Drafts to record on `original` for checking `model`'s answers: at the lowest layer
        `model` changes, where that is in the top half of the stack (a check from lower down
        costs about what decoding does, docs/benchmarks.md item 1); None otherwise."""
        layers = getattr(original.base_model, "layers", None)
        if type(model) is not type(original) or layers is None or len(layers) < 2:
            return None
        if len(getattr(model.base_model, "layers", [])) != len(layers) or \
                not _same_modules(original.get_input_embeddings(), model.get_input_embeddings()):
            return None
        first = next((k for k, (a, b) in enumerate(zip(layers, model.base_model.layers)) if not _same_modules(a, b)),
                     len(layers) - 1)
        return cls(original, first) if first >= len(layers) // 2 else None

    @torch.no_grad()
    def usable(self, original, model, tolerance: float = 1e-3) -> bool:
        """Whether `model`'s answers can be checked against these drafts: it computes what
        `original` (the model they were recorded on) does below the drafts' layer (the same
        embeddings, the same weights in every layer under it; a layer widened with neurons
        that add nothing, patch.widen's, counts as the same: its new rows and columns all
        zero), and run from the layer up on a recorded row it gives its own logits (not so
        where a model changes its input embeddings in its forward: Granite scales them)."""
        if not self.rows or type(model) is not type(original):
            return False
        below = [(original.get_input_embeddings(), model.get_input_embeddings())]
        below += list(zip(original.base_model.layers[:self.layer], model.base_model.layers[:self.layer]))
        if not all(_same_modules(a, b) for a, b in below):
            return False
        prompt, (answer, states) = next(iter(self.rows.items()))
        device = next(model.parameters()).device
        ids = torch.tensor([list(prompt) + answer[:states.shape[0] - len(prompt)]], device=device)
        full = model(input_ids=ids, use_cache=False).logits.float()
        x, mask = _pad_left([states], device)
        tail = patch.from_layer(model, self.layer, x.to(full.device), mask).logits.float()
        return bool((full - tail).abs().max() <= tolerance * full.abs().max().clamp(min=1.0))

    @torch.no_grad()
    def follow(self, model, prompts: list[list[int]], limits: list[int], eos: set[int], pad_id: int, pick,
               stop=None) -> tuple[list[list[int]], list[bool]]:
        """Greedy decoding of `model` along the drafts of these prompts, checked from the layer
        up: at each draft position the token `pick` chooses is the one decoding would have,
        as long as the tokens before it were the draft's. Each row keeps its draft up to where
        its choice differs, plus that choice (or the one after a whole draft), and ends there
        where decoding would have (EOS, its limit, `stop`). Returns (the tokens kept, whether
        each row is finished); unfinished rows go on by decoding. A prompt without a draft
        keeps nothing."""
        kept: list[list[int]] = [[] for _ in prompts]
        finished = [limit <= 0 for limit in limits]
        todo = [i for i, p in enumerate(prompts) if limits[i] > 0 and tuple(p) in self.rows]
        if not todo:
            return kept, finished
        device = next(model.parameters()).device
        head = model.get_output_embeddings()
        states = {i: self.rows[tuple(prompts[i])][1] for i in todo}
        # draft positions a row can be checked at: one per answer token read, and the first
        read = {i: states[i].shape[0] - len(prompts[i]) + 1 for i in todo}
        size = max(1, LOGITS_BUDGET // (max(read.values()) * head.weight.shape[0] * 4))
        for batch in generation.length_sorted_batches(len(todo), [states[i].shape[0] for i in todo], size):
            batch = [todo[k] for k in batch]
            x, mask = _pad_left([states[i] for i in batch], device)
            out = patch.from_layer(model, self.layer, x, mask, hidden=True).last_hidden_state
            # The output layer (most of a position's cost in 3 layers) only where a draft token is
            # predicted: left-padded, a row's last read[i] positions.
            logits = head(torch.cat([out[r, out.shape[1] - read[i]:] for r, i in enumerate(batch)]))
            chosen = pick(logits, [i for i in batch for _ in range(read[i])]).tolist()
            at = 0
            for i in batch:
                self.checked += 1
                draft, row = self.rows[tuple(prompts[i])][0], chosen[at:at + read[i]]
                at += read[i]
                for j, t in enumerate(row):
                    if t in eos:
                        finished[i] = True
                        break
                    kept[i].append(t)
                    if len(kept[i]) >= limits[i] or (stop and stop(i, kept[i])):
                        finished[i] = True
                        break
                    if j >= len(draft) or t != draft[j]:
                        break  # the row leaves its draft here: decoding goes on from this token
                self.whole += finished[i]
        return kept, finished


class _Row:
    """patch.inputs_at's example: token ids alone."""

    def __init__(self, ids: list[int]):
        self.ids = ids


def _same_modules(a, b) -> bool:
    """The same parameters (by name), each equal or grown with zeros (_same)."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(_same(pa[k], pb[k]) for k in pa)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, or `b` is `a` grown with zeros (patch.widen)."""
    if a.shape == b.shape:
        return torch.equal(a, b)
    if a.dim() != b.dim() or any(x > y for x, y in zip(a.shape, b.shape)):
        return False
    inner = tuple(slice(0, n) for n in a.shape)
    grown = b.clone()
    if not torch.equal(grown[inner], a):
        return False
    grown[inner] = 0
    return not grown.any()


def _pad_left(rows: list[torch.Tensor], device):
    """[n, d] rows into one left-padded [rows, longest, d] tensor and its attention mask."""
    width = max(r.shape[0] for r in rows)
    x = rows[0].new_zeros((len(rows), width, rows[0].shape[-1]), device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for j, r in enumerate(rows):
        x[j, width - r.shape[0]:] = r.to(device)
        mask[j, width - r.shape[0]:] = 1
    return x, mask
