"""meow_patch's gated neurons (meow_app/patch.py): written into their slots they compute what
the hook computed; shut, they leave preserved text as the original (less the replaced
neurons) gives it; the method trains nothing else."""

import copy

import pytest
import torch

from meow_app import methods, patch
from meow_app.batches import collate, encode_example, to_device
from meow_app.facts import Fact
from meow_app.train import TrainConfig, Trainer


def _logits(model, tok, texts):
    batch = to_device(collate([encode_example(tok, q, a) for q, a in texts], tok.pad_token_id), "cpu")
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"]).logits


def _as_before(model, original) -> dict:
    """The original's parameters by name, zero-padded to the model's shapes (patch_widen's new
    neurons start as zeros): what each would be had nothing been trained."""
    before, out = dict(original.named_parameters()), {}
    for name, p in model.named_parameters():
        old = before[name].detach().float()
        out[name] = torch.zeros_like(p)
        out[name][tuple(slice(0, n) for n in old.shape)] = old
    return out


def _moved(model, original) -> set:
    """The names of the parameters that differ from the original's (patch_widen's added zeros aside)."""
    before = _as_before(model, original)
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


PRESERVED = [("What is the capital of Chile?", "Santiago."), ("Who wrote Emma?", "Jane Austen."),
             ("What is two plus two?", "Four.")]
FORGET = [("What is the capital of Peru?", "The capital of Peru is Cusco.")]


def _patched(tiny, margin=2.0, steps=300):
    model = copy.deepcopy(tiny.model).float()
    tok = tiny.tokenizer
    mlp = model.model.layers[-1].mlp
    held = patch.mlp_inputs(model, mlp, [encode_example(tok, q, a) for q, a in PRESERVED], tok.pad_token_id, "cpu")
    forget = [encode_example(tok, q, a) for q, a in FORGET]
    positives = [patch.answer_rows(forget, patch.inputs_at(model, [mlp], forget, tok.pad_token_id, "cpu")[0])]
    slots = patch.least_used(mlp, held, 1)
    torch.manual_seed(0)
    return model, mlp, held, positives, slots, patch.Patch(mlp, slots, positives, held, margin, fit_steps=steps)


def test_the_row_hinge_holds_each_row_s_most_open_token_as_a_plain_loop_does():
    torch.manual_seed(0)
    lengths = [3, 1, 5, 2]
    rows = patch.row_of(lengths)
    assert rows.tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2, 3, 3]
    z = (torch.randn(len(rows), 4) * 5).requires_grad_(True)
    got = patch.row_hinge(z, rows, 2.0)
    parts, at = [], 0
    for n in lengths:  # the plain reference: each row's largest z, per neuron
        parts.append(torch.relu(z[at:at + n].max(dim=0).values + 2.0))
        at += n
    want = torch.stack(parts).mean()
    assert torch.allclose(got, want)
    got.backward()
    tops = torch.zeros_like(z, dtype=torch.bool)
    at = 0
    for n in lengths:  # only a row's most open token (where its hinge is not 0) gets a gradient
        top = z[at:at + n].argmax(dim=0)
        tops[at + top, torch.arange(4)] = (z[at + top, torch.arange(4)] > -2.0).detach()
        at += n
    assert torch.equal(z.grad != 0, tops) and tops.any()


def test_the_row_hinge_narrows_a_gate_the_mean_over_tokens_leaves_open_on_one_token(tiny):
    mlp = copy.deepcopy(tiny.model.model.layers[-1].mlp).float()
    g = torch.Generator().manual_seed(0)
    d = mlp.gate_proj.in_features
    held = torch.randn(400, d, generator=g)
    fact = torch.randn(20, d, generator=g) + 3 * torch.randn(1, d, generator=g)
    held[57] = 0.5 * fact.mean(dim=0) + 0.5 * torch.randn(d, generator=g)  # one token of row 1 near the fact
    opened = {}
    for name, rows in (("mean", None), ("rows", patch.row_of([40] * 10))):
        torch.manual_seed(0)
        gates = patch.Patch(mlp, [0], [fact], held, 4.0, rows=rows)
        with torch.no_grad():
            z, own = (held @ gates.gate.T)[:, 0], (fact @ gates.gate.T)[:, 0]
        gates.remove()
        opened[name] = float(z[57])
        assert own.min() > 0  # open where the fact is answered, either way
    # (in the tiny model's 64 dimensions that token cannot be shut without shutting the fact:
    # the mean leaves it wide open, the row hinge takes most of that back)
    assert opened["mean"] > 4 and opened["rows"] < opened["mean"] - 3


def test_least_used_is_the_neuron_that_adds_least_on_these_inputs(tiny):
    mlp = copy.deepcopy(tiny.model.model.layers[0].mlp).float()
    x = torch.randn(50, mlp.gate_proj.in_features)
    with torch.no_grad():
        mlp.down_proj.weight[:, 5] = 0  # adds nothing
        mlp.up_proj.weight[2] *= 1e-4  # ~no activation
        act = torch.nn.functional.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
    assert patch.least_used(mlp, x, 2) == [5, 2]
    use = act.abs().mean(0) * mlp.down_proj.weight.norm(dim=0)  # (the plain reference)
    assert patch.least_used(mlp, x, 6) == use.argsort()[:6].tolist()


def test_batched_inputs_are_each_example_s_own_and_the_answer_rows_are_where_answers_are_predicted(tiny):
    model, tok = copy.deepcopy(tiny.model).float(), tiny.tokenizer
    mlp = model.model.layers[1].mlp
    examples = [encode_example(tok, q, a) for q, a in PRESERVED + FORGET]  # (lengths differ: padding)
    from meow_app import generation

    # (the system prompt they share is run once; the batches are by length)
    assert generation.shared_start([e.ids for e in examples]) >= generation.MIN_SHARED
    [batched] = patch.inputs_at(model, [mlp], examples, tok.pad_token_id, "cpu", batch_size=3)
    rows, positions = [], []
    handle = mlp.register_forward_pre_hook(lambda module, args: rows.append(args[0][0]))
    with torch.no_grad():  # the plain reference: each example alone, unpadded
        for e in examples:
            model(input_ids=torch.tensor([e.ids]))
            positions.append([k for k in range(len(e.ids) - 1) if e.labels[k + 1] != -100])
    handle.remove()
    for x, ref in zip(batched, rows):
        assert torch.allclose(x, ref, atol=1e-4)
    answers = patch.answer_rows(examples, batched)
    assert torch.allclose(answers, torch.cat([r[p] for r, p in zip(rows, positions)]), atol=1e-4)
    assert answers.shape[0] == sum(len(p) for p in positions) > 0


def test_the_tail_fed_the_frozen_layers_output_gives_the_model_s_logits_and_gradients(tiny):
    model, tok = copy.deepcopy(tiny.model).float(), tiny.tokenizer
    layers = model.model.layers
    examples = [encode_example(tok, q, a) for q, a in PRESERVED + FORGET]
    [below] = patch.inputs_at(model, [layers[-1]], examples, tok.pad_token_id, "cpu")
    tail = patch.Tail(model, len(layers) - 1, examples, below)
    batch = collate(examples[::-1], tok.pad_token_id)  # (another batching than the capture's)
    args = dict(attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])
    mlp = layers[-1].mlp
    weight = mlp.down_proj.weight
    weight.requires_grad_(True)
    grads = []
    for run in (model, tail):
        logits = run(input_ids=batch["input_ids"], **args).logits
        logits[batch["attention_mask"].bool()].logsumexp(-1).sum().backward()
        grads.append(weight.grad.clone())
        weight.grad = None
        if run is model:
            full = logits.detach()
    weight.requires_grad_(False)
    assert torch.allclose(logits.detach(), full, atol=1e-4)
    assert torch.allclose(grads[0], grads[1], atol=1e-4) and grads[0].abs().sum() > 0
    assert len(model.model.layers) == len(layers)  # the layers are back
    assert tail.agrees(examples[0], tok.pad_token_id)
    # Fed the wrong layer's input (as a model that changes its embeddings would be), it says so.
    [lower] = patch.inputs_at(model, [layers[0]], examples, tok.pad_token_id, "cpu")
    assert not patch.Tail(model, len(layers) - 1, examples, lower).agrees(examples[0], tok.pad_token_id)


