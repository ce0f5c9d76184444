"""The TOFU protocol (Maini et al. 2024): learn fictitious authors, forget some, measure.

1. target  = base model fine-tuned on `full` (it now knows 200 made-up authors);
2. retain  = base model fine-tuned on the retain split only (never saw the forget authors),
             or, for Llama-2-7b / Phi-1.5, TOFU's own logs of that model (eval_logs/);
3. unlearned = the target after any unlearning method on `forget01/05/10`;
4. forget quality = KS-test p-value between the unlearned and the retain model's truth
   ratios on the forget split (high = indistinguishable from never having learned);
   model utility = harmonic mean of 9 numbers (probability, ROUGE-L recall and
   truth-ratio score on retain, real authors and world facts).

With `authors=N` everything is cut to N authors (the forget authors from the end of the
split plus the first retain authors, 20 questions each) and at most `eval_rows` rows per
utility set, so it runs on a CPU; the report says so. Numbers are then NOT comparable
with published ones; only the full protocol on a GPU is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import evaluate, models, stats
from .errors import MeowError
from .facts import load_facts
from .train import TrainConfig

QA_PER_AUTHOR = 20
SPLITS = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
# TOFU's own retain-model logs, by a substring of the model name.
REFERENCE_LOGS = {"llama-2-7b": "llama2-7b", "phi-1_5": "phi", "phi-1.5": "phi"}
# The fine-tuning recipe: TOFU's (5 epochs, lr 1e-5, batch 32, weight decay 0.01) for the full protocol;
# on the small CPU version a higher learning rate, or 80 questions are not learned in 5 epochs.
RECIPE_GPU = dict(epochs=5, lr=1e-5, batch_size=32, weight_decay=0.01, train_only="", seed=0)
RECIPE_CPU = dict(epochs=3, lr=5e-4, batch_size=16, weight_decay=0.01, train_only="", seed=0)
# Unlearning on the reduced CPU version: 2 copies per fact (MEOW's num_batch) and at most
# 3 epochs instead of 8 and 6, so `--authors 4` takes minutes, not an hour.
UNLEARN_CPU = dict(num_batch=2, epochs=3)
EVAL_SETS = ("forget", "retain_eval", "real_authors", "world_facts")


def default_data_dir() -> Path:
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tofu"


def _load(data_dir: Path, name: str):
    path = Path(data_dir) / f"{name}.jsonl"
    if not path.is_file():
        raise MeowError(f"{path}: no such TOFU file (is --data the TOFU folder?)")
    return load_facts(path, max_facts=10_000)


def load_sets(data_dir, split: str = "forget01", authors: int | None = None, eval_rows: int = 20) -> dict:
    """Training and evaluation sets of the protocol, cut to `authors` when given."""
    if split not in SPLITS:
        raise MeowError(f"unknown TOFU split '{split}'; choose one of: {', '.join(SPLITS)}")
    if eval_rows < 1:
        raise MeowError(f"--eval-rows must be at least 1, got {eval_rows}")
    forget = _load(data_dir, f"{split}_perturbed")
    sets = {"retain_eval": _load(data_dir, "retain_perturbed"),
            "real_authors": _load(data_dir, "real_authors_perturbed"),
            "world_facts": _load(data_dir, "world_facts_perturbed")}
    if authors is None:
        sets.update(full=_load(data_dir, "full"), retain_train=_load(data_dir, SPLITS[split]), forget=forget)
        return sets
    n_forget = max(1, round(authors * len(forget) / (200 * QA_PER_AUTHOR)))
    if authors < 2 or n_forget >= authors:
        raise MeowError(f"--authors must be at least 2 (one to forget, one to keep), got {authors}")
    n_retain = (authors - n_forget) * QA_PER_AUTHOR
    forget = forget[-n_forget * QA_PER_AUTHOR:]
    retain_train = _load(data_dir, "full")[:n_retain]
    sets.update(full=retain_train + forget, retain_train=retain_train, forget=forget,
                retain_eval=sets["retain_eval"][:min(n_retain, eval_rows)],
                real_authors=sets["real_authors"][:eval_rows], world_facts=sets["world_facts"][:eval_rows])
    return sets


def reference_truth_ratios(data_dir, model_name: str, split: str) -> tuple[list[float], str] | None:
    """Forget-split truth ratios of TOFU's retain model for this base model, from eval_logs/."""
    key = next((v for k, v in REFERENCE_LOGS.items() if k in model_name.lower()), None)
    if key is None:
        return None
    path = Path(data_dir) / "eval_logs" / f"{key}_{SPLITS[split]}_wd0.01_eval_log_aggregated.json"
    if not path.is_file():
        return None
    return truth_ratios_from_log(json.loads(path.read_text())["eval_log_forget.json"]), path.name


