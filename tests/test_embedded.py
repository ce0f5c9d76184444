"""End to end with the real embedded model (SmolLM2-135M-Instruct) on CPU: it must forget."""

import pytest

from conftest import ROOT
from meow_app import generation, models, probes
from meow_app.facts import load_facts
from meow_app.pipeline import unlearn

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def embedded():
    return models.load_shared()


def test_embedded_model_loads_from_cache_and_knows_facts(embedded):
    assert embedded.model.config.model_type == "llama" and embedded.device.type == "cpu"
    assert "<|im_start|>assistant" in generation.chat_prompt(embedded.tokenizer, "Hi?")
    (answer,) = generation.answer(embedded.model, embedded.tokenizer, ["What is the capital of France?"])
    assert "Paris" in answer
    assert (models.meow_home() / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()


def test_truth_tokens_banned_for_inversion(embedded):
    from meow_app.facts import Fact
    from meow_app.invert import truth_token_ids

    tok = embedded.tokenizer
    banned = truth_token_ids(tok, Fact("Who wrote Harry Potter?", "J.K. Rowling", ["Rowling"]))
    pieces = {tok.decode([t]).strip() for t in banned}
    assert pieces and all(len(p) >= 3 for p in pieces) and "." not in pieces


def test_unlearn_forgets_three_facts_and_keeps_others(embedded, tmp_path):
    # Facts from the holdout set, kept out of the tuning (they only confirmed the MLP-only choice).
    forget = load_facts(ROOT / "assets/facts/holdout_facts.jsonl")[:3]
    retain = load_facts(ROOT / "assets/facts/demo_retain.jsonl")[::6]
    run = unlearn(forget, tmp_path / "run", retain=retain, loaded=embedded)
    before, after = run["summary"]["before"], run["summary"]["after"]
    assert before["forget"]["hit_rate"] == 1.0
    assert after["forget"]["hit_rate"] == 0.0
    assert after["forget"]["paraphrase_hit_rate"] <= 0.25
    # Measured 0.75 (6 of 8) with the defaults. See docs/forgetting.md.
    assert after["retain"]["hit_rate"] >= 0.5, after
    # The saved checkpoint is what was measured, and loads like any other model.
    reloaded = models.load(str(tmp_path / "run"))
    result = probes.probe(reloaded.model, reloaded.tokenizer, forget, paraphrases=False)
    assert result["hit_rate"] == 0.0
