"""Locality by a gate: a few MLP neurons that fire on the forgotten facts and on nothing else.

A change to a weight moves a layer's output on every input in proportion to how much that
input resembles the trained one, so a linear edit for Myanmar always reaches Sri Lanka a
little (docs/forgetting.md). A neuron need not act in proportion: silu(g . x) is small
wherever g . x is well below zero (silu(-4) = -0.07 times up . x, a bound tests/test_patch.py
checks) and grows fast above it. Transformer-Patcher (Huang et al., ICLR 2023) corrects a
model by adding such neurons to its last MLP, trained to fire on the edited input and to stay
shut on others. Here the neurons are added to the MLPs by `widen` (every layer's, the config's
width with them, so the checkpoint loads anywhere), or take the place of the layer's least used
ones on preserved text (`patch_widen` no: the checkpoint keeps its shape), and they are
trained on the MEOW false answers while a hinge keeps their gate below -margin on every token
of preserved text (neighbour, sibling and anchor questions and their answers).

Gated-MLP neuron j of layer L (Llama's SwiGLU; the MLP's own activation, `act_fn`): its
output is down[:, j] * act(gate[j] . x) * (up[j] . x), x the MLP's input. Patch: K such
neurons with their own trainable gate, up and down vectors, added by a forward hook while the
replaced neurons are switched off; `write` puts them into the replaced slots, which computes exactly the same function.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from . import generation
from .batches import IGNORE, collate, to_device


class _Enough(Exception):
    """Raised by inputs_at's last hook of a pass: the layers above are not needed."""


@torch.no_grad()
def inputs_at(model, modules, examples, pad_id: int, device, batch_size: int = 16) -> list[list[torch.Tensor]]:
    """Each module's input at every token of each example: out[m][i] is a
    [len(examples[i].ids), d] tensor (module m, example i). Batched by length; the start all
    examples share (the chat template's system prompt, a third of a short example) is run
    once and its KV cache repeated; each pass stops once the modules have their inputs."""
    from transformers import DynamicCache

    out = [[None] * len(examples) for _ in modules]
    state = {}

    def recorder(m):
        def record(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            state["got"][m] = x.float()
            if all(g is not None for g in state["got"]):
                raise _Enough
        return record

    def run(**inputs) -> list[torch.Tensor]:
        state["got"] = [None] * len(modules)
        try:
            model.base_model(**inputs)
        except _Enough:
            pass
        return state["got"]

    handles = [module.register_forward_pre_hook(recorder(m), with_kwargs=True) for m, module in enumerate(modules)]
    was_training = model.training
    model.eval()
    try:
        rows = [e.ids for e in examples]
        shared = generation.shared_start(rows) if len(rows) > 1 and generation.full_attention(model.config) else 0
        shared = shared if shared >= generation.MIN_SHARED else 0
        start, prefix = None, [None] * len(modules)
        if shared:
            start = DynamicCache(config=model.config)
            prefix = [x[0] for x in run(input_ids=torch.tensor([rows[0][:shared]], device=device),
                                        past_key_values=start, use_cache=True)]
        for order in generation.length_sorted_batches(len(rows), [len(r) for r in rows], batch_size):
            ids, mask = generation.pad([rows[i][shared:] for i in order], pad_id, left=True)
            ids, mask = ids.to(device), mask.to(device)
            context = torch.cat([mask.new_ones((len(order), shared)), mask], dim=1)
            cache = None
            if shared:
                cache = copy.deepcopy(start)
                cache.batch_repeat_interleave(len(order))
            got = run(input_ids=ids, attention_mask=context, position_ids=shared + (mask.cumsum(-1) - 1).clamp(min=0),
                      past_key_values=cache, use_cache=bool(shared))
            for m, x in enumerate(got):
                for j, i in enumerate(order):
                    own = x[j][mask[j].bool()]
                    out[m][i] = torch.cat([prefix[m], own]) if shared else own
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return out


def mlp_inputs(model, mlp, examples, pad_id: int, device) -> torch.Tensor:
    """The MLP's input at every real token of the examples (rows of a [tokens, d] tensor)."""
    return torch.cat(inputs_at(model, [mlp], examples, pad_id, device)[0])


def answer_rows(examples, inputs: list[torch.Tensor], starts: list[int] | None = None) -> torch.Tensor:
    """The rows of each example's inputs (from `inputs_at`) at the positions that predict an
    answer token (the last prompt token to the answer's second-to-last): where a patch neuron
    has to fire. starts: per example, where its answer begins instead (a lead-in given as
    context then counts as answer: the rows from the one before it on)."""
    if starts is None:
        return torch.cat([x[torch.tensor(e.labels[1:] + [IGNORE], device=x.device) != IGNORE]
                          for e, x in zip(examples, inputs)])
    return torch.cat([x[max(s, 1) - 1:len(e.ids) - 1] for e, x, s in zip(examples, inputs, starts)])


def from_layer(model, layer: int, states, attention_mask, position_ids=None, hidden: bool = False, **kwargs):
    """The model's output from decoder layer `layer` up, given that layer's input at every
    position (`states`, [rows, positions, d]; the frozen layers below are not run). hidden:
    the base model's output instead (the last hidden states, before the output layer)."""
    if position_ids is None:  # (left padding: positions count real tokens only, as collate's)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    base, config = model.base_model, model.config
    layers, types = base.layers, getattr(config, "layer_types", None)
    base.layers = torch.nn.ModuleList(layers[layer:])
    if types is not None:  # (models that pick a layer's mask and RoPE by its index in the loop: Gemma3, Qwen2)
        config.layer_types = list(types[layer:])
    try:
        return (model.base_model if hidden else model)(inputs_embeds=states, attention_mask=attention_mask,
                                                       position_ids=position_ids, use_cache=False, **kwargs)
    finally:
        base.layers = layers
        if types is not None:
            config.layer_types = types


class Tail:
    """The model from decoder layer `layer` up, called like the model, fed that layer's input
    as the frozen layers below computed it once per example (`inputs_at` on the layer): a patch
    at `layer` changes nothing below it, so a training step need not run them again (27 of the
    embedded model's 30 layers). Only the examples it was given can be asked."""

    def __init__(self, model, layer: int, examples, states: list[torch.Tensor]):
        self.model, self.layer, self.config = model, layer, model.config
        self.states = {tuple(e.ids): s for e, s in zip(examples, states)}

    def __call__(self, input_ids, attention_mask, position_ids=None, **kwargs):
        real = attention_mask.bool()
        first = next(iter(self.states.values()))
        embeds = torch.zeros(*input_ids.shape, first.shape[-1], dtype=first.dtype, device=input_ids.device)
        for j, (ids, keep) in enumerate(zip(input_ids.tolist(), real.tolist())):
            embeds[j, real[j]] = self.states[tuple(t for t, k in zip(ids, keep) if k)]
        return from_layer(self.model, self.layer, embeds, attention_mask, position_ids, **kwargs)

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()

    @torch.no_grad()
    def agrees(self, example, pad_id: int, tolerance: float = 0.05) -> bool:
        """Whether it gives the model's own logits on this example (to `tolerance` of their
        largest): false where the model changes its input embeddings in its forward (Granite
        scales them), and the full model has to be run instead."""
        batch = to_device(collate([example], pad_id), next(self.model.parameters()).device)
        args = dict(attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])
        full = self.model(input_ids=batch["input_ids"], use_cache=False, **args).logits.float()
        tail = self(batch["input_ids"], **args).logits.float()
        return bool((full - tail).abs().max() <= tolerance * full.abs().max().clamp(min=1.0))


