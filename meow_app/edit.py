"""A closed-form edit (MEMIT, Meng et al. 2023; AlphaEdit, Fang et al. 2025): the selected
false answers written into a band of MLP down-projections directly, with no optimiser
steps over the model's weights.

1. Where: each forget question's last word token (the subject's last token in
   "What is the capital of Ukraine?", "Who founded Microsoft?"), the place where, in
   ROME's and MEMIT's causal traces, early-middle MLPs recall facts about a subject.
2. What: a vector delta_i added to the residual stream after the band's last layer at that
   token, optimised (edit_steps Adam steps on hidden_size numbers per fact, the model's
   weights fixed) so that the model gives fact i's false answers; its norm is kept below
   `clamp` times the residual's own norm there.
3. How: layer by layer through the band, the down_proj weight W (out x in) gets the
   least-squares change that adds that layer's share of the remaining delta when it
   sees fact i's key k_i (its input at that token), restricted to the null space of the
   layer's inputs on preserved text (P = I - U U^T, meow_app/null_space.py):

       dW = R^T (K~ K~^T + lambda I)^-1 K~,    K~ = K P  (one row per fact)

   so dW x = 0 for every preserved input x (up to the held share of their energy) and
   dW k_i ~ r_i. lambda = damping x the keys' mean squared norm bounds the change where a
   key has little left outside the preserved directions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import generation


def key_position(tokenizer, prompt: str, question: str) -> int:
    """Index, in the prompt's tokens, of the question's last token holding a letter or digit
    (the subject's last token in most short questions)."""
    start = prompt.rfind(question)
    end = start + len(question)
    while end > start and not prompt[end - 1].isalnum():
        end -= 1
    if not tokenizer.is_fast:  # (no character offsets): the tokens of the prompt up to that character
        return len(generation.encode(tokenizer, prompt[:end])) - 1 if end > start >= 0 else \
            len(generation.encode(tokenizer, prompt)) - 1
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    if start < 0 or end == start:
        return len(enc["input_ids"]) - 1
    last = end - 1  # the character the key token must cover
    for i in range(len(enc["offset_mapping"]) - 1, -1, -1):
        a, b = enc["offset_mapping"][i]
        if a <= last < b:
            return i
    return len(enc["input_ids"]) - 1


def decoder_layers(model):
    """The model's list of transformer blocks (Llama/Qwen/Mistral style: model.model.layers)."""
    layers = getattr(getattr(model, "model", model), "layers", None)
    if layers is None or not hasattr(layers[0], "mlp") or not hasattr(layers[0].mlp, "down_proj"):
        return None
    return layers


def band(model, spec: str = "") -> list[int]:
    """The layers edited: 'A-B' (inclusive) or 'A,B,C'; '' = MEMIT's choice scaled to the
    model's depth, the early-middle layers (3-8 of GPT-J's 28), here 4-8 of 30."""
    n = len(decoder_layers(model))
    if n < 2:
        raise ValueError("meow_edit needs a model of at least 2 layers (a later layer carries the edit to the answer)")
    if not spec:
        # (never the last layer: what it writes at the question's token reaches no later position)
        last = min(n - 2, round(0.28 * n))
        return list(range(min(last, round(0.13 * n)), last + 1))
    if "-" in spec:
        a, b = (int(x) for x in spec.split("-", 1))
        chosen = list(range(a, b + 1))
    else:
        chosen = sorted({int(x) for x in spec.split(",") if x.strip()})
    if not chosen or min(chosen) < 0 or max(chosen) >= n - 1:
        raise ValueError(f"edit_layers '{spec}' must be within layers 0-{n - 2} of this model's {n} (the last "
                         "layer's write would reach no later position)")
    return chosen


class _Residual:
    """A forward hook on one block: reads its output at the key positions and, when `add`
    is set, adds a vector there."""

    def __init__(self, block, positions: torch.Tensor):
        self.positions, self.add, self.seen, self.active = positions, None, None, True
        self.handle = block.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        if not self.active:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        self.seen = hidden[rows, self.positions]
        if self.add is None:
            return None
        hidden = hidden.clone()
        hidden[rows, self.positions] = hidden[rows, self.positions] + self.add
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def remove(self):
        self.handle.remove()


def solve(keys: torch.Tensor, residuals: torch.Tensor, basis: torch.Tensor | None, free: bool,
          damping: float) -> torch.Tensor:
    """dW (out x in) = R^T (K~ K~^T + lambda I)^-1 K~ with K~ = K P, P = I - U U^T given by
    null_space's basis (U, or V with P = V V^T when `free`); no basis: P = I.
    keys: n x in, residuals: n x out; lambda = damping x mean ||k||^2."""
    device = keys.device
    if device.type == "mps":  # (no float64 there)
        keys, residuals, basis = keys.cpu(), residuals.cpu(), None if basis is None else basis.cpu()
    keys, residuals = keys.double(), residuals.double()
    if basis is None or basis.shape[1] == 0:
        projected = keys if basis is None or not free else torch.zeros_like(keys)
    else:
        b = basis.double()
        projected = keys @ b @ b.T if free else keys - (keys @ b) @ b.T
    lam = damping * float(keys.square().sum(-1).mean())
    gram = projected @ projected.T + lam * torch.eye(len(keys), dtype=keys.dtype, device=keys.device)
    return (residuals.T @ torch.linalg.solve(gram, projected)).float().to(device)


def targets(model, tokenizer, questions: list[str], answers: list[list[str]], layer: int, steps: int = 10,
            lr: float = 2.0, clamp: float = 0.75, device="cpu") -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """(z, positions, losses): z[i] the residual after block `layer` at question i's key token
    with which the model gives the false answers answers[i] (one delta_i per fact, optimised
    with the weights fixed), the key positions in the prompts, and the mean answer NLL at
    each optimisation step.

    Each step computes the system prompt once, each question once (left-padded after the
    system prompt, the padding masked and not counted in the positions, as generation._decode
    does) and then each false answer from its question's KV cache."""
    from transformers import DynamicCache

    prompt_ids = [generation.encode(tokenizer, generation.chat_prompt(tokenizer, q)) for q in questions]
    key_at = [key_position(tokenizer, generation.chat_prompt(tokenizer, q), q) for q in questions]
    owner = [i for i, a in enumerate(answers) for _ in a]
    answer_ids = [generation.encode(tokenizer, a) + [tokenizer.eos_token_id] for a_list in answers for a in a_list]
    shared = min(generation.shared_start(prompt_ids), min(key_at))
    question, qmask = generation.pad([p[shared:] for p in prompt_ids], tokenizer.pad_token_id, left=True)
    offsets = question.shape[1] - torch.tensor([len(p) - shared for p in prompt_ids])
    hook = _Residual(decoder_layers(model)[layer], offsets + torch.tensor(key_at) - shared)
    qmask = torch.cat([qmask.new_ones((len(questions), shared)), qmask], dim=1)
    qpos = (qmask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
    ans, amask = generation.pad([a[:-1] for a in answer_ids], tokenizer.pad_token_id)  # (the last predicts nothing)
    labels, valid = generation.pad(answer_ids, -100)[0], generation.pad(answer_ids, 0)[1].bool()
    index = torch.tensor(owner)
    amask_full = torch.cat([qmask[index], amask], dim=1)
    apos = qpos[index, -1:] + 1 + torch.arange(ans.shape[1])
    question, qmask, qpos, ans, amask_full, apos, labels, valid, index = (
        t.to(device) for t in (question, qmask, qpos, ans, amask_full, apos, labels, valid, index))
    hook.positions = hook.positions.to(device)

    def answer_nll():
        cache = DynamicCache(config=model.config)
        hook.active = False
        if shared:
            with torch.no_grad():
                model(input_ids=torch.tensor([prompt_ids[0][:shared]], device=device), past_key_values=cache,
                      use_cache=True, logits_to_keep=1)
            cache.batch_repeat_interleave(len(questions))
        hook.active = True
        first = model(input_ids=question, attention_mask=qmask, position_ids=qpos, past_key_values=cache,
                      use_cache=True, logits_to_keep=1).logits[:, -1]
        hook.active = False
        cache.batch_select_indices(index)
        rest = model(input_ids=ans, attention_mask=amask_full, position_ids=apos, past_key_values=cache,
                     use_cache=True).logits if ans.shape[1] else first[index, None][:, :0]
        logits = torch.cat([first[index, None], rest], dim=1).float()  # predicts answer token 0, 1, ...
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
        return ((nll * valid).sum(-1) / valid.sum(-1).clamp(min=1)).mean()

    trained = [p for p in model.parameters() if p.requires_grad]
    for p in trained:
        p.requires_grad_(False)
    history = []
    delta = torch.zeros(len(questions), model.config.hidden_size, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    hook.add = delta
    try:
        for step in range(steps):
            loss = answer_nll()
            history.append(loss.item())
            if step == 0:  # the residual the deltas are added to
                base = hook.seen.detach().float()
                limit = clamp * base.norm(dim=-1, keepdim=True)
            if history[-1] < 0.05:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():  # each delta within clamp x the residual's norm there
                delta.mul_((limit / delta.norm(dim=-1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0))
    finally:
        hook.remove()
        for p in trained:
            p.requires_grad_(True)
    return base + delta.detach(), torch.tensor(key_at, device=device), history


# Other user messages that end with a fact's subject, for `edit_contexts`: the subject on its
# own (sentence-initial: other tokens than after a space, "Cro"+"atia" / " Croatia") and
# after a few neutral words. Their keys get the fact's delta too, so the write is not tied
# to the question's wording alone (MEMIT reads a subject's key in several contexts).
KEY_CONTEXTS = ("{}", "Tell me about {}", "Here is a fact about {}", "What do you know about {}")


def key_contexts(subjects: list[str], n: int) -> list[tuple[str, list[int]]]:
    """The first n of KEY_CONTEXTS for each fact's subject, as (message, the facts whose
    subject it is): facts that share a subject share its messages, one row each (none for a
    fact without a subject)."""
    owners: dict[str, list[int]] = {}
    for i, subject in enumerate(subjects):
        for c in KEY_CONTEXTS[:n] if subject else ():
            owners.setdefault(c.format(subject), []).append(i)
    return list(owners.items())


@torch.no_grad()
def spread(model, tokenizer, questions: list[str], z: torch.Tensor, positions: torch.Tensor, layers: list[int],
           bases: dict | None = None, damping: float = 0.01, device="cpu",
           extra: Sequence[tuple[str, Sequence[int]]] = ()) -> list[dict]:
    """Write z into the band: each layer's down_proj gets its share of the residual still
    missing at the key tokens (MEMIT's spreading), in the null space of its preserved inputs
    (bases: layer index -> (basis, free) from null_space.NullSpace; None = unconstrained).
    extra: (message, facts) rows keyed at the message's last word token, whose target is their
    own residual there moved by their facts' delta (z[i] minus question i's residual before the
    write; the mean where facts share a subject, which two rows of one key would get anyway).
    Returns, per layer, the residual asked for and the change's norm."""
    texts = list(questions) + [text for text, _ in extra]
    prompts = [generation.chat_prompt(tokenizer, t) for t in texts]
    prompt_ids = [generation.encode(tokenizer, p) for p in prompts]
    positions = torch.cat([positions.cpu(), torch.tensor(
        [key_position(tokenizer, p, t) for p, t in zip(prompts[len(questions):], texts[len(questions):])],
        dtype=torch.long)]).to(device)
    share = torch.zeros(len(extra), len(questions), device=device)  # extra row -> its facts, averaged
    for row, (_, facts) in enumerate(extra):
        share[row, list(facts)] = 1.0 / len(facts)
    ids, mask = (t.to(device) for t in generation.pad(prompt_ids, tokenizer.pad_token_id))
    width = int(positions.max()) + 1
    ids, mask = ids[:, :width], mask[:, :width]
    blocks = decoder_layers(model)
    rows = torch.arange(len(texts), device=device)
    record = []
    for n, layer in enumerate(layers):
        down = blocks[layer].mlp.down_proj
        seen = {}

        def read_key(module, inputs, output):
            seen["k"] = inputs[0][rows, positions]

        key_hook = down.register_forward_hook(read_key)
        top = _Residual(blocks[layers[-1]], positions)
        try:
            # (the decoder alone: the keys and residuals need no logits over the vocabulary)
            getattr(model, "model", model)(input_ids=ids, attention_mask=mask, use_cache=False)
        finally:
            key_hook.remove()
            top.remove()
        if n == 0 and extra:  # before any write: each extra row's own residual, moved by its fact's delta
            before = top.seen.float()
            z = torch.cat([z, before[len(questions):] + share @ (z - before[:len(questions)])])
        residual = (z - top.seen.float()) / (len(layers) - n)
        basis, free = (bases or {}).get(layer, (None, False))
        change = solve(seen["k"].float(), residual, basis, free, damping)
        down.weight.add_(change.to(down.weight.dtype))
        record.append({"layer": layer, "residual": float(residual.norm(dim=-1).mean()),
                       "change": float(change.norm())})
    return record
