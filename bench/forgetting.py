"""The forgetting trade-off on held-out fact sets: one row per method / setting.

    .venv/bin/python bench/forgetting.py                          # default `meow` on eval_a and eval_b
    .venv/bin/python bench/forgetting.py --sets eval_c            # the third held-out set (opt-in)
    .venv/bin/python bench/forgetting.py --sets eval_d            # the fourth (opt-in, 2026-12-04)
    .venv/bin/python bench/forgetting.py --sets eval_e            # the fifth (opt-in, 2026-12-04, late)
    .venv/bin/python bench/forgetting.py --sets eval_f            # the sixth (opt-in, 2026-12-05)
    .venv/bin/python bench/forgetting.py --sets eval_g            # the seventh (opt-in, 2026-12-05, later)
    .venv/bin/python bench/forgetting.py --sets eval_a --variant meow \\
        --variant lr2e-4:meow:lr=2e-4,epochs=4                    # NAME:METHOD:FIELD=VALUE,... (TrainConfig)
    .venv/bin/python bench/forgetting.py --check-sets             # no model: the sets' overlap with the pools
    .venv/bin/python bench/forgetting.py --table bench/results/forgetting.json   # the table again

Per row, in a fresh child process (its own time and peak memory, as bench/memory.py and
bench/time_to_forget.py measure them): load the model and run `pipeline.unlearn` end to
end (probe, invert, MEMO, select, train, save: the wall time), then `evaluate.compare`
(the original next to the unlearned model on the forget, retain and unseen sets and the
shipped general-ability set) and `extraction.sampling` (the question at T=1, 10 samples
per fact, on the unlearned model; `--sampling-before` adds the original). The
evaluation's own measures give the columns:

- forget / paraphrase hit rate: greedy answers (48 tokens) with a keyword of the fact;
- hidden, but still likely: forget facts with that verdict (`evaluate.verdicts`: not said
  any more, but the true answer keeps at least half its probability);
- p(true answer): the mean `answer_prob` of the forget facts before and after;
- retain / unseen kept: facts answered (keyword) before that are still answered after;
- general questions / multiple choice: `general.score` accuracies, after relative to before;
- sampling leak: share of forget facts with a keyword in any of the 10 samples;
- wall time: model load + `pipeline.unlearn`; peak RSS of the process at the end of the
  unlearning (the evaluation afterwards loads a second model, reported apart).

The sets (assets/facts/README.md) are held out: nobody tunes on them. The retain sets
hold the forget facts' neighbours (same relation, other subjects) and no question of the
pools a method trains on (assets/neighbour_questions.txt, assets/anchor_prompts.txt),
so they measure locality; `--check-sets` and tests/test_bench_forgetting.py hold that.
The retain set is given to `unlearn` only for methods that train on retain data
(needs_retain / uses_retain); for them it is no longer held out, the unseen set still is.

Writes bench/results/forgetting.json and prints a Markdown table with a mark per target
(TARGETS). Does not append to docs/benchmarks.md: the table goes to docs/forgetting.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from meow_app import methods  # noqa: E402

ASSETS = common.ROOT / "assets"
SETS = {name: tuple(common.FACTS / f"{name}_{part}.jsonl" for part in ("forget", "retain", "unseen"))
        for name in ("eval_a", "eval_b", "eval_c", "eval_d", "eval_e", "eval_f", "eval_g")}
# What a run without --sets measures: eval_a and eval_b, as before eval_c was added, so that an old
# command prints the same rows. eval_c (built last, after the other two had been used for reading
# results) is opt-in: --sets eval_c, and so is eval_d (built 2026-12-04, after eval_c had been
# looked at too), and eval_e (built late on 2026-12-04, after meow_patch's settings were fixed
# on the other four; nothing has been tried on it), and eval_f (built 2026-12-05, nothing tried
# on it either), and eval_g (built later on 2026-12-05, from the model's answers alone; nothing
# tried on it). --check-sets checks all of SETS.
DEFAULT_SETS = ("eval_a", "eval_b")
GENERAL = [ASSETS / "general" / "questions.jsonl", ASSETS / "general" / "multiple_choice.jsonl"]
SAMPLES = 10

# name -> (the row's value, the limit, "max" or "min", in words). Issue 19's targets for
# the embedded model on 2 cores with the defaults.
TARGETS = {
    "forget_hit": ("forget_hit_after", 1 / 8, "max", "forget hit rate <= 1/8"),
    "paraphrase_hit": ("paraphrase_hit_after", 1 / 8, "max", "paraphrase hit rate <= 1/8"),
    "sampling_leak": ("sampling_leak_after", 1 / 8, "max", "sampling leak (T=1, any of 10) <= 1/8"),
    "still_likely": ("still_likely_share", 1 / 8, "max", "at most 1 in 8 facts hidden, but still likely"),
    "answer_prob": ("answer_prob_ratio", 0.5, "max", "true answer's mean probability <= half of before"),
    "retain_kept": ("retain_kept", 0.95, "min", ">= 95% of retain facts kept"),
    "unseen_kept": ("unseen_kept", 0.95, "min", ">= 95% of unseen facts kept"),
    "general_questions": ("general_questions_ratio", 0.95, "min", "general questions >= 95% of original"),
    "multiple_choice": ("multiple_choice_ratio", 0.95, "min", "multiple choice >= 95% of original"),
}


# --- variants ---------------------------------------------------------------------------------

def _coerce(field, text: str):
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    if kind == "bool":
        low = text.strip().lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{field.name} takes true or false, got '{text}'")
        return low in ("true", "1", "yes")
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    return text


# inversion settings a variant may change
INVERT_FIELDS = ("generator", "n", "answer_style", "answer_clause", "clean_targets", "truth_forms", "name_lead")
SELECT_FIELDS = ("top_k", "distinct")  # and selection settings (pipeline.SelectSettings)


def parse_variant(spec: str) -> dict:
    """'NAME:METHOD:FIELD=VALUE,...' (or 'METHOD', or 'NAME:METHOD') -> {"name", "method", "overrides"}.
    FIELD is a TrainConfig field, or `generator` / `n` / `answer_style` / `answer_clause` /
    `clean_targets` / `truth_forms` / `name_lead` of the inversion (pipeline.InvertSettings), or
    `top_k` / `distinct` of the selection (pipeline.SelectSettings); the value is read as that
    field's type. The method and the fields are checked here, before anything runs."""
    from meow_app import methods
    from meow_app.pipeline import InvertSettings, SelectSettings
    from meow_app.train import TrainConfig

    parts = spec.split(":", 2)
    if len(parts) == 1:
        parts = [parts[0], parts[0]]
    name, method = parts[0].strip(), parts[1].strip()
    if not name or not method:
        raise ValueError(f"variant '{spec}': expected NAME:METHOD[:FIELD=VALUE,...]")
    methods.get(method)  # an unknown method fails now
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    fields.update({f.name: f for f in dataclasses.fields(InvertSettings) if f.name in INVERT_FIELDS})
    fields.update({f.name: f for f in dataclasses.fields(SelectSettings) if f.name in SELECT_FIELDS})
    overrides = {}
    for item in (parts[2].split(",") if len(parts) == 3 and parts[2].strip() else []):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"variant '{spec}': '{item}' is not FIELD=VALUE")
        if key not in fields:
            raise ValueError(f"variant '{spec}': '{key}' is not a TrainConfig field nor one of "
                             f"{INVERT_FIELDS + SELECT_FIELDS}")
        overrides[key] = _coerce(fields[key], value.strip())
    return {"name": name, "method": method, "overrides": overrides}


