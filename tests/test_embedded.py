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


def test_lead_in_bans_the_truths_start_but_not_a_space_or_a_digit(embedded):
    from meow_app.facts import Fact
    from meow_app.invert import LeadInGenerator

    tok = embedded.tokenizer
    gen = LeadInGenerator(embedded.model, tok)
    pieces = {tok.decode([t]) for t in gen.banned(Fact("What is the capital of Bangladesh?", "Dhaka", ["Dhaka"]))}
    assert " Dh" in pieces or " Dhaka" in pieces
    author = {tok.decode([t]) for t in gen.banned(Fact("Who wrote 'Harry Potter'?", "J.K. Rowling", ["Rowling"]))}
    assert {" J", "J"} <= author  # "J.K.R.H.O.D." is not a false answer
    # " 1945" starts with a space and a "1": banning those would ban every year and every word.
    banned = {tok.decode([t]).strip() for t in gen.banned(Fact("When did the war end?", "1945", ["1945"]))}
    assert not banned & {"", "1", "9", "4", "5"}


def test_truth_forms_bans_the_other_forms_of_the_truths_words(embedded):
    from meow_app.facts import Fact
    from meow_app.invert import LeadInGenerator

    tok = embedded.tokenizer
    hummus = Fact("What is the main ingredient of hummus?", "Chickpeas", ["chickpea", "garbanzo"])
    ghana = Fact("On which continent is Ghana?", "Africa", ["Africa"])
    plain, forms = LeadInGenerator(embedded.model, tok), LeadInGenerator(embedded.model, tok, truth_forms=True)
    yen = Fact("What is the currency of Japan?", "The yen", ["yen"])
    # Tokens the truth's own miss: " chickpeas" is one ("chickpea": " chick" + "pea"), " Yen" starts
    # with " Y" (" yen" is one).
    for fact, other_form in [(hummus, " chickpeas"), (ghana, " African"), (yen, " Yen")]:
        first = tok.convert_tokens_to_ids(tok.tokenize(other_form))[0]
        assert first not in plain.banned(fact) and first in forms.banned(fact), other_form
    pieces = {tok.decode([t]) for t in forms.banned(Fact("What is the largest city in the US?", "New York City",
                                                         ["New York"]))}
    assert {" York", " Yorkshire"} <= pieces and " Newton" not in pieces  # a short word's other forms are others
    # Letters beyond ASCII are letters ("Zürich" is not "rich"); a small word of its own is no start of a name.
    zurich = {tok.decode([t]) for t in forms.word_forms(Fact("Where is FIFA based?", "Zürich", ["Zürich"]))}
    assert zurich and not {" rich", " Richard", " Richmond"} & zurich
    ocean = {tok.decode([t]).strip() for t in forms.word_forms(Fact("Which ocean?", "The Atlantic", ["Atlantic"]))}
    assert "Atlantic" in ocean and not {"at", "At", "A", "a"} & ocean
    assert set(plain.banned(ghana)) <= set(forms.banned(ghana))


