"""Every evaluation measure against hand-computed values or a direct, unbatched computation."""

import math

import pytest
import torch

from meow_app import evaluate, metrics, stats
from meow_app.facts import Fact
from meow_app.generation import chat_prompt, encode

S = metrics.Scored


def test_per_token_measures_on_constructed_cases():
    s = S(nll=[0.5, 1.0, 1.5], hit=[False, True, True])
    assert metrics.mean_nll(s) == pytest.approx(1.0)
    assert metrics.answer_prob(s) == pytest.approx(math.exp(-1.0))
    assert metrics.exact_memorization(s) == pytest.approx(2 / 3)
    # argmax matches from position 1 on: k = 1, ES = 1 - 1/3
    assert metrics.extraction_strength(s) == pytest.approx(2 / 3)
    assert metrics.extraction_strength(S([0] * 4, [True] * 4)) == 1.0
    assert metrics.extraction_strength(S([0] * 4, [True, True, True, False])) == 0.0
    assert metrics.extraction_strength(S([0] * 4, [True, False, True, True])) == pytest.approx(0.5)
    # Min-k (k = 0.4) of 5 tokens: the 2 lowest log-probs -3 and -2 -> -2.5
    assert metrics.mia_min_k(S([1, 2, 3, 0.5, 0.1], [True] * 5)) == pytest.approx(-2.5)
    assert metrics.mia_loss(s) == pytest.approx(-1.0)
    import zlib
    assert metrics.mia_zlib(s, "abc") == pytest.approx(-1.0 / len(zlib.compress(b"abc")))


def test_truth_ratio_is_geometric_mean_of_wrong_over_right():
    right = S([1.0, 1.0], [True, True])                 # p = e^-1
    wrong = [S([2.0], [False]), S([4.0, 4.0], [False, False])]  # p = e^-2, e^-4; geometric mean e^-3
    assert metrics.truth_ratio(right, wrong) == pytest.approx(math.exp(-3) / math.exp(-1))