# --- the sets and the pools ---------------------------------------------------------------------

STOP = {"what", "which", "who", "whom", "whose", "how", "is", "are", "was", "were", "does", "do", "did", "the",
        "a", "an", "of", "in", "on", "for", "to", "by", "our", "city", "s", "called", "known", "as"}


def normalise(question: str) -> str:
    """Lower case, no punctuation, single spaces."""
    return " ".join(re.sub(r"[^\w\s]", " ", question.lower()).split())


def content_words(question: str) -> set[str]:
    """The words that say what is asked: no question or filler words, no plural s."""
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in normalise(question).split()} - STOP


def near(a: str, b: str) -> bool:
    """The same question, give or take wording: equal once normalised, or at least 3 in 4
    of their content words shared. Questions of the same shape about another subject
    ("the capital of Iran" / "of Iraq", "the smallest planet" / "the largest planet") are
    neighbours, not the same question (a character similarity would call them the same)."""
    if normalise(a) == normalise(b):
        return True
    wa, wb = content_words(a), content_words(b)
    return bool(wa | wb) and len(wa & wb) / len(wa | wb) >= 0.75


def pool_questions(paths) -> list[str]:
    """The questions of the shipped pools (text files one a line, or JSONL with a 'question')."""
    out = []
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(json.loads(line)["question"] if line.lstrip().startswith("{") else line.strip())
    return out


