"""bench/leak_gates.py's reading of a patched checkpoint, on the tiny model."""

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import leak_gates  # noqa: E402
from meow_app import generation  # noqa: E402
from meow_app.facts import Fact  # noqa: E402


def test_the_token_that_holds_a_character_is_found(tiny):
    ids = tiny.tokenizer("Café capital: Lima.", add_special_tokens=False)["input_ids"]
    text = tiny.tokenizer.decode(ids)
    k = leak_gates.token_at(tiny.tokenizer, ids, text.index("Lima"))
    assert k != text.index("Lima")  # ("é" is two byte tokens: characters and tokens part ways)
    assert tiny.tokenizer.decode(ids[:k]) == "Café capital: " and tiny.tokenizer.decode(ids[k:]).startswith("L")


def test_a_truth_neuron_lowers_the_truth_by_about_the_drop_asked_and_is_off_at_zero(tiny):
    fact = Fact("Who wrote Hamlet?", "Shakespeare", ["Shakespeare"], ["Which playwright wrote Hamlet?"])
    model = copy.deepcopy(tiny.model).float()
    ids = torch.tensor([generation.encode(tiny.tokenizer, "Who painted the Mona Lisa? Leonardo")])
    mlp = model.model.layers[1].mlp
    with torch.no_grad():  # (the patch's own slots, empty: the smallest down columns, never taken)
        mlp.down_proj.weight[:, [0, 1]] = 0
    reference, untouched = copy.deepcopy(model), copy.deepcopy(model)
    neurons = leak_gates.TruthNeurons(model, tiny.tokenizer, [fact], layer=1, slots=[0, 1])
    free = neurons.slots[0]
    assert free not in (0, 1)
    neurons.drop(0.0)
    with torch.no_grad():  # at 0 the model is the original with the free slot's own neuron switched off
        reference.model.layers[1].mlp.down_proj.weight[:, neurons.slots] = 0
        assert torch.allclose(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-6)
        assert not torch.allclose(model(input_ids=ids).logits, untouched(input_ids=ids).logits, atol=1e-6)
    base = neurons.truth_logp(fact)
    neurons.drop(0.5)
    # gate and up both the fact's first gate; down along minus the truth's direction
    assert torch.equal(mlp.gate_proj.weight[free], mlp.gate_proj.weight[0])
    assert torch.equal(mlp.up_proj.weight[free], mlp.gate_proj.weight[0])
    cos = torch.nn.functional.cosine_similarity(mlp.down_proj.weight[:, free], neurons.directions[0], dim=0)
    assert cos < -0.999
    fell = base - neurons.truth_logp(fact)
    assert 0.2 < fell < 1.0  # (scaled by the fall at scale 1: a linear estimate)


def test_after_a_run_that_added_its_neurons_the_original_is_read_without_them_and_truth_neurons_are_added(tiny):
    fact = Fact("Who wrote Hamlet?", "Shakespeare", ["Shakespeare"], ["Which playwright wrote Hamlet?"])
    from meow_app import patch

    original, model = copy.deepcopy(tiny.model).float(), copy.deepcopy(tiny.model).float()
    width = model.config.intermediate_size
    slots = patch.widen(model, model.model.layers, 2)  # (as patch_widen leaves a checkpoint)
    ids = generation.encode(tiny.tokenizer, "Who painted the Mona Lisa? Leonardo")
    gates, ups, logp = leak_gates.read(model, ids, 1, slots)
    none, no_up, logp_original = leak_gates.read(original, ids, 1, [])  # (its MLPs have no such slots)
    assert gates.shape == ups.shape == (len(ids), 2) and none is None is no_up
    assert torch.allclose(logp, logp_original, atol=1e-5)
    neurons = leak_gates.TruthNeurons(model, tiny.tokenizer, [fact], layer=1, slots=slots, added=True)
    assert neurons.slots[0] >= width + 2  # (new ones: none of the original's taken out)
    neurons.drop(0.0)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=torch.tensor([ids])).logits,
                              original(input_ids=torch.tensor([ids])).logits, atol=1e-5)


def test_a_truth_row_reads_the_fact_s_neurons_where_its_truth_begins_as_a_direct_computation_does(tiny):
    from meow_app import patch

    fact = Fact("What is the capital of Peru?", "Lima", ["Lima"])
    original, model = copy.deepcopy(tiny.model).float(), copy.deepcopy(tiny.model).float()
    slots = patch.widen(model, model.model.layers, 2)
    mlp = model.model.layers[1].mlp
    torch.manual_seed(0)
    with torch.no_grad():  # two trained-looking neurons for the fact
        mlp.gate_proj.weight[slots] = torch.randn(2, mlp.gate_proj.weight.shape[1])
        mlp.up_proj.weight[slots] = torch.randn(2, mlp.up_proj.weight.shape[1])
        mlp.down_proj.weight[:, slots] = torch.randn(mlp.down_proj.weight.shape[0], 2)
    text = "The capital of Peru is Lima."
    row = leak_gates.truth_row(original, model, tiny.tokenizer, fact, 0, text, 1, slots)
    prompt = generation.encode(tiny.tokenizer, generation.chat_prompt(tiny.tokenizer, fact.question))
    said = tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
    k = len(prompt) + leak_gates.token_at(tiny.tokenizer, said, text.index("Lima"))
    got = {}
    hook = mlp.register_forward_hook(lambda m, i, o: got.__setitem__("x", i[0][0, k - 1]))
    with torch.no_grad():
        model(input_ids=torch.tensor([prompt + said]))
        g, u = mlp.gate_proj.weight[slots] @ got["x"], mlp.up_proj.weight[slots] @ got["x"]
    hook.remove()
    assert row["token"].strip() == tiny.tokenizer.decode([(prompt + said)[k]]).strip()
    assert row["gate"] == round(float(g.max()), 2) and row["up"] == round(float(u[g.argmax()]), 2)
    assert row["activation"] == round(float((mlp.act_fn(g) * u).max()), 2)
    assert row["p"] != row["p_neurons_off"]  # (the neurons write: switching them off changes p)
    assert abs(row["p_neurons_off"] - row["p_original"]) < 1e-3  # (added neurons off: the original)
