"""Locality by construction: keep every weight change away from what preserved text uses.

AlphaEdit's idea (Fang et al., 2025), applied to a fine-tuning run: a linear layer's output
on an input x changes by dW x. If dW x = 0 for every input x the layer sees on preserved
text (neighbour questions and their answers, general prompts), that text goes through the
layer exactly as before; if every trained layer's change does so, the whole model answers
the preserved text as the original did. So after each optimiser step the change of each
trained weight, W - W0, is projected onto the null space of that layer's preserved inputs:

    W <- W0 + (W - W0) (I - U U^T)

U: the leading eigenvectors of K^T K (K: the layer's inputs on preserved text, a row per
token) holding the share `energy` of its energy (sum of eigenvalues). energy 1.0 keeps
every direction the preserved inputs have (their numerical rank). Facts whose inputs lie
outside those directions can still be changed; similar questions that are not in the
preserved text are held as far as their inputs resemble it.
"""

from __future__ import annotations

import copy

import torch

from . import generation
from .batches import collate, to_device

# Eigenvalues below this fraction of the largest count as zero (float64 rounding of K^T K).
RANK_TOLERANCE = 1e-10


def trained_linears(model) -> dict[str, torch.nn.Linear]:
    """The linear layers whose weight this run trains, by name."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m.weight.requires_grad}


def unheld_parameters(model) -> dict[str, torch.nn.Parameter]:
    """Trained parameters the projection cannot hold: biases (Qwen2's q/k/v), norms,
    embeddings (and an output layer tied to them). A bias change moves the layer's output
    on every input, preserved text included, so a run with the projection freezes them
    (Trainer._trainable_copy)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    held = {id(m.weight) for m in trained_linears(model).values()} - embeddings  # (a tied lm_head is one)
    return {name: p for name, p in model.named_parameters() if p.requires_grad and id(p) not in held}


@torch.no_grad()
def input_covariances(model, examples, pad_id: int, device, batch_size: int = 16,
                      unit: bool = False) -> dict[str, torch.Tensor]:
    """K^T K (float32, on the model's device) of each trained linear layer's inputs over the
    examples' real tokens. Layers fed the same input (gate_proj and up_proj) share one
    tensor, computed once. unit: each token's input scaled to length 1 first (each token
    counts the same)."""
    layers = trained_linears(model)
    sums: dict[str, torch.Tensor] = {}
    owner: dict[str, str] = {}  # layer -> the first layer that saw the same input (its sum is shared)
    state: dict = {"input": None, "weight": 1}

    def hook(name):
        def record(module, inputs, output):
            if inputs[0] is not state["input"]:  # a new input: its x^T x over the real tokens
                x = inputs[0][state["real"]].float()
                if unit:
                    x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
                # In fp32 even when the forward pass runs under bf16 autocast: a bf16 sum of
                # thousands of squares keeps ~3 digits, and the small eigenvalues are the point.
                with torch.autocast(x.device.type, enabled=False):
                    cov = x.T @ x
                    state.update(input=inputs[0], cov=cov * state["weight"] if state["weight"] != 1 else cov,
                                 first=name)
            if owner.setdefault(name, state["first"]) == name:
                sums[name] = sums[name] + state["cov"] if name in sums else state["cov"]
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    # The decoder alone where the output layer is not trained: no logits over the vocabulary
    # (a fifth of the pass's work on a small model) for inputs nobody reads.
    head = model.get_output_embeddings()
    forward = model if any(m is head for m in layers.values()) else model.base_model
    # The start every example shares (the chat template's system prompt: a third of a short
    # example) goes through once, its inputs counted once per example; the rest of each
    # example follows it from that pass's KV cache. Same sums as a pass per example.
    rows = [e.ids for e in examples]
    shared = generation.shared_start(rows) if len(rows) > 1 and generation.full_attention(model.config) else 0
    shared = shared if shared >= generation.MIN_SHARED else 0
    was_training = model.training
    model.eval()
    try:
        start = None
        if shared:
            from transformers import DynamicCache

            start = DynamicCache(config=model.config)
            state.update(real=torch.ones(1, shared, dtype=torch.bool, device=device), weight=len(rows))
            forward(input_ids=torch.tensor([rows[0][:shared]], device=device), past_key_values=start, use_cache=True)
        state["weight"] = 1
        for i in range(0, len(examples), batch_size):
            if not shared:
                batch = to_device(collate(examples[i:i + batch_size], pad_id), device)
                state["real"] = batch["attention_mask"].bool()
                forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        position_ids=batch["position_ids"], use_cache=False)
                continue
            ids, mask = generation.pad([r[shared:] for r in rows[i:i + batch_size]], pad_id)  # right-padded
            ids, mask = ids.to(device), mask.to(device)
            state["real"] = mask.bool()
            cache = copy.deepcopy(start)
            cache.batch_repeat_interleave(len(ids))
            positions = torch.arange(shared, shared + ids.shape[1], device=device).expand(len(ids), -1)
            forward(input_ids=ids, attention_mask=torch.cat([mask.new_ones((len(ids), shared)), mask], dim=1),
                    position_ids=positions, past_key_values=cache, use_cache=True)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: sums[owner[name]] for name in owner}