def overlaps(questions: list[str], others: list[str]) -> list[tuple[str, str]]:
    """(question, other) for each question that is the same as, or nearly, one of `others`."""
    return [(q, o) for q in questions for o in others if near(q, o)]


def set_questions(facts) -> list[str]:
    return [t for f in facts for t in [f.question, *f.paraphrases]]


def check_sets(sets: dict = SETS) -> list[str]:
    """Problems with the held-out sets, one line each (empty: none): questions in a
    training pool or the general set, in another shipped fact set, or in two of the new
    sets; keywords in their own questions; a retain or unseen fact about a forget answer."""
    from meow_app.facts import load_facts
    from meow_app.general import TRAINING_POOLS

    problems = []
    ours = {p for files in sets.values() for p in files}
    shipped = [p for p in sorted(common.FACTS.glob("*.jsonl")) if p not in ours]
    pools = pool_questions(TRAINING_POOLS)
    general = pool_questions(GENERAL)
    shipped_q = [q for p in shipped for q in set_questions(load_facts(p))]
    loaded = {p: load_facts(p) for p in sorted(ours)}
    for path, facts in loaded.items():
        qs = set_questions(facts)
        for q, o in overlaps(qs, pools):
            problems.append(f"{path.name}: '{q}' is in a training pool ('{o}')")
        for q, o in overlaps(qs, general):
            problems.append(f"{path.name}: '{q}' is in the general-ability set ('{o}')")
        for q, o in overlaps(qs, shipped_q):
            problems.append(f"{path.name}: '{q}' is in another shipped set ('{o}')")
        for f in facts:
            if not f.keywords:
                problems.append(f"{path.name}: '{f.question}' has no keywords")
            for text in [f.question, *f.paraphrases]:
                if any(k.lower() in text.lower() for k in f.keywords):
                    problems.append(f"{path.name}: '{text}' gives its own keyword away")
    paths = sorted(loaded)
    for i, a in enumerate(paths):
        for b in paths[i + 1:]:
            for q, o in overlaps(set_questions(loaded[a]), set_questions(loaded[b])):
                problems.append(f"{a.name} and {b.name} share '{q}' ('{o}')")
    for name, (forget, retain, unseen) in sets.items():
        if forget not in loaded:
            continue
        answers = {k.lower() for f in loaded[forget] for k in f.keywords}
        for path in (retain, unseen):
            for f in loaded.get(path, []):
                same = answers & {k.lower() for k in f.keywords}
                if same:
                    problems.append(f"{path.name}: '{f.question}' has a forget fact's keyword {sorted(same)}")
    return problems


# --- a row --------------------------------------------------------------------------------------

def kept(before_rows: list[dict], after_rows: list[dict]) -> tuple[int, int]:
    """(facts answered before and after, facts answered before): the retain verdicts' rule."""
    known = [(b, a) for b, a in zip(before_rows, after_rows) if b["leak"]]
    return sum(bool(a["leak"]) for _, a in known), len(known)