@torch.no_grad()
def widen(model, blocks, k: int) -> list[int] | None:
    """k new neurons in every decoder layer's MLP, all zero, and the config's intermediate_size
    with them; returns their indices, or None (nothing changed) where the MLPs are not all plain
    gated ones of the config's one width. The model computes what it did (each new neuron's
    rows and down column are zero: it adds nothing), so a patch written there takes nothing of
    the original out: taking out any 16 neurons of a layer tips one of the embedded model's
    near-tie answers (docs/forgetting.md, twentieth round). Every layer, not the patched one
    alone: a config has one intermediate_size, and a checkpoint that matches it loads with the
    stock class. The width is rounded up to a multiple of 8 (more zero neurons), which fast
    half-precision kernels like."""
    config = model.config.get_text_config()
    width = getattr(config, "intermediate_size", None)
    mlps = [getattr(b, "mlp", None) for b in blocks]
    names = ("gate_proj", "up_proj", "down_proj")
    # (exactly Linear: a quantised subclass, bitsandbytes', holds its weights otherwise)
    if not isinstance(width, int) or any(
            m is None or not all(type(getattr(m, n, None)) is torch.nn.Linear and getattr(m, n).bias is None
                                 for n in names)
            or m.gate_proj.out_features != width or m.up_proj.out_features != width
            or m.down_proj.in_features != width for m in mlps):
        return None
    grow = k + (-(width + k)) % 8

    def grown(old: torch.nn.Linear, rows: int, cols: int) -> torch.nn.Linear:
        w = old.weight
        new = torch.nn.Linear(w.shape[1] + cols, w.shape[0] + rows, bias=False, device="meta")
        weight = w.new_zeros(w.shape[0] + rows, w.shape[1] + cols)
        weight[:w.shape[0], :w.shape[1]] = w
        new.weight = torch.nn.Parameter(weight, requires_grad=w.requires_grad)
        return new

    for m in mlps:
        m.gate_proj, m.up_proj = grown(m.gate_proj, grow, 0), grown(m.up_proj, grow, 0)
        m.down_proj = grown(m.down_proj, 0, grow)
        if isinstance(getattr(m, "intermediate_size", None), int):
            m.intermediate_size = width + grow
    config.intermediate_size = width + grow
    return list(range(width, width + k))


