"""Extraction attacks (meow_app/extraction.py, `python -m meow_app attack`) on the tiny model."""

import json

import pytest

from meow_app import cli, extraction, prompts
from meow_app.facts import Fact
from meow_app.finetune import finetune
from meow_app.train import TrainConfig


def test_prompts_are_plain_text_and_shots_never_give_the_fact_away():
    assert prompts.plain("Who wrote Hamlet?") == "Question: Who wrote Hamlet?\nAnswer:"
    shots = extraction.shots_for(Fact("Who discovered penicillin?", "Alexander Fleming", ["Fleming"]))
    assert len(shots) == 3 and all("Fleming" not in a for _, a in shots)
    prompt = prompts.plain("Q?", shots)
    assert prompt.count("Question:") == 4 and prompt.endswith("Question: Q?\nAnswer:")


@pytest.fixture(scope="module")
def knowing(tiny):
    """The tiny model taught one fact (chat template), so there is something to extract."""
    fact = Fact("What is the capital of Peru?", "Lima", ["Lima"], ["Which city is Peru's capital?"])
    model = finetune(tiny.model, tiny.tokenizer, [fact] * 4,
                     TrainConfig(epochs=30, lr=1e-2, batch_size=4, train_only="", train_embeddings=True, seed=0))
    return model, fact


def test_a_model_that_knows_the_fact_leaks_it_and_the_original_does_not(tiny, knowing):
    model, fact = knowing
    other = Fact("Who wrote Hamlet?", "William Shakespeare", ["Shakespeare"], ["Which playwright wrote Hamlet?"])
    taught = extraction.run(model, tiny.tokenizer, [fact, other], ("paraphrase", "sampling"), samples=3,
                            max_new_tokens=6)
    assert taught["greedy"]["leak_rate"] == 0.5  # Lima, not Shakespeare
    assert taught["sampling"]["leak_rate"] == 0.5 and len(taught["sampling"]["rows"]) == 6
    assert [r["fact"] for r in taught["sampling"]["rows"]] == [0, 0, 0, 1, 1, 1]
    assert taught["paraphrase"]["facts_asked"] == 2 and taught["paraphrase"]["prompts"] == 2
    untaught = extraction.run(tiny.model, tiny.tokenizer, [fact, other], ("sampling",), samples=3, max_new_tokens=6)
    assert untaught["greedy"]["leak_rate"] == 0 and untaught["sampling"]["leak_rate"] == 0
    again = extraction.run(model, tiny.tokenizer, [fact, other], ("sampling",), samples=3, max_new_tokens=6)
    assert again["sampling"]["rows"] == taught["sampling"]["rows"]  # seeded


def test_attack_cli(tmp_path, tiny_dir, capsys):
    facts = tmp_path / "f.jsonl"
    facts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "Who wrote Hamlet?", "answer": "William Shakespeare", "keywords": ["Shakespeare"]},
        {"question": "What is the capital of Peru?", "answer": "Lima", "keywords": ["Lima"]}]))
    out = tmp_path / "a.json"
    assert cli.main(["attack", "--model", tiny_dir, "--forget", str(facts), "--out", str(out), "--samples", "2",
                     "--max-new-tokens", "4", "--attacks", "prefix,few_shot,relearn"]) == 0
    result = json.loads(out.read_text())
    assert set(result) >= {"greedy", "prefix", "few_shot", "relearn"} and "sampling" not in result
    assert result["relearn"]["facts_asked"] == 1 and len(result["prefix"]["rows"]) == 2
    printed = capsys.readouterr().out
    assert "few_shot    leak rate 0% of 2 facts" in printed and "before relearning" in printed
    assert cli.main(["attack", "--model", tiny_dir, "--forget", str(facts), "--out", str(out), "--attacks", "x"]) == 2
    assert "unknown attack 'x'" in capsys.readouterr().err
