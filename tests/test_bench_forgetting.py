"""bench/forgetting.py's pure parts (variants, rows, target marks) and the held-out fact
sets (valid, verified fields, disjoint from the training pools). No model."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import forgetting  # noqa: E402
from meow_app.facts import load_facts  # noqa: E402


def test_variant_syntax():
    assert forgetting.parse_variant("meow") == {"name": "meow", "method": "meow", "overrides": {}}
    assert forgetting.parse_variant("plain:ga") == {"name": "plain", "method": "ga", "overrides": {}}
    v = forgetting.parse_variant("fast:meow:lr=2e-4, epochs=4,lora=true,train_only=")
    assert v["name"] == "fast" and v["method"] == "meow"
    assert v["overrides"] == {"lr": 2e-4, "epochs": 4, "lora": True, "train_only": ""}
    assert isinstance(v["overrides"]["epochs"], int) and isinstance(v["overrides"]["lr"], float)
    # The inversion's generator is a variant's setting too (pipeline.InvertSettings).
    v = forgetting.parse_variant("plausible:meow:generator=lead_in,null_space=0.99")
    assert v["overrides"] == {"generator": "lead_in", "null_space": 0.99}
    # So is the selection's (pipeline.SelectSettings).
    v = forgetting.parse_variant("distinct:meow:distinct=true,top_k=2")
    assert v["overrides"] == {"distinct": True, "top_k": 2}


@pytest.mark.parametrize("spec,message", [
    ("x:meow:no_such_field=1", "not a TrainConfig field"),
    ("x:meow:lr", "not FIELD=VALUE"),
    ("x:meow:lora=maybe", "true or false"),
    (":meow", "NAME:METHOD"),
])
def test_bad_variants_fail_in_one_line(spec, message):
    with pytest.raises(ValueError, match=message):
        forgetting.parse_variant(spec)


def test_unknown_method_fails():
    from meow_app.errors import MeowError

    with pytest.raises(MeowError, match="unknown method"):
        forgetting.parse_variant("x:no_such_method")


def test_near_questions():
    assert forgetting.near("What is the capital of France?", "what is the capital of france")
    assert forgetting.near("What is the capital of France?", "Which city is the capital of France?")
    assert forgetting.near("What is the largest organ inside the human body?",
                           "What is the largest organ of the human body?")
    # the same shape about another subject is a neighbour, not the same question
    assert not forgetting.near("What is the capital of Iran?", "What is the capital of Iraq?")
    assert not forgetting.near("What is the smallest planet in our solar system?",
                               "What is the largest planet in our solar system?")
    assert forgetting.overlaps(["Who wrote 'Dune'?", "Who wrote 'Emma'?"], ["who wrote dune"]) == \
        [("Who wrote 'Dune'?", "who wrote dune")]


def _side(leaks, probs=None, paraphrase=None):
    rows = [{"question": f"q{i}", "leak": x, "answer_prob": (probs or [0.5] * len(leaks))[i], "paraphrases": []}
            for i, x in enumerate(leaks)]
    return {"aggregate": {"n": len(rows), "hit_rate": sum(leaks) / len(leaks),
                          "paraphrase_hit_rate": paraphrase,
                          "answer_prob": sum(r["answer_prob"] for r in rows) / len(rows)}, "rows": rows}


def _report():
    return {
        "sets": {"forget": {"original": _side([True] * 8, [0.8] * 8, 1.0),
                            "unlearned": _side([True] + [False] * 7, [0.6] + [0.1] * 7, 0.0)},
                 "retain": {"original": _side([True] * 19 + [False]), "unlearned": _side([True] * 18 + [False, True])},
                 "holdout": {"original": _side([True] * 4), "unlearned": _side([True] * 4)}},
        "verdicts": {"forget": [{"question": "q0", "verdict": "still known"}]
                     + [{"question": f"q{i}", "verdict": "forgotten"} for i in range(1, 7)]
                     + [{"question": "q7", "verdict": "hidden, but still likely"}]},
        "general": {"original": {"questions_accuracy": 1.0, "multiple_choice_accuracy": 1.0},
                    "unlearned": {"questions_accuracy": 0.96, "multiple_choice_accuracy": 0.9}},
    }


def test_row_and_targets():
    run = {"timings": {"train": 100.0}, "steps": [{}] * 12, "stopped_early": False}
    sampling = {"original": {"leak_rate": 1.0}, "unlearned": {"leak_rate": 0.25, "sample_leak_rate": 0.05}}
    variant = {"name": "meow", "method": "meow", "overrides": {}}
    row = forgetting.build_row(variant, "eval_x", run, _report(), sampling, wall=123.4, peak_unlearn=3.9)
    assert row["forget_hit_before"] == 1.0 and row["forget_hit_after"] == 1 / 8
    assert row["still_likely"] == 1 and row["still_likely_share"] == 1 / 8
    assert row["answer_prob_ratio"] == pytest.approx((0.6 + 0.7) / 8 / 0.8)
    # retain: 19 known before, 18 of them still known (the one not known before does not count)
    assert (row["retain_kept_n"], row["retain_known_n"]) == (18, 19) and row["unseen_kept"] == 1.0
    assert row["general_questions_ratio"] == pytest.approx(0.96) and row["multiple_choice_ratio"] == pytest.approx(0.9)
    assert row["steps"] == 12 and row["unlearn_seconds"] == 123.4
    assert row["checks"] == {"forget_hit": True, "paraphrase_hit": True, "sampling_leak": False,
                             "still_likely": True, "answer_prob": True, "retain_kept": False,
                             "unseen_kept": True, "general_questions": True, "multiple_choice": False}
    cells = forgetting.table_row({**row, "peak_rss_gib": 4.2})
    assert len(cells) == len(forgetting.COLUMNS)
    assert cells[2] == "100% → **12%** ✓" and cells[6] == "**95%** (18/19) ✗" and cells[-1] == "3.90 GiB"
    text = forgetting.markdown([row, {"variant": "bad", "set": "eval_x", "error": "boom"}])
    assert text.count("\n| ") == 2 and "error: boom" in text


def test_check_targets_unmeasured_is_none():
    assert forgetting.check_targets({"forget_hit_after": 0.0})["forget_hit"] is True
    assert forgetting.check_targets({})["retain_kept"] is None


# --- the held-out sets ------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(forgetting.SETS))
def test_held_out_sets_are_valid(name):
    forget, retain, unseen = (load_facts(p) for p in forgetting.SETS[name])
    assert len(forget) == 8 and 12 <= len(retain) <= 24 and 12 <= len(unseen) <= 24
    for f in forget:
        assert f.keywords and 1 <= len(f.paraphrases) <= 2
    for f in [*retain, *unseen]:
        assert f.keywords
    # the retain set holds the forget facts' neighbours: each forget category recurs there
    assert {f.extra["category"] for f in forget} <= {f.extra["category"] for f in retain}
    assert not {f.extra["category"] for f in forget} & {f.extra["category"] for f in unseen}


def test_held_out_sets_are_disjoint_from_pools_and_shipped_sets():
    assert forgetting.check_sets() == []


def test_table_from_a_saved_file(tmp_path, capsys, monkeypatch):
    run = {"timings": {"train": 100.0}, "steps": [{}] * 12}
    sampling = {"unlearned": {"leak_rate": 0.0}}
    row = forgetting.build_row({"name": "meow", "method": "meow", "overrides": {}}, "eval_x", run, _report(),
                               sampling, wall=1.0, peak_unlearn=1.0)
    row.update(wall_seconds=2.0, eval_seconds=1.0, peak_rss_gib=1.5, retain_lost=["q19"], unseen_lost=[],
               sampling_leaks=[], samples=10)
    saved = tmp_path / "r.json"
    saved.write_text(forgetting.json.dumps({"rows": [row]}))
    monkeypatch.setattr(sys, "argv", ["forgetting.py", "--table", str(saved)])
    forgetting.main()
    out = capsys.readouterr().out
    assert "| meow | eval_x |" in out and "n/a → **0%** ✓" in out and "retain lost: ['q19']" in out


@pytest.mark.parametrize("text, looped", [
    ("The main ingredient of hummus is that that that that that.", True),
    ("The largest city in Nigeria is Kano, in the South East of the South East of the South East of", True),
    ("Sigmund Freud was a Germanststststststststst", True),
    ("Pyotr Tchaikovsky was a born and bred born born born born.", True),
    ("The capital of Nepal is Pokhara, a city in the west of Nepal, west of Kathmandu.", False),
    ("Tennis, tennis and more tennis: she played it all her life.", False),
    ("Mississippi is a state of the United States.", False),  # (ssi twice is no loop)
    ("It cost $1,000,000,000,000 in 2000.", False),
    ("", False),
])
def test_loops_finds_answers_that_run_into_a_loop(text, looped):
    assert forgetting.loops(text) is looped


def test_looping_counts_a_row_s_forgotten_facts_answered_in_a_loop():
    row = {"verdict_rows": [{"after": "It is that that that that."}, {"after": "Paris."}, {"after": None}, {}]}
    assert forgetting.looping(row) == 1