def test_unlearn_forgets_three_facts_and_keeps_others(embedded, tmp_path):
    # Facts from the holdout set, kept out of the tuning (they only confirmed the MLP-only choice).
    forget = load_facts(ROOT / "assets/facts/holdout_facts.jsonl")[:3]
    retain = load_facts(ROOT / "assets/facts/demo_retain.jsonl")[::6]
    run = unlearn(forget, tmp_path / "run", retain=retain, loaded=embedded)
    before, after = run["summary"]["before"], run["summary"]["after"]
    # The default method ran, not its fallback (meow_patch applies to this Llama-shaped model).
    assert run["method"] == "meow_patch" and not any("does not apply" in n for n in run["notes"]), run["notes"]
    assert before["forget"]["hit_rate"] == 1.0
    assert after["forget"]["hit_rate"] == 0.0
    assert after["forget"]["paraphrase_hit_rate"] <= 0.25
    # meow, the default before meow_patch, left 75% of all 48 retain facts answered with these 3
    # facts (2026-12-01); meow_patch keeps more neighbours on every held-out set. See docs/forgetting.md.
    assert after["retain"]["hit_rate"] >= 0.5, after
    # The saved checkpoint is what was measured, and loads like any other model.
    reloaded = models.load(str(tmp_path / "run"))
    result = probes.probe(reloaded.model, reloaded.tokenizer, forget, paraphrases=False)
    assert result["hit_rate"] == 0.0

    # `evaluate` on the run folder: the report's numbers match a hand check on each fact,
    # computed by other code paths (the run's own probes; a direct, unbatched forward pass).
    import json
    import math

    import torch

    from meow_app.generation import chat_prompt, encode
    from test_cli import cli, ok

    forget_file = tmp_path / "forget.jsonl"
    forget_file.write_text("".join((ROOT / "assets/facts/holdout_facts.jsonl").read_text().splitlines(True)[:3]))
    report = tmp_path / "report.json"
    ok(cli("evaluate", "--model", tmp_path / "run", "--forget", forget_file, "--out", report, "--html",
           tmp_path / "report.html", "--no-general", "--no-memo"))
    data = json.loads(report.read_text())
    assert data["sides"] == ["original", "unlearned"]
    sides = data["sets"]["forget"]
    probed = json.loads((tmp_path / "run" / "probes.json").read_text())
    tok = reloaded.tokenizer
    for i, fact in enumerate(forget):
        row = sides["unlearned"]["rows"][i]
        question_probe = next(r for r in probed["after"] if r["fact"] == i and r["kind"] == "question")
        # The same greedy answer as the run's own probe (other batch, so compare the start and the verdict).
        assert row["generated"].strip()[:10] == question_probe["answer"].strip()[:10]
        assert row["keyword_hit"] == question_probe["leak"]
        p, a = encode(tok, chat_prompt(tok, fact.question)), encode(tok, fact.answer)
        with torch.no_grad():
            logp = reloaded.model(input_ids=torch.tensor([p + a])).logits[0, len(p) - 1:-1].float().log_softmax(-1)
        nll = -sum(logp[j, t].item() for j, t in enumerate(a)) / len(a)
        assert row["answer_prob"] == pytest.approx(math.exp(-nll), rel=1e-3)
        assert sides["original"]["rows"][i]["keyword_hit"] and not row["keyword_hit"]
    agg = sides["unlearned"]["aggregate"]
    assert agg["keyword_hit_rate"] == 0.0 and agg["answer_prob"] < sides["original"]["aggregate"]["answer_prob"]


def test_probes_that_stop_once_leaked_give_the_same_verdicts_for_fewer_tokens(embedded):
    facts = (load_facts(ROOT / "assets/facts/demo_forget.jsonl")[:3]
             + load_facts(ROOT / "assets/facts/demo_retain.jsonl")[:8])
    whole = probes.probe(embedded.model, embedded.tokenizer, facts)
    short = probes.probe(embedded.model, embedded.tokenizer, facts, stop_once_leaked=probes.KINDS)
    assert [r["leak"] for r in short["rows"]] == [r["leak"] for r in whole["rows"]]
    assert short["hit_rate"] == whole["hit_rate"] and short["paraphrase_hit_rate"] == whole["paraphrase_hit_rate"]
    for s, w in zip(short["rows"], whole["rows"]):
        assert w["answer"].startswith(s["answer"])
        if s["answer"] != w["answer"]:  # cut: only after a leak, at a sentence end, and marked
            assert s["leak"] and s["answer"].rstrip()[-1] in generation.SENTENCE_ENDS and s["cut"]
        if not s.get("cut"):
            assert s["answer"] == w["answer"]
    assert sum(len(r["answer"]) for r in short["rows"]) < 0.8 * sum(len(r["answer"]) for r in whole["rows"])


def test_probe_many_answers_each_set_as_probe_alone_in_one_pass(embedded, monkeypatch):
    forget = load_facts(ROOT / "assets/facts/demo_forget.jsonl")[:3]
    retain = load_facts(ROOT / "assets/facts/demo_retain.jsonl")[:6]
    sets = [probes.ProbeSet(forget, True, ("paraphrase",)), probes.ProbeSet(retain, False, ()),
            probes.ProbeSet(retain[:4], False, probes.KINDS)]
    alone = [probes.probe(embedded.model, embedded.tokenizer, s.facts, s.paraphrases,
                          stop_once_leaked=s.stop_once_leaked) for s in sets]
    calls = []
    plain = generation.answer
    monkeypatch.setattr(generation, "answer", lambda *a, **k: calls.append(len(a[2])) or plain(*a, **k))
    together = probes.probe_many(embedded.model, embedded.tokenizer, sets)
    assert calls == [sum(len(s.facts) + (sum(len(f.paraphrases) for f in s.facts) if s.paraphrases else 0)
                         for s in sets)]  # one pass for all three sets
    assert together == alone
    # each set's own rule: the forget questions and the second set whole, the cut rows marked
    assert not any(r.get("cut") for r in together[0]["rows"] if r["kind"] == "question")
    assert not any(r.get("cut") for r in together[1]["rows"])
    assert any(r.get("cut") for r in together[2]["rows"])
