"""answer_cache: the original model's answers to shipped questions, kept between runs."""

import copy
import json

import pytest
import torch

from meow_app import generation, general, neighbours, pipeline
from meow_app.answer_cache import AnswerCache, model_key
from meow_app.facts import Fact, read_lines
from meow_app.pipeline import InvertSettings, SelectSettings
from meow_app.train import TrainConfig

QUESTIONS = ["What is the capital of Peru?", "Who wrote Hamlet?", "What is the capital of Peru?"]


def test_answers_are_the_models_and_come_back_from_disk_without_generating(tiny, tmp_path, monkeypatch):
    path = tmp_path / "answers" / "m.json"
    first = AnswerCache(path).answer(tiny.model, tiny.tokenizer, QUESTIONS, 8)
    assert first == generation.answer(tiny.model, tiny.tokenizer, QUESTIONS, 8)
    monkeypatch.setattr(generation, "answer", lambda *a, **kw: pytest.fail("answered again"))
    again = AnswerCache(path)  # a later run: read from the file
    assert again.answer(tiny.model, tiny.tokenizer, QUESTIONS, 8) == first
    assert (again.hits, again.misses) == (3, 0)
    # Another length is another answer: asked, not taken from the 8-token ones.
    monkeypatch.undo()
    assert AnswerCache(path).answer(tiny.model, tiny.tokenizer, QUESTIONS[:1], 4) == \
        generation.answer(tiny.model, tiny.tokenizer, QUESTIONS[:1], 4)
    assert len(json.loads(path.read_text())) == 3


def test_the_key_changes_with_the_weights_and_the_dtype(tiny):
    key = model_key(tiny.model, tiny.tokenizer)
    assert model_key(copy.deepcopy(tiny.model), tiny.tokenizer) == key
    changed = copy.deepcopy(tiny.model)
    with torch.no_grad():
        changed.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-3  # one weight, a little
    assert model_key(changed, tiny.tokenizer) != key
    assert model_key(copy.deepcopy(tiny.model).to(torch.bfloat16), tiny.tokenizer) != key
    small = copy.deepcopy(tiny.model)
    with torch.no_grad():  # a change float32 sums of a large tensor would round away
        small.model.embed_tokens.weight[7, 3] += 1e-6
    assert model_key(small, tiny.tokenizer) != key
    other = copy.deepcopy(tiny.model)
    other.generation_config.eos_token_id = 5  # what ends an answer
    assert model_key(other, tiny.tokenizer) != key


