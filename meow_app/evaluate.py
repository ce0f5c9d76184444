"""Score fact sets on one or two models and build the report (a plain dict, saved as JSON).

    report = compare(original, unlearned, tokenizer, forget, retain, holdout)
    report["sets"]["forget"]["original"]["aggregate"]["rougeL_recall"]
    report["verdicts"]["forget"]   # one plain-words verdict per forget fact

The original model is always scored next to the unlearned one: a lone number means
little to a non-expert, a before/after pair does. Per set, all greedy answers (questions
and paraphrases) are generated in one batched call, and all likelihoods come from one
batched teacher-forced pass (metrics.teacher_forced).
"""

from __future__ import annotations

import time

from . import generation, memo, metrics, probes, stats
from .errors import MeowError
from .facts import Fact

# Greedy answer length. The spec's ROUGE budget is 200 new tokens (what `tofu` uses on a
# GPU); on CPU one rambling answer makes its whole batch run that long, and a fact leaks
# in the first sentence, so the default is the unlearning probes' 48: the verdicts then
# agree with the run's own before/after probes.
MAX_NEW_TOKENS = 48
AGGREGATES = ["rougeL_recall", "answer_prob", "keyword_hit_rate", "hit_rate", "paraphrase_hit_rate",
              "truth_ratio", "extraction_strength", "exact_memorization", "memo"]

FORGOTTEN = "forgotten"
STILL_KNOWN = "still known"
PARAPHRASE = "leaks under paraphrase"
STILL_LIKELY = "hidden, but still likely"
RELEARNED = "comes back after relearning"
NOT_KNOWN = "not known before"
KEPT = "kept"
KNOWN = "known"                      # the three verdicts of a one-model report
KNOWN_REWORDED = "known when reworded"
UNKNOWN = "not known"
LOST = "lost"


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
              memo_stride: int = 5, batch_size: int = 16) -> dict:
    """Every per-fact measure of every fact, and the set's aggregates: {"aggregate", "rows"}."""
    if not facts:
        raise MeowError("nothing to evaluate: the fact set is empty")
    # 1. Greedy answers to every question and paraphrase, one batched generation.
    asked = [(i, None, f.question) for i, f in enumerate(facts)]
    asked += [(i, p, p) for i, f in enumerate(facts) for p in f.paraphrases]
    answers = generation.answer(model, tokenizer, [q for _, _, q in asked], max_new_tokens, batch_size=128)
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


def mia(forget_rows: list[dict], holdout_rows: list[dict]) -> dict:
    """Membership-inference AUC per attack, forget = members, holdout = non-members.
    0.5: the model treats forgotten facts like facts it never saw."""
    return {name: stats.auc([r["mia"][name] for r in forget_rows], [r["mia"][name] for r in holdout_rows])
            for name in ("loss", "zlib", "min_k")}