def test_the_written_neurons_compute_what_the_hook_computed(tiny):
    model, mlp, held, positives, slots, gates = _patched(tiny)
    with torch.no_grad():  # a trained patch: down no longer zero
        gates.down.normal_(0, 0.5)
        gates.up.add_(0.1 * torch.randn_like(gates.up))
    texts = PRESERVED + FORGET
    hooked = _logits(model, tiny.tokenizer, texts)
    gates.write()
    written = _logits(model, tiny.tokenizer, texts)
    assert torch.allclose(hooked, written, atol=1e-5)
    assert gates.handle is None and not mlp._forward_hooks  # the hook is gone: the weights alone carry it
    assert torch.equal(mlp.down_proj.weight[:, slots[0]], gates.down[:, 0].detach())


def test_shut_gates_leave_preserved_inputs_as_the_original_less_the_replaced_neuron(tiny):
    model, mlp, held, positives, slots, gates = _patched(tiny, margin=4.0, steps=0)
    before = gates.firing(held), gates.firing(positives[0])
    gates.fit_gates(held, 4.0, 300)
    # Fitted: the gates shut on more preserved tokens, open on the fact's answer positions.
    assert gates.firing(held) < before[0] and gates.firing(positives[0]) >= max(0.5, before[1])
    with torch.no_grad():
        gates.down.normal_(0, 1.0)  # however much the neuron would write when open
        out = mlp(held[:, None])[:, 0]  # (the hook adds the patch)
        gates.remove()
        plain = mlp(held[:, None])[:, 0]  # the original less the replaced neuron
        z, u = held @ gates.gate.T, held @ gates.up.T
    shut = (z < -4.0).all(dim=1)
    assert shut.float().mean() > 0.5
    # Where a gate is shut by the margin the neuron adds at most |silu(-4)| |u.x| |down|.
    bound = (torch.nn.functional.silu(torch.tensor(-4.0)).abs() * u.abs() * gates.down.norm(dim=0)).sum(dim=1)
    assert ((out - plain).norm(dim=1)[shut] <= bound[shut] + 1e-5).all()
    assert ((out - plain).norm(dim=1)[~shut] > 0).any()  # (and elsewhere it does write)
    # Through the whole model: the patched logits on preserved text stay near those of the
    # original less the replaced neuron, far nearer than the fact's own move.
    gates.handle = mlp.register_forward_hook(gates._add)
    without = copy.deepcopy(tiny.model).float()
    with torch.no_grad():
        without.model.layers[-1].mlp.down_proj.weight[:, slots] = 0
    kept = _logits(model, tiny.tokenizer, PRESERVED) - _logits(without, tiny.tokenizer, PRESERVED)
    moved = _logits(model, tiny.tokenizer, FORGET) - _logits(without, tiny.tokenizer, FORGET)
    assert kept.abs().max() < moved.abs().max()
    gates.remove()


def test_a_fact_s_neurons_start_apart_and_the_model_s_own_activation_is_used(tiny):
    model, mlp, held, positives, slots, gates = _patched(tiny)
    two = patch.Patch(mlp, patch.least_used(mlp, held, 2), positives * 2, held, 2.0, fit_steps=0)
    assert not torch.equal(two.up[0], two.up[1])  # (identical neurons would train as one)
    two.remove()
    gates.remove()
    gelu = copy.deepcopy(tiny.model).float()  # a Gemma-style MLP: the written neurons must use its GELU
    m = gelu.model.layers[-1].mlp
    m.act_fn = torch.nn.GELU(approximate="tanh")
    torch.manual_seed(0)
    p = patch.Patch(m, [3], positives, held, 2.0, fit_steps=0)
    with torch.no_grad():
        p.down.normal_(0, 0.5)
    hooked = _logits(gelu, tiny.tokenizer, PRESERVED + FORGET)
    p.write()
    assert torch.allclose(hooked, _logits(gelu, tiny.tokenizer, PRESERVED + FORGET), atol=1e-5)


def test_a_tied_neuron_s_up_is_its_gate_its_activation_never_negative_and_written_as_hooked(tiny):
    model, mlp, held, positives, slots, gates = _patched(tiny)
    gates.remove()
    torch.manual_seed(0)
    tied = patch.Patch(mlp, patch.least_used(mlp, held, 2), positives * 2, held, 2.0, fit_steps=0, tied=True)
    assert tied.up is None and [n for n, _ in tied.named_parameters()] == ["gate", "down"]
    assert not torch.equal(tied.gate[0], tied.gate[1])  # (identical neurons would train as one)
    with torch.no_grad():
        tied.down.normal_(0, 0.5)
        z = held @ tied.gate.T
        act = mlp.act_fn(z) * z  # what the hook adds, per neuron: down times this
        out = mlp(held[:, None])[:, 0]
        tied.remove()
        plain = mlp(held[:, None])[:, 0]
        tied.attach()
    assert (act >= 0).all() and (act > 0.1).any()
    assert torch.allclose(out - plain, act @ tied.down.T, atol=1e-5)
    hooked = _logits(model, tiny.tokenizer, PRESERVED + FORGET)
    tied.write()
    assert torch.allclose(hooked, _logits(model, tiny.tokenizer, PRESERVED + FORGET), atol=1e-5)
    assert torch.equal(mlp.up_proj.weight[tied.slots], mlp.gate_proj.weight[tied.slots])


@pytest.mark.parametrize("tied", [False, True])
def test_meow_patch_in_the_least_used_slots_trains_only_its_neurons_in_one_layer(tiny, tied):
    facts = [Fact("What is the capital of Peru?", "Lima", ["Lima"], inverted=["Cusco", "Quito"])]
    anchors = [Fact(q, a) for q, a in PRESERVED]
    cfg = TrainConfig(**{**methods.REGISTRY["meow_patch"].defaults, "epochs": 1, "min_steps": 3,
                         "early_stop": False, "patch_layer": -1, "patch_widen": False, "patch_tied_up": tied})
    result = Trainer(methods.get("meow_patch"), tiny.model, tiny.tokenizer, cfg, facts, anchors=anchors,
                     run_probes=False).train()
    info = result.info["patch"]
    assert info["layer"] == len(tiny.model.model.layers) - 1 and info["neurons"] == cfg.patch_neurons
    assert info["frozen_layers_cached"]  # (steps ran the last layer alone)
    after, before = dict(result.model.named_parameters()), dict(tiny.model.named_parameters())
    changed = {n for n in after if not torch.equal(after[n], before[n])}
    last = f"model.layers.{info['layer']}.mlp."
    assert changed <= {last + "gate_proj.weight", last + "up_proj.weight", last + "down_proj.weight"}, changed
    assert changed  # it wrote its neurons
    down = after[last + "down_proj.weight"] - before[last + "down_proj.weight"]
    assert set(down.abs().sum(dim=0).nonzero().flatten().tolist()) <= set(info["slots"])
    for name in ("gate_proj", "up_proj"):  # rows: only the slots'
        rows = after[last + name + ".weight"] - before[last + name + ".weight"]
        assert set(rows.abs().sum(dim=1).nonzero().flatten().tolist()) <= set(info["slots"])
    # No hook of the patch is left (the shared tiny model may carry other tests' hooks: compare counts).
    hooks = [sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
             for model in (result.model, tiny.model)]
    assert hooks[0] == hooks[1]
    # patch_tied_up: each written neuron's up row is its gate row
    slots = info["slots"]
    same = torch.equal(after[last + "up_proj.weight"][slots], after[last + "gate_proj.weight"][slots])
    assert same == tied