def _ratio(after, before):
    return None if after is None or not before else after / before


def build_row(variant: dict, set_name: str, run: dict, report: dict, sampling: dict, wall: float,
              peak_unlearn: float) -> dict:
    """The row from the run.json, the evaluation report and the sampling attacks (plain dicts)."""
    from meow_app import evaluate

    forget = report["sets"]["forget"]
    before, after = forget["original"]["aggregate"], forget["unlearned"]["aggregate"]
    verdicts = report["verdicts"]["forget"]
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v["verdict"]] = counts.get(v["verdict"], 0) + 1
    row = {
        "variant": variant["name"], "method": variant["method"], "overrides": variant["overrides"], "set": set_name,
        "n_forget": before["n"],
        "forget_hit_before": before["hit_rate"], "forget_hit_after": after["hit_rate"],
        "paraphrase_hit_before": before["paraphrase_hit_rate"], "paraphrase_hit_after": after["paraphrase_hit_rate"],
        "still_likely": counts.get(evaluate.STILL_LIKELY, 0),
        "still_likely_share": counts.get(evaluate.STILL_LIKELY, 0) / max(len(verdicts), 1),
        "verdicts": counts,
        "answer_prob_before": before["answer_prob"], "answer_prob_after": after["answer_prob"],
        "answer_prob_ratio": _ratio(after["answer_prob"], before["answer_prob"]),
        "sampling_leak_before": sampling.get("original", {}).get("leak_rate"),
        "sampling_leak_after": sampling["unlearned"]["leak_rate"],
        "sample_leak_rate_after": sampling["unlearned"].get("sample_leak_rate"),
        "unlearn_seconds": round(wall, 1), "timings": run.get("timings", {}), "steps": len(run.get("steps", [])),
        "stopped_early": run.get("stopped_early"), "peak_rss_unlearn_gib": round(peak_unlearn, 2),
    }
    for part, key in (("retain", "retain"), ("holdout", "unseen")):
        sides = report["sets"].get(part)
        k, n = kept(sides["original"]["rows"], sides["unlearned"]["rows"]) if sides else (0, 0)
        row[f"{key}_kept_n"], row[f"{key}_known_n"] = k, n
        row[f"{key}_kept"] = k / n if n else None
        row[f"{key}_n"] = len(sides["original"]["rows"]) if sides else 0
    general = report.get("general")
    if general:
        for key, name in (("questions_accuracy", "general_questions"), ("multiple_choice_accuracy", "multiple_choice")):
            row[f"{name}_before"], row[f"{name}_after"] = general["original"][key], general["unlearned"][key]
            row[f"{name}_ratio"] = _ratio(general["unlearned"][key], general["original"][key])
    row["checks"] = check_targets(row)
    return row


def check_targets(row: dict, targets: dict = TARGETS) -> dict:
    """target name -> True (met), False (missed) or None (not measured)."""
    out = {}
    for name, (key, limit, kind, _words) in targets.items():
        value = row.get(key)
        out[name] = None if value is None else (value <= limit + 1e-12 if kind == "max" else value >= limit - 1e-12)
    return out


def _mark(ok) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def _frac(k: int, n: int) -> str:
    return f"{k}/{n}" if n else "n/a"


COLUMNS = ["variant", "set", "forget hit", "paraphrase hit", "hidden, but still likely", "p(true answer)",
           "retain kept", "unseen kept", "general questions", "multiple choice", "sampling leak (T=1, any of 10)",
           "wall time (load + unlearn)", "steps", "peak RSS (unlearn)"]


