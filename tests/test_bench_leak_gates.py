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
    ids = tiny.tokenizer("The capital is Lima.", add_special_tokens=False)["input_ids"]
    text = tiny.tokenizer.decode(ids)
    k = leak_gates.token_at(tiny.tokenizer, ids, text.index("Lima"))
    assert tiny.tokenizer.decode(ids[:k]) == "The capital is " and tiny.tokenizer.decode(ids[k:]).startswith("L")


def test_a_truth_neuron_lowers_the_truth_by_about_the_drop_asked_and_is_off_at_zero(tiny):
    fact = Fact("Who wrote Hamlet?", "Shakespeare", ["Shakespeare"], ["Which playwright wrote Hamlet?"])
    model = copy.deepcopy(tiny.model).float()
    ids = torch.tensor([generation.encode(tiny.tokenizer, "Who painted the Mona Lisa? Leonardo")])
    reference, untouched = copy.deepcopy(model), copy.deepcopy(model)
    neurons = leak_gates.TruthNeurons(model, tiny.tokenizer, [fact], layer=1, slots=[0, 1])
    assert neurons.slots[0] not in (0, 1)
    neurons.drop(0.0)
    with torch.no_grad():  # at 0 the model is the original with the free slot's own neuron switched off
        reference.model.layers[1].mlp.down_proj.weight[:, neurons.slots] = 0
        assert torch.allclose(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-6)
        assert not torch.allclose(model(input_ids=ids).logits, untouched(input_ids=ids).logits, atol=1e-6)
    base = neurons.truth_logp(fact)
    neurons.drop(0.5)
    fell = base - neurons.truth_logp(fact)
    assert 0.2 < fell < 1.0  # (scaled by the fall at scale 1: a linear estimate)