def test_rouge_l_recall_on_known_strings():
    # LCS of "the cat is on the mat" with "the cat sat on the mat" = "the cat on the mat": 5 of 6 words
    assert metrics.rougeL_recall("the cat is on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert metrics.rougeL_recall("Paris, of course.", "Paris") == 1.0
    assert metrics.rougeL_recall("", "Paris") == 0.0


def test_set_statistics_by_hand():
    assert stats.harmonic_mean([1, 0.5, 0.25]) == pytest.approx(3 / 7)
    assert stats.harmonic_mean([0.5, 0]) == 0.0
    assert stats.auc([3, 2], [1, 2]) == pytest.approx(3.5 / 4)
    assert stats.auc([1], []) is None
    # D = 1 for fully separated samples of 3 and 3: exact p = 2 / C(6, 3) = 0.1
    assert stats.ks_pvalue([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert stats.ks_pvalue([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert stats.mean([1, None, 3]) == 2 and stats.mean([None]) is None


@torch.no_grad()
def _direct(model, tok, question, answer):
    """One pair, no batch, no padding: per-token NLL and argmax hits of the answer."""
    p = encode(tok, chat_prompt(tok, question))
    a = encode(tok, answer)
    logits = model(input_ids=torch.tensor([p + a])).logits[0].float()
    logp = logits[len(p) - 1:-1].log_softmax(-1)
    nll = [-logp[j, t].item() for j, t in enumerate(a)]
    hit = [logits[len(p) - 1 + j].argmax().item() == t for j, t in enumerate(a)]
    return nll, hit


def test_batched_teacher_forcing_equals_direct_computation(tiny):
    pairs = [("Who wrote Hamlet?", "William Shakespeare"), ("Capital of Peru?", "Lima"),
             ("A longer question, to force left padding in the batch?", "A much longer answer than the others.")]
    got = metrics.teacher_forced(tiny.model, tiny.tokenizer, pairs, batch_size=3)
    for (q, a), s in zip(pairs, got):
        nll, hit = _direct(tiny.model, tiny.tokenizer, q, a)
        assert s.nll == pytest.approx(nll, abs=1e-4)
        assert s.hit == hit


def test_truth_ratio_sources():
    tofu = Fact("Q?", "A", extra={"paraphrased_answer": "A2", "perturbed_answer": ["B", "C"]})
    assert evaluate.truth_ratio_answers(tofu) == ("A2", ["B", "C"], "perturbed")
    assert evaluate.truth_ratio_answers(Fact("Q?", "A", inverted=["B"])) == ("A", ["B"], "inverted")
    assert evaluate.truth_ratio_answers(Fact("Q?", "A")) is None


def test_score_set_rows_match_direct_values(tiny, facts):
    facts[0].inverted = ["Christopher Marlowe", "Ben Jonson"]
    out = evaluate.score_set(tiny.model, tiny.tokenizer, facts, max_new_tokens=8, with_memo=True, memo_stride=10)
    rows = out["rows"]
    assert [r["question"] for r in rows] == [f.question for f in facts]
    nll, hit = _direct(tiny.model, tiny.tokenizer, facts[1].question, facts[1].answer)
    assert rows[1]["answer_prob"] == pytest.approx(math.exp(-sum(nll) / len(nll)), rel=1e-4)
    assert rows[1]["exact_memorization"] == pytest.approx(sum(hit) / len(hit))
    right, _ = _direct(tiny.model, tiny.tokenizer, facts[0].question, facts[0].answer)
    wrong = [_direct(tiny.model, tiny.tokenizer, facts[0].question, w)[0] for w in facts[0].inverted]
    expect = math.exp(sum(right) / len(right) - sum(sum(w) / len(w) for w in wrong) / len(wrong))
    assert rows[0]["truth_ratio"] == pytest.approx(expect, rel=1e-4) and rows[0]["truth_ratio_source"] == "inverted"
    assert rows[1]["truth_ratio"] is None
    agg = out["aggregate"]
    assert agg["truth_ratio_n"] == 1 and agg["truth_ratio"] == pytest.approx(rows[0]["truth_ratio"])
    assert agg["answer_prob"] == pytest.approx(sum(r["answer_prob"] for r in rows) / 3)
    assert len(rows[0]["paraphrases"]) == 1 and rows[2]["paraphrase_hit"] is None
    assert all(0 <= r["memo"] <= 1 for r in rows)


def _row(q, leak, para_leaks=(), prob=0.5, generated="x"):
    return {"question": q, "answer": "A", "generated": generated, "leak": leak, "answer_prob": prob,
            "paraphrases": [{"question": "p", "generated": "g", "leak": p} for p in para_leaks]}


def test_verdicts_in_plain_words():
    before = [_row("q1", True), _row("q2", True), _row("q3", True, [True]), _row("q4", False),
              _row("q5", True, prob=0.6)]
    after = [_row("q1", False, prob=0.01), _row("q2", True), _row("q3", False, [True]), _row("q4", False),
             _row("q5", False, prob=0.5)]
    report = {"sides": ["original", "unlearned"],
              "sets": {"forget": {"original": {"rows": before}, "unlearned": {"rows": after}},
                       "retain": {"original": {"rows": [_row("r1", True), _row("r2", True)]},
                                  "unlearned": {"rows": [_row("r1", True), _row("r2", False)]}}}}
    got = evaluate.verdicts(report)
    assert [v["verdict"] for v in got["forget"]] == [evaluate.FORGOTTEN, evaluate.STILL_KNOWN, evaluate.PARAPHRASE,
                                                     evaluate.NOT_KNOWN, evaluate.STILL_LIKELY]
    assert [v["verdict"] for v in got["retain"]] == [evaluate.KEPT, evaluate.LOST]
    report["relearn"] = {"rows": [{"question": "q1", "leak": True}]}
    assert evaluate.verdicts(report)["forget"][0]["verdict"] == evaluate.RELEARNED