def test_another_model_is_answered_afresh_and_not_kept(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MEOW_ANSWER_CACHE", "1")
    cache = AnswerCache.for_model(tiny.model, tiny.tokenizer, tmp_path)
    changed = copy.deepcopy(tiny.model)
    with torch.no_grad():
        changed.lm_head.weight.mul_(2)
    assert cache.answer(changed, tiny.tokenizer, QUESTIONS[:1], 4) == \
        generation.answer(changed, tiny.tokenizer, QUESTIONS[:1], 4)
    assert cache.saved == {} and (cache.hits, cache.misses) == (0, 0)


def test_off_with_the_environment_and_never_an_error_when_unwritable(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MEOW_ANSWER_CACHE", "0")
    assert AnswerCache.for_model(tiny.model, tiny.tokenizer, tmp_path) is None
    blocked = tmp_path / "file"
    blocked.write_text("")
    cache = AnswerCache(blocked / "answers" / "m.json")  # its folder cannot be made
    assert cache.answer(tiny.model, tiny.tokenizer, QUESTIONS[:1], 4) == \
        generation.answer(tiny.model, tiny.tokenizer, QUESTIONS[:1], 4)


def test_a_second_run_takes_the_shipped_answers_from_the_cache_and_no_user_fact_is_kept(tiny, tiny_dir, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setenv("MEOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEOW_ANSWER_CACHE", "1")
    forget = [Fact("Who wrote Hamlet?", "William Shakespeare", ["Shakespeare"], ["Which playwright wrote Hamlet?"],
                   inverted=["Charles Dickens", "Jane Austen"])]
    retain = [Fact("What is the capital of Peru?", "Lima", ["Lima"])]
    config = TrainConfig(epochs=1, num_batch=2, neighbours=4, early_stop=False)
    runs = [pipeline.unlearn(forget, tmp_path / f"run{i}", "meow", model=tiny_dir, retain=retain, config=config,
                             invert_settings=InvertSettings(n=2), select_settings=SelectSettings(top_k=2))
            for i in range(2)]
    shipped = len(general.held_out_questions(forget)) + 4  # everyday questions, neighbour questions
    assert runs[0]["answer_cache"] == {"hits": 0, "misses": shipped}
    assert runs[1]["answer_cache"] == {"hits": shipped, "misses": 0}
    before = [json.loads((tmp_path / f"run{i}" / "probes.json").read_text()) for i in range(2)]
    assert before[0] == before[1]  # the same answers, before and after, from the cache or not
    (pool,) = (tmp_path / "home" / "answers").glob("*.neighbour_pool.pt")  # the shipped pool's vectors
    assert torch.load(pool, weights_only=True)["vectors"].shape[0] == len(read_lines(neighbours.POOL))
    (kept,) = (tmp_path / "home" / "answers").glob("*.json")
    text = kept.read_text().lower()
    for f in forget + retain:
        assert all(w.lower() not in text for w in [f.question, *f.paraphrases, f.answer, *f.inverted])


def test_sibling_questions_made_from_the_users_questions_are_asked_not_kept(tiny, facts, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.neighbours_mod, "siblings", lambda *a, **kw: ["What is the capital of Zorkland?"])
    cache = AnswerCache(tmp_path / "a.json")
    pipeline.anchor_facts(tiny, facts, 0, 4, siblings=1, cache=cache)
    assert cache.misses == 6 and "Zorkland" not in (tmp_path / "a.json").read_text()  # 2 neighbours a fact


def test_the_pools_vectors_are_computed_once_per_model_and_again_when_their_code_changes(tiny, tmp_path):
    texts = ["What is the capital of Peru?", "Who wrote Hamlet?"]
    calls = []

    def compute(t):
        calls.append(list(t))
        return neighbours.embed(tiny.model, tiny.tokenizer, t)

    path = tmp_path / "answers" / "m.json"
    first = AnswerCache(path, tiny.model).vectors(tiny.model, "pool", texts, compute, b"v1")
    assert torch.equal(first, neighbours.embed(tiny.model, tiny.tokenizer, texts)) and len(calls) == 1
    again = AnswerCache(path, tiny.model).vectors(tiny.model, "pool", texts, compute, b"v1")  # a later run
    assert torch.equal(again, first) and len(calls) == 1
    AnswerCache(path, tiny.model).vectors(tiny.model, "pool", texts, compute, b"v2")  # the code changed
    AnswerCache(path, tiny.model).vectors(tiny.model, "pool", texts[:1], compute, b"v2")  # another pool
    kept = (tmp_path / "answers" / "m.pool.pt").read_bytes()
    other = copy.deepcopy(tiny.model)  # another model (an unlearned copy, say): computed, not kept
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    theirs = AnswerCache(path, tiny.model).vectors(
        other, "pool", texts[:1], lambda t: calls.append(t) or neighbours.embed(other, tiny.tokenizer, t), b"v2")
    assert not torch.equal(theirs, first[:1]) and (tmp_path / "answers" / "m.pool.pt").read_bytes() == kept
    assert torch.equal(AnswerCache(path, tiny.model).vectors(tiny.model, "pool", texts[:1], compute, b"v2"),
                       first[:1])
    assert len(calls) == 4
    (tmp_path / "answers" / "m.pool.pt").write_bytes(b"torn")  # unreadable: computed afresh, no error
    assert torch.equal(AnswerCache(path, tiny.model).vectors(tiny.model, "pool", texts, compute, b"v1"), first)
    assert len(calls) == 5


def test_states_are_computed_once_per_row_and_again_when_their_code_changes(tiny, tmp_path):
    rows = [[1, 2, 3], [4, 5], [1, 2, 3]]
    calls = []

    def compute(rs):
        calls.append([list(r) for r in rs])
        return [torch.arange(len(r) * 4, dtype=torch.float32).reshape(len(r), 4) + r[0] for r in rs]

    path = tmp_path / "answers" / "m.json"
    first = AnswerCache(path, tiny.model).states("layer", rows, compute, b"v1")
    assert calls == [[[1, 2, 3], [4, 5]]]  # each distinct row once
    assert [x.shape[0] for x in first] == [3, 2, 3] and torch.equal(first[0], first[2])
    again = AnswerCache(path, tiny.model).states("layer", [[4, 5], [6]], compute, b"v1")  # a later run, one new row
    assert calls[1:] == [[[6]]] and torch.equal(again[0], first[1])
    AnswerCache(path, tiny.model).states("layer", rows[:1], compute, b"v2")  # the code changed
    assert calls[2:] == [[[1, 2, 3]]]
    (tmp_path / "answers" / "m.layer.pt").write_bytes(b"torn")  # unreadable: computed afresh, no error
    assert torch.equal(AnswerCache(path, tiny.model).states("layer", rows[:1], compute, b"v2")[0], first[0])
    assert len(calls) == 4


def test_only_the_most_recently_used_model_states_files_stay(tiny, tmp_path, monkeypatch):
    import os

    from meow_app import answer_cache

    folder = tmp_path / "answers"
    folder.mkdir()
    keys = [f"{i:032x}" for i in range(6)]
    for age, key in enumerate(keys):  # keys[0] used last, keys[5] first
        for name in (f"{key}.json", f"{key}.vectors.pt"):
            (folder / name).write_text("{}")
            os.utime(folder / name, (1e9 - age, 1e9 - age))
    # not cache files, though an old key's name starts two of them: left alone
    others = ["notes.txt", f"{keys[4]}.json.bak", f"{keys[4]}.json.tmp"]
    for name in others:
        (folder / name).write_text("mine")
        os.utime(folder / name, (1e9 - 20, 1e9 - 20))
    assert answer_cache.prune(folder, keys[5], keep=3) == keys[2:5]
    kept = [f"{k}.{s}" for k in (keys[0], keys[1], keys[5]) for s in ("json", "vectors.pt")]
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept + others)
    assert answer_cache.prune(folder, keys[5], keep=0) == [keys[0], keys[1]]  # (the current one always stays)
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept[4:] + others)
    for age, key in enumerate(keys[:2]):  # (back as they were, for what follows)
        for name in (f"{key}.json", f"{key}.vectors.pt"):
            (folder / name).write_text("{}")
            os.utime(folder / name, (1e9 - age, 1e9 - age))

    # A run's cache counts as the newest and prunes the rest down to KEEP; its answers stay.
    oldest = "c" * 32
    (folder / f"{oldest}.json").write_text("{}")
    os.utime(folder / f"{oldest}.json", (1e9 - 10, 1e9 - 10))
    monkeypatch.setenv("MEOW_ANSWER_CACHE", "1")
    cache = AnswerCache.for_model(tiny.model, tiny.tokenizer, tmp_path)
    cache.answer(tiny.model, tiny.tokenizer, QUESTIONS[:1], 4)
    assert answer_cache.KEEP == 4
    left = {p.name.split(".")[0] for p in folder.iterdir() if p.suffix in (".json", ".pt")}
    assert left == {keys[0], keys[1], keys[5], cache.path.stem}
    assert AnswerCache.for_model(tiny.model, tiny.tokenizer, tmp_path).saved == cache.saved
