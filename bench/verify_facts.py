"""Check which facts a model knows: ask each question and paraphrase, look for a keyword.

A fact "leaks" when the greedy chat answer (48 new tokens by default) contains any of its
keywords, case-insensitive substring match; a fact without keywords uses its answer.

    PYTHONPATH=. .venv/bin/python bench/verify_facts.py assets/facts/famous_facts.jsonl
    PYTHONPATH=. .venv/bin/python bench/verify_facts.py assets/facts/*.jsonl --show-answers

Prints one line per fact (Q = the question, P1, P2, ... = the paraphrases; HIT or miss)
and, per file, the hit rates on questions, on paraphrases, and the share of facts that
hit on the question and on at least one paraphrase (the bar the bundled sets were kept by;
a fact without paraphrases, as in the retain and unseen sets, needs the question only).
Exits 1 with --require-all when any fact misses that bar.
"""

from __future__ import annotations

import argparse
import sys

from meow_app import generation, models
from meow_app.facts import load_facts


def keywords_of(fact) -> list[str]:
    return fact.keywords or [fact.answer]


def hits(text: str, keywords: list[str]) -> bool:
    low = text.lower()
    return any(k.lower() in low for k in keywords)


def verify_file(lm, path: str, max_new_tokens: int, batch_size: int, show_answers: bool) -> dict:
    facts = load_facts(path)
    prompts, owner = [], []
    for i, fact in enumerate(facts):
        for text in [fact.question, *fact.paraphrases]:
            prompts.append(text)
            owner.append(i)
    outputs = generation.answer(lm.model, lm.tokenizer, prompts, max_new_tokens=max_new_tokens,
                                batch_size=batch_size)
    per_fact: list[list[bool]] = [[] for _ in facts]
    answers: list[list[str]] = [[] for _ in facts]
    for i, out in zip(owner, outputs):
        per_fact[i].append(hits(out, keywords_of(facts[i])))
        answers[i].append(out)

    print(f"\n== {path}: {len(facts)} facts, {len(prompts)} prompts")
    q_hits = p_hits = p_total = kept = 0
    for fact, flags, outs in zip(facts, per_fact, answers):
        q, ps = flags[0], flags[1:]
        q_hits += q
        p_hits += sum(ps)
        p_total += len(ps)
        ok = q and (any(ps) or not ps)  # no paraphrases (retain, unseen sets): the question alone
        kept += ok
        marks = ["Q:" + ("HIT" if q else "miss")] + [f"P{j}:" + ("HIT" if h else "miss") for j, h in enumerate(ps, 1)]
        print(f"{'ok ' if ok else 'BAD'} {' '.join(marks):<28} {fact.question}  [{', '.join(keywords_of(fact))}]")
        if show_answers:
            for label, out in zip(["Q", *[f"P{j}" for j in range(1, len(ps) + 1)]], outs):
                print(f"      {label}: {out[:200]!r}")
    n = len(facts)
    summary = {
        "file": path, "facts": n,
        "question_hit_rate": q_hits / n if n else 0.0,
        "paraphrase_hit_rate": p_hits / p_total if p_total else 0.0,
        "fact_pass_rate": kept / n if n else 0.0,
    }
    print(f"-- question hit rate   {q_hits}/{n} = {summary['question_hit_rate']:.1%}")
    print(f"-- paraphrase hit rate {p_hits}/{p_total} = {summary['paraphrase_hit_rate']:.1%}")
    print(f"-- facts passing (question and >=1 paraphrase, if any) {kept}/{n} = {summary['fact_pass_rate']:.1%}")
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="facts files (JSONL, JSON, CSV or hf:NAME)")
    ap.add_argument("--model", default=None, help="model spec for meow_app.models.load (default: embedded)")
    ap.add_argument("--max-new-tokens", type=int, default=generation.MAX_NEW_TOKENS)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--show-answers", action="store_true", help="print the generated answers too")
    ap.add_argument("--require-all", action="store_true", help="exit 1 if any fact fails the bar")
    args = ap.parse_args(argv)

    lm = models.load(args.model)
    summaries = [verify_file(lm, f, args.max_new_tokens, args.batch_size, args.show_answers) for f in args.files]
    if len(summaries) > 1:
        print("\n== summary")
        for s in summaries:
            print(f"{s['file']}: {s['facts']} facts, question {s['question_hit_rate']:.1%}, "
                  f"paraphrase {s['paraphrase_hit_rate']:.1%}, passing {s['fact_pass_rate']:.1%}")
    if args.require_all and any(s["fact_pass_rate"] < 1.0 for s in summaries):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