def truth_ratios_from_log(log: dict) -> list[float]:
    """P_wrong / P_right per question from a TOFU log part (its per-token mean losses)."""
    out = []
    for k, para in log["avg_paraphrased_loss"].items():
        wrong = log["average_perturb_loss"][k]
        out.append(math.exp(para - sum(wrong) / len(wrong)))
    return out


def model_utility(scored: dict) -> dict:
    """TOFU's model utility from score_set results of retain_eval, real_authors, world_facts."""
    parts = {}
    for name, result in scored.items():
        rows = result["rows"]
        if name == "retain_eval":
            prob = stats.mean(r["answer_prob"] for r in rows)
        else:  # the true answer's share of the probability among true + wrong answers
            prob = stats.mean(r["answer_prob"] / (r["answer_prob"] + sum(r["wrong_probs"])) for r in rows)
        parts[f"{name}/prob"] = prob
        parts[f"{name}/rougeL_recall"] = stats.mean(r["rougeL_recall"] for r in rows)
        parts[f"{name}/truth_ratio_score"] = stats.mean(max(0.0, 1.0 - r["truth_ratio"]) for r in rows)
    return {"model_utility": stats.harmonic_mean(parts.values()), **parts}


def truth_ratios(model, tokenizer, facts) -> list[float]:
    """Truth ratios only (one teacher-forced pass, no generation): what the retain model needs."""
    from . import metrics

    pairs = []
    for f in facts:
        right, wrong, _ = evaluate.truth_ratio_answers(f)
        pairs += [(f.question, right)] + [(f.question, w) for w in wrong]
    scored = iter(metrics.teacher_forced(model, tokenizer, pairs))
    out = []
    for f in facts:
        right = next(scored)
        out.append(metrics.truth_ratio(right, [next(scored) for _ in evaluate.truth_ratio_answers(f)[1]]))
    return out


def reference_models(base, tok, sets: dict, recipe: dict, data_dir, model: str, split: str, authors, emit):
    """The target (fine-tuned on `full`) and the retain model's forget-split truth ratios
    (TOFU's own logs where they exist, else a retain model trained here), with notes."""
    from . import finetune

    emit({"type": "stage", "stage": f"fine-tune target on {len(sets['full'])} questions"})
    target = finetune.finetune(base.model, tok, sets["full"], TrainConfig(**recipe), emit)
    reference = None if authors is not None else reference_truth_ratios(data_dir, model, split)
    if reference:
        return target, reference[0], reference[1], f"Retain-model truth ratios from TOFU's log {reference[1]}."
    emit({"type": "stage", "stage": f"fine-tune retain model on {len(sets['retain_train'])} questions"})
    retain_model = finetune.finetune(base.model, tok, sets["retain_train"], TrainConfig(**recipe), emit)
    return (target, truth_ratios(retain_model, tok, sets["forget"]), "trained here",
            "Retain model trained here (same recipe, retain questions only).")