def table_row(r: dict) -> list:
    """One Markdown table row: before → after, with ✓ / ✗ against each target."""
    if "error" in r:
        return [r.get("variant", "?"), r.get("set", "?"), "error: " + str(r["error"])] + [""] * (len(COLUMNS) - 3)
    c, pct = r["checks"], common.pct

    def before_after(key, check):
        return f"{pct(r[key + '_before'])} → **{pct(r[key + '_after'])}**{_mark(c.get(check))}"

    def general(name):
        if f"{name}_before" not in r:
            return "n/a"
        return f"{pct(r[name + '_before'])} → **{pct(r[name + '_after'])}**{_mark(c.get(name))}"

    prob = "n/a" if r["answer_prob_before"] is None else (
        f"{r['answer_prob_before']:.2f} → **{r['answer_prob_after']:.2f}** "
        f"(×{r['answer_prob_ratio']:.2f}){_mark(c.get('answer_prob'))}")
    return [r["variant"], r["set"], before_after("forget_hit", "forget_hit"),
            before_after("paraphrase_hit", "paraphrase_hit"),
            f"**{r['still_likely']}** of {r['n_forget']}{_mark(c.get('still_likely'))}", prob,
            f"**{pct(r['retain_kept'])}** ({_frac(r['retain_kept_n'], r['retain_known_n'])})"
            f"{_mark(c.get('retain_kept'))}",
            f"**{pct(r['unseen_kept'])}** ({_frac(r['unseen_kept_n'], r['unseen_known_n'])})"
            f"{_mark(c.get('unseen_kept'))}",
            general("general_questions"), general("multiple_choice"),
            before_after("sampling_leak", "sampling_leak"), f"{r['unlearn_seconds']:.0f} s", r["steps"],
            f"{r['peak_rss_unlearn_gib']:.2f} GiB"]


def loops(text: str) -> bool:
    """Whether an answer has run into a loop: a word said 4 times running ("that that that that"),
    a phrase of 2-6 words 3 times running ("the South East of the South East of the South East
    of"), or a piece of 2-4 letters 5 times running ("Germanststststst"). Not a target: a forgotten
    fact answered so reads as damage to a person checking it, which the hit rates do not show."""
    words = re.findall(r"[^\W\d_]+", text.lower())  # (not numbers: "1,000,000" is no loop)
    for n, times in [(1, 4)] + [(n, 3) for n in range(2, 7)]:
        for i in range(len(words) - n * times + 1):
            if all(words[i + k * n:i + (k + 1) * n] == words[i:i + n] for k in range(1, times)):
                return True
    return re.search(r"([a-z]{2,4})\1{4,}", text.lower()) is not None


def looping(row: dict) -> int:
    """How many of a row's forgotten facts the unlearned model answers in a loop (greedy)."""
    return sum(loops(v.get("after") or "") for v in row.get("verdict_rows", []))


def markdown(rows: list[dict]) -> str:
    text = common.table(COLUMNS, [table_row(r) for r in rows])
    text += ("\nTargets (✓ met, ✗ missed): " + "; ".join(t[3] for t in TARGETS.values()) +
             ". Kept = answered before and after, of those answered before.\n")
    return text


# --- the child: one measured row ----------------------------------------------------------------

