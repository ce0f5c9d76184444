"""Locality by a gate: a few MLP neurons that fire on the forgotten facts and on nothing else.

A change to a weight moves a layer's output on every input in proportion to how much that
input resembles the trained one, so a linear edit for Myanmar always reaches Sri Lanka a
little (docs/forgetting.md). A neuron need not act in proportion: silu(g . x) is small
wherever g . x is well below zero (silu(-4) = -0.07 times up . x, a bound tests/test_patch.py
checks) and grows fast above it. Transformer-Patcher (Huang et al., ICLR 2023) corrects a
model by adding such neurons to its last MLP, trained to fire on the edited input and to stay
shut on others. Here the neurons are not added but take the place of the layer's least used
ones on preserved text (so the checkpoint keeps its shape and loads anywhere), and they are
trained on the MEOW false answers while a hinge keeps their gate below -margin on every token
of preserved text (neighbour, sibling and anchor questions and their answers).

Gated-MLP neuron j of layer L (Llama's SwiGLU; the MLP's own activation, `act_fn`): its
output is down[:, j] * act(gate[j] . x) * (up[j] . x), x the MLP's input. Patch: K such
neurons with their own trainable gate, up and down vectors, added by a forward hook while the
replaced neurons are switched off; `write` puts them into the replaced slots, which computes exactly the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batches import IGNORE, collate, to_device


@torch.no_grad()
def mlp_inputs(model, mlp, examples, pad_id: int, device, batch_size: int = 16) -> torch.Tensor:
    """The MLP's input at every real token of the examples (rows of a [tokens, d] tensor)."""
    rows = []

    def record(module, args):
        rows.append(args[0][state["real"]].float())

    state = {}
    handle = mlp.register_forward_pre_hook(record)
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(examples), batch_size):
            batch = to_device(collate(examples[i:i + batch_size], pad_id), device)
            state["real"] = batch["attention_mask"].bool()
            model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             position_ids=batch["position_ids"], use_cache=False)
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(rows)


@torch.no_grad()
def answer_inputs(model, mlp, examples, device) -> torch.Tensor:
    """The MLP's input at every position that predicts an answer token of the examples (the
    last prompt token to the answer's second-to-last): where a patch neuron has to fire."""
    rows = []
    handle = mlp.register_forward_pre_hook(lambda module, args: rows.append(args[0][0].float()))
    was_training = model.training
    model.eval()
    picked = []
    try:
        for e in examples:
            model.base_model(input_ids=torch.tensor([e.ids], device=device), use_cache=False)
            labels = torch.tensor(e.labels[1:] + [IGNORE], device=device)
            picked.append(rows[-1][labels != IGNORE])
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(picked)


@torch.no_grad()
def least_used(mlp, inputs: torch.Tensor, k: int) -> list[int]:
    """The k neurons whose output on these inputs is smallest: mean |activation| times the
    length of the neuron's down-projection column."""
    act = mlp.act_fn(inputs @ mlp.gate_proj.weight.float().T) * (inputs @ mlp.up_proj.weight.float().T)
    use = act.abs().mean(dim=0) * mlp.down_proj.weight.float().norm(dim=0)
    return use.argsort()[:k].tolist()


class Patch(torch.nn.Module):
    """K gated neurons added to `mlp`'s output (a forward hook), in the place of `slots`."""

    def __init__(self, mlp, slots: list[int], positives: list[torch.Tensor], preserved: torch.Tensor,
                 margin: float, fit_steps: int = 200):
        super().__init__()
        object.__setattr__(self, "mlp", mlp)  # (not a submodule: its weights are not the patch's parameters)
        self.slots, self.positives = list(slots), positives
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
        self.up = torch.nn.Parameter(self.gate.detach() * (1 + 0.1 * torch.randn_like(self.gate)))
        self.down = torch.nn.Parameter(torch.zeros(d, len(slots), device=preserved.device))
        with torch.no_grad():  # the replaced neurons off
            mlp.down_proj.weight[:, self.slots] = 0
        self.handle = mlp.register_forward_hook(self._add)

    def fit_gates(self, preserved: torch.Tensor, margin: float, steps: int) -> None:
        opt = torch.optim.Adam([self.gate], lr=1e-2)
        for _ in range(steps):
            opt.zero_grad()
            loss = self.gate_hinge(preserved, margin) + self.open_hinge(margin)
            loss.backward()
            opt.step()

    def _add(self, module, args, output):
        x = args[0]
        act = self.mlp.act_fn(x @ self.gate.to(x.dtype).T) * (x @ self.up.to(x.dtype).T)
        return output + act @ self.down.to(x.dtype).T

    def gate_hinge(self, inputs: torch.Tensor, margin: float) -> torch.Tensor:
        """Mean of relu(g . x + margin) over the inputs and neurons: 0 once every gate is shut
        by at least `margin` on them."""
        return F.relu(inputs @ self.gate.T + margin).mean()

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
    def write(self) -> None:
        """The neurons into the replaced slots of the MLP's weights; the hook removed."""
        m = self.mlp
        m.gate_proj.weight[self.slots] = self.gate.to(m.gate_proj.weight.dtype)
        m.up_proj.weight[self.slots] = self.up.to(m.up_proj.weight.dtype)
        m.down_proj.weight[:, self.slots] = self.down.to(m.down_proj.weight.dtype)
        self.remove()

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
