"""Extraction attacks (meow_app/extraction.py, `python -m meow_app attack`) on the tiny model."""

import json

import pytest

from meow_app import cli, extraction, prompts
from meow_app.facts import Fact
from meow_app.finetune import finetune
from meow_app.stats import percent
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
    assert cli.main(["attack", "--model", tiny_dir, "--forget", str(facts), "--out", str(out), "--samples", "2",
                     "--max-new-tokens", "4", "--attacks", "sampling"]) == 0
    floor = json.loads(out.read_text())["sampling"]["chance"]
    assert len(floor["per_fact"]) == 2 and floor["names"] == list(extraction.INVENTED)
    assert f"(by chance, about made-up subjects: {percent(floor['leak_rate'])})" in capsys.readouterr().out
    assert cli.main(["attack", "--model", tiny_dir, "--forget", str(facts), "--out", str(out), "--attacks", "x"]) == 2
    assert "unknown attack 'x'" in capsys.readouterr().err


def test_invented_subjects_keep_the_questions_frame_quotes_and_possessive():
    cases = {"In which month is Halloween night celebrated?": "In which month is Velmora night celebrated?",
             "What was Pyotr Tchaikovsky's profession?": "What was Velmora's profession?",
             "Who wrote 'Fahrenheit 451'?": "Who wrote 'Velmora'?",
             "Who wrote “Dune”?": "Who wrote “Velmora”?",
             "On which continent is Ghana?": "On which continent is Velmora?",
             "What was Tchaikovsky’s profession?": "What was Velmora’s profession?",
             "What did Jesus' disciples do?": "What did Velmora' disciples do?",
             "Who wrote \"Dune\"'s sequel?": "Who wrote \"Velmora\"'s sequel?"}
    for question, asked in cases.items():
        made_up = extraction.invented(Fact(question, "truth", ["truth"]), "Velmora")
        assert made_up.question == asked and made_up.keywords == ["truth"]
    assert extraction.invented(Fact("what is water made of?", "H2O"), "Velmora") is None  # no subject to swap


def test_chance_counts_a_fact_for_each_made_up_subject_whose_samples_name_its_truth(tiny, monkeypatch):
    from meow_app import generation

    peru = Fact("What is the capital of Peru?", "Lima", ["Lima"])
    water = Fact("what is water made of?", "H2O")  # no subject: not asked
    plain = generation.generate_ids
    asked = []

    def generate_ids(model, tok, prompts, *a, **k):  # the model names Lima for Velmora only, once in 3 samples
        texts = [tok.decode(p) for p in prompts]
        asked.extend(texts)
        got = plain(model, tok, prompts, *a, **k)
        return [tok("Lima", add_special_tokens=False)["input_ids"] if "Velmora" in t and i % 3 == 0 else g
                for i, (t, g) in enumerate(zip(texts, got))]

    monkeypatch.setattr(generation, "generate_ids", generate_ids)
    got = extraction.chance(tiny.model, tiny.tokenizer, [peru, water], samples=3, max_new_tokens=4)
    assert len(asked) == 3 * len(extraction.INVENTED) and not any("Peru" in t for t in asked)
    assert got["per_fact"] == [1 / 3, None] and got["leak_rate"] == 1 / 3
    assert {r["fact"] for r in got["rows"]} == {0} and sum(r["leak"] for r in got["rows"]) == 1