def measure(variant: dict, set_name: str, forget_path: str, retain_path: str, unseen_path: str,
            model: str | None = None, threads: int | None = 2, samples: int = SAMPLES,
            sampling_before: bool = False) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from meow_app import cli, evaluate, extraction, methods, models, pipeline
    from meow_app.facts import load_facts
    from meow_app.train import TrainConfig

    method = methods.get(variant["method"])
    forget, retain, unseen = load_facts(forget_path), load_facts(retain_path), load_facts(unseen_path)
    train = {k: v for k, v in variant["overrides"].items() if k not in INVERT_FIELDS + SELECT_FIELDS}
    config = TrainConfig(**{**method.defaults, **train})
    inv = pipeline.InvertSettings(**{k: v for k, v in variant["overrides"].items() if k in INVERT_FIELDS})
    sel = pipeline.SelectSettings(**{k: v for k, v in variant["overrides"].items() if k in SELECT_FIELDS})
    out = Path(tempfile.mkdtemp(prefix="meow-bench-")) / "run"
    # The questions the run trains on beside the forget set (neighbours, siblings, anchors): a
    # retain or unseen question among them is held by training, not by locality: counted apart.
    trained, anchor_facts = [], pipeline.anchor_facts

    def recording(*args, **kwargs):
        got = anchor_facts(*args, **kwargs)
        trained.extend(got)
        return got

    pipeline.anchor_facts = recording
    start = time.perf_counter()
    loaded = models.load(model)
    run = pipeline.unlearn(forget, out, variant["method"], config=config, loaded=loaded, invert_settings=inv,
                           select_settings=sel, retain=retain if (method.needs_retain or method.uses_retain) else None)
    wall = time.perf_counter() - start
    peak_unlearn = common.peak_rss_gib()
    unlearned = models.load(str(out / "model"))
    forget_eval = cli._with_run_inverted(load_facts(forget_path), out)  # the truth ratio's wrong answers
    t = time.perf_counter()
    report = evaluate.compare(loaded.model, unlearned.model, loaded.tokenizer, forget_eval, retain, unseen,
                              general=True, with_memo=False)
    sides = (("original", loaded), ("unlearned", unlearned)) if sampling_before else (("unlearned", unlearned),)
    sampling = {side: extraction.sampling(m.model, loaded.tokenizer, forget, samples=samples, seed=0)
                for side, m in sides}
    row = build_row(variant, set_name, run, report, sampling, wall, peak_unlearn)
    row["eval_seconds"] = round(time.perf_counter() - t, 1)
    row["run_dir"] = str(out)  # its run.json, facts and probes; the model (half a GB a row) is removed
    del unlearned
    shutil.rmtree(out / "model", ignore_errors=True)
    row["verdict_rows"] = report["verdicts"]["forget"]
    # each lost neighbour, with what it is answered with now (a forgotten fact's false answer? its template?)
    row["retain_lost_answers"] = {v["question"]: v.get("after", "") for v in report["verdicts"].get("retain", [])
                                  if v["verdict"] == evaluate.LOST}
    row["retain_lost"] = list(row["retain_lost_answers"])
    before_u, after_u = report["sets"]["holdout"]["original"]["rows"], report["sets"]["holdout"]["unlearned"]["rows"]
    row["unseen_lost"] = [b["question"] for b, a in zip(before_u, after_u) if b["leak"] and not a["leak"]]
    general = report.get("general") or {}
    if general:  # each general question lost, with what it is answered with now
        row["general_lost_answers"] = {b["question"]: a["generated"] for b, a in
                                       zip(general["original"]["questions"], general["unlearned"]["questions"])
                                       if b["correct"] and not a["correct"]}
    row["sampling_leaks"] = [r["answer"] for r in sampling["unlearned"]["rows"] if r["leak"]]
    row["retain_trained_on"] = [f.question for f in retain if any(near(f.question, t.question) for t in trained)]
    untrained = [v for v in report["verdicts"].get("retain", []) if v["question"] not in row["retain_trained_on"]
                 and v["verdict"] in (evaluate.KEPT, evaluate.LOST)]
    row["retain_kept_untrained"] = [sum(v["verdict"] == evaluate.KEPT for v in untrained), len(untrained)]
    row["samples"] = samples
    return row


