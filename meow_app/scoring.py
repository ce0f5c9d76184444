"""Scoring one fact set on one model: every per-fact measure and the set's aggregates.

Below both evaluate.py (the report: sets side by side) and attacks.py (the relearning
attack scores the held-out facts before and after): neither has to import the other
to score. Per set, all greedy answers (questions and paraphrases) come from one batched
generation and all likelihoods from one batched teacher-forced pass (metrics.teacher_forced).
"""

from __future__ import annotations

from . import generation, memo, metrics, probes, stats
from .errors import MeowError
from .facts import Fact
from .generation import MAX_NEW_TOKENS

MEMO_STRIDE = 5  # characters between MEMO's cuts of an answer



def truth_ratio_answers(fact: Fact) -> tuple[str, list[str], str] | None:
    """(right answer, wrong answers, source) for the truth ratio, or None when the fact has none.
    TOFU's *_perturbed rows give a paraphrased answer and perturbed (wrong) answers; other
    facts use their inverted (false) answers from `invert` or a run folder."""
    wrong = fact.extra.get("perturbed_answer")
    if isinstance(wrong, str):
        wrong = [wrong]
    if wrong:
        right = fact.extra.get("paraphrased_answer") or fact.answer
        return right, [w for w in wrong if isinstance(w, str) and w.strip()], "perturbed"
    if fact.inverted:
        return fact.answer, list(fact.inverted), "inverted"
    return None


def score_set(model, tokenizer, facts: list[Fact], max_new_tokens: int = MAX_NEW_TOKENS, with_memo: bool = True,
              memo_stride: int = MEMO_STRIDE, batch_size: int = 16, record=None, drafts=None) -> dict:
    """Every per-fact measure of every fact, and the set's aggregates: {"aggregate", "rows"}.
    record, drafts: the greedy answers' (generation.generate_ids': the same answers)."""
    if not facts:
        raise MeowError("nothing to evaluate: the fact set is empty")
    # 1. Greedy answers to every question and paraphrase, one batched generation.
    asked = [(i, None, f.question) for i, f in enumerate(facts)]
    asked += [(i, p, p) for i, f in enumerate(facts) for p in f.paraphrases]
    answers = generation.answer(model, tokenizer, [q for _, _, q in asked], max_new_tokens, record=record,
                                drafts=drafts)
    # 2. Likelihoods of the true, paraphrased and wrong answers, one batched forward pass.
    pairs, tr = [], []
    for f in facts:
        pairs.append((f.question, f.answer))
        tr.append(truth_ratio_answers(f))
        if tr[-1]:
            right, wrong, _ = tr[-1]
            pairs += [(f.question, right)] + [(f.question, w) for w in wrong]
    scored = iter(metrics.teacher_forced(model, tokenizer, pairs, batch_size))
    # 3. MEMO (greedy continuations from cuts of the answer), optional: the slowest measure.
    memos = memo.memo_scores(model, tokenizer, [(f.question, f.answer) for f in facts], stride=memo_stride) \
        if with_memo else [None] * len(facts)

    rows = []
    for i, f in enumerate(facts):
        true = next(scored)
        row = {"question": f.question, "answer": f.answer, "generated": None,
               "leak": None, "keyword_hit": None, "paraphrases": [],
               "rougeL_recall": None, "answer_prob": metrics.answer_prob(true),
               "truth_ratio": None, "truth_ratio_source": None, "wrong_probs": None,
               "exact_memorization": metrics.exact_memorization(true),
               "extraction_strength": metrics.extraction_strength(true), "memo": memos[i],
               "mia": {"loss": metrics.mia_loss(true), "zlib": metrics.mia_zlib(true, f.answer),
                       "min_k": metrics.mia_min_k(true)}}
        if tr[i]:
            right = next(scored)
            wrong = [next(scored) for _ in tr[i][1]]
            row["truth_ratio"] = metrics.truth_ratio(right, wrong) if wrong else None
            row["truth_ratio_source"] = tr[i][2]
            row["wrong_probs"] = [metrics.answer_prob(w) for w in wrong]  # TOFU's normalised probability
        rows.append(row)
    for (i, para, _), a in zip(asked, answers):
        leak = probes.leaks(a, facts[i])
        if para is None:
            rows[i].update(generated=a, leak=leak, rougeL_recall=metrics.rougeL_recall(a, facts[i].answer),
                           keyword_hit=leak if facts[i].keywords else None)
        else:
            rows[i]["paraphrases"].append({"question": para, "generated": a, "leak": leak})
    for r in rows:
        r["paraphrase_hit"] = any(p["leak"] for p in r["paraphrases"]) if r["paraphrases"] else None
    return {"aggregate": aggregate(rows), "rows": rows}


def aggregate(rows: list[dict]) -> dict:
    paraphrase_leaks = [p["leak"] for r in rows for p in r["paraphrases"]]
    sources = sorted({r["truth_ratio_source"] for r in rows if r["truth_ratio_source"]})
    return {
        "n": len(rows),
        "rougeL_recall": stats.mean(r["rougeL_recall"] for r in rows),
        "answer_prob": stats.mean(r["answer_prob"] for r in rows),
        "keyword_hit_rate": stats.mean(r["keyword_hit"] for r in rows),
        "hit_rate": stats.mean(r["leak"] for r in rows),  # keyword, or the answer itself (probes.leaks)
        "paraphrase_hit_rate": stats.mean(paraphrase_leaks),
        "truth_ratio": stats.mean(r["truth_ratio"] for r in rows),
        "truth_ratio_source": ", ".join(sources) or None,
        "truth_ratio_n": sum(r["truth_ratio"] is not None for r in rows),
        "extraction_strength": stats.mean(r["extraction_strength"] for r in rows),
        "exact_memorization": stats.mean(r["exact_memorization"] for r in rows),
        "memo": stats.mean(r["memo"] for r in rows),
    }