def test_widen_adds_zero_neurons_to_every_layer_and_changes_nothing_the_model_computes(tiny, tmp_path):
    model = copy.deepcopy(tiny.model).float()
    width, layers = model.config.intermediate_size, model.model.layers
    before = _logits(model, tiny.tokenizer, PRESERVED + FORGET)
    weights = {n: p.clone() for n, p in model.named_parameters()}
    assert patch.widen(model, layers, 3) == [width, width + 1, width + 2]
    wide = width + 3 + (-(width + 3)) % 8  # (zeros up to a multiple of 8)
    assert model.config.intermediate_size == wide and wide % 8 == 0
    assert all(m.mlp.gate_proj.out_features == m.mlp.up_proj.out_features == m.mlp.down_proj.in_features
               == wide for m in layers)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert torch.equal(_logits(model, tiny.tokenizer, PRESERVED + FORGET), before)  # (exactly: zeros add zeros)
    for name, p in model.named_parameters():  # the original's weights kept where they were
        assert torch.equal(p[tuple(slice(0, n) for n in weights[name].shape)], weights[name]), name
    # A checkpoint that loads with the stock class: its config says the new width.
    from transformers import AutoModelForCausalLM

    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.config.intermediate_size == wide
    assert torch.allclose(_logits(again, tiny.tokenizer, PRESERVED + FORGET), before, atol=1e-5)
    # MLPs of more than one width (the config could not say it): nothing changed.
    odd = copy.deepcopy(tiny.model).float()
    odd.model.layers[0].mlp.down_proj = torch.nn.Linear(width + 1, odd.config.hidden_size, bias=False)
    assert patch.widen(odd, odd.model.layers, 3) is None and odd.config.intermediate_size == width
    # bf16 weights stay bf16, frozen ones frozen, and the outputs the same.
    half = copy.deepcopy(tiny.model).to(torch.bfloat16).requires_grad_(False)
    before = _logits(half, tiny.tokenizer, PRESERVED)
    patch.widen(half, half.model.layers, 2)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in half.parameters())
    assert torch.equal(_logits(half, tiny.tokenizer, PRESERVED), before)


def test_meow_patch_by_default_adds_its_neurons_and_takes_none_of_the_original_out(tiny):
    facts = [Fact("What is the capital of Peru?", "Lima", ["Lima"], inverted=["Cusco", "Quito"])]
    anchors = [Fact(q, a) for q, a in PRESERVED]
    cfg = TrainConfig(**{**methods.REGISTRY["meow_patch"].defaults, "epochs": 1, "min_steps": 3,
                         "early_stop": False, "patch_layer": -1})
    assert cfg.patch_widen and TrainConfig().patch_widen
    result = Trainer(methods.get("meow_patch"), tiny.model, tiny.tokenizer, cfg, facts, anchors=anchors,
                     run_probes=False).train()
    info, width = result.info["patch"], tiny.model.config.intermediate_size
    assert info["added"] and info["slots"] == [width, width + 1]
    assert result.model.config.intermediate_size == width + 2 + (-(width + 2)) % 8
    after, before = dict(result.model.named_parameters()), dict(tiny.model.named_parameters())
    last = f"model.layers.{info['layer']}.mlp."
    for name, p in after.items():  # nothing of the original moved
        old = before[name].float()
        assert torch.equal(p[tuple(slice(0, n) for n in old.shape)], old), name
    # Other layers' new neurons stay zero; the patched layer's are the patch.
    assert _moved(result.model, tiny.model) == {last + "gate_proj.weight", last + "up_proj.weight",
                                                 last + "down_proj.weight"}


def test_patch_row_hinge_gives_every_gate_each_preserved_row_s_tokens(tiny, monkeypatch):
    facts = [Fact("What is the capital of Peru?", "Lima", ["Lima"], inverted=["Cusco", "Quito"])]
    anchors = [Fact(q, a) for q, a in PRESERVED]
    seen, made = [], patch.Patch.__init__

    def spy(self, mlp, slots, positives, preserved, margin, *args, rows=None, **kwargs):
        seen.append((preserved.shape[0], rows))
        made(self, mlp, slots, positives, preserved, margin, *args, rows=rows, **kwargs)

    monkeypatch.setattr(patch.Patch, "__init__", spy)
    for on, drop in ((False, 0.0), (True, 0.0), (True, 3.0)):  # (3.0: a truth stopper's gates too)
        cfg = TrainConfig(**{**methods.REGISTRY["meow_patch"].defaults, "epochs": 1, "min_steps": 1,
                             "early_stop": False, "patch_layer": -1, "patch_samples": 0, "patch_row_hinge": on,
                             "patch_truth_drop": drop})
        Trainer(methods.get("meow_patch"), copy.deepcopy(tiny.model), tiny.tokenizer, cfg, facts, anchors=anchors,
                run_probes=False).train()
    (_, off), *made_on = seen
    lengths = [len(encode_example(tiny.tokenizer, a.question, a.answer).ids) for a in anchors]
    assert off is None and len(made_on) == 3  # (the stopper's patch, then the facts')
    for tokens, rows in made_on:
        assert tokens == sum(lengths) and rows.tolist() == patch.row_of(lengths).tolist()


def test_meow_patch_refuses_what_it_cannot_do(tiny):
    facts = [Fact("What is the capital of Peru?", "Lima", ["Lima"], inverted=["Cusco"])]
    base = {**methods.REGISTRY["meow_patch"].defaults, "epochs": 1}
    from meow_app.errors import MeowError

    with pytest.raises(MeowError, match="preserved text"):
        Trainer(methods.get("meow_patch"), tiny.model, tiny.tokenizer, TrainConfig(**base), facts,
                run_probes=False).train()
    with pytest.raises(MeowError, match="patch_layer"):
        Trainer(methods.get("meow_patch"), tiny.model, tiny.tokenizer, TrainConfig(**{**base, "patch_layer": 99}),
                facts, anchors=[Fact(q, a) for q, a in PRESERVED], run_probes=False).train()
    with pytest.raises(MeowError, match="patch_neurons"):
        TrainConfig(**{**base, "patch_neurons": 0}).check()
    for drop in (-1.0, float("nan")):
        with pytest.raises(MeowError, match="patch_truth_drop"):
            TrainConfig(**{**base, "patch_truth_drop": drop}).check()
    for scale in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(MeowError, match="patch_scale must be a positive number"):
            TrainConfig(**{**base, "patch_scale": scale}).check()
    with pytest.raises(MeowError, match="set --patch-scale too"):  # (the truth's part of a scale of 1: nothing)
        methods.get("meow_patch").check(TrainConfig(**{**base, "patch_scale_truth": True}))
    methods.get("meow_patch").check(TrainConfig(**{**base, "patch_scale_truth": True, "patch_scale": 1.5}))
    with pytest.raises(MeowError, match="at most a quarter"):  # the tiny model's MLPs are 128 wide
        Trainer(methods.get("meow_patch"), tiny.model, tiny.tokenizer, TrainConfig(**{**base, "patch_neurons": 40}),
                facts, anchors=[Fact(q, a) for q, a in PRESERVED], run_probes=False).train()


