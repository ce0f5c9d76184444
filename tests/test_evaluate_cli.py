"""The evaluate verb and the HTML report on the tiny model; the relearning attack; errors."""

import json

import pytest

from meow_app import attacks, evaluate, general, probes, report
from meow_app.facts import Fact
from test_cli import cli, ok, one_line_error


@pytest.fixture
def sets(tmp_path):
    rows = {"forget": [{"question": "Who wrote <script>alert(1)</script>?", "answer": "William Shakespeare",
                        "keywords": ["Shakespeare"], "paraphrases": ["Which playwright wrote it?"]},
                       {"question": "What is the capital of Peru?", "answer": "Lima", "keywords": ["Lima"]}],
            "retain": [{"question": "What is the capital of Japan?", "answer": "Tokyo"}],
            "holdout": [{"question": "What is the capital of Cuba?", "answer": "Havana"}]}
    out = {}
    for name, r in rows.items():
        out[name] = tmp_path / f"{name}.jsonl"
        out[name].write_text("\n".join(json.dumps(x) for x in r) + "\n")
    return out


def test_evaluate_cli_writes_json_and_escaped_html(tmp_path, sets, tiny_dir):
    out, page = tmp_path / "r.json", tmp_path / "r.html"
    r = ok(cli("evaluate", "--model", tiny_dir, "--compare", tiny_dir + "/", "--forget", sets["forget"],
               "--retain", sets["retain"], "--holdout", sets["holdout"], "--out", out, "--html", page,
               "--max-new-tokens", 6, "--no-general"))
    assert "verdicts:" in r.stdout
    data = json.loads(out.read_text())
    assert data["sides"] == ["original", "unlearned"]
    for name in ("forget", "retain", "holdout"):
        for side in ("original", "unlearned"):
            agg = data["sets"][name][side]["aggregate"]
            for key in ("rougeL_recall", "answer_prob", "keyword_hit_rate", "truth_ratio", "extraction_strength",
                        "exact_memorization"):
                assert key in agg
            assert all("generated" in row for row in data["sets"][name][side]["rows"])
    f = data["sets"]["forget"]
    assert f["original"]["aggregate"]["answer_prob"] == pytest.approx(f["unlearned"]["aggregate"]["answer_prob"])
    assert f["original"]["aggregate"]["paraphrase_hit_rate"] is not None
    assert set(data["mia"]["original"]) == {"loss", "zlib", "min_k"}
    assert len(data["verdicts"]["forget"]) == 2
    text = page.read_text()
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "data:image/png;base64," in text


def test_evaluate_cli_errors(tmp_path, sets, tiny_dir):
    one_line_error(cli("evaluate", "--model", tiny_dir, "--forget", tmp_path / "nope.jsonl",
                       "--out", tmp_path / "r.json"), "no such file")
    one_line_error(cli("evaluate", "--model", tiny_dir, "--out", tmp_path / "r.json"), "--forget FILE is required")
    one_line_error(cli("evaluate", "--model", tiny_dir, "--forget", sets["forget"], "--out", tmp_path / "r.json",
                       "--max-new-tokens", 0), "--max-new-tokens")
    one_line_error(cli("evaluate", "--model", tmp_path / "missing", "--forget", sets["forget"],
                       "--out", tmp_path / "r.json"), "does not exist")
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    one_line_error(cli("evaluate", "--model", run, "--forget", sets["forget"], "--out", tmp_path / "r.json"),
                   "names no original model")


def test_single_model_report_and_general(tiny, facts):
    result = evaluate.compare(tiny.model, None, tiny.tokenizer, facts, max_new_tokens=4, with_memo=False)
    assert result["sides"] == ["model"] and "retain" not in result["sets"]
    assert 0 <= result["general"]["model"]["questions_accuracy"] <= 1
    assert len(result["general"]["model"]["multiple_choice"]) == len(general.load_multiple_choice())
    page = report.html(result)
    assert "Verification report" in page and "General ability" in page


def test_multiple_choice_picks_the_most_likely_option(tiny):
    from meow_app import metrics

    item = {"question": "Pick one?", "options": ["aaaa", "zq", "Hello there"], "answer": 0}
    nll = [metrics.mean_nll(s) for s in metrics.teacher_forced(tiny.model, tiny.tokenizer,
                                                                 [(item["question"], o) for o in item["options"]])]
    assert general.multiple_choice(tiny.model, tiny.tokenizer, [item]) == [nll.index(min(nll))]