def compare(original, unlearned, tokenizer, forget: list[Fact], retain: list[Fact] | None = None,
            holdout: list[Fact] | None = None, *, names: dict | None = None, general: bool = True,
            with_memo: bool = True, max_new_tokens: int = MAX_NEW_TOKENS, relearn: dict | None = None,
            on_event=None) -> dict:
    """The report: every set scored on the original and the unlearned model side by side.

    `unlearned=None` scores one model only (side "model"). `relearn` (keyword arguments of
    attacks.relearn, {} for the defaults) runs the relearning attack on the unlearned model.
    """
    emit = on_event or (lambda event: None)
    if relearn is not None and unlearned is not None:
        from . import attacks

        attacks.split(forget, relearn.get("fraction", 0.5))  # fail now, not after the whole evaluation
    sides = {"original": original, "unlearned": unlearned} if unlearned is not None else {"model": original}
    sets = {"forget": forget, "retain": retain, "holdout": holdout}
    report = {"format": "meow-evaluation/1", "sides": list(sides),
              "models": {k: (names or {}).get(k, k) for k in sides},
              "settings": {"max_new_tokens": max_new_tokens, "memo": with_memo, "memo_stride": 5,
                           "mia_min_k": metrics.MIN_K},
              "sets": {}, "timings": {}}
    for set_name, facts in sets.items():
        if not facts:
            continue
        report["sets"][set_name] = {}
        for side, model in sides.items():
            emit({"type": "stage", "stage": f"score {set_name} on {side}"})
            t = time.perf_counter()
            report["sets"][set_name][side] = score_set(model, tokenizer, facts, max_new_tokens,
                                                       with_memo and set_name == "forget")
            report["timings"][f"{set_name}/{side}"] = round(time.perf_counter() - t, 2)
    if holdout:
        report["mia"] = {side: mia(report["sets"]["forget"][side]["rows"], report["sets"]["holdout"][side]["rows"])
                         for side in sides}
    if general:
        from . import general as general_mod

        report["general"] = {}
        for side, model in sides.items():
            emit({"type": "stage", "stage": f"general ability on {side}"})
            t = time.perf_counter()
            report["general"][side] = general_mod.score(model, tokenizer)
            report["timings"][f"general/{side}"] = round(time.perf_counter() - t, 2)
    if relearn is not None and unlearned is not None:
        from . import attacks

        emit({"type": "stage", "stage": "relearning attack"})
        t = time.perf_counter()
        report["relearn"] = attacks.relearn(unlearned, tokenizer, forget, max_new_tokens=max_new_tokens, **relearn)
        report["timings"]["relearn"] = round(time.perf_counter() - t, 2)
    report["verdicts"] = verdicts(report)
    report["timings"]["total"] = round(sum(report["timings"].values()), 2)
    return report


def _fact_verdict(before: dict | None, after: dict, relearned: dict | None) -> tuple[str, str]:
    para_after = [p for p in after["paraphrases"] if p["leak"]]
    if before is None:  # one model alone: what it knows, not what it forgot
        if after["leak"]:
            return KNOWN, "The model gives the true answer."
        if para_after:
            return KNOWN_REWORDED, f"Only {len(para_after)} rewording(s) get the true answer."
        return UNKNOWN, "Neither the question nor any rewording gets the true answer."
    if before is not None and not before["leak"] and not any(p["leak"] for p in before["paraphrases"]):
        return NOT_KNOWN, "The original model did not give this answer either, so there was nothing to forget."
    if after["leak"]:
        return STILL_KNOWN, "The model still gives the true answer to the question."
    if para_after:
        return PARAPHRASE, f"The direct question is refused or answered wrongly, but {len(para_after)} rewording(s) still get the true answer."
    if relearned is not None and relearned["leak"]:
        return RELEARNED, "Gone from the answers, but a short re-training on the other forgotten facts brings it back."
    if before is not None and after["answer_prob"] >= 0.5 * before["answer_prob"] and before["answer_prob"] > 0.05:
        return STILL_LIKELY, ("The model no longer says it, but it still rates the true answer as likely "
                              f"({after['answer_prob']:.2f} vs {before['answer_prob']:.2f} before).")
    return FORGOTTEN, "Neither the question nor any rewording gets the true answer any more."


def verdicts(report: dict) -> dict:
    """Plain-words verdicts: per forget fact (forgotten, still known, ...) and per retain fact (kept, lost)."""
    sides = report["sides"]
    after_side = sides[-1]
    before_side = "original" if "unlearned" in sides else None
    out = {}
    forget = report["sets"].get("forget")
    if forget:
        relearned = {r["question"]: r for r in report.get("relearn", {}).get("rows", [])}
        rows = []
        for j, after in enumerate(forget[after_side]["rows"]):
            before = forget[before_side]["rows"][j] if before_side else None
            verdict, detail = _fact_verdict(before, after, relearned.get(after["question"]))
            rows.append({"question": after["question"], "answer": after["answer"], "verdict": verdict,
                         "detail": detail, "before": before and before["generated"], "after": after["generated"]})
        out["forget"] = rows
    retain = report["sets"].get("retain")
    if retain and before_side:
        rows = []
        for before, after in zip(retain[before_side]["rows"], retain[after_side]["rows"]):
            verdict = NOT_KNOWN if not before["leak"] else (KEPT if after["leak"] else LOST)
            rows.append({"question": after["question"], "answer": after["answer"], "verdict": verdict,
                         "before": before["generated"], "after": after["generated"]})
        out["retain"] = rows
    return out
