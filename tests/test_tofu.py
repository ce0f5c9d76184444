"""TOFU: data subsets, forget quality from the shipped logs, model utility by hand; the
reduced protocol end to end on the tiny model (every run), its numbers recomputed from the
report's rows, and on the embedded model (opt-in: MEOW_TOFU_TEST=1)."""

import json
import math
import os

import pytest

from conftest import SHARED
from meow_app import stats, tofu
from meow_app.errors import MeowError

needs_data = pytest.mark.skipif(not (SHARED / "full.jsonl").is_file(), reason=f"TOFU data not found in {SHARED}")


@needs_data
def test_reduced_sets_cut_whole_authors():
    sets = tofu.load_sets(SHARED, "forget10", authors=4, eval_rows=10)
    assert len(sets["forget"]) == 20 and len(sets["retain_train"]) == 60 and len(sets["full"]) == 80
    assert sets["forget"][0].extra["perturbed_answer"] and sets["forget"][0].extra["paraphrased_answer"]
    full = tofu._load(SHARED, "full")
    assert [f.question for f in sets["forget"]] == [f.question for f in full[-20:]]  # the split's last author
    assert len(sets["retain_eval"]) == 10 and len(sets["real_authors"]) == 10
    with pytest.raises(MeowError, match="at least 2"):
        tofu.load_sets(SHARED, "forget01", authors=1)
    with pytest.raises(MeowError, match="unknown TOFU split"):
        tofu.load_sets(SHARED, "forget02", authors=4)


@needs_data
def test_forget_quality_of_the_published_llama_target():
    # TOFU's own logs: the Llama-2-7b target (fine-tuned on full) against its retain90 model
    # on forget10. OpenUnlearning reports 4.4e-25 for this pair (400 questions; the shipped
    # logs hold 300): both must say "clearly distinguishable", many orders below 0.05.
    logs = {k: json.loads((SHARED / "eval_logs" / f"llama2-7b_{k}_wd0.01_eval_log_aggregated.json").read_text())
            for k in ("full", "retain90")}
    target = tofu.truth_ratios_from_log(logs["full"]["eval_log_forget.json"])
    retain = tofu.truth_ratios_from_log(logs["retain90"]["eval_log_forget.json"])
    stored = list(logs["retain90"]["eval_log_forget.json"]["truth_ratio"].values())
    assert retain == pytest.approx(stored, rel=1e-5)  # our P_wrong/P_right is TOFU's stored truth ratio
    assert stats.ks_pvalue(target, retain) < 1e-15
    assert stats.ks_pvalue(retain, retain) == pytest.approx(1.0)
    ref, name = tofu.reference_truth_ratios(SHARED, "meta-llama/Llama-2-7b-chat-hf", "forget10")
    assert ref == retain and name.startswith("llama2-7b_retain90")
    assert tofu.reference_truth_ratios(SHARED, "embedded", "forget10") is None


def test_model_utility_by_hand():
    def rows(prob, rouge, tr, wrong=None):
        return {"rows": [{"answer_prob": prob, "rougeL_recall": rouge, "truth_ratio": tr, "wrong_probs": wrong}]}

    scored = {"retain_eval": rows(0.8, 1.0, 0.5), "real_authors": rows(0.5, 0.5, 0.2, [0.25, 0.25]),
              "world_facts": rows(0.5, 1.0, 2.0, [0.5])}
    u = tofu.model_utility(scored)
    # real authors: 0.5 / (0.5 + 0.5) = 0.5; world facts: 0.5 / 1.0 = 0.5; TR scores 0.5, 0.8 and max(0, -1) = 0
    assert u["real_authors/prob"] == pytest.approx(0.5) and u["world_facts/truth_ratio_score"] == 0.0
    assert u["model_utility"] == 0.0  # one zero sinks the harmonic mean
    scored["world_facts"] = rows(0.5, 1.0, 0.75, [0.5])
    parts = [0.8, 1.0, 0.5, 0.5, 0.5, 0.8, 0.5, 1.0, 0.25]
    assert tofu.model_utility(scored)["model_utility"] == pytest.approx(9 / sum(1 / p for p in parts))