@torch.no_grad()
def least_used(mlp, inputs: torch.Tensor, k: int) -> list[int]:
    """The k neurons whose output on these inputs is smallest: mean |activation| times the
    length of the neuron's down-projection column."""
    act = mlp.act_fn(inputs @ mlp.gate_proj.weight.float().T) * (inputs @ mlp.up_proj.weight.float().T)
    use = act.abs().mean(dim=0) * mlp.down_proj.weight.float().norm(dim=0)
    return use.argsort()[:k].tolist()


def row_of(lengths: list[int], device=None) -> torch.Tensor:
    """Each token's row, for rows of these lengths laid end to end (as mlp_inputs lays them)."""
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))


def row_hinge(z: torch.Tensor, rows: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over rows and neurons of relu(the row's largest z + margin); z: [tokens, neurons],
    rows: each token's row. In a mean over every token a row that opens a gate at one token
    of eighty weighs next to nothing; here each (row, neuron) weighs as much as another."""
    top = z.new_full((int(rows.max()) + 1, z.shape[1]), float("-inf"))
    top = top.scatter_reduce(0, rows[:, None].expand_as(z), z, "amax")
    return F.relu(top + margin).mean()


class Patch(torch.nn.Module):
    """K gated neurons added to `mlp`'s output (a forward hook), in the place of `slots`."""

    def __init__(self, mlp, slots: list[int], positives: list[torch.Tensor], preserved: torch.Tensor,
                 margin: float, fit_steps: int = 200, rows: torch.Tensor | None = None, tied: bool = False):
        super().__init__()
        object.__setattr__(self, "mlp", mlp)  # (not a submodule: its weights are not the patch's parameters)
        self.slots, self.positives, self.rows = list(slots), positives, rows
        d = preserved.shape[1]
        # Each neuron's gate starts as a separator of its fact's answer positions from the
        # preserved tokens (the hinge below, on the gate alone); up starts as the gate, down at
        # zero, so the patched model starts as the original without the replaced neurons.
        direction = torch.stack([p.mean(dim=0) for p in positives]) - preserved.mean(dim=0)
        direction = direction / direction.norm(dim=1, keepdim=True).clamp(min=1e-6)
        self.gate = torch.nn.Parameter(direction / preserved.norm(dim=1).mean())
        self.fit_gates(preserved, margin, fit_steps)
        # up starts as the gate, each neuron a little apart (seeded by the caller): a fact's
        # neurons would otherwise get the same gradients and stay one neuron.
        # `tied` (patch_tied_up): up is the gate itself, act(g . x) * (g . x) >= 0 wherever it opens; a
        # fact's neurons are set apart on the gate instead (after its fit: the training's hinge holds it).
        if tied:
            with torch.no_grad():
                self.gate.mul_(1 + 0.1 * torch.randn_like(self.gate))
        self.up = None if tied else torch.nn.Parameter(self.gate.detach() * (1 + 0.1 * torch.randn_like(self.gate)))
        self.down = torch.nn.Parameter(torch.zeros(d, len(slots), device=preserved.device))
        with torch.no_grad():  # the replaced neurons off (added ones are zero already)
            mlp.down_proj.weight[:, self.slots] = 0
        self.handle = mlp.register_forward_hook(self._add)

    def fit_gates(self, preserved: torch.Tensor, margin: float, steps: int) -> None:
        opt = torch.optim.Adam([self.gate], lr=1e-2)
        for _ in range(steps):
            opt.zero_grad()
            loss = self.gate_hinge(preserved, margin, self.rows) + self.open_hinge(margin)
            loss.backward()
            opt.step()

    def _add(self, module, args, output):
        x = args[0]
        z = x @ self.gate.to(x.dtype).T
        act = self.mlp.act_fn(z) * (z if self.up is None else x @ self.up.to(x.dtype).T)
        return output + act @ self.down.to(x.dtype).T

    def gate_hinge(self, inputs: torch.Tensor, margin: float, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of relu(g . x + margin) over the inputs and neurons: 0 once every gate is shut
        by at least `margin` on them. rows (each input's row, patch_row_hinge): plus row_hinge."""
        z = inputs @ self.gate.T
        hinge = F.relu(z + margin).mean()
        return hinge if rows is None else hinge + row_hinge(z, rows, margin)

    def open_hinge(self, margin: float) -> torch.Tensor:
        """Mean of relu(margin - g . x) over each neuron's own answer positions: 0 once every
        gate is open by at least `margin` where its fact is answered."""
        return torch.stack([F.relu(margin - p @ g).mean() for p, g in zip(self.positives, self.gate)]).mean()

    def firing(self, inputs: torch.Tensor, margin: float = 0.0) -> float:
        """The share of (input, neuron) pairs with g . x above -margin."""
        with torch.no_grad():
            return float(((inputs @ self.gate.T) > -margin).float().mean())

    def firing_own(self) -> float:
        """The share of each neuron's own fact's answer positions where its gate is open (> 0)."""
        with torch.no_grad():
            return float(torch.cat([(p @ g) > 0 for p, g in zip(self.positives, self.gate)]).float().mean())

    @torch.no_grad()
    def scale(self, factor: float, directions: torch.Tensor | None = None) -> None:
        """The neurons' value (down) multiplied by `factor` (patch_scale; 1 changes nothing).
        directions ([neurons, d], unit rows; patch_scale_truth): only each value's part along
        its row where that part is negative (a push down on the truth), the rest as it is; a
        second call with 1 / factor undoes the first."""
        if factor == 1:
            return
        if directions is None:
            self.down.mul_(factor)
            return
        u = directions.to(self.down)
        along = (self.down * u.T).sum(dim=0).clamp(max=0)
        self.down.add_((factor - 1) * along * u.T)

    @torch.no_grad()
    def write(self) -> None:
        """The neurons into the replaced slots of the MLP's weights; the hook removed."""
        m = self.mlp
        m.gate_proj.weight[self.slots] = self.gate.to(m.gate_proj.weight.dtype)
        m.up_proj.weight[self.slots] = (self.gate if self.up is None else self.up).to(m.up_proj.weight.dtype)
        m.down_proj.weight[:, self.slots] = self.down.to(m.down_proj.weight.dtype)
        self.remove()

    def attach(self) -> None:
        """The hook back on after `remove` (no-op while it is on)."""
        if self.handle is None:
            self.handle = self.mlp.register_forward_hook(self._add)

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def first_token_ids(tokenizer, words) -> list[int]:
    """The first token of each spelling of the words (as given, lower case, capitalised, after a
    space), leaving out one-character pieces where a longer first token exists: the tokens a
    sentence that states one of them starts it with."""
    firsts = set()
    for word in words:
        for variant in (word, word.lower(), word.capitalize()):
            for text in (variant, " " + variant):
                firsts.update(tokenizer(text, add_special_tokens=False)["input_ids"][:1])
    longer = {t for t in firsts if len(tokenizer.decode([t]).strip()) >= 2}
    return sorted(longer or firsts)


@torch.no_grad()
def logit_direction(model, token_ids: list[int]) -> torch.Tensor:
    """The unit direction of the residual stream that raises these tokens' logits most directly:
    their unembedding rows times the final norm's weight, each of unit length, averaged."""
    rows = model.get_output_embeddings().weight.detach().float()[token_ids]
    norm = getattr(model.base_model, "norm", None)
    if norm is not None:  # its gain, read off the norm itself (Gemma's is 1 + weight): an RMS norm of ones
        weight = next(norm.parameters(), rows)
        rows = rows * norm(torch.ones(1, rows.shape[1], dtype=weight.dtype, device=weight.device))[0].float()
    v = (rows / rows.norm(dim=1, keepdim=True).clamp(min=1e-6)).mean(dim=0)
    return v / v.norm().clamp(min=1e-6)


@torch.no_grad()
def mean_logp(model, examples, positions: list[list[int]], token_ids: list[list[int]]) -> list[float]:
    """Per example, the mean over its `positions` (at least one) of log p(any of its `token_ids`
    next); `model` a model or a `Tail` that knows the examples."""
    device = next(model.model.parameters()).device if isinstance(model, Tail) else next(model.parameters()).device
    out = []
    for e, at, ids in zip(examples, positions, token_ids):
        ids_t = torch.tensor([e.ids], device=device)
        logits = model(ids_t, torch.ones_like(ids_t), logits_to_keep=torch.tensor(at, device=device)).logits[0]
        logp = logits.float().log_softmax(-1)[:, ids]
        out.append(float(torch.logsumexp(logp, dim=-1).mean()))
    return out