def test_relearning_attack_runs_and_reports_both_halves(tiny, facts):
    train, test = attacks.split(facts)
    assert [f.question for f in train] == [facts[0].question, facts[2].question] and test == [facts[1]]
    # Related facts (one shared answer): training on two must raise the third's probability.
    related = [Fact(f"Where does friend {i} live?", "Lima") for i in range(3)]
    out = attacks.relearn(tiny.model, tiny.tokenizer, related, max_new_tokens=4, epochs=5, lr=3e-3)
    assert len(out["rows"]) == 1 and out["after"]["answer_prob"] > out["before"]["answer_prob"]
    with pytest.raises(Exception, match="at least 2"):
        attacks.split([Fact("q", "a")])


def test_evaluate_a_run_folder_against_its_original(tmp_path, tiny_dir):
    facts = tmp_path / "f.jsonl"
    facts.write_text(json.dumps({"question": "Who wrote Hamlet?", "answer": "William Shakespeare",
                                 "keywords": ["Shakespeare"], "inverted": ["Ben Jonson", "John Milton"]}) + "\n")
    run = tmp_path / "run"
    ok(cli("unlearn", "--forget", facts, "--out", run, "--model", tiny_dir, "--epochs", 1, "--top-k", 2,
           "--no-early-stop"))
    out = tmp_path / "r.json"
    # No --forget: the run's own facts.jsonl, whose inverted answers give the truth ratio.
    one_line_error(cli("evaluate", "--model", run, "--out", out, "--relearn"), "at least 2 forget facts")
    ok(cli("evaluate", "--model", run, "--out", out, "--no-general", "--no-memo", "--max-new-tokens", 4))
    data = json.loads(out.read_text())
    assert data["models"] == {"original": tiny_dir, "unlearned": str(run)}
    rows = {s: data["sets"]["forget"][s]["rows"][0] for s in data["sides"]}
    assert rows["original"]["truth_ratio_source"] == "inverted" and rows["unlearned"]["truth_ratio"] is not None
    assert rows["original"]["answer_prob"] != rows["unlearned"]["answer_prob"]  # it did train


def test_forget_plot_puts_each_scale_on_its_own_axis_and_says_which_way_is_better():
    # The report of issue 20: a truth ratio of 54 -> 7,578 beside rates below 1.
    agg = {"original": {"hit_rate": 1.0, "paraphrase_hit_rate": 0.9, "answer_prob": 0.07, "truth_ratio": 54.0},
           "unlearned": {"hit_rate": 0.0, "paraphrase_hit_rate": 0.1, "answer_prob": 0.03, "truth_ratio": 7578.0}}
    rep = {"sides": ["original", "unlearned"],
           "sets": {name: {side: {"aggregate": a} for side, a in agg.items()} for name in ("forget", "retain")}}
    fig = report.metric_figure(rep, "forget")
    rates, ratio = fig.axes
    assert rates.get_yscale() == "linear" and rates.get_ylim() == (0, 1.05)
    assert ratio.get_yscale() == "log" and max(p.get_height() for p in ratio.patches) == 7578.0
    assert max(p.get_height() for p in rates.patches) == 1.0  # the ratio is not on the rates' axis
    labels = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
    assert len(labels) == 4 and all("better" in t for t in labels)
    assert [t for t in labels if "truth ratio" in t][0].endswith("(↑ better)")
    assert [t for t in labels if "gives the true answer" in t][0].endswith("(↓ better)")
    # On a set to keep, the directions turn round.
    kept = [t.get_text() for ax in report.metric_figure(rep, "retain").axes for t in ax.get_xticklabels()]
    assert [t for t in kept if "gives the true answer" in t][0].endswith("(↑ better)")
    assert report.metric_bars(rep, "forget").startswith('<img alt="plot" src="data:image/png;base64,')


def test_everyday_questions_leave_out_the_training_pools_and_the_forgotten_facts():
    from meow_app.facts import load_facts, read_lines

    shipped = load_facts(general.ASSETS / "questions.jsonl")
    pooled = {q for pool in general.TRAINING_POOLS for q in read_lines(pool)}
    asked = general.held_out_questions()
    assert {f.question for f in shipped} & pooled  # the guard: the pools do hold some of them
    assert asked and not {f.question for f in asked} & pooled
    sky = Fact("What color is the sky on a clear day?", "Blue", ["blue"])
    without = general.held_out_questions([sky])
    assert len(without) < len(asked) and not any("blue" in (f.question + f.answer).lower() for f in without)
    b = {"rows": [{"kind": "question", "leak": x} for x in (True, True, False, True)]}
    a = {"rows": [{"kind": "question", "leak": x} for x in (True, False, True, True)]}
    assert probes.kept_lost(b, a) == {"asked": 4, "known_before": 3, "known_after": 3, "kept": 2, "lost": 1}
    assert probes.kept_lost_words(probes.kept_lost(b, a)) == "kept 2 of the 3 it knew (1 lost)"