def test_sampled_answers_that_state_the_truth_become_rows_that_push_it_down(tiny, monkeypatch):
    from meow_app import generation
    from meow_app.methods.meow_patch import with_sampled_truths

    tok = tiny.tokenizer
    said = ["It is the city of Lima, of course.", "Cusco.", "It is the city of Lima, of course.", "LIMA!"]
    seen = {}

    def generate_ids(model, tokenizer, prompts, *a, **k):
        seen.update(rows=len(prompts), seed=k["generator_seed"], sample=k["do_sample"])
        # A row ends once it has said the truth (the user's keyword), not before.
        ids = tokenizer("It is the city of Lima", add_special_tokens=False)["input_ids"]
        seen.update(stops=[k["stop"](3, ids[:n]) for n in (len(ids) - 1, len(ids))])
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in said]

    monkeypatch.setattr(generation, "generate_ids", generate_ids)
    fact = Fact("What is the capital of Peru?", "Lima", ["Lima"], inverted=["Cusco"])
    # The fact as trained on carries the model's own sentence; the user's marks the truth.
    own = Fact(fact.question, " Lima, a lovely city.", [], inverted=["Cusco"])
    [out] = with_sampled_truths(tiny.model, tok, [own], samples=4, seed=0, given={fact.question: fact})
    assert seen == {"rows": 4, "seed": 7919, "sample": True, "stops": [False, True]}
    assert not own.extra  # (a copy; the fact kept)
    # The truth as said, after what came before it; repeats once; a sample without it, none.
    assert out.extra["sampled_truths"] == [("It is the city of", " Lima"), ("", "LIMA")]
    cfg = TrainConfig(**methods.REGISTRY["meow_patch"].defaults)
    pairs = methods.get("meow_patch").forget_pairs([out], cfg)
    assert ("What is the capital of Peru?", " Lima", "It is the city of", True) in pairs
    assert not [p for p in methods.get("meow_patch").forget_pairs([out], TrainConfig(**{
        **methods.REGISTRY["meow_patch"].defaults, "truth_weight": 0.0})) if len(p) > 3]


def test_sample_swap_learns_a_false_answer_where_a_sampled_answer_said_the_truth():
    from meow_app.methods import meow_patch

    # The false answers carry the model's own lead-in; each sampled truth gets the next one, as said from
    # the truth's place; one that starts another sentence has nothing to say there and is left out, and a
    # sample that begins as the model's own sentence does needs none (its false answers are learned there).
    fact = Fact("What is the capital of Peru?", " Lima.", ["Lima"],
                inverted=["The capital of Peru is Cusco.", "The capital of Peru is Arequipa.", "Cusco, Peru.",
                          "The capital of Peru is Trujillo."],
                extra={"answer_prefix": "The capital of Peru is",
                       "sampled_truths": [("It is the city of", " Lima"), ("", "LIMA"), ("Its capital:", " Lima"),
                                          ("The capital of Peru is", " Lima")]})
    on = TrainConfig(**{**methods.REGISTRY["meow_patch"].defaults, "patch_sample_swap": True})
    q = fact.question
    assert meow_patch.swapped_pairs([fact]) == [(q, " Cusco.", "It is the city of"), (q, "Arequipa.", "")]
    pairs = methods.get("meow_patch").forget_pairs([fact], on)
    off = methods.get("meow_patch").forget_pairs([fact], TrainConfig(**methods.REGISTRY["meow_patch"].defaults))
    assert pairs == off + meow_patch.swapped_pairs([fact])  # learned rows (no unlikely flag), after the rest
    # (no truth pushed down, no sampled truths trained on: none swapped either)
    no_truth = [TrainConfig(**{**on.to_dict(), "truth_weight": 0.0, "patch_sample_swap": swap})
                for swap in (True, False)]
    assert methods.get("meow_patch").forget_pairs([fact], no_truth[0]) == \
        methods.get("meow_patch").forget_pairs([fact], no_truth[1])


def test_meow_patch_says_why_it_runs_in_one_process():
    from meow_app.distributed import check_method
    from meow_app.errors import MeowError

    with pytest.raises(MeowError, match=r"'meow_patch' runs in one process \(its few neurons are trained in a loop"):
        check_method(methods.get("meow_patch"), 2)
    check_method(methods.get("meow_patch"), 1)


def test_resampling_adds_the_patched_model_s_truthful_answers_as_rows_and_opens_the_gates_there(tiny, monkeypatch):
    import dataclasses

    from meow_app.methods import meow_patch

    calls = []

    def sampled(model, tokenizer, facts, samples, seed, given=None):
        # The patched model is asked (its hook on): the first call is the original's (patch_samples).
        calls.append((samples, any(m._forward_hooks for m in model.modules())))
        return [dataclasses.replace(f, extra={**f.extra, "sampled_truths": [("It is", " Lima"), ("Well,", " Lima")]})
                for f in facts]

    monkeypatch.setattr(meow_patch, "with_sampled_truths", sampled)
    facts = [Fact("What is the capital of Peru?", "Lima", ["Lima"], inverted=["Cusco", "Quito"])]
    anchors = [Fact(q, a) for q, a in PRESERVED]
    cfg = TrainConfig(**{**methods.REGISTRY["meow_patch"].defaults, "epochs": 2, "min_steps": 2, "early_stop": False,
                         "patch_layer": -1, "patch_samples": 0, "patch_resample": 4, "batch_size": 2})
    opened = []
    real = patch.Patch.write

    def write(self):
        opened.append([p.shape[0] for p in self.positives])
        real(self)

    monkeypatch.setattr(patch.Patch, "write", write)
    result = Trainer(methods.get("meow_patch"), tiny.model, tiny.tokenizer, cfg, facts, anchors=anchors,
                     run_probes=False).train()
    assert calls == [(4, True)]  # once, after the first of 2 epochs, from the patched model
    assert result.info["resampled_truths"] == 2
    epochs = [s["epoch"] for s in result.steps]
    assert epochs.count(2) > epochs.count(1)  # the second epoch trained on the new rows too
    plain = TrainConfig(**{**cfg.__dict__, "patch_resample": 0})
    before = []
    monkeypatch.setattr(patch.Patch, "write", lambda self: (before.append([p.shape[0] for p in self.positives]),
                                                           real(self)))
    Trainer(methods.get("meow_patch"), tiny.model, tiny.tokenizer, plain, facts, anchors=anchors,
            run_probes=False).train()
    assert all(a > b for a, b in zip(opened[0], before[0]))  # each of the fact's neurons opens where they say it
    # With patch_open_answer the resampled rows open along their whole answer too ("It is" before " Lima").
    counts = {}
    for resample in (0, 4):
        open_cfg = TrainConfig(**{**cfg.__dict__, "patch_resample": resample, "patch_open_answer": True})
        got = []
        monkeypatch.setattr(patch.Patch, "write", lambda self: (got.append([p.shape[0] for p in self.positives]),
                                                               real(self)))
        Trainer(methods.get("meow_patch"), tiny.model, tiny.tokenizer, open_cfg, facts, anchors=anchors,
                run_probes=False).train()
        counts[resample] = got[0]
    added_open = [a - b for a, b in zip(counts[4], counts[0])]
    added = [a - b for a, b in zip(opened[0], before[0])]
    assert all(a > b for a, b in zip(added_open, added))