def unlearn_target(target_lm, sets: dict, out_dir: Path, method: str, authors, overrides: dict | None, emit) -> dict:
    """Unlearn the target with any method. TOFU's perturbed answers are ready-made false
    answers, so inverting methods train on those (no generation); MEMO selection is kept
    short (few cuts, 8 tokens) because TOFU answers are long."""
    from . import methods
    from .pipeline import InvertSettings, SelectSettings, unlearn

    method_obj = methods.get(method)
    forget = sets["forget"]
    for f in forget:
        f.inverted = list(f.extra["perturbed_answer"])
    emit({"type": "stage", "stage": f"unlearn with {method}"})
    small = UNLEARN_CPU if authors is not None else {}
    config = TrainConfig(**{**method_obj.defaults, **method_obj.tofu_defaults, **small, **(overrides or {})})
    retain = sets["retain_train"][:len(forget) * 4] if method_obj.uses_retain else None
    return unlearn(forget, out_dir, method, retain=retain, config=config,
                   invert_settings=InvertSettings(answer_style=False, generator="local"),
                   select_settings=SelectSettings(top_k=3, memo_stride=50, memo_length=8),
                   loaded=target_lm, on_event=emit)


def protocol_numbers(report: dict, retain_tr: list[float]) -> dict:
    """Forget quality and model utility of each side of a report scored on the TOFU sets."""
    out = {}
    for side in report["sides"]:
        tr = [r["truth_ratio"] for r in report["sets"]["forget"][side]["rows"]]
        out[f"forget_quality_{side}"] = stats.ks_pvalue(tr, retain_tr)
        utility = model_utility({k: report["sets"][k][side] for k in ("retain_eval", "real_authors", "world_facts")})
        out[f"model_utility_{side}"] = utility["model_utility"]
        out[f"utility_parts_{side}"] = utility
    return out


def run(out_dir, model: str = "embedded", method: str = "meow", split: str = "forget01", authors: int | None = None,
        data_dir=None, device: str | None = None, eval_rows: int = 20, recipe: dict | None = None,
        unlearn_overrides: dict | None = None, on_event=None) -> dict:
    """The whole protocol; writes OUT/report.json (+ OUT/run/, the unlearned model) and returns the report."""
    from . import methods

    emit = on_event or (lambda event: None)
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if not data_dir.is_dir():
        raise MeowError(f"{data_dir}: TOFU data folder not found (pass --data DIR)")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise MeowError(f"{out_dir} already exists and is not empty: choose a new folder")
    methods.get(method)  # an unknown method fails before the fine-tuning
    sets = load_sets(data_dir, split, authors, eval_rows)
    base = models.load(model, device)
    recipe = {**(RECIPE_GPU if authors is None else RECIPE_CPU), **(recipe or {})}
    max_new = 200 if base.device.type == "cuda" else evaluate.MAX_NEW_TOKENS
    tok = base.tokenizer
    notes = []
    if authors is not None:
        notes.append(f"Reduced TOFU for a CPU: {authors} authors ({len(sets['forget'])} forget questions, "
                     f"{len(sets['retain_train'])} retain questions), at most {eval_rows} rows per utility set. "
                     "Not comparable with published TOFU numbers.")
    target, retain_tr, reference, note = reference_models(base, tok, sets, recipe, data_dir, model, split,
                                                          authors, emit)
    notes.append(note)
    del base
    target_lm = models.LoadedModel(target, tok, f"{model} fine-tuned on TOFU", next(target.parameters()).device)
    run_info = unlearn_target(target_lm, sets, out_dir / "run", method, authors, unlearn_overrides, emit)
    unlearned = models.load(str(out_dir / "run"), device).model

    emit({"type": "stage", "stage": "evaluate"})
    sides = {"original": target, "unlearned": unlearned}
    names = {"original": f"{model} fine-tuned on TOFU ({'full' if authors is None else f'{authors} authors'})",
             "unlearned": f"the same after {method} on {split}"}
    report = evaluate.new_report(sides, names, {"max_new_tokens": max_new, "recipe": recipe, "method": method,
                                                "split": split, "authors": authors})
    report["notes"] = notes
    report["sets"] = evaluate.score_sets(sides, tok, {k: sets[k] for k in EVAL_SETS}, max_new)
    report["tofu"] = {"split": split, "authors": authors, "method": method, "retain_reference": reference,
                      **protocol_numbers(report, retain_tr), "retain_model_truth_ratios": retain_tr,
                      "unlearn_seconds": run_info["seconds_total"]}
    report["verdicts"] = evaluate.verdicts({**report, "sets": {"forget": report["sets"]["forget"]}})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    return report
