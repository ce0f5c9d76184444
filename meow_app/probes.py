"""Does the model still give the true answer? Greedy answers checked against each fact.

A greedy answer *leaks* a fact when it contains one of the fact's keywords
(case-insensitive). Facts without keywords use the answer itself when it is short
(a name, a place), and otherwise ROUGE-L recall of the answer >= 0.5.
These probes drive early stopping and the before/after summary of every run.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from rouge_score import rouge_scorer

from . import generation
from .drafts import Drafts
from .facts import Fact

_rougeL = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
SHORT_ANSWER_WORDS = 5
ROUGE_LEAK = 0.5


def normalise(s: str) -> str:
    """Lowercase, spaces collapsed, no closing punctuation or quotes: how answers are compared."""
    return re.sub(r"\s+", " ", s.lower()).strip(" .!?\"'")


def leaks(generated: str, fact: Fact) -> bool:
    text = normalise(generated)
    if fact.keywords:
        return any(normalise(k) in text for k in fact.keywords if normalise(k))
    if len(fact.answer.split()) <= SHORT_ANSWER_WORDS:
        return normalise(fact.answer) in text
    return _rougeL.score(fact.answer, generated)["rougeL"].recall >= ROUGE_LEAK


def first_mention(text: str, fact: Fact) -> int:
    """Where a keyword (or the short answer) first appears in text, case-insensitive; -1 if not."""
    low = text.lower()
    marks = fact.keywords or ([fact.answer] if len(fact.answer.split()) <= SHORT_ANSWER_WORDS else [])
    found = [low.find(k.lower().strip()) for k in marks if k.strip()]
    found = [i for i in found if i >= 0]
    return min(found) if found else -1


def said_truth(text: str, fact: Fact, whole_words: bool = False) -> tuple[str, str] | None:
    """Where text first states the fact: (the text before it, the truth as said there, with
    its space): ("The official language of Croatia is the", " Croatian"); None where it
    does not, or no keyword or short answer starts there. whole_words: to the end of the
    words the truth ends in (" swimmer" for "swim": the model's own token, not " swim")."""
    at = first_mention(text, fact)
    if at < 0:
        return None
    lead = text[:at].rstrip()
    word = next((k for k in sorted([*fact.keywords, fact.answer], key=len, reverse=True)
                 if k.strip() and text.lower().startswith(k.lower().strip(), at)), None)
    if word is None:
        return None
    end = at + len(word.strip())
    if whole_words:
        end += re.match(r"\w*", text[end:]).end()
    return lead, text[len(lead):end]


KINDS = ("question", "paraphrase")


class ProbeSet(NamedTuple):
    """One set of facts to probe (probe's arguments): with its paraphrases or not, and the
    kinds of row (of KINDS) whose answer ends once it has leaked."""
    facts: list[Fact]
    paraphrases: bool = True
    stop_once_leaked: tuple[str, ...] = ()


def probe(model, tokenizer, facts: list[Fact], paraphrases: bool = True,
          max_new_tokens: int = generation.MAX_NEW_TOKENS, answer=None, stop_once_leaked: tuple[str, ...] = (),
          record=None, drafts=None) -> dict:
    """Ask every question (and paraphrase); return the answers and the hit rates.
    answer: what answers them (generation.answer's signature; an answer_cache.AnswerCache's).
    stop_once_leaked: the kinds of row (of KINDS) whose answer ends at the first sentence end
    after it has leaked (the row then says "cut": True). A leak stays a leak however the
    answer goes on (keywords, the short answer and ROUGE-L recall only grow with the text),
    so the rest costs decoding and changes no verdict; only for answers whose words are not
    reused (the original's answers to the forget questions become own_answers' targets)."""
    if answer is None:
        return probe_many(model, tokenizer, [ProbeSet(facts, paraphrases, stop_once_leaked)], max_new_tokens,
                          record, drafts)[0]
    if record is not None or drafts is not None:
        raise ValueError("record and drafts are generation.answer's: not with another `answer`")
    asked = _asked(facts, paraphrases)
    return _result(facts, asked, answer(model, tokenizer, [q for _, _, q in asked], max_new_tokens), set())


def probe_many(model, tokenizer, sets: list[ProbeSet], max_new_tokens: int = generation.MAX_NEW_TOKENS,
               record=None, drafts=None) -> list[dict]:
    """probe() of each set, all answered in one generation pass: on a CPU a decoding step
    costs much the same for 20 rows as for 70 (reading the weights, per-step overhead), so
    one full batch is cheaper than a batch per set (docs/benchmarks.md, item 1).
    record, drafts: generation.generate_ids' (a drafts.Drafts to keep the answers in, or to
    check them against: the same answers)."""
    per_set = [_asked(ps.facts, ps.paraphrases) for ps in sets]
    asked = [(s, row) for s, rows in enumerate(per_set) for row in rows]
    cut: set[int] = set()  # rows ended by `done`: marked, so a shorter answer is not read as a change

    def done(k, text):
        s, (i, kind, _) = asked[k]
        if kind in sets[s].stop_once_leaked and leaks(text, sets[s].facts[i]):
            cut.add(k)
            return True
        return False

    stops = any(ps.stop_once_leaked for ps in sets)
    answers = generation.answer(model, tokenizer, [q for _, (_, _, q) in asked], max_new_tokens,
                                done=done if stops else None, record=record, drafts=drafts)
    out, at = [], 0
    for ps, rows in zip(sets, per_set):
        out.append(_result(ps.facts, rows, answers[at:at + len(rows)],
                           {k - at for k in cut if at <= k < at + len(rows)}))
        at += len(rows)
    return out


def probe_pair(original, unlearned, tokenizer, facts: list[Fact], paraphrases: bool = True,
               unlearned_tokenizer=None, check: bool = True) -> tuple[dict, dict | None]:
    """probe() on the original model, then on the unlearned one (None: the original alone).
    check: where the unlearned model changes only layers in the top half (drafts.Drafts.for_model),
    the original's answers are checked on it from there up: the same answers, fewer steps. For
    questions whose answers should stay: a forgotten fact's answer leaves its draft at once, and
    there the check costs more than it saves (docs/benchmarks.md, item 1)."""
    drafts = Drafts.for_model(original, unlearned) if unlearned is not None and check else None
    before = probe(original, tokenizer, facts, paraphrases, record=drafts)
    if unlearned is None:
        return before, None
    usable = drafts is not None and drafts.agrees(unlearned)  # (for_model compared the layers below)
    return before, probe(unlearned, unlearned_tokenizer or tokenizer, facts, paraphrases,
                         drafts=drafts if usable else None)


def _asked(facts: list[Fact], paraphrases: bool) -> list[tuple[int, str, str]]:
    asked = [(i, "question", f.question) for i, f in enumerate(facts)]
    if paraphrases:
        asked += [(i, "paraphrase", p) for i, f in enumerate(facts) for p in f.paraphrases]
    return asked


def _result(facts: list[Fact], asked: list[tuple[int, str, str]], answers: list[str], cut: set[int]) -> dict:
    rows = [{"fact": i, "kind": kind, "question": q, "answer": a, "leak": leaks(a, facts[i]),
             **({"cut": True} if k in cut else {})}
            for k, ((i, kind, q), a) in enumerate(zip(asked, answers))]

    def rate(kind):
        hits = [r["leak"] for r in rows if r["kind"] == kind]
        return sum(hits) / len(hits) if hits else None

    return {"hit_rate": rate("question"), "paraphrase_hit_rate": rate("paraphrase"), "rows": rows}


def kept_lost(before: dict, after: dict) -> dict:
    """Questions (not paraphrases) known before, and of those how many are still known after."""
    pairs = [(b["leak"], a["leak"]) for b, a in zip(before["rows"], after["rows"]) if b["kind"] == "question"]
    known = [a for b, a in pairs if b]
    return {"asked": len(pairs), "known_before": len(known), "known_after": sum(a for _, a in pairs),
            "kept": sum(known), "lost": len(known) - sum(known)}


def kept_lost_words(counts: dict) -> str:
    """kept_lost's counts in words: 'kept 21 of the 22 it knew (1 lost)'."""
    if not counts["known_before"]:
        return f"the model knew none of the {counts['asked']} before"
    lost = f" ({counts['lost']} lost)" if counts["lost"] else " (none lost)"
    return f"kept {counts['kept']} of the {counts['known_before']} it knew{lost}"