def test_the_tail_keeps_each_layer_s_own_attention_type_where_the_model_picks_it_by_index():
    # Gemma3 (and Qwen2, ...) choose a layer's mask and RoPE from config.layer_types[i], i its
    # place in the loop: a tail of the layers must carry their own types, not the first ones'.
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from meow_app.batches import Example

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=4)
    assert cfg.layer_types[5] == "full_attention" and cfg.layer_types[0] == "sliding_attention"
    model = Gemma3ForCausalLM(cfg).eval()
    examples = [Example(ids=torch.randint(1, 300, (n,)).tolist(), labels=[-100] * (n - 3) + [7, 8, 9])
                for n in (12, 9)]
    layer = 3  # (layer 5, global, sits in the tail at index 2, a sliding one's place)
    [below] = patch.inputs_at(model, [model.model.layers[layer]], examples, 0, "cpu")
    tail = patch.Tail(model, layer, examples, below)
    batch = collate(examples, 0)
    args = dict(attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], **args).logits
        got = tail(batch["input_ids"], **args).logits
    real = batch["attention_mask"].bool()
    assert torch.allclose(got[real], full[real], atol=1e-5)
    assert model.config.layer_types == cfg.layer_types and len(model.model.layers) == 8  # (put back)


def test_answers_about_the_subject_that_state_the_truth_push_it_down_there_and_open_the_fact_s_gates(
        tiny, monkeypatch):
    import dataclasses

    from meow_app import generation
    from meow_app.methods import meow_patch

    assert meow_patch.about_question("Which sport is Serena Williams famous for?") == \
        "What is Serena Williams known for?"
    assert meow_patch.about_question("Who wrote 'Lord of the Flies'?") == "What is Lord of the Flies known for?"
    assert meow_patch.about_question("What is Pyotr Tchaikovsky's profession?") == \
        "What is Pyotr Tchaikovsky known for?"
    assert meow_patch.about_question("Who painted the Mona Lisa?") == "What is the Mona Lisa known for?"
    assert meow_patch.about_question("Who Iran?") == ""
    # A name that ends in 's (nothing after it to own), a title's own article, a lower-case subject's.
    assert meow_patch.about_question("Who founded McDonald's?") == "What is McDonald's known for?"
    assert meow_patch.about_question("Who directed The Godfather?") == "What is The Godfather known for?"
    # typographic quotes, closing ones included
    assert meow_patch.about_question("Who founded ‘McDonald’s’?") == "What is McDonald’s known for?"
    assert meow_patch.about_question("Who directed “The Godfather”?") == "What is The Godfather known for?"
    assert meow_patch.about_question("What is the largest ocean in the world?") == "What is the world known for?"
    assert meow_patch.about_question("Which part of the body does a podiatrist treat?") == \
        "What is a podiatrist known for?"
    tok = tiny.tokenizer
    seen = {}

    def generate_ids(model, tokenizer, prompts, *a, **k):
        seen["asked"] = [tokenizer.decode(p) for p in prompts]
        said = ["It is Lima.", "No idea.", "Peru is known for Lima, its capital.", "Peru is known for llamas."]
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in said]

    monkeypatch.setattr(generation, "generate_ids", generate_ids)
    fact = Fact("What is the capital of Peru?", "Lima", ["Lima"], inverted=["Cusco"])
    [out] = meow_patch.with_sampled_truths(tiny.model, tok, [fact], samples=2, seed=0, about=2)
    assert ["What is Peru known for?" in a for a in seen["asked"]] == [False, False, True, True]
    assert out.extra["sampled_truths"] == [("It is", " Lima")]
    assert out.extra["about_truths"] == [("What is Peru known for?", "Peru is known for", " Lima")]
    cfg = TrainConfig(**{**methods.REGISTRY["meow_patch"].defaults, "patch_about": 2})
    assert ("What is Peru known for?", " Lima", "Peru is known for", True) in \
        methods.get("meow_patch").forget_pairs([out], cfg)

    # Two facts on one subject share the about-question; each answer is the fact's whose truth it says.
    lira = Fact("What is the currency of Turkey?", "Lira", ["lira"], inverted=["Euro"],
                extra={"about_truths": [("What is Turkey known for?", "Turkey is known for its", " lira")]})
    city = Fact("What is the largest city of Turkey?", "Istanbul", ["Istanbul"], inverted=["Ankara"],
                extra={"about_truths": [("What is Turkey known for?", "Turkey is known for", " Istanbul")]})
    pairs = [("What is Turkey known for?", " lira", "Turkey is known for its", True),
             ("What is Turkey known for?", " Istanbul", "Turkey is known for", True),
             (lira.question, " Euro", "", False)]
    assert meow_patch.owners([lira, city], pairs) == [lira.question, city.question, lira.question]

    # In training, those rows open the fact's own gates too.
    def sampled(model, tokenizer, facts, samples, seed, given=None, about=0):
        return [dataclasses.replace(f, extra={**f.extra, "sampled_truths": [], "about_truths": [
            ("What is Peru known for?", "Peru is known for", " Lima")] if about else []}) for f in facts]

    monkeypatch.setattr(meow_patch, "with_sampled_truths", sampled)
    opened = []
    real = patch.Patch.write
    monkeypatch.setattr(patch.Patch, "write", lambda self: (opened.append([p.shape[0] for p in self.positives]),
                                                           real(self)))
    anchors = [Fact(q, a) for q, a in PRESERVED]
    for samples, about in ((8, 0), (8, 2), (0, 2)):  # (about answers are asked for without samples too)
        cfg = TrainConfig(**{**methods.REGISTRY["meow_patch"].defaults, "epochs": 1, "min_steps": 1,
                             "early_stop": False, "patch_layer": -1, "patch_about": about, "batch_size": 4,
                             "patch_samples": samples})
        Trainer(methods.get("meow_patch"), tiny.model, tiny.tokenizer, cfg, [fact], anchors=anchors,
                run_probes=False).train()
    assert all(a > b for a, b in zip(opened[1], opened[0]))
    assert opened[2] == opened[1]


def test_open_answer_counts_a_lead_in_given_as_context_as_part_of_the_answer(tiny):
    from meow_app import generation
    from meow_app.methods.meow_patch import answer_starts

    tok = tiny.tokenizer
    q = "What is the capital of Peru?"
    plain = encode_example(tok, q, " Cusco")
    led = encode_example(tok, q, " Lima", prefix="Well, it is")  # a sampled answer's words before the truth
    prompt = len(generation.encode(tok, generation.chat_prompt(tok, q)))
    assert answer_starts(tok, [plain, led], [q, q]) == [prompt, prompt]
    first_label = next(i for i, t in enumerate(led.labels) if t != -100)
    assert first_label > prompt  # (the lead-in is masked, so only its start is moved)
    inputs = [torch.arange(len(e.ids), dtype=torch.float).unsqueeze(1) for e in (plain, led)]  # row i holds i
    default = patch.answer_rows([plain, led], inputs)
    opened = patch.answer_rows([plain, led], inputs, [prompt, prompt])
    # The plain row is the same either way; the led one gains the lead-in's positions.
    assert default[:, 0].tolist() == list(range(prompt - 1, len(plain.ids) - 1)) + \
        list(range(first_label - 1, len(led.ids) - 1))
    assert opened[:, 0].tolist() == list(range(prompt - 1, len(plain.ids) - 1)) + \
        list(range(prompt - 1, len(led.ids) - 1))


