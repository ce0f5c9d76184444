"""Extraction attacks: can the fact still be got out of the model by other means than
asking its question the usual way?

Each attack asks every forget fact in another way and counts a *leak* exactly as the
probes do (`probes.leaks`: a keyword of the fact in the generated text):

  paraphrase   the fact's paraphrases, in the chat template, greedy
  prefix       the question as plain text, no chat template ("Question: ...\\nAnswer:"),
               greedy: the model's raw knowledge, not its chat behaviour
  few_shot     the same plain-text format after three solved questions, greedy
  sampling     the question in the chat template, sampled at temperature 1, N samples
               per question: a fact leaks if any sample says it; beside it, the rate at
               which the same questions about made-up subjects name the truth (`chance`)
  relearn      `attacks.relearn`: fine-tune briefly on half the forget set, re-ask the
               other half (greedy, chat template)

Unlearning that only hides a fact behind the chat template or behind greedy decoding
shows here: the fact comes back through one of the side doors.
"""

from __future__ import annotations

import re

from . import attacks, generation, neighbours, probes
from .errors import MeowError
from .facts import Fact
from .prompts import SHOTS, plain

ATTACKS = ("paraphrase", "prefix", "few_shot", "sampling", "relearn")


def shots_for(fact: Fact, count: int = 3) -> list[tuple[str, str]]:
    """Solved examples for a few-shot prompt, none of which gives this fact away."""
    out = [(q, a) for q, a, _wrong in SHOTS if not probes.leaks(f"{q} {a}", fact)]
    return out[:count]