def child(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", required=True)
    ap.add_argument("--set-name", required=True)
    ap.add_argument("--files", nargs=3, required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=SAMPLES)
    ap.add_argument("--sampling-before", action="store_true")
    a = ap.parse_args(argv)
    return measure(parse_variant(a.variant), a.set_name, *a.files, model=a.model, threads=a.threads,
                   samples=a.samples, sampling_before=a.sampling_before)


def main() -> None:
    if "--child" in sys.argv:
        common.child_main(child)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", default=None,
                    help="NAME:METHOD:FIELD=VALUE,... (TrainConfig fields), or METHOD; repeat for more rows "
                         "(default: meow)")
    ap.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS),
                    help=f"held-out sets ({', '.join(SETS)}; default: {' and '.join(DEFAULT_SETS)})")
    ap.add_argument("--forget", help="instead of --sets: a forget file (with --retain and --unseen)")
    ap.add_argument("--retain")
    ap.add_argument("--unseen")
    ap.add_argument("--model", default=None, help="model spec (default: embedded)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each run (default 2)")
    ap.add_argument("--samples", type=int, default=SAMPLES, help="samples per fact at T=1 (default 10)")
    ap.add_argument("--sampling-before", action="store_true",
                    help="also sample the original model (the before column; off: it only costs time)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per row before it is killed")
    ap.add_argument("--json", type=Path, default=common.RESULTS / "forgetting.json")
    ap.add_argument("--check-sets", action="store_true", help="only check the sets against the pools (no model)")
    ap.add_argument("--table", type=Path, metavar="JSON", help="only print the table of a saved results file")
    a = ap.parse_args()
    if a.table:
        saved = json.loads(a.table.read_text(encoding="utf-8"))
        print(markdown(saved["rows"]))
        details(saved["rows"])
        return
    if a.check_sets:
        problems = check_sets()
        print("\n".join(problems) or "no overlaps: the held-out sets are disjoint from the pools and shipped sets")
        sys.exit(1 if problems else 0)
    import torch

    torch.set_num_threads(a.threads)  # (the runs are children with this many; the header says what they had)
    try:
        variants = [parse_variant(v) for v in (a.variant or [methods.DEFAULT])]
    except Exception as e:  # noqa: BLE001 (a MeowError or a ValueError: one line)
        ap.error(str(e))
    if a.forget:
        if not (a.retain and a.unseen):
            ap.error("--forget needs --retain and --unseen")
        jobs = [(Path(a.forget).stem, [a.forget, a.retain, a.unseen])]
    else:
        unknown = [s for s in a.sets if s not in SETS]
        if unknown:
            ap.error(f"unknown set '{unknown[0]}' (choose from {', '.join(SETS)})")
        jobs = [(s, [str(p) for p in SETS[s]]) for s in a.sets]
    load_before = common.load_average()
    rows = []
    for set_name, files in jobs:
        for v in variants:
            spec = f"{v['name']}:{v['method']}:" + ",".join(f"{k}={val}" for k, val in v["overrides"].items())
            args = ["--variant", spec, "--set-name", set_name, "--files", *files, "--threads", str(a.threads),
                    "--samples", str(a.samples)] + (["--model", a.model] if a.model else []) + \
                (["--sampling-before"] if a.sampling_before else [])
            r = common.run_child(__file__, args, a.timeout)
            r.setdefault("variant", v["name"])
            r.setdefault("set", set_name)
            rows.append(r)
            print(f"done {v['name']} on {set_name}: {r.get('error') or 'ok'} ({r['wall_seconds']:.0f} s in all)",
                  file=sys.stderr, flush=True)
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps({"machine": common.machine(), "load_before": load_before,
                                          "command": common.command_line(), "rows": rows}, indent=2, default=str))
    print(common.header("Forgetting trade-off on held-out sets", common.command_line(), load_before))
    print(markdown(rows))
    details(rows)


def details(rows: list[dict]) -> None:
    for r in rows:
        if "error" not in r:
            print(f"- {r['variant']} on {r['set']}: verdicts {r['verdicts']}; child process {r['wall_seconds']:.0f} s "
                  f"(evaluation {r['eval_seconds']:.0f} s), peak RSS with the evaluation {r['peak_rss_gib']:.2f} GiB; "
                  f"stages (s) {r['timings']}; retain lost: {r['retain_lost']}; unseen lost: {r['unseen_lost']}; "
                  f"sampled answers that leaked: {len(r['sampling_leaks'])} of "
                  f"{r['n_forget'] * r.get('samples', SAMPLES)}; forgotten facts answered in a loop: "
                  f"{looping(r)} of {len(r.get('verdict_rows', []))}"
                  + (f"; retain questions the run trained on: {r['retain_trained_on']} (kept of the others: "
                     f"{r['retain_kept_untrained'][0]}/{r['retain_kept_untrained'][1]})" if r.get("retain_trained_on")
                     else ""))


if __name__ == "__main__":
    main()
