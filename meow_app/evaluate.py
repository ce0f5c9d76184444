"""Score fact sets on one or two models and build the report (a plain dict, saved as JSON).

    report = compare(original, unlearned, tokenizer, forget, retain, holdout)
    report["sets"]["forget"]["original"]["aggregate"]["rougeL_recall"]
    report["verdicts"]["forget"]   # one plain-words verdict per forget fact

The original model is always scored next to the unlearned one: a lone number means
little to a non-expert, a before/after pair does. Each set is scored by
scoring.score_set (re-exported here, with its helpers, as evaluate's API).
"""

from __future__ import annotations

from . import attacks, metrics, stats
from .drafts import Drafts
from .facts import Fact
from .progress import Stages
from .scoring import MAX_NEW_TOKENS, MEMO_STRIDE, aggregate, score_set, truth_ratio_answers  # noqa: F401 (evaluate's API)

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


def probe_verdict(kind: str, before: bool, after: bool) -> str:
    """The verdict on one probed question from its leak flags alone (probes.probe: the true
    answer given before / after), in the words above. `kind`: "question" or "paraphrase" of a
    forget fact, or "unrelated" (a question that should keep its answer). The app's
    before/after table; the full per-fact verdicts of a report are `verdicts`."""
    if kind == "unrelated":
        return KEPT if after else (LOST if before else NOT_KNOWN)
    if not before and not after:
        return NOT_KNOWN
    if not after:
        return FORGOTTEN
    return PARAPHRASE if kind == "paraphrase" else STILL_KNOWN


def mia(forget_rows: list[dict], holdout_rows: list[dict]) -> dict:
    """Membership-inference AUC per attack, forget = members, holdout = non-members.
    0.5: the model treats forgotten facts like facts it never saw."""
    return {name: stats.auc([r["mia"][name] for r in forget_rows], [r["mia"][name] for r in holdout_rows])
            for name in ("loss", "zlib", "min_k")}


def new_report(sides: dict, names: dict | None, settings: dict) -> dict:
    """The report's frame: its sides (side name -> model) and their display names, the settings."""
    return {"format": "meow-evaluation/1", "sides": list(sides), "models": {k: (names or {}).get(k, k) for k in sides},
            "settings": settings, "sets": {}}


def score_sets(sides: dict, tokenizer, named_sets: dict, max_new_tokens: int = MAX_NEW_TOKENS,
               with_memo: bool = False, memo_stride: int = MEMO_STRIDE, stages: Stages | None = None,
               side_options=None) -> dict:
    """Every named fact set scored on every side: {set: {side: score_set(...)}}. Empty sets are
    left out; MEMO (with_memo) only on the set named "forget". side_options(side): more of
    score_set's keyword arguments for that side (compare's drafts)."""
    stages = stages or Stages()
    out = {}
    for set_name, facts in named_sets.items():
        if not facts:
            continue
        out[set_name] = {}
        for side, model in sides.items():
            with stages(f"score {set_name} on {side}", key=f"{set_name}/{side}"):
                out[set_name][side] = score_set(model, tokenizer, facts, max_new_tokens,
                                                with_memo and set_name == "forget", memo_stride,
                                                **(side_options(side) if side_options else {}))
    return out


def with_drafts(original, unlearned):
    """compare's side_options: the original's greedy answers are kept (record), and where the
    unlearned model is the original below some layer of the top half (drafts.Drafts.for_model)
    they are checked on it from there up (drafts.py: the same answers, for far fewer decoding
    steps where it answers as the original did)."""
    drafts = Drafts.for_model(original, unlearned)
    usable = None  # (asked once, the first time the unlearned side is scored)

    def options(side: str) -> dict:
        nonlocal usable
        if drafts is None:
            return {}
        if side == "original":
            return {"record": drafts}
        if usable is None:
            usable = drafts.agrees(unlearned)  # (for_model compared the layers below)
        return {"drafts": drafts} if usable else {}
    return options


def compare(original, unlearned, tokenizer, forget: list[Fact], retain: list[Fact] | None = None,
            holdout: list[Fact] | None = None, *, names: dict | None = None, general: bool = True,
            with_memo: bool = True, max_new_tokens: int = MAX_NEW_TOKENS, memo_stride: int = MEMO_STRIDE,
            relearn: dict | None = None, on_event=None) -> dict:
    """The report: every set scored on the original and the unlearned model side by side.

    `unlearned=None` scores one model only (side "model"). `relearn` (keyword arguments of
    attacks.relearn, {} for the defaults) runs the relearning attack on the unlearned model.
    """
    stages = Stages(on_event)
    if relearn is not None and unlearned is not None:
        attacks.split(forget, relearn.get("fraction", 0.5))  # fail now, not after the whole evaluation
    sides = {"original": original, "unlearned": unlearned} if unlearned is not None else {"model": original}
    report = new_report(sides, names, {"max_new_tokens": max_new_tokens, "memo": with_memo,
                                       "memo_stride": memo_stride, "mia_min_k": metrics.MIN_K})
    named_sets = {"forget": forget, "retain": retain, "holdout": holdout}
    options = with_drafts(original, unlearned) if unlearned is not None else None
    report["sets"] = score_sets(sides, tokenizer, named_sets, max_new_tokens, with_memo, memo_stride, stages, options)
    if holdout:
        report["mia"] = {side: mia(report["sets"]["forget"][side]["rows"], report["sets"]["holdout"][side]["rows"])
                         for side in sides}
    if general:
        from . import general as general_mod

        report["general"] = {}
        for side, model in sides.items():
            with stages(f"general ability on {side}", key=f"general/{side}"):
                report["general"][side] = general_mod.score(model, tokenizer, **(options(side) if options else {}))
    if relearn is not None and unlearned is not None:
        with stages("relearning attack", key="relearn"):
            report["relearn"] = attacks.relearn(unlearned, tokenizer, forget, max_new_tokens=max_new_tokens,
                                                **relearn)
    report["timings"] = stages.rounded()
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
        return PARAPHRASE, (f"The direct question is refused or answered wrongly, but {len(para_after)} rewording(s) "
                            "still get the true answer.")
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
