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
    forget = _load(data_dir, f"{split}_perturbed")
    sets = {"retain_eval": _load(data_dir, "retain_perturbed"), "real_authors": _load(data_dir, "real_authors_perturbed"),
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


def run(out_dir, model: str = "embedded", method: str = "meow", split: str = "forget01", authors: int | None = None,
        data_dir=None, device: str | None = None, eval_rows: int = 20, recipe: dict | None = None,
        unlearn_overrides: dict | None = None, on_event=None) -> dict:
    """The whole protocol; writes OUT/report.json (+ OUT/run/, the unlearned model) and returns the report."""
    from . import finetune, methods
    from .pipeline import InvertSettings, SelectSettings, unlearn

    emit = on_event or (lambda event: None)
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if not data_dir.is_dir():
        raise MeowError(f"{data_dir}: TOFU data folder not found (pass --data DIR)")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise MeowError(f"{out_dir} already exists and is not empty: choose a new folder")
    method_obj = methods.get(method)
    sets = load_sets(data_dir, split, authors, eval_rows)
    base = models.load(model, device)
    on_gpu = base.device.type == "cuda"
    recipe = {**(RECIPE_GPU if authors is None else RECIPE_CPU), **(recipe or {})}
    max_new = 200 if on_gpu else evaluate.MAX_NEW_TOKENS
    tok = base.tokenizer
    notes = []
    if authors is not None:
        notes.append(f"Reduced TOFU for a CPU: {authors} authors ({len(sets['forget'])} forget questions, "
                     f"{len(sets['retain_train'])} retain questions), at most {eval_rows} rows per utility set. "
                     "Not comparable with published TOFU numbers.")

    emit({"type": "stage", "stage": f"fine-tune target on {len(sets['full'])} questions"})
    target = finetune.finetune(base.model, tok, sets["full"], TrainConfig(**recipe), emit)
    reference = None if authors is not None else reference_truth_ratios(data_dir, model, split)
    if reference:
        retain_tr, source = reference
        notes.append(f"Retain-model truth ratios from TOFU's log {source}.")
    else:
        emit({"type": "stage", "stage": f"fine-tune retain model on {len(sets['retain_train'])} questions"})
        retain_model = finetune.finetune(base.model, tok, sets["retain_train"], TrainConfig(**recipe), emit)
        retain_tr = truth_ratios(retain_model, tok, sets["forget"])
        del retain_model
        notes.append("Retain model trained here (same recipe, retain questions only).")
    del base

    # Unlearn the target with any method. TOFU's perturbed answers are ready-made false
    # answers, so inverting methods train on those (no generation); MEMO selection is
    # kept short (few cuts, 8 tokens) because TOFU answers are long.
    forget = sets["forget"]
    for f in forget:
        f.inverted = list(f.extra["perturbed_answer"])
    emit({"type": "stage", "stage": f"unlearn with {method}"})
    target_lm = models.LoadedModel(target, tok, f"{model} fine-tuned on TOFU", next(target.parameters()).device)
    small = UNLEARN_CPU if authors is not None else {}
    config = TrainConfig(**{**method_obj.defaults, **method_obj.tofu_defaults, **small, **(unlearn_overrides or {})})
    retain_for_method = sets["retain_train"][:len(forget) * 4] if method_obj.uses_retain else None
    run_info = unlearn(forget, out_dir / "run", method, retain=retain_for_method, config=config,
                       invert_settings=InvertSettings(answer_style=False),
                       select_settings=SelectSettings(top_k=3, memo_stride=50, memo_length=8),
                       loaded=target_lm, on_event=emit)
    unlearned = models.load(str(out_dir / "run"), device).model

    emit({"type": "stage", "stage": "evaluate"})
    eval_sets = {"forget": forget, "retain_eval": sets["retain_eval"], "real_authors": sets["real_authors"],
                 "world_facts": sets["world_facts"]}
    report = {"format": "meow-evaluation/1", "sides": ["original", "unlearned"],
              "models": {"original": f"{model} fine-tuned on TOFU ({'full' if authors is None else f'{authors} authors'})",
                         "unlearned": f"the same after {method} on {split}"},
              "settings": {"max_new_tokens": max_new, "recipe": recipe, "method": method, "split": split,
                           "authors": authors}, "sets": {}, "notes": notes}
    for name, facts in eval_sets.items():
        report["sets"][name] = {side: evaluate.score_set(m, tok, facts, max_new, with_memo=False)
                                for side, m in (("original", target), ("unlearned", unlearned))}
    tofu = {"split": split, "authors": authors, "method": method,
            "retain_reference": reference[1] if reference else "trained here"}
    for side in ("original", "unlearned"):
        tr = [r["truth_ratio"] for r in report["sets"]["forget"][side]["rows"]]
        tofu[f"forget_quality_{side}"] = stats.ks_pvalue(tr, retain_tr)
        utility = model_utility({k: report["sets"][k][side] for k in ("retain_eval", "real_authors", "world_facts")})
        tofu[f"model_utility_{side}"] = utility["model_utility"]
        tofu[f"utility_parts_{side}"] = utility
    tofu["retain_model_truth_ratios"] = retain_tr
    tofu["unlearn_seconds"] = run_info["seconds_total"]
    report["tofu"] = tofu
    report["verdicts"] = evaluate.verdicts({**report, "sets": {"forget": report["sets"]["forget"]}})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    return report