def check_tofu_report(out, n_forget):
    """The report's TOFU numbers recomputed from its own rows: forget quality is the KS-test
    p-value between the forget split's truth ratios (original or unlearned) and the retain
    model's; model utility the harmonic mean of the 9 parts, each a mean over its rows."""
    from scipy.stats import ks_2samp

    report = json.loads((out / "report.json").read_text())
    t = report["tofu"]
    retain = t["retain_model_truth_ratios"]
    assert len(retain) == n_forget and all(x > 0 and math.isfinite(x) for x in retain)
    ratios = {}
    for side in ("original", "unlearned"):
        rows = report["sets"]["forget"][side]["rows"]
        ratios[side] = [r["truth_ratio"] for r in rows]
        assert len(rows) == n_forget and all(x > 0 and math.isfinite(x) for x in ratios[side])
        assert t[f"forget_quality_{side}"] == pytest.approx(ks_2samp(ratios[side], retain).pvalue, rel=1e-9)
        parts = {}
        for name in ("retain_eval", "real_authors", "world_facts"):
            rows = report["sets"][name][side]["rows"]
            probs = [r["answer_prob"] if name == "retain_eval"
                     else r["answer_prob"] / (r["answer_prob"] + sum(r["wrong_probs"]))
                     for r in rows]
            parts[f"{name}/prob"] = sum(probs) / len(rows)
            parts[f"{name}/rougeL_recall"] = sum(r["rougeL_recall"] for r in rows) / len(rows)
            parts[f"{name}/truth_ratio_score"] = sum(max(0.0, 1 - r["truth_ratio"]) for r in rows) / len(rows)
        utility = 0.0 if min(parts.values()) <= 0 else len(parts) / sum(1 / p for p in parts.values())
        assert t[f"utility_parts_{side}"] == pytest.approx({"model_utility": utility, **parts}, rel=1e-9)
        assert t[f"model_utility_{side}"] == pytest.approx(utility, rel=1e-9)
    assert ratios["original"] != ratios["unlearned"]  # the unlearned side is another model
    assert ratios["original"] != retain  # and the retain model a third one
    return report


def tofu_cli(*args):
    from test_cli import cli

    return cli("tofu", "--split", "forget01", *args)


@needs_data
def test_tofu_cli_reduced_protocol_on_the_tiny_model(tmp_path, tiny_dir):
    # The whole protocol (target and retain fine-tunings, MEOW, evaluation) in under a minute:
    # 2 authors (1 forgotten, 20 questions), 2 rows per utility set, 1 epoch each; unlearning
    # with a learning rate high enough to move the forget split's truth ratios.
    out = tmp_path / "tofu"
    r = tofu_cli("--model", tiny_dir, "--authors", 2, "--out", out, "--eval-rows", 2, "--epochs", 1,
                 "--unlearn-epochs", 1, "--unlearn-lr", 3e-3)
    assert r.returncode == 0, r.stderr[-3000:]
    report = check_tofu_report(out, n_forget=20)
    t = report["tofu"]
    assert (t["split"], t["authors"], t["method"], t["retain_reference"]) == ("forget01", 2, "meow", "trained here")
    assert t["forget_quality_original"] != t["forget_quality_unlearned"]  # so a swapped side cannot pass
    assert f"forget quality {t['forget_quality_original']:.3g} -> {t['forget_quality_unlearned']:.3g}" in r.stdout
    assert f"model utility  {t['model_utility_original']:.3f} -> {t['model_utility_unlearned']:.3f}" in r.stdout
    assert "Reduced TOFU" in (out / "report.html").read_text()
    assert (out / "run" / "model" / "model.safetensors").is_file()


@needs_data
@pytest.mark.embedded
@pytest.mark.timeout(2700)
@pytest.mark.skipif(not os.environ.get("MEOW_TOFU_TEST"),
                    reason="three fine-tunings of the embedded model: over 20 minutes on 2 shared cores; "
                           "MEOW_TOFU_TEST=1 runs it")
def test_tofu_cli_reduced_protocol_on_the_embedded_model(tmp_path):
    out = tmp_path / "tofu"
    # Its own time limit: three fine-tunings take longer than test_cli's 10-minute cap
    # when the 2 cores are shared.
    import subprocess
    import sys

    from conftest import ROOT

    r = subprocess.run([sys.executable, "-m", "meow_app", "tofu", "--authors", "4", "--split", "forget01",
                        "--out", str(out), "--eval-rows", "3", "--epochs", "1", "--unlearn-epochs", "1"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                       timeout=2400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "forget quality" in r.stdout and "model utility" in r.stdout
    check_tofu_report(out, n_forget=20)
    assert "Reduced TOFU" in (out / "report.html").read_text()