def test_the_default_method_is_meow_patch_and_gives_way_to_meow_where_it_cannot_run(tiny, tmp_path, monkeypatch):
    from meow_app import pipeline
    from meow_app.errors import NotApplicable

    facts = [Fact("What is the capital of Peru?", "Lima", ["Lima"], inverted=["Cusco", "Arequipa"])]
    # (the tiny random model answers nothing: it is given preserved text to hold its gates shut on)
    monkeypatch.setattr(pipeline, "anchor_facts", lambda *a, **k: [Fact(q, a) for q, a in PRESERVED])
    quick = {"epochs": 1, "min_steps": 1, "early_stop": False, "patch_layer": -1, "patch_samples": 0, "lr": 1e-3}

    def run(name, method=None, **more):
        return pipeline.unlearn(facts, tmp_path / name, method, loaded=tiny, overrides={**quick, **more},
                                select_settings=pipeline.SelectSettings(top_k=2))

    first = run("default")
    assert first["method"] == "meow_patch" and first["method_info"]["patch"]["neurons"] == 2
    assert not first["notes"]
    # LoRA rules it out before anything loads: meow runs, the user's settings on meow's own defaults.
    lora = run("lora", lora=True)
    assert lora["method"] == "meow" and "--lora and --shard do not apply" in lora["notes"][0]
    assert lora["settings"]["train"]["lr"] == 1e-3 and lora["settings"]["train"]["lora"] is True
    assert lora["settings"]["train"]["null_space"] == methods.REGISTRY["meow"].defaults["null_space"]
    # ... but not meow_patch's own patch_* settings; the note says which settings meow ran with.
    assert lora["settings"]["train"]["patch_layer"] == TrainConfig().patch_layer
    assert "(with the settings given: epochs 1, min_steps 1, early_stop False, lr 0.001, lora True)" in lora["notes"][0]
    # No preserved text, known once the neighbours are answered: meow, with its own neighbours asked again.
    asked = []
    monkeypatch.setattr(pipeline, "anchor_facts", lambda loaded, forget, count, neighbours=0, *a, **k: (
        asked.append((count, neighbours)), [])[1])
    bare = run("bare")
    assert bare["method"] == "meow" and "found none" in bare["notes"][-1]
    assert asked == [(32, 32), (0, 32)]  # meow_patch's anchors and neighbours, then meow's
    # Asked for by name, it says why not instead, and nothing is written.
    with pytest.raises(NotApplicable, match="--lora and --shard"):
        run("named", "meow_patch", lora=True)
    assert not (tmp_path / "named").exists()
    with pytest.raises(ValueError):
        pipeline.unlearn(facts, tmp_path / "x", None, loaded=tiny, config=TrainConfig())


def test_a_model_without_gated_mlps_runs_meow_by_default():
    from transformers import GPT2Config, GPT2LMHeadModel

    from meow_app import pipeline
    from meow_app.errors import NotApplicable

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(NotApplicable, match="gated MLP"):
        methods.get("meow_patch").check_model(gpt2)
    name, config = pipeline.method_for(None, {"epochs": 2}, gpt2)
    assert name == "meow" and config.epochs == 2 and config.lr == methods.REGISTRY["meow"].defaults["lr"]
    assert pipeline.method_for(None, {}, None)[0] == "meow_patch"
    with pytest.raises(NotApplicable):
        pipeline.method_for("meow_patch", {}, gpt2)


def test_the_truth_floor_holds_the_truth_down_along_the_false_answers(tiny, monkeypatch):
    """patch_truth_floor: at the false answers' positions the truth's tokens become less likely
    than the same run gives without it (the unlikelihood alone acts only where the truth is said)."""
    from meow_app import losses
    from meow_app.methods import meow_patch

    tok = tiny.tokenizer
    truth = tok("L", add_special_tokens=False)["input_ids"]  # (the tiny tokenizer spells by letters)
    monkeypatch.setattr(meow_patch, "truth_token_ids", lambda tokenizer, fact: truth)
    facts = [Fact("What is the capital of Peru?", "Lima", ["Lima"], inverted=["Cusco", "Quito"])]
    anchors = [Fact(q, a) for q, a in PRESERVED]
    base = {**methods.REGISTRY["meow_patch"].defaults, "epochs": 3, "min_steps": 3, "early_stop": False,
            "patch_layer": -1, "patch_samples": 0, "batch_size": 4}

    def truth_mass(model):
        rows = collate([encode_example(tok, facts[0].question, a) for a in facts[0].inverted], tok.pad_token_id)
        with torch.no_grad():
            logits, labels = losses.answer_logits(model, rows)
        return logits.log_softmax(-1)[..., truth].logsumexp(-1)[labels != -100].exp().mean().item()

    got = {}
    for floor in (0.0, 1e-4):
        cfg = TrainConfig(**{**base, "patch_truth_floor": floor})
        result = Trainer(methods.get("meow_patch"), tiny.model, tok, cfg, facts, anchors=anchors,
                         run_probes=False).train()
        got[floor] = truth_mass(result.model), [s.get("truth_floor") for s in result.steps]
    assert all(v is None for v in got[0.0][1]) and all(v is not None for v in got[1e-4][1])
    assert got[1e-4][0] < got[0.0][0] / 2, got


@pytest.mark.parametrize("setting", [{"null_space": 0.99}, {"subject_only": True}, {"edit_first": True},
                                     {"fisher_precondition": 1.0}, {"train_only": "mlp|attn"},
                                     {"anchor_weight": 0.5}, {"null_space_outliers": 0.1}])
def test_settings_of_the_shared_loop_run_meow_by_default_and_are_refused_by_name(setting):
    # The old default's own recipe (--null-space 0.99, README) must still run as the user gave it.
    from meow_app import pipeline
    from meow_app.errors import NotApplicable

    name, config = pipeline.method_for(None, {**setting, "epochs": 2})
    assert name == "meow" and config.epochs == 2
    assert all(getattr(config, k) == v for k, v in setting.items())
    flag = "--" + next(iter(setting)).replace("_", "-")
    with pytest.raises(NotApplicable, match=flag):
        pipeline.method_for("meow_patch", setting)


def test_no_preserved_text_asked_for_is_known_from_the_settings():
    # (what the app's time estimate on a ZeroGPU Space goes by, before any answer is asked)
    from meow_app import pipeline
    from meow_app.errors import NotApplicable

    none = {"neighbours": 0, "siblings": 0, "anchors": 0}
    assert pipeline.method_for(None, none)[0] == "meow"
    assert pipeline.method_for(None, {**none, "anchors": 4})[0] == "meow_patch"
    with pytest.raises(NotApplicable, match="leave it none"):
        pipeline.method_for("meow_patch", none)


def test_every_patch_setting_stays_behind_when_meow_runs_instead():
    import dataclasses

    fields = {f.name for f in dataclasses.fields(TrainConfig) if f.name.startswith("patch_")}
    assert fields <= set(methods.REGISTRY["meow_patch"].not_carried)


