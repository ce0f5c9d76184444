"""TOFU: data subsets, forget quality from the shipped logs, model utility by hand; the
reduced protocol end to end on the embedded model."""

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


@needs_data
@pytest.mark.embedded
@pytest.mark.skipif(not os.environ.get("MEOW_TOFU_TEST"),
                    reason="three fine-tunings of the embedded model: over 20 minutes on 2 shared cores; MEOW_TOFU_TEST=1 runs it")
def test_tofu_cli_reduced_protocol_on_the_embedded_model(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "tofu"
    # Its own subprocess call: three fine-tunings take longer than test_cli's 10-minute cap
    # when the 2 cores are shared.
    r = subprocess.run([sys.executable, "-m", "meow_app", "tofu", "--authors", "4", "--split", "forget01",
                        "--out", str(out), "--eval-rows", "3", "--epochs", "1", "--unlearn-epochs", "1"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=2400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "forget quality" in r.stdout and "model utility" in r.stdout
    t = json.loads((out / "report.json").read_text())["tofu"]
    for key in ("forget_quality_original", "forget_quality_unlearned", "model_utility_original", "model_utility_unlearned"):
        assert 0 <= t[key] <= 1 and not math.isnan(t[key])
    assert "Reduced TOFU" in (out / "report.html").read_text()
