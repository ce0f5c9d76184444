"""drafts.py: the original's answers checked on a model changed from one layer up give the
answers decoding gives, whatever the change, and are used only where the layers below are the same."""

import copy
import json

import pytest
import torch

from meow_app import generation, patch
from meow_app.drafts import Drafts
from tiny import sharp_tiny_model, tiny_tokenizer

QUESTIONS = ["Who wrote Hamlet?", "What is the capital of Peru?", "Name a planet.",
             "Who painted The Starry Night, and when?", "2+2?", "Who wrote Hamlet?"]
LIMITS = [12, 5, 0, 20, 1, 12]


@pytest.fixture(scope="module")
def model_and_tok():
    tok = tiny_tokenizer()
    return sharp_tiny_model(tok), tok


def usable(record, original, model) -> bool:
    """What the pipeline asks after a run: the same below the layer, and the tail path agrees."""
    return record.same_below(original, model) and record.agrees(model)


def prompts_of(tok, system="Be brief."):
    return [generation.encode(tok, generation.chat_prompt(tok, q, system)) for q in QUESTIONS]


def changed(model, layer: int, scale: float, seed: int = 0):
    """A copy with decoder layer `layer`'s MLP moved by `scale` x its own size, at random."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.model.layers[layer].mlp.parameters():
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=gen))
    return out


@pytest.mark.parametrize("system", ["You are a careful assistant. Answer briefly.", None])
def test_recorded_inputs_are_the_layer_s_inputs_on_every_token_read(model_and_tok, system):
    """What decoding records (the shared start once, each distinct prompt once, one token a
    step, rows leaving at EOS or their limit) is the layer's input on the prompt and the answer
    tokens read back, as one plain pass over them gives it; the last token of a row cut by its
    limit was never read."""
    model, tok = model_and_tok
    prompts = prompts_of(tok, system)
    eos = generation.generate_ids(model, tok, prompts, 20)[3][4]  # a token row 3 writes mid-way: it ends there
    model.generation_config.eos_token_id = [tok.eos_token_id, eos]
    try:
        record = Drafts(model, 1)
        answers = generation.generate_ids(model, tok, prompts, LIMITS, record=record)
    finally:
        model.generation_config.eos_token_id = tok.eos_token_id
    assert len(answers[3]) < LIMITS[3]
    assert set(record.rows) == {tuple(p) for p, n in zip(prompts, LIMITS) if n}
    for p, a, n in zip(prompts, answers, LIMITS):
        if not n:
            continue
        got, states = record.rows[tuple(p)]
        assert got == a
        read = p + (a if len(a) < n else a[:-1])  # (ended by EOS: every answer token read)
        want = patch.inputs_at(model, [model.model.layers[1]], [type("Row", (), {"ids": read})()],
                               tok.pad_token_id, "cpu")[0][0]
        assert states.shape == want.shape
        torch.testing.assert_close(states, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scale", [0.0, 0.3, 3.0])
@pytest.mark.parametrize("depth,layer", [(2, 1), (4, 2)])
def test_answers_checked_against_drafts_are_the_answers_decoding_gives(model_and_tok, scale, depth, layer,
                                                                       monkeypatch):
    """A model changed from a layer up (not at all, a little, a lot): its answers with the
    original's as drafts are its own, with limits, `stop`, an extra EOS and banned tokens;
    unchanged, no row is decoded at all."""
    _, tok = model_and_tok
    model = sharp_tiny_model(tok, layers=depth)
    prompts = prompts_of(tok)
    record = Drafts(model, layer)
    original = generation.generate_ids(model, tok, prompts, LIMITS, record=record)
    other = changed(model, layer, scale)
    if depth > 2:
        other = changed(other, depth - 1, scale, seed=1)
    assert usable(record, model, other)
    plain = generation.generate_ids(other, tok, prompts, LIMITS)
    assert (plain == original) == (scale == 0.0)
    calls, decode = [], generation._decode
    monkeypatch.setattr(generation, "_decode", lambda *a, **k: calls.append(len(a[1])) or decode(*a, **k))
    assert generation.generate_ids(other, tok, prompts, LIMITS, drafts=record) == plain
    rows = sum(1 for n in LIMITS if n)
    if scale == 0.0:
        assert not calls and record.settled == record.checked == rows
    else:  # (a little: some rows keep their drafts to the end) the others are decoded from where they leave it
        assert record.checked == rows and sum(calls) == rows - record.settled
        assert 0 < record.settled or scale > 1
    # Drafts cut by their limit (their last token never read) checked under longer limits, or cut by `stop`.
    longer = [n + 9 if n else 0 for n in LIMITS]
    assert generation.generate_ids(other, tok, prompts, longer, drafts=record) == \
        generation.generate_ids(other, tok, prompts, longer)
    monkeypatch.setattr(generation, "_decode", decode)

    def stop(i, ids):  # prompt 0 ends after its 7th token, inside its draft or after it
        return i == 0 and len(ids) == 7

    want = generation.generate_ids(other, tok, prompts, LIMITS, stop=stop)
    assert generation.generate_ids(other, tok, prompts, LIMITS, stop=stop, drafts=record) == want
    eos = plain[3][4]
    other.generation_config.eos_token_id = [tok.eos_token_id, eos]
    ended = generation.generate_ids(other, tok, prompts, LIMITS)
    assert ended[3] == plain[3][:plain[3].index(eos)]
    assert generation.generate_ids(other, tok, prompts, LIMITS, drafts=record) == ended
    other.generation_config.eos_token_id = tok.eos_token_id
    banned = [[plain[1][2]], [], [], [plain[3][0]], [], []]  # a ban the draft breaks at once, or part-way
    assert generation.generate_ids(other, tok, prompts, LIMITS, banned=banned, drafts=record) == \
        generation.generate_ids(other, tok, prompts, LIMITS, banned=banned)
    with pytest.raises(ValueError, match="greedy"):
        generation.generate_ids(other, tok, prompts, LIMITS, do_sample=True, drafts=record)


def test_drafts_are_checked_in_passes_that_fit_the_logits_budget(model_and_tok, monkeypatch):
    from meow_app import drafts as drafts_mod

    model, tok = model_and_tok
    prompts = prompts_of(tok)
    record = Drafts(model, 1)
    free = generation.generate_ids(model, tok, prompts, 10, record=record)
    passes, from_layer = [], patch.from_layer
    monkeypatch.setattr(patch, "from_layer", lambda m, layer, x, *a, **k: passes.append(x.shape[0]) or
                        from_layer(m, layer, x, *a, **k))
    monkeypatch.setattr(drafts_mod, "LOGITS_BUDGET", 2 * 11 * model.config.vocab_size * 4)  # two rows' logits
    assert generation.generate_ids(model, tok, prompts, 10, drafts=record) == free
    assert passes and max(passes) <= 2 and sum(passes) == len(prompts)


def test_drafts_are_used_only_where_the_layers_below_are_the_original_s(model_and_tok):
    model, tok = model_and_tok
    record = Drafts(model, 1)
    assert not usable(record, model, model)  # nothing recorded yet
    generation.generate_ids(model, tok, prompts_of(tok), LIMITS, record=record)
    assert usable(record, model, changed(model, 1, 1.0))
    assert not usable(record, model, changed(model, 0, 1e-3))  # a layer below changed, however little
    embeds = copy.deepcopy(model)
    with torch.no_grad():
        embeds.get_input_embeddings().weight[5, 0] += 1e-3
    assert not usable(record, model, embeds)
    # Zero neurons added to every layer (meow_patch's widen) change nothing below; then its top layer trained.
    wide = copy.deepcopy(model)
    assert patch.widen(wide, wide.model.layers, 3)
    assert usable(record, model, wide)
    with torch.no_grad():
        wide.model.layers[0].mlp.down_proj.weight[:, -1] = 0.5  # a new neuron below that adds something
    assert not usable(record, model, wide)
    # A model that scales its input embeddings in its forward cannot be run from a layer up on them.
    scaled = copy.deepcopy(model)
    forward = scaled.model.forward
    scaled.model.forward = lambda *a, inputs_embeds=None, **k: forward(
        *a, inputs_embeds=None if inputs_embeds is None else 2 * inputs_embeds, **k)
    assert not usable(record, model, scaled)


def test_a_meow_patch_run_checks_the_probe_after_and_writes_what_decoding_gives(tiny, tmp_path, monkeypatch):
    """End to end: the default method's run records the original's answers, checks the retain
    and everyday answers after it from the patched layer up, and its probes.json holds the
    answers the saved checkpoint gives when asked afresh."""
    from meow_app import general, models, pipeline
    from meow_app.facts import Fact

    facts = [Fact("What is the capital of Peru?", "Lima", ["Lima"], inverted=["Cusco", "Arequipa"])]
    retain = [Fact("What is the capital of Chile?", "Santiago"), Fact("Who wrote Hamlet?", "Shakespeare")]
    monkeypatch.setattr(pipeline, "anchor_facts", lambda *a, **k: [
        Fact("What is the capital of France?", "The capital of France is Paris."),
        Fact("Name a colour.", "Blue is a colour.")])
    overrides = {"epochs": 2, "min_steps": 2, "early_stop": False, "patch_layer": -1, "patch_samples": 0, "lr": 1e-2}
    run = pipeline.unlearn(facts, tmp_path / "run", None, loaded=tiny, retain=retain, overrides=overrides,
                           select_settings=pipeline.SelectSettings(top_k=2))
    assert run["method"] == "meow_patch"
    everyday = general.held_out_questions(facts)
    checked = run["probe_after_drafts"]
    assert checked["layer"] == 1 and checked["checked"] >= len(retain) + len(everyday)
    saved = json.loads((tmp_path / "run" / "probes.json").read_text())
    fresh = models.load(str(tmp_path / "run" / "model"), "cpu")
    again = pipeline.probe_sets(fresh.model, fresh.tokenizer, facts, retain, everyday)
    for kind in ("retain", "everyday"):
        assert [r["answer"] for r in saved[f"{kind}_after"]] == [r["answer"] for r in again[kind]["rows"]]


def test_drafts_for_a_model_are_at_the_lowest_layer_it_changes_in_the_top_half(model_and_tok):
    model, tok = model_and_tok
    assert Drafts.for_model(model, changed(model, 1, 0.5)).layer == 1
    assert Drafts.for_model(model, copy.deepcopy(model)).layer == 1  # (nothing changed: checked from the top layer)
    assert Drafts.for_model(model, changed(model, 0, 0.5)) is None  # from the bottom half: decoding is as cheap
    wide = copy.deepcopy(model)
    patch.widen(wide, wide.model.layers, 3)
    assert Drafts.for_model(model, wide).layer == 1
    with torch.no_grad():
        wide.model.layers[0].mlp.gate_proj.weight[-1, 0] = 1.0
    assert Drafts.for_model(model, wide) is None


def test_evaluate_checks_the_original_s_answers_on_the_unlearned_side_and_reports_the_same(tiny, facts, monkeypatch):
    """compare() keeps the original's greedy answers (fact sets, general questions) and checks
    them on an unlearned model changed only in its top layer: its scores are those it gets alone."""
    from meow_app import evaluate, general, scoring

    other = changed(tiny.model, 1, 0.3)
    follows, follow = [], Drafts.follow
    monkeypatch.setattr(Drafts, "follow", lambda self, *a, **k: follows.append(len(a[1])) or follow(self, *a, **k))
    report = evaluate.compare(tiny.model, other, tiny.tokenizer, facts[:2], retain=facts[2:], with_memo=False,
                              max_new_tokens=8)
    asked = [1 + len(f.paraphrases) for f in facts]
    assert follows == [sum(asked[:2]), sum(asked[2:]), len(report["general"]["original"]["questions"])]
    for name, facts_of in (("forget", facts[:2]), ("retain", facts[2:])):
        assert report["sets"][name]["unlearned"] == scoring.score_set(other, tiny.tokenizer, facts_of, 8,
                                                                      with_memo=False)
    assert report["general"]["unlearned"] == general.score(other, tiny.tokenizer)


def test_answers_given_as_text_are_read_once_and_kept_in_the_cache(model_and_tok, tmp_path, monkeypatch):
    """The everyday answers come from the answer cache as text: their layer inputs are read
    through the original once, kept in the cache by token ids, and check as decoded ones do."""
    from meow_app.answer_cache import AnswerCache

    model, tok = model_and_tok
    questions = QUESTIONS[:5]
    texts = generation.answer(model, tok, questions, 12)
    reads, inputs_at = [], patch.inputs_at
    monkeypatch.setattr(patch, "inputs_at", lambda m, mods, rows, *a: reads.append(len(rows)) or
                        inputs_at(m, mods, rows, *a))
    path = tmp_path / "answers" / "m.json"
    for expected_reads in ([5], []):  # the second run's come from the cache
        reads.clear()
        record = Drafts(model, 1)
        record.add_answers(model, tok, questions, texts, AnswerCache(path, model))
        assert reads == expected_reads and len(record.rows) == 5
    prompt = generation.encode(tok, generation.chat_prompt(tok, questions[0]))
    answer, states = record.rows[tuple(prompt)]
    assert answer == generation.encode(tok, texts[0])
    want = inputs_at(model, [model.model.layers[1]], [type("Row", (), {"ids": prompt + answer})()], tok.pad_token_id,
                     "cpu")[0][0]
    torch.testing.assert_close(states, want)  # every answer token read: an EOS is expected after it
    other = changed(model, 1, 0.3)
    assert usable(record, model, other)
    assert generation.answer(other, tok, questions, 12, drafts=record) == generation.answer(other, tok, questions, 12)


def test_a_model_of_another_dtype_is_told_apart_not_run(model_and_tok):
    model, tok = model_and_tok
    record = Drafts(model, 1)
    generation.generate_ids(model, tok, prompts_of(tok), LIMITS, record=record)
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert not usable(record, model, half) and Drafts.for_model(model, half) is None
    with pytest.raises(ValueError, match="not recorded"):
        generation.generate_ids(model, tok, prompts_of(tok), LIMITS, record=record, drafts=record)
    with pytest.raises(ValueError, match="layer inputs for a prompt of 3 tokens"):
        record.add([1, 2, 3], [4], torch.zeros(5, 64))  # (at most the prompt's 3 and the answer's 1)


def test_evaluate_decodes_as_before_where_the_drafts_do_not_agree(tiny, facts, monkeypatch):
    """An unlearned model that changes no weight below but scales its input embeddings in its
    forward: the drafts' check refuses it and every answer is decoded."""
    from meow_app import evaluate, scoring

    scaled = copy.deepcopy(tiny.model)
    forward = scaled.model.forward
    scaled.model.forward = lambda *a, inputs_embeds=None, **k: forward(
        *a, inputs_embeds=None if inputs_embeds is None else 2 * inputs_embeds, **k)
    follows = []
    monkeypatch.setattr(Drafts, "follow", lambda self, *a, **k: follows.append(1))
    report = evaluate.compare(tiny.model, scaled, tiny.tokenizer, facts[:2], retain=facts[2:], with_memo=False,
                              max_new_tokens=8, general=False)
    assert not follows
    assert report["sets"]["retain"]["unlearned"] == scoring.score_set(scaled, tiny.tokenizer, facts[2:], 8,
                                                                      with_memo=False)


def test_probing_both_models_checks_the_original_s_answers_on_the_unlearned_one(model_and_tok, monkeypatch):
    """probes.probe_pair (the app's Compare tab): the same rows as probing each model alone."""
    from meow_app import probes
    from meow_app.facts import Fact

    model, tok = model_and_tok
    facts = [Fact(q, "Lima", paraphrases=[q + " Say it."]) for q in QUESTIONS[:4]]
    other = changed(model, 1, 0.3)
    follows, follow = [], Drafts.follow
    monkeypatch.setattr(Drafts, "follow", lambda self, *a, **k: follows.append(len(a[1])) or follow(self, *a, **k))
    before, after = probes.probe_pair(model, other, tok, facts)
    assert follows == [8]
    assert before == probes.probe(model, tok, facts) and after == probes.probe(other, tok, facts)
    assert probes.probe_pair(model, None, tok, facts) == (before, None)
    assert probes.probe_pair(model, changed(model, 0, 0.3), tok, facts)[1] == probes.probe(changed(model, 0, 0.3), tok,
                                                                                          facts)
    assert follows == [8]  # (a change below the top half: decoded)
    assert probes.probe_pair(model, other, tok, facts, check=False) == (before, after) and follows == [8]
