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
    at every token read: the prompt's and the answer's, except the last token of an answer cut
    by its limit or `stop` (never fed back, so its input is unknown). Kept on the CPU (a large
    model's would fill a GPU)."""

    def __init__(self, model, layer: int):
        self.layer = layer
        self.module = model.base_model.layers[layer]  # where generation's `record` reads
        self.dtype = next(model.parameters()).dtype
        self.rows: dict[tuple, tuple[list[int], torch.Tensor]] = {}
        self.checked = self.settled = 0  # rows checked by `follow`; of those, answered with no decoding

    def add(self, prompt: list[int], answer: list[int], states: torch.Tensor) -> None:
        """One answer and its inputs: the prompt's and all or all but the last of the answer's."""
        if not len(prompt) <= states.shape[0] <= len(prompt) + len(answer):
            raise ValueError(f"{states.shape[0]} layer inputs for a prompt of {len(prompt)} tokens and an answer "
                             f"of {len(answer)}")
        self.rows[tuple(prompt)] = (list(answer), states.detach().to("cpu"))

    def add_answers(self, model, tokenizer, questions: list[str], answers: list[str], cache=None) -> None:
        """The original's answers given as text (answer_cache's), each followed by an EOS; their
        layer inputs read through `model` (the original), kept in `cache` by token ids."""
        rows = [(generation.encode(tokenizer, generation.chat_prompt(tokenizer, q)), generation.encode(tokenizer, a))
                for q, a in zip(questions, answers)]
        rows = [(p, a) for p, a in rows if tuple(p) not in self.rows]
        if not rows:
            return
        device = next(model.parameters()).device

        def inputs_of(ids: list[list[int]]) -> list[torch.Tensor]:
            return patch.inputs_at(model, [self.module], [_Row(r) for r in ids], tokenizer.pad_token_id, device)[0]

        ids = [p + a for p, a in rows]
        if cache is None:
            states = inputs_of(ids)
        else:  # (patch.inputs_at reads them: a change there reads them afresh)
            code = Path(__file__).read_bytes() + Path(patch.__file__).read_bytes()
            name = f"draft_inputs.{self.layer}.{str(self.dtype).removeprefix('torch.')}"
            states = cache.states(name, ids, inputs_of, code)
        for (p, a), x in zip(rows, states):
            self.add(p, a, x.to(self.dtype))

    @classmethod
    def for_model(cls, original, model) -> "Drafts | None":
        """Drafts to record on `original` for checking `model`'s answers: at the lowest layer
        `model` changes, where that is in the top half of the stack (from lower down a check
        costs about what decoding does, docs/benchmarks.md item 1); None otherwise. The layers
        below are compared here: `agrees` is what is left to ask once answers are kept."""
        layers = getattr(original.base_model, "layers", None)
        if type(model) is not type(original) or layers is None or len(layers) < 2 or \
                len(getattr(model.base_model, "layers", [])) != len(layers) or \
                not _same_modules(original.get_input_embeddings(), model.get_input_embeddings()):
            return None
        first = next((k for k, (a, b) in enumerate(zip(layers, model.base_model.layers)) if not _same_modules(a, b)),
                     len(layers) - 1)
        return cls(original, first) if first >= len(layers) // 2 else None

    def same_below(self, original, model) -> bool:
        """Whether `model` is `original` below the drafts' layer: the same embeddings and
        weights, dtypes and devices (a layer widened with neurons that add nothing, patch.widen's,
        counts as the same), so that layer's input is the same in both on the same tokens."""
        if type(model) is not type(original) or \
                len(model.base_model.layers) != len(original.base_model.layers):
            return False
        below = [(original.get_input_embeddings(), model.get_input_embeddings())]
        below += list(zip(original.base_model.layers[:self.layer], model.base_model.layers[:self.layer]))
        return all(_same_modules(a, b) for a, b in below)

    @torch.no_grad()
    def agrees(self, model) -> bool:
        """Whether `model` run from the layer up on kept inputs (as `follow` runs it) gives the
        hidden states it gives run whole, on the longest row and the last one added: not so
        where a model changes its input embeddings in its forward (Granite scales them)."""
        if not self.rows:
            return False
        device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
        # (fp32 agrees to ~1e-6 of the largest value; bf16 and fp16 round at ~4e-3)
        tolerance = 1e-3 if dtype == torch.float32 else 3e-2
        longest = max(self.rows.items(), key=lambda row: row[1][1].shape[0])
        last = next(reversed(self.rows.items()))
        for prompt, (answer, states) in dict([longest, last]).items():  # (one check where they are one row)
            ids = torch.tensor([list(prompt) + answer[:states.shape[0] - len(prompt)]], device=device)
            full = model.base_model(input_ids=ids, use_cache=False).last_hidden_state.float()
            x, mask = _pad_left([states], device, dtype)
            tail = patch.from_layer(model, self.layer, x, mask, hidden=True).last_hidden_state.float()
            if (full - tail).abs().max() > tolerance * full.abs().max().clamp(min=1.0):
                return False
        return True

    @torch.no_grad()
    def follow(self, model, prompts: list[list[int]], limits: list[int], eos: set[int], pick,
               stop=None) -> tuple[list[list[int]], list[bool]]:
        """Greedy decoding of `model` along the drafts of these prompts, checked from the layer
        up: at each draft position the token `pick` chooses is the one decoding would choose,
        as long as the tokens before it were the draft's. Each row keeps its draft up to where
        its choice differs, plus that choice (or the one after a whole draft), and ends there
        where decoding would (EOS, its limit, `stop`). Returns (the tokens kept, whether each
        row is finished); unfinished rows go on by decoding. A prompt without a draft keeps
        nothing."""
        kept: list[list[int]] = [[] for _ in prompts]
        finished = [limit <= 0 for limit in limits]
        todo = [i for i, p in enumerate(prompts) if limits[i] > 0 and tuple(p) in self.rows]
        if not todo:
            return kept, finished
        device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
        head = model.get_output_embeddings()
        states = {i: self.rows[tuple(prompts[i])][1] for i in todo}
        # positions a row can be checked at: one per answer token read, and the first
        checkable = {i: states[i].shape[0] - len(prompts[i]) + 1 for i in todo}
        size = max(1, LOGITS_BUDGET // (max(checkable.values()) * head.weight.shape[0] * 4))
        for batch in generation.length_sorted_batches(len(todo), [states[i].shape[0] for i in todo], size):
            batch = [todo[k] for k in batch]
            x, mask = _pad_left([states[i] for i in batch], device, dtype)
            out = patch.from_layer(model, self.layer, x, mask, hidden=True).last_hidden_state
            # The output layer (most of a position's cost in a few layers) only where a draft token
            # is predicted: left-padded, a row's last checkable[i] positions. (A model's own logits
            # may be soft-capped or scaled after it: the same argmax.)
            logits = head(torch.cat([out[r, out.shape[1] - checkable[i]:] for r, i in enumerate(batch)]))
            chosen = pick(logits, [i for i in batch for _ in range(checkable[i])]).tolist()
            at = 0
            for i in batch:
                self.checked += 1
                draft, row = self.rows[tuple(prompts[i])][0], chosen[at:at + checkable[i]]
                at += checkable[i]
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
                self.settled += finished[i]
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
    """Equal (dtype and device too), or `b` is `a` grown with zeros (patch.widen)."""
    if a.dtype != b.dtype or a.device != b.device:
        return False
    if a.shape == b.shape:
        return torch.equal(a, b)
    if a.dim() != b.dim() or any(x > y for x, y in zip(a.shape, b.shape)):
        return False
    if not torch.equal(b[tuple(slice(0, n) for n in a.shape)], a):
        return False
    # (an entry outside `a`'s block lies past a's size along some dimension: each such slab zero)
    return not any(b.narrow(d, n, b.shape[d] - n).any() for d, n in enumerate(a.shape) if b.shape[d] > n)


def _pad_left(rows: list[torch.Tensor], device, dtype):
    """[n, d] rows into one left-padded [rows, longest, d] tensor and its attention mask."""
    width = max(r.shape[0] for r in rows)
    x = torch.zeros((len(rows), width, rows[0].shape[-1]), dtype=dtype, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for j, r in enumerate(rows):
        x[j, width - r.shape[0]:] = r.to(device)
        mask[j, width - r.shape[0]:] = 1
    return x, mask
