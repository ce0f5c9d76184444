"""General ability: a small shipped set scored before and after, to show what else changed.

assets/general/questions.jsonl: everyday questions with keywords, answered greedily and
checked like the forget probes (probes.leaks). assets/general/multiple_choice.jsonl:
items scored by likelihood, not generation: the option whose answer tokens have the
lowest mean NLL after the question is the model's choice (one batched forward pass).
Only items the embedded model gets right are shipped (assets/general/README.md), so on
the original embedded model both accuracies are 100% and any drop is damage.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import generation, metrics, neighbours, probes
from .facts import Fact, load_facts, read_lines

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "general"
# General prompts whose original answers the methods train on as anchors (TrainConfig.anchors).
ANCHOR_PROMPTS = ASSETS.parent / "anchor_prompts.txt"
# Pools a method trains on (neighbour questions, anchor prompts): a question from them says
# nothing about what a run kept, so the default check leaves them out.
TRAINING_POOLS = (neighbours.POOL, ANCHOR_PROMPTS)


def held_out_questions(forget: list[Fact] = ()) -> list[Fact]:
    """The shipped everyday questions that no method trains on and that mention no fact being
    forgotten: asked before and after every run, so collateral damage shows without a keep set."""
    pooled = {q for pool in TRAINING_POOLS for q in read_lines(pool)}
    return [f for f in load_facts(ASSETS / "questions.jsonl") if f.question not in pooled
            and not any(probes.leaks(f"{f.question} {f.answer}", g) for g in forget)]


def load_multiple_choice(path=ASSETS / "multiple_choice.jsonl") -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def multiple_choice(model, tokenizer, items: list[dict]) -> list[int]:
    """The option index the model finds most likely for each item."""
    pairs = [(it["question"], opt) for it in items for opt in it["options"]]
    nll = iter(metrics.mean_nll(s) for s in metrics.teacher_forced(model, tokenizer, pairs))
    picks = []
    for it in items:
        scores = [next(nll) for _ in it["options"]]
        picks.append(scores.index(min(scores)))
    return picks


def score(model, tokenizer, max_new_tokens: int = generation.MAX_NEW_TOKENS, record=None, drafts=None) -> dict:
    """Accuracy on the shipped questions and multiple-choice items, with the rows.
    record, drafts: the greedy answers' (generation.generate_ids': the same answers)."""
    questions = load_facts(ASSETS / "questions.jsonl")
    answers = generation.answer(model, tokenizer, [f.question for f in questions], max_new_tokens, record=record,
                                drafts=drafts)
    q_rows = [{"question": f.question, "answer": f.answer, "generated": a, "correct": probes.leaks(a, f)}
              for f, a in zip(questions, answers)]
    items = load_multiple_choice()
    picks = multiple_choice(model, tokenizer, items)
    mc_rows = [{"question": it["question"], "answer": it["options"][it["answer"]], "picked": it["options"][p],
                "correct": p == it["answer"]} for it, p in zip(items, picks)]
    return {"questions_accuracy": sum(r["correct"] for r in q_rows) / len(q_rows),
            "multiple_choice_accuracy": sum(r["correct"] for r in mc_rows) / len(mc_rows),
            "questions": q_rows, "multiple_choice": mc_rows}