def eigen_split(cov: torch.Tensor, energy: float, outliers: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V): U (in_features x k) the fewest leading eigenvectors of cov holding `energy`
    of its eigenvalue sum (all of its numerical rank for energy >= 1), V the other
    eigenvectors, so that U U^T + V V^T = I.

    outliers > 0: eigenvalues above that share of the sum are held and left out of the sum
    the energy is counted on. A massive activation (one coordinate of a few tokens' inputs)
    can hold 99.97% of a layer's energy by itself, so `energy` 0.99 would hold that one
    direction and leave the layer free."""
    # On the GPU where there is one (a wide model's layers take minutes each on a CPU; MPS
    # has no float64). A share up to 0.99 needs only the leading directions, which float32
    # finds as well in half the time (its rounding, ~n * 1e-7 of the largest eigenvalue, is
    # far below the 1% left out); more, and the numerical rank, need float64, and so do
    # outliers: the share is then counted on what is left after them, which can be 1e-4 of
    # the largest eigenvalue (float32 then holds ~98% where 99% was asked).
    cov = cov.cpu() if cov.device.type == "mps" else cov
    precise = energy > 0.99 or outliers > 0
    values, vectors = torch.linalg.eigh(cov.double() if precise else cov.float())  # ascending
    values, vectors = values.double().flip(0).clamp(min=0), vectors.flip(1).to(cov.dtype)
    total = float(values.sum())
    if total <= 0:
        return vectors[:, :0], vectors
    rank = int((values > RANK_TOLERANCE * values[0]).sum())
    big = int((values > outliers * total).sum()) if outliers > 0 else 0
    rest = values[big:]
    wanted = energy * float(rest.sum()) * (1 - 1e-6)
    k = rank if energy >= 1 else min(rank, big + int((rest.cumsum(0) < wanted).sum()) + 1)
    return vectors[:, :k], vectors[:, k:]


class NullSpace:
    """The projection of one run: built before the first step, applied after every step."""

    def __init__(self, model, examples, pad_id: int, device, energy: float, unit: bool = False,
                 outliers: float = 0.0, keep_start: bool = True):
        covs = input_covariances(model, examples, pad_id, device, unit=unit)
        self.layers = trained_linears(model)
        self._names = {id(m.weight): name for name, m in self.layers.items()}
        # project() needs the weights as they start; a caller that only projects changes (`change`,
        # `bases`: the Fisher steps, the closed-form edit) does without that copy of every layer.
        self.start = {name: m.weight.detach().clone() for name, m in self.layers.items()} if keep_start else None
        first = next(iter(self.layers.values()), None)
        dtype = first.weight.dtype if first is not None else torch.float32
        shared: dict[int, list[str]] = {}  # layers that share their inputs share their directions
        for name, cov in covs.items():
            shared.setdefault(id(cov), []).append(name)
        self.held: dict[str, int] = {}
        self.bases: dict[str, tuple[torch.Tensor, bool]] = {}
        for names in shared.values():
            cov = covs[names[0]]
            for name in names:  # one covariance at a time: a wide model's take GBs each
                del covs[name]
            u, v = eigen_split(cov, energy, outliers)
            del cov
            # (I - U U^T) = V V^T: multiply by whichever basis is narrower (same result); a
            # compact copy, so the eigendecomposition's whole matrix is freed.
            free = v.shape[1] < u.shape[1]
            basis = (v if free else u).to(device=device, dtype=dtype, copy=True)
            for name in names:
                self.held[name], self.bases[name] = u.shape[1], (basis, free)
            del u, v

    def info(self) -> dict:
        """The input directions held fixed, fewest and most over the layers, per kind of layer
        (e.g. {"down_proj": [410, 980, 1536]}: fewest, most, of the layer's input size)."""
        kept: dict[str, list[int]] = {}
        size: dict[str, int] = {}
        for name, k in self.held.items():
            kind = name.rsplit(".", 1)[-1]
            kept.setdefault(kind, []).append(k)
            size[kind] = self.layers[name].in_features
        return {kind: [min(k), max(k), size[kind]] for kind, k in kept.items()}

    @torch.no_grad()
    def change(self, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """A change `delta` of one trained layer's `weight`, projected as project() projects the
        change since the start: delta (I - U U^T). Any other tensor's change is returned as is."""
        name = self._names.get(id(weight))
        if name is None or self.held[name] == 0:
            return delta
        basis, free = self.bases[name]
        moved = (delta.to(basis.dtype) @ basis) @ basis.T
        return (moved if free else delta - moved).to(delta.dtype)

    @torch.no_grad()
    def project(self) -> None:
        """W <- W0 + (W - W0)(I - U U^T) for every trained linear layer, as W - (W - W0) U U^T
        or, where the free directions V are fewer, as W0 + (W - W0) V V^T."""
        if self.start is None:
            raise RuntimeError("this NullSpace was built without its start weights (keep_start=False)")
        for name, m in self.layers.items():
            basis, free = self.bases[name]
            if self.held[name] == 0:
                continue
            delta = m.weight - self.start[name]
            if free:  # V: the directions left free
                m.weight.copy_(torch.addmm(self.start[name], delta @ basis, basis.T))
            else:
                m.weight.sub_((delta @ basis) @ basis.T)