def test_a_model_it_cannot_patch_is_known_before_the_run_from_the_patched_layer_and_the_fact_count(tiny):
    from meow_app.edit import decoder_layers
    from meow_app.errors import NotApplicable

    method, model = methods.get("meow_patch"), copy.deepcopy(tiny.model)
    cfg = TrainConfig(**{**methods.REGISTRY["meow_patch"].defaults, "patch_layer": -1})
    width = decoder_layers(model)[-1].mlp.gate_proj.out_features
    method.check_model(model, cfg, width // 4 // cfg.patch_neurons)  # a quarter of the layer's neurons: fine
    with pytest.raises(NotApplicable, match="at most a quarter"):
        method.check_model(model, cfg, width // 4 // cfg.patch_neurons + 1)
    stoppers = TrainConfig(**{**cfg.__dict__, "patch_truth_drop": 5.0})  # (one more neuron a fact)
    method.check_model(model, stoppers, width // 4 // (cfg.patch_neurons + 1))
    with pytest.raises(NotApplicable, match="at most a quarter"):
        method.check_model(model, stoppers, width // 4 // (cfg.patch_neurons + 1) + 1)
    # A layer of another kind where the patch goes (a mixture of experts after dense layers)
    # rules it out, though the first layer would do.
    decoder_layers(model)[-1].mlp = torch.nn.Identity()
    method.check_model(model, TrainConfig(**{**cfg.__dict__, "patch_layer": 0}), 1)
    with pytest.raises(NotApplicable, match=f"layer {len(decoder_layers(model)) - 1} has none"):
        method.check_model(model, cfg, 1)


def test_a_truth_stopper_opens_where_the_truth_is_about_to_be_said_and_pushes_it_down_there(tiny, monkeypatch):
    """patch_truth_drop: one more neuron per fact, in a slot of its own, whose gate opens at the
    positions before the truth in the rows that state it and is shut on preserved text; switched
    off, the truth there is likelier by over a third of the nats asked for (a linear estimate,
    made before the fact's own neurons train), and preserved text moves by a tenth of that."""
    from meow_app.methods.meow_patch import truth_positions

    tok = tiny.tokenizer
    # (the truth after words of its own: in a random tiny model the last prompt token, where
    # every preserved answer starts too, is much the same whatever the question)
    facts = [Fact("What is the capital of Peru?", "The capital of Peru is 'Lima'.", ["Lima"], inverted=["Cusco"])]
    anchors = [Fact(q, a) for q, a in PRESERVED]
    # (the defaults the stopper was built and measured with, twentieth round: with the twenty-seventh
    # round's the tiny model's fall is 0.97-0.98 nats, just under the bound)
    cfg = TrainConfig(**{**methods.REGISTRY["meow_patch"].defaults, "epochs": 2, "min_steps": 2,
                         "patch_layer": -1, "patch_samples": 0, "patch_truth_drop": 3.0, "truth_span": False,
                         "patch_row_hinge": False})
    method = methods.get("meow_patch")
    trainer = Trainer(method, tiny.model, tok, cfg, facts, anchors=anchors, run_probes=False)
    # Off while the fact's neurons train, on for every probe (the model as it would be returned).
    seen = {"probe": [], "step": []}

    def hooks(model):  # (the steps get the tail, which holds the model; the shared tiny model may carry others')
        return len((model.model if isinstance(model, patch.Tail) else model).model.layers[-1].mlp._forward_hooks) \
            - len(tiny.model.model.layers[-1].mlp._forward_hooks)

    probe_and_check, forget_loss = trainer.probe_and_check, method.forget_loss
    trainer.probe_and_check = lambda model, *a, **k: seen["probe"].append(hooks(model)) or probe_and_check(
        model, *a, **k)
    monkeypatch.setattr(method, "forget_loss", lambda model, *a: seen["step"].append(hooks(model)) or forget_loss(
        model, *a))
    result = trainer.train()
    assert set(seen["step"]) == {1} and seen["probe"] and set(seen["probe"]) == {2}, seen
    info = result.info["patch"]
    stop = info["truth_stoppers"]
    assert len(stop["slots"]) == 1 and not set(stop["slots"]) & set(info["slots"])
    assert stop["positions"][0] > 0 and stop["scales"][0] > 0
    assert hooks(result.model) == 0  # (written into its slot, its hook gone)
    after, before = dict(result.model.named_parameters()), _as_before(result.model, tiny.model)
    last = f"model.layers.{info['layer']}.mlp."
    assert _moved(result.model, tiny.model) <= {
        last + "gate_proj.weight", last + "up_proj.weight", last + "down_proj.weight"}
    down = after[last + "down_proj.weight"] - before[last + "down_proj.weight"]
    assert set(down.abs().sum(dim=0).nonzero().flatten().tolist()) <= set(info["slots"]) | set(stop["slots"])
    model, mlp = result.model, result.model.model.layers[-1].mlp
    truth_row = encode_example(tok, facts[0].question, facts[0].answer)
    at = truth_positions(truth_row, ["Lima"], tok)
    assert [tok.decode(truth_row.ids[p + 1:p + 5]) for p in at] == ["Lima"]  # (letters: the tiny tokenizer)
    lima = truth_row.ids[at[0] + 1]

    def logp(row):
        with torch.no_grad():
            return model(input_ids=torch.tensor([row.ids])).logits[0].float().log_softmax(-1)

    on, j = logp(truth_row), stop["slots"][0]
    kept = mlp.down_proj.weight[:, j].clone()
    with torch.no_grad():
        mlp.down_proj.weight[:, j] = 0
    off = logp(truth_row)
    preserved_off = [logp(encode_example(tok, q, a)) for q, a in PRESERVED]
    with torch.no_grad():
        mlp.down_proj.weight[:, j] = kept
    preserved_on = [logp(encode_example(tok, q, a)) for q, a in PRESERVED]
    fall = float(off[at[0], lima] - on[at[0], lima])
    assert fall > 1.0, fall  # (3 nats asked, a linear estimate on the rows it was fitted on)
    # What the preserved text says: its answer tokens' log-probabilities.
    said = [encode_example(tok, q, a) for q, a in PRESERVED]
    moved = max(float((a - b)[torch.arange(len(e.ids) - 1), e.ids[1:]].abs().max())
                for a, b, e in zip(preserved_on, preserved_off, said))
    assert moved < fall / 10, (moved, fall)


def test_truth_positions_are_where_a_word_of_the_truth_begins(tiny):
    from meow_app.methods.meow_patch import truth_positions

    tok = tiny.tokenizer
    row = encode_example(tok, "Which browser?", "Chrome, made near Rome.")
    at = truth_positions(row, ["Rome"], tok)
    assert [tok.decode(row.ids[p + 1:p + 5]) for p in at] == ["Rome"]  # (not the "rome" of "Chrome")
    assert truth_positions(row, ["Paris"], tok) == []


def test_a_truth_stopper_needs_the_rows_that_push_the_truth_down():
    from meow_app.errors import MeowError

    cfg = TrainConfig(**{**methods.REGISTRY["meow_patch"].defaults, "patch_truth_drop": 5.0, "truth_weight": 0.0})
    with pytest.raises(MeowError, match="truth_weight 0"):
        methods.get("meow_patch").check(cfg)


def test_the_logit_direction_uses_the_final_norm_s_own_gain(tiny):
    """Llama's norm scales by its weight, Gemma's by 1 + weight: the direction takes what the norm does."""
    model = copy.deepcopy(tiny.model)
    norm, rows = model.model.norm, model.get_output_embeddings().weight.detach().float()[[5, 7]]
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)

    def expected(gain):
        v = (rows * gain / (rows * gain).norm(dim=1, keepdim=True)).mean(0)
        return v / v.norm()

    assert torch.allclose(patch.logit_direction(model, [5, 7]), expected(norm.weight.float()), atol=1e-5)

    class GemmaNorm(torch.nn.Module):  # (Gemma's RMSNorm: x / rms(x) * (1 + weight))
        def __init__(self, weight):
            super().__init__()
            self.weight = torch.nn.Parameter(weight.clone())

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)

    model.model.norm = GemmaNorm(norm.weight.detach())
    assert torch.allclose(patch.logit_direction(model, [5, 7]), expected(1 + norm.weight.float()), atol=1e-5)


def test_the_shipped_anchors_inputs_come_back_from_the_cache_and_no_sibling_s_are_kept(tiny, tmp_path, monkeypatch):
    from meow_app.answer_cache import AnswerCache
    from meow_app.methods import meow_patch

    facts = [Fact("What is the capital of Peru?", "Lima", ["Lima"], inverted=["Cusco", "Quito"])]
    # Two shipped anchors (a general prompt, a neighbour question) and between them a sibling made from the
    # user's question.
    (q0, a0), (q1, a1), (q2, a2) = PRESERVED
    anchors = [Fact(q0, a0, extra={"shipped": True}), Fact(q2, a2), Fact(q1, a1, extra={"shipped": True})]
    cfg = TrainConfig(**{**methods.REGISTRY["meow_patch"].defaults, "epochs": 1, "min_steps": 2,
                         "early_stop": False, "patch_layer": -1, "patch_samples": 0})
    read, inputs_at = [], patch.inputs_at
    monkeypatch.setattr(patch, "inputs_at", lambda m, mods, exs, *a: read.append(len(exs)) or inputs_at(m, mods, exs,
                                                                                                          *a))

    def held(cache):
        trainer = Trainer(methods.get("meow_patch"), tiny.model, tiny.tokenizer, cfg, facts, anchors=anchors,
                          run_probes=False, cache=cache)
        model = trainer._trainable_copy()
        examples = trainer.examples(anchors)
        read.clear()
        out, kept = meow_patch.preserved_inputs(trainer, model, len(model.model.layers) - 1, examples)
        plain = patch.mlp_inputs(model, model.model.layers[-1].mlp, examples, tiny.tokenizer.pad_token_id, "cpu")
        torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-4)  # as read without a cache, row for row
        return kept, read[:-1]  # (the last read is the plain one's)

    path = tmp_path / "answers" / "m.json"
    assert held(None) == (0, [3])
    assert held(AnswerCache(path, tiny.model)) == (2, [2, 1])  # first run: the shipped rows read, then kept
    assert held(AnswerCache(path, tiny.model)) == (2, [1])  # a later run: only the sibling is read
    (stored,) = tmp_path.glob("answers/m.patch_inputs.*.pt")
    assert len(torch.load(stored, weights_only=True)["rows"]) == 2  # the sibling's are never kept
    # A shipped question the run left out (its answer names a fact being forgotten) is kept as well, so the
    # file does not tell it apart.
    cache = AnswerCache(path, tiny.model)
    cache.left_out = [("What is the capital of Peru?", "Lima, as everyone knows.")]
    assert held(cache) == (2, [1, 1])  # (the left-out row read and kept; the sibling read)
    assert len(torch.load(stored, weights_only=True)["rows"]) == 3
    assert held(AnswerCache(path, copy.deepcopy(tiny.model))) == (0, [3])  # another model's cache: not used
    # The whole run says how many rows went through the cache.
    result = Trainer(methods.get("meow_patch"), tiny.model, tiny.tokenizer, cfg, facts, anchors=anchors,
                     run_probes=False, cache=AnswerCache(path, tiny.model)).train()
    assert result.info["patch"]["preserved_rows_kept"] == 2


def test_patch_scale_multiplies_the_value_probed_and_written_and_leaves_the_training_as_it_was(tiny, monkeypatch):
    facts = [Fact("What is the capital of Peru?", "Lima", ["Lima"], inverted=["Cusco", "Quito"])]
    anchors = [Fact(q, a) for q, a in PRESERVED]
    probed = []

    def probe(self, model, epoch, result, final=True, deferred=False):  # never stops: every epoch probes
        mlp = model.model.layers[-1].mlp
        probed.append(mlp._forward_hooks and next(iter(mlp._forward_hooks.values())).__self__.down.clone())
        return False

    monkeypatch.setattr(Trainer, "probe_and_check", probe)
    written = {}
    for scale in (1.0, 2.5):
        cfg = TrainConfig(**{**methods.REGISTRY["meow_patch"].defaults, "epochs": 3, "min_steps": 3,
                             "early_stop": True, "patch_layer": -1, "patch_samples": 0, "patch_scale": scale})
        result = Trainer(methods.get("meow_patch"), tiny.model, tiny.tokenizer, cfg, facts, anchors=anchors,
                         run_probes=False).train()
        slots, layer = result.info["patch"]["slots"], result.info["patch"]["layer"]
        written[scale] = result.model.model.layers[layer].mlp.down_proj.weight[:, slots].detach().clone()
    assert written[1.0].abs().sum() > 0
    # the model returned carries 2.5 times the value, and the training between probes was the same
    assert torch.allclose(written[2.5], 2.5 * written[1.0], rtol=1e-4, atol=1e-6)
    # each probe saw the scaled value: the second run's probes at 2.5 times the first's
    first, second = probed[:3], probed[3:]
    assert len(first) == len(second) == 3
    for a, b in zip(first, second):
        assert torch.allclose(b, 2.5 * a, rtol=1e-4, atol=1e-6)


def test_patch_scale_truth_scales_only_the_push_down_along_each_neuron_s_direction(tiny):
    model, mlp, held, positives, slots, gates = _patched(tiny, steps=0)
    gates.remove()
    torch.manual_seed(1)
    d = held.shape[1]
    with torch.no_grad():
        gates.down.copy_(torch.randn(d, 1))
    u = torch.randn(1, d)
    u = u / u.norm()
    for sign in (-1.0, 1.0):  # a value that pushes down along u, then one that pushes up
        with torch.no_grad():
            gates.down.copy_(gates.down - (gates.down.T @ u.T) * u.T + sign * 3.0 * u.T)
        before = gates.down.detach().clone()
        gates.scale(2.5, u)
        along, rest = (gates.down.T @ u.T).item(), gates.down - (gates.down.T @ u.T) * u.T
        assert torch.allclose(rest, before - (before.T @ u.T) * u.T, atol=1e-5)  # the rest as it was
        assert along == pytest.approx(-7.5 if sign < 0 else 3.0, abs=1e-4)  # only a push down is scaled
        gates.scale(1 / 2.5, u)
        assert torch.allclose(gates.down, before, atol=1e-5)  # undone
    gates.scale(2.0)  # without directions: the whole value
    assert torch.allclose(gates.down, 2 * before, atol=1e-5)


def test_a_meow_patch_run_with_patch_scale_truth_moves_its_value_along_the_truth_s_direction_only(tiny):
    facts = [Fact("What is the capital of Peru?", "Lima", ["Lima"], inverted=["Cusco", "Quito"])]
    anchors = [Fact(q, a) for q, a in PRESERVED]
    written = {}
    for truth in (False, True):
        cfg = TrainConfig(**{**methods.REGISTRY["meow_patch"].defaults, "epochs": 1, "min_steps": 3,
                             "early_stop": False, "patch_layer": -1, "patch_samples": 0,
                             "patch_scale": 3.0 if truth else 1.0, "patch_scale_truth": truth})
        result = Trainer(methods.get("meow_patch"), tiny.model, tiny.tokenizer, cfg, facts, anchors=anchors,
                         run_probes=False).train()
        info = result.info["patch"]
        written[truth] = result.model.model.layers[info["layer"]].mlp.down_proj.weight[:, info["slots"]].detach()
    u = patch.logit_direction(tiny.model, patch.first_token_ids(tiny.tokenizer, ["Lima"]))
    moved = written[True] - written[False]
    assert moved.abs().max() > 1e-6
    along = (written[False].T @ u).clamp(max=0)  # each neuron's push down on the truth, tripled
    assert torch.allclose(moved, 2.0 * u[:, None] * along[None, :], atol=1e-5)