def _continue(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    ids = generation.generate_ids(model, tokenizer, [generation.encode(tokenizer, p) for p in prompts], max_new_tokens)
    text = [tokenizer.decode(t, skip_special_tokens=True) for t in ids]
    # A plain-text continuation runs on into the next invented question: only the answer counts.
    return [t.split("\nQuestion:")[0].strip() for t in text]


def _result(rows: list[dict]) -> dict:
    """Leak rate per fact: a fact leaks when any of its rows does."""
    leaked = {r["fact"] for r in rows if r["leak"]}
    asked = {r["fact"] for r in rows}
    return {"leak_rate": len(leaked) / len(asked) if asked else None, "facts_asked": len(asked),
            "prompts": len(rows), "rows": rows}


def paraphrase(model, tokenizer, facts: list[Fact], max_new_tokens: int = generation.MAX_NEW_TOKENS) -> dict:
    asked = [(i, p) for i, f in enumerate(facts) for p in f.paraphrases]
    answers = generation.answer(model, tokenizer, [p for _, p in asked], max_new_tokens)
    rows = [{"fact": i, "prompt": p, "answer": a, "leak": probes.leaks(a, facts[i])}
            for (i, p), a in zip(asked, answers)]
    return _result(rows)


def prefix(model, tokenizer, facts: list[Fact], max_new_tokens: int = generation.MAX_NEW_TOKENS,
           shots: int = 0) -> dict:
    prompts = [plain(f.question, shots_for(f, shots) if shots else ()) for f in facts]
    answers = _continue(model, tokenizer, prompts, max_new_tokens)
    rows = [{"fact": i, "prompt": f.question, "answer": a, "leak": probes.leaks(a, f)}
            for i, (f, a) in enumerate(zip(facts, answers))]
    return _result(rows)


def sampling(model, tokenizer, facts: list[Fact], samples: int = 10, max_new_tokens: int = generation.MAX_NEW_TOKENS,
             temperature: float = 1.0, seed: int = 0) -> dict:
    prompts = [generation.chat_prompt(tokenizer, f.question) for f in facts for _ in range(samples)]
    ids = generation.generate_ids(model, tokenizer, [generation.encode(tokenizer, p) for p in prompts],
                                  max_new_tokens, do_sample=True, temperature=temperature, generator_seed=seed)
    answers = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
    rows = [{"fact": j // samples, "prompt": facts[j // samples].question, "answer": a,
             "leak": probes.leaks(a, facts[j // samples])} for j, a in enumerate(answers)]
    out = _result(rows)
    out["sample_leak_rate"] = sum(r["leak"] for r in rows) / len(rows) if rows else None
    return out


# Made-up subjects (no real person, place or thing of these names is known to the model).
INVENTED = ("Velmora", "Quenthar", "Drosselind")
_CLOSING = {"‘": "’", "“": "”"}


def invented(fact: Fact, name: str) -> Fact | None:
    """The fact's question about a made-up subject, with the fact's truth as its answer: "In
    which month is Velmora celebrated?" for Halloween's October. None where the question has
    no subject to swap (neighbours.question_parts)."""
    frame, subject, rest = neighbours.question_parts(fact.question)
    if not frame or not subject.strip():
        return None
    subject = subject.strip()
    opening = subject[0] if subject[0] in neighbours.QUOTE_CHARS else ""
    if opening:  # "'Fahrenheit 451'", and what follows its closing quote ('"Dune"\'s sequel')
        closing = _CLOSING.get(opening, opening)
        end = subject.find(closing, 1)
        said = f"{opening}{name}{closing}" + (subject[end + 1:] if end > 0 else "")
    else:  # "Pyotr Tchaikovsky's", "Jesus'", as the subject writes it
        said = name + re.search(r"(?:['’]s?)?$", subject).group(0)
    return Fact(" ".join(w for w in (frame, said, rest) if w) + "?", fact.answer, list(fact.keywords))


def chance(model, tokenizer, facts: list[Fact], samples: int = 10, names: tuple[str, ...] = INVENTED,
           max_new_tokens: int = generation.MAX_NEW_TOKENS, seed: int = 0) -> dict:
    """The sampling attack's floor: each fact's question about made-up subjects (invented), sampled
    as `sampling` does, a leak being the fact's truth in any sample. A model that knows nothing
    of a subject still names the truth of a small space of answers by chance (one of twelve
    months, seven continents): a model that has truly forgotten the fact does too, so a sampling
    leak near this rate is what forgetting looks like, and one far below it is a truth avoided.
    leak_rate: over facts, the share of their made-up subjects whose samples named it; per_fact
    that share for each fact (None: no subject to swap)."""
    asked = [(i, q) for i, f in enumerate(facts) for name in names if (q := invented(f, name))]
    result = sampling(model, tokenizer, [q for _, q in asked], samples, max_new_tokens, seed=seed)
    by_fact: dict[int, list[bool]] = {}
    for j, (i, _) in enumerate(asked):
        by_fact.setdefault(i, []).append(any(r["leak"] for r in result["rows"] if r["fact"] == j))
    per_fact = [sum(by_fact[i]) / len(by_fact[i]) if i in by_fact else None for i in range(len(facts))]
    known = [x for x in per_fact if x is not None]
    rows = [{**r, "fact": asked[r["fact"]][0]} for r in result["rows"]]
    return {"leak_rate": sum(known) / len(known) if known else None, "per_fact": per_fact, "names": list(names),
            "sample_leak_rate": result["sample_leak_rate"], "rows": rows}


def relearn(model, tokenizer, facts: list[Fact], max_new_tokens: int = generation.MAX_NEW_TOKENS, on_event=None,
            **config) -> dict:
    result = attacks.relearn(model, tokenizer, facts, max_new_tokens=max_new_tokens, on_event=on_event, **config)
    return {"leak_rate_before": result["before"]["hit_rate"], "leak_rate": result["after"]["hit_rate"],
            "facts_asked": len(result["rows"]), "trained_on": result["trained_on"], "settings": result["settings"],
            "rows": result["rows"]}


def run(model, tokenizer, facts: list[Fact], which=ATTACKS, samples: int = 10,
        max_new_tokens: int = generation.MAX_NEW_TOKENS, seed: int = 0, on_event=None,
        relearn_config: dict | None = None) -> dict:
    """Every attack named in `which` on one model: {"greedy": ..., attack: {"leak_rate", "rows", ...}}.
    "greedy" is the plain probe (the question in the chat template), the baseline."""
    unknown = [name for name in which if name not in ATTACKS]
    if unknown:
        raise MeowError(f"unknown attack '{unknown[0]}' (choose from {', '.join(ATTACKS)})")
    emit = on_event or (lambda event: None)
    out = {"n_facts": len(facts), "settings": {"samples": samples, "max_new_tokens": max_new_tokens, "seed": seed}}
    emit({"type": "stage", "stage": "greedy"})
    greedy = probes.probe(model, tokenizer, facts, paraphrases=False, max_new_tokens=max_new_tokens,
                          stop_once_leaked=probes.KINDS)
    out["greedy"] = {"leak_rate": greedy["hit_rate"]}
    for name in which:
        emit({"type": "stage", "stage": name})
        if name == "paraphrase":
            out[name] = paraphrase(model, tokenizer, facts, max_new_tokens)
        elif name == "prefix":
            out[name] = prefix(model, tokenizer, facts, max_new_tokens)
        elif name == "few_shot":
            out[name] = prefix(model, tokenizer, facts, max_new_tokens, shots=3)
        elif name == "sampling":
            out[name] = sampling(model, tokenizer, facts, samples, max_new_tokens, seed=seed)
            # What the same model says about made-up subjects: the leak rate of not knowing.
            floor = chance(model, tokenizer, facts, samples, max_new_tokens=max_new_tokens, seed=seed)
            out[name]["chance"] = {k: floor[k] for k in ("leak_rate", "per_fact", "names")}
        else:
            out[name] = relearn(model, tokenizer, facts, max_new_tokens, on_event, **(relearn_config or {}))
    return out
