"""The command line: `python -m meow_app VERB ...`.

  check    FILE                      validate a facts file and say what is in it
  invert   --facts F --out OUT       write inverted (false) answers for each fact
  memo     --facts F --out OUT       score answers (and inverted answers) with MEMO
  unlearn  --forget F --out RUN_DIR  run an unlearning method and save the model
  ask      QUESTION... [--model M]   greedy answers from a model (compare two with --compare)
  methods                            list the unlearning methods
  evaluate --model M --forget F --out REPORT.json [--html R.html]   before/after verification report
  attack   --model M [--forget F] --out ATTACKS.json                 extraction attacks: leak rates
  tofu     --method NAME --out DIR [--authors N]                    the TOFU benchmark protocol
  push     --run RUN_DIR --repo-id USER/NAME [--dry-run --out DIR]  publish to the Hub (token: HF_TOKEN)

Errors print one line on stderr and exit with status 2 (1 for an internal error).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from . import select
from .errors import Cancelled, MeowError, MeowWarning, PeerFailed
from .stats import percent


def _facts(path, args=None):
    """Facts from a file with the limits of the command line; what the reader noticed
    (repeated facts) is printed as notes, the first few of them."""
    from .facts import NOTES_SHOWN, load_facts

    mb = getattr(args, "max_file_mb", None)
    facts = load_facts(path, getattr(args, "max_facts", None), None if mb is None else int(mb * 1e6),
                       getattr(args, "max_text_chars", None))
    for note in facts.notes[:NOTES_SHOWN]:
        print(f"note: {note}", file=sys.stderr)
    if len(facts.notes) > NOTES_SHOWN:
        print(f"note: ... and {len(facts.notes) - NOTES_SHOWN} more like these", file=sys.stderr)
    return facts


def _add_limits(p):
    p.add_argument("--max-facts", type=int, default=None, help="most facts per file (default 5000, env MEOW_MAX_FACTS)")
    p.add_argument("--max-file-mb", type=float, default=None,
                   help="largest facts file in MB (default 20, env MEOW_MAX_FILE_BYTES in bytes)")
    p.add_argument("--max-text-chars", type=int, default=None,
                   help="longest question or answer (default 4000 characters, env MEOW_MAX_TEXT_CHARS)")


def _add_model(p):
    p.add_argument("--model", default="embedded",
                   help="'embedded' (default), a Hugging Face id, a local checkpoint or a RUN_DIR")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")


def _add_generator(p):
    p.add_argument("--n", type=int, default=4, help="inverted answers per fact (default 4)")
    p.add_argument("--generator", choices=("lead_in", "siblings", "lead_in_siblings", "local", "openai"),
                   default="lead_in",
                   help="lead_in (default): the model continues its own answer's lead-in ('The capital of Ukraine "
                        "is') with the truth forbidden, so false answers are of the same kind; siblings: the "
                        "model's answers to the same question about other subjects (Australia, its answer for "
                        "Sydney, as Toronto's country), lead-in samples where too few; lead_in_siblings: lead-in "
                        "samples, then siblings' answers for a fact left short; local: the model "
                        "writes them from a few-shot prompt; openai: an OpenAI-compatible API")
    p.add_argument("--generator-model", default=None,
                   help="local generator model (default: the --model being used)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-model", default=None, help="model name at the API")
    p.add_argument("--api-timeout", type=float, default=60.0, help="seconds to wait for one API answer (default 60)")
    p.add_argument("--seed", type=int, default=0)


def _invert_settings(args):
    from .pipeline import InvertSettings

    return InvertSettings(n=args.n, generator=args.generator, generator_model=args.generator_model,
                          base_url=args.base_url, api_model=args.api_model, api_timeout=args.api_timeout,
                          api_key=os.environ.get("OPENAI_API_KEY"))


def cmd_check(args):
    if not (args.file or args.facts):
        raise MeowError("give a facts file: check FILE")
    facts = _facts(args.file or args.facts, args)
    n_kw = sum(bool(f.keywords) for f in facts)
    n_para = sum(len(f.paraphrases) for f in facts)
    n_inv = sum(bool(f.inverted) for f in facts)
    print(f"{args.file or args.facts}: {len(facts)} facts, {n_kw} with keywords, {n_para} paraphrases, "
          f"{n_inv} with inverted answers")


def cmd_invert(args):
    from . import invert, models
    from .facts import write_jsonl
    from .pipeline import make_generator

    facts = _facts(args.facts, args)
    settings = _invert_settings(args)
    loaded = models.load(args.generator_model or args.model, args.device) if args.generator != "openai" else None
    report = invert.invert(facts, make_generator(settings, loaded), args.n, seed=args.seed)
    write_jsonl(facts, args.out)
    short = report.short_facts(args.n)
    print(f"wrote {len(facts)} facts with {args.n} inverted answers each to {args.out}")
    if short:
        print(f"note: {len(short)} fact(s) needed fallback candidates (review them): "
              f"lines {', '.join(str(i + 1) for i in short)}")


def cmd_memo(args):
    from . import memo, models
    from .facts import write_jsonl

    facts = _facts(args.facts, args)
    lm = models.load(args.model, args.device)
    if args.length != "target" and not (args.length.isdigit() and int(args.length) > 0):
        raise MeowError(f"--length must be 'target' or a positive number of tokens, got '{args.length}'")
    length = "target" if args.length == "target" else int(args.length)
    t = time.perf_counter()
    rows = []
    for f, (answer_score, inverted_scores) in zip(facts, memo.score_facts(lm.model, lm.tokenizer, facts, args.mode,
                                                                         args.stride, length)):
        row = f.to_dict()
        row["memo_answer"] = answer_score
        if f.inverted:
            row["memo_inverted"] = inverted_scores
        row["memo_settings"] = {"mode": args.mode, "stride": args.stride, "length": args.length}
        rows.append(row)
    write_jsonl(rows, args.out)
    mean = sum(r["memo_answer"] for r in rows) / len(rows)
    print(f"wrote MEMO scores of {len(rows)} facts to {args.out} "
          f"(mean answer MEMO {mean:.3f}, {time.perf_counter() - t:.1f} s)")


def _print_event(event):
    from . import progress

    kind = event["type"]
    if kind == "stage":
        print(f"[{event['stage']}]", file=sys.stderr, flush=True)
    elif kind == "step":
        # One line a step (logs keep them all): a bar, where it is, the loss, the time left.
        print(f"  {progress.bar(event['step'], event['total_steps'])} {progress.step_text(event)}  "
              f"epoch {event['epoch']}  loss {event['loss']:.4f}", file=sys.stderr, flush=True)
    elif kind == "probe":
        deep = f"true answer still likely for {event['still_likely']}" if "still_likely" in event else ""
        if event["hit_rate"] is None:  # still likely: the greedy answers were not asked (train.Trainer._probe)
            print(f"  probe after epoch {event['epoch']}: {deep}", file=sys.stderr, flush=True)
        else:
            print(f"  probe after epoch {event['epoch']}: forget hit rate {event['hit_rate']:.0%}, "
                  f"paraphrases {percent(event['paraphrase_hit_rate'])}{', ' + deep if deep else ''}",
                  file=sys.stderr, flush=True)
    elif kind == "task":
        print(f"  {event['text']}", file=sys.stderr, flush=True)
    elif kind == "note":
        print(f"note: {event['text']}", file=sys.stderr, flush=True)


# Training settings offered as options: every TrainConfig field that takes a value; each
# option's help is its field's `help` metadata (meow_app/train.py).
# Left unset, each method's own default applies (`python -m meow_app methods -v`).


def _tuned_fields() -> list:
    from dataclasses import fields

    from .train import TrainConfig

    skip = {"lora", "early_stop", "bf16", "low_memory", "shard", "seed", "train_embeddings"}  # flags, or set elsewhere
    return [f for f in fields(TrainConfig) if f.name not in skip]


def _yes_no(name: str):
    """The argparse type of yes/no field `name`: train.parse_setting, its error as argparse's."""
    from .train import parse_setting

    def parse(text: str) -> bool:
        try:
            return parse_setting(name, text)
        except MeowError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _field_help(name: str) -> str:
    """A TrainConfig field's one description, for the flags that are not tuned options."""
    from dataclasses import fields

    from .train import TrainConfig

    return next(f.metadata["help"] for f in fields(TrainConfig) if f.name == name)


def _max_new_tokens(args) -> int:
    """--max-new-tokens, or the library's one answer length (generation.MAX_NEW_TOKENS)."""
    from .generation import MAX_NEW_TOKENS

    return MAX_NEW_TOKENS if args.max_new_tokens is None else args.max_new_tokens


def _add_train_options(p, method: str):
    """One option per tuned TrainConfig field; its help shows the default `method` runs with
    (method defaults override TrainConfig's, e.g. meow trains at lr 1e-4, not 5e-5)."""
    from . import methods
    from .train import TrainConfig

    cls = methods.REGISTRY.get(method)
    defaults = TrainConfig(**cls.defaults) if cls else None
    for f in _tuned_fields():
        kind = _yes_no(f.name) if isinstance(f.default, bool) else type(f.default)
        if defaults is None:
            default = "the method's default"
        else:
            value = getattr(defaults, f.name)
            default = (f"{'yes' if value else 'no'}" if isinstance(value, bool)
                       else repr(value) if value == "" else value)
            default = f"default for {method}: {default}"
        text = f"({default})" if f.metadata["obvious"] else f"{f.metadata['help']} ({default})"
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None,
                       help=text.replace("%", "%%"))


def method_in(argv) -> str:
    """The --method an `unlearn` command line names (default meow), read before parsing so
    that --help can show that method's defaults."""
    from .methods import DEFAULT

    argv = list(argv)
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--method="):
            return a.split("=", 1)[1]
    return DEFAULT


def cmd_unlearn(args):
    from . import methods, probes
    from .pipeline import SelectSettings, unlearn

    methods.get(args.method or methods.DEFAULT)  # (an unknown name is refused before the facts are read)
    forget = _facts(args.forget, args)
    if args.inverted:
        inverted = _facts(args.inverted, args)
        by_q = {f.question: f.inverted for f in inverted}
        missing = [f.question for f in forget if not by_q.get(f.question)]
        if missing:
            raise MeowError(f"{args.inverted}: no inverted answers for {len(missing)} forget question(s), "
                            f"e.g. '{missing[0][:60]}'")
        for f in forget:
            f.inverted = list(by_q[f.question])
    retain = _facts(args.retain, args) if args.retain else None
    overrides = {k: v for k, v in {
        **{f.name: getattr(args, f.name) for f in _tuned_fields()},
        "seed": args.seed, "lora": args.lora or None, "early_stop": False if args.no_early_stop else None,
        "bf16": args.bf16 or None, "low_memory": args.low_memory or None,
        "shard": args.shard or None,
    }.items() if v is not None}
    select_settings = SelectSettings(top_k=args.top_k, strategy=args.selection, memo_stride=args.stride,
                                     distinct=args.distinct_answers)
    # The user's own settings, not a whole config: where the default gives way to its fallback, they carry over.
    run = unlearn(forget, args.out, args.method, args.model, retain, None, _invert_settings(args),
                  select_settings, on_event=_print_event, device=args.device, overrides=overrides)
    if run is None:  # one of several data-parallel processes: the main one reports
        return
    s = run["summary"]
    b, a = s["before"]["forget"], s["after"]["forget"]

    print(f"saved {args.out}/model ({run['method']}, {run['seconds_total']:.0f} s)")
    print(f"forget hit rate {percent(b['hit_rate'])} -> {percent(a['hit_rate'])}; "
          f"paraphrases {percent(b['paraphrase_hit_rate'])} -> {percent(a['paraphrase_hit_rate'])}")
    if s["after"]["retain"]:
        print(f"retain hit rate {percent(s['before']['retain']['hit_rate'])} -> "
              f"{percent(s['after']['retain']['hit_rate'])}")
    print(f"other knowledge ({s['everyday']['asked']} everyday questions): {probes.kept_lost_words(s['everyday'])}")


def cmd_ask(args):
    from . import generation, models

    questions = list(args.question)
    if args.facts:
        questions += [f.question for f in _facts(args.facts, args)]
    if not questions:
        raise MeowError("give a question, or --facts FILE")
    specs = [args.model] + ([args.compare] if args.compare else [])
    answers = []
    for spec in specs:
        lm = models.load(spec, args.device, spread=True)
        answers.append(generation.answer(lm.model, lm.tokenizer, questions, _max_new_tokens(args)))
    for i, q in enumerate(questions):
        print(f"Q: {q}")
        for spec, a in zip(specs, answers):
            label = f"[{spec}] " if len(specs) > 1 else ""
            print(f"A: {label}{a[i]}")
        print()


def cmd_methods(args):
    from . import methods
    from .train import TrainConfig

    for name in methods.names():
        cls = methods.REGISTRY[name]
        print(f"{name:<18} {cls.description}")
        if args.verbose:
            config = TrainConfig(**cls.defaults)
            print(" " * 19 + ", ".join(f"--{k.replace('_', '-')} {getattr(config, k)}" for k in cls.hyperparameters))


def _run_json(spec):
    """run.json of a run folder, or None when the spec is not one."""
    from .runs import run_json

    return run_json(spec)


def _evaluate_models(model, compare):
    """(original spec, unlearned spec or None): a run folder is always the unlearned side,
    and without --compare it is compared with the original model named in its run.json."""
    from . import models

    run = _run_json(model)
    if run is not None:
        original = compare or run.get("model")
        if not original:
            raise MeowError(f"{model}/run.json names no original model; pass it with --compare")
        return ("embedded" if original == models.EMBEDDED_NAME else original), model
    if compare and _run_json(compare) is None and model == compare:
        raise MeowError("--model and --compare name the same model")
    return model, compare


def _with_run_inverted(facts, run_dir):
    """Give facts the inverted answers saved in a run folder (for the truth ratio)."""
    from pathlib import Path

    from .facts import load_facts

    path = Path(run_dir) / "facts.jsonl"
    if facts is None:
        if not path.is_file():
            raise MeowError("--forget FILE is required (the model is not a run folder with facts.jsonl)")
        return load_facts(path)
    if path.is_file():
        by_q = {f.question: f.inverted for f in load_facts(path)}
        for f in facts:
            f.inverted = f.inverted or list(by_q.get(f.question) or [])
    return facts


def cmd_evaluate(args):
    import json
    from pathlib import Path

    from . import evaluate, models, report

    original_spec, unlearned_spec = _evaluate_models(args.model, args.compare)
    run_dir = next((s for s in (unlearned_spec, original_spec) if s and _run_json(s) is not None), None)
    forget = _facts(args.forget, args) if args.forget else None
    forget = _with_run_inverted(forget, run_dir) if run_dir else forget
    if forget is None:
        raise MeowError("--forget FILE is required")
    retain = _facts(args.retain, args) if args.retain else None
    holdout = _facts(args.holdout, args) if args.holdout else None
    args.max_new_tokens = _max_new_tokens(args)
    if args.max_new_tokens < 1:
        raise MeowError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    t = time.perf_counter()
    spread = not args.relearn  # the relearning attack trains a copy: one device
    original = models.load(original_spec, args.device, spread=spread)
    unlearned = models.load(unlearned_spec, args.device, spread=spread) if unlearned_spec else None
    names = {"original": original_spec, "unlearned": unlearned_spec, "model": original_spec}
    result = evaluate.compare(original.model, unlearned and unlearned.model, (unlearned or original).tokenizer,
                              forget, retain, holdout, names=names, general=not args.no_general,
                              with_memo=not args.no_memo, max_new_tokens=args.max_new_tokens,
                              relearn={} if args.relearn else None, on_event=_print_event)
    result["timings"]["wall_with_loading"] = round(time.perf_counter() - t, 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    if args.html:
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(report.html(result), encoding="utf-8")
    for set_name, sides in result["sets"].items():
        line = "; ".join(f"{side}: hit rate {percent(s['aggregate']['hit_rate'])}, "
                         f"ROUGE-L {s['aggregate']['rougeL_recall']:.2f}, "
                         f"p(answer) {s['aggregate']['answer_prob']:.2f}" for side, s in sides.items())
        print(f"{set_name}: {line}")
    if result["verdicts"].get("forget"):
        counts = {}
        for v in result["verdicts"]["forget"]:
            counts[v["verdict"]] = counts.get(v["verdict"], 0) + 1
        print("verdicts: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    print(f"wrote {args.out}" + (f" and {args.html}" if args.html else "") + f" ({result['timings']['total']:.0f} s)")


def cmd_attack(args):
    import json
    from pathlib import Path

    from . import extraction, models

    run_dir = args.model if _run_json(args.model) is not None else None
    forget = _facts(args.forget, args) if args.forget else None
    if forget is None:
        forget = _with_run_inverted(None, run_dir) if run_dir else None
    if forget is None:
        raise MeowError("--forget FILE is required (the model is not a run folder)")
    which = extraction.ATTACKS if args.attacks == "all" else [a.strip() for a in args.attacks.split(",") if a.strip()]
    if args.samples < 1:
        raise MeowError(f"--samples must be at least 1, got {args.samples}")
    lm = models.load(args.model, args.device)
    result = extraction.run(lm.model, lm.tokenizer, forget, which, args.samples, _max_new_tokens(args), args.seed,
                            on_event=_print_event)
    result["model"] = args.model
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"{'greedy':<11} leak rate {percent(result['greedy']['leak_rate'])}")
    for name in which:
        r = result[name]
        before = f" (before relearning {percent(r['leak_rate_before'])})" if name == "relearn" else ""
        if name == "sampling" and r["chance"]["leak_rate"] is not None:  # (no fact with a subject to swap: none)
            before = f" (by chance, about made-up subjects: {percent(r['chance']['leak_rate'])})"
        print(f"{name:<11} leak rate {percent(r['leak_rate'])} of {r['facts_asked']} facts{before}")
    print(f"wrote {args.out}")


def cmd_tofu(args):
    from pathlib import Path

    from . import report, tofu

    recipe = {k: v for k, v in {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size}.items()
              if v is not None}
    overrides = {k: v for k, v in {"epochs": args.unlearn_epochs, "lr": args.unlearn_lr}.items() if v is not None}
    if args.authors is not None and args.authors < 2:
        raise MeowError(f"--authors must be at least 2 (one to forget, one to keep), got {args.authors}")
    data = args.data or tofu.default_data_dir()
    result = tofu.run(args.out, args.model, args.method, args.split, args.authors, data, args.device,
                      args.eval_rows, recipe, overrides, on_event=_print_event)
    Path(args.out, "report.html").write_text(report.html(result), encoding="utf-8")
    t = result["tofu"]
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"forget quality {t['forget_quality_original']:.3g} -> {t['forget_quality_unlearned']:.3g} "
          f"(retain reference: {t['retain_reference']})")
    print(f"model utility  {t['model_utility_original']:.3f} -> {t['model_utility_unlearned']:.3f}")
    print(f"wrote {args.out}/report.json and {args.out}/report.html")


def cmd_push(args):
    from . import publish

    if args.dry_run:
        if not args.out:
            raise MeowError("--dry-run needs --out DIR (the folder that would be uploaded)")
        folder = publish.build_folder(args.run, args.out, args.repo_id, args.adapter_only, args.base_model)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        for p in files:
            print(f"  {p.relative_to(folder)}  ({p.stat().st_size:,} bytes)")
        print(f"wrote {len(files)} files to {folder}: nothing forgotten found in them; nothing was uploaded")
        return
    if args.out:
        raise MeowError("--out is for --dry-run only")
    result = publish.push(args.run, args.repo_id, os.environ.get("HF_TOKEN"), args.private, args.adapter_only,
                          args.base_model)
    print(f"pushed {len(result['files'])} files to {result['url']} (checked: nothing forgotten in them)")
    print(f"commit: {result['commit_url']}")


def _verb(sub, name: str, func, **kwargs) -> argparse.ArgumentParser:
    """A verb's parser; `func` runs it."""
    p = sub.add_parser(name, **kwargs)
    p.set_defaults(func=func)
    return p


def _shared_options(p, *parts) -> None:
    """The option groups verbs share (_add_model, _add_generator, _add_limits), after the verb's own."""
    for add in parts:
        add(p)


def _check_verb(sub) -> None:
    p = _verb(sub, "check", cmd_check, help="validate a facts file")
    p.add_argument("file", nargs="?")
    p.add_argument("--facts", default=None, help="the file (instead of the positional argument)")
    _shared_options(p, _add_limits)


def _invert_verb(sub) -> None:
    p = _verb(sub, "invert", cmd_invert, help="generate inverted (false) answers for facts")
    p.add_argument("--facts", required=True)
    p.add_argument("--out", required=True)
    _shared_options(p, _add_model, _add_generator, _add_limits)


def _memo_verb(sub) -> None:
    p = _verb(sub, "memo", cmd_memo, help="MEMO memorization scores of answers and inverted answers")
    p.add_argument("--facts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=["suffix", "prefix"], default="suffix")
    p.add_argument("--stride", type=int, default=5)
    p.add_argument("--length", default="target",
                   help="continuation length: 'target' (target tokens + 4, default) or a number (200 = published)")
    _shared_options(p, _add_model, _add_limits)


def _unlearn_verb(sub, method: str) -> None:
    p = _verb(sub, "unlearn", cmd_unlearn, help="make the model forget facts and save it to RUN_DIR")
    p.add_argument("--forget", required=True)
    p.add_argument("--out", required=True)
    from .methods import DEFAULT, REGISTRY

    fallback = REGISTRY[DEFAULT].falls_back_to
    p.add_argument("--method", default=None,
                   help=f"an unlearning method (`methods -v` lists them; default {DEFAULT}"
                        + (f", or {fallback} where it does not apply, as the run's notes then say" if fallback else "")
                        + "); the defaults below are this method's")
    p.add_argument("--inverted", default=None, help="a file from `invert` (skips generation)")
    p.add_argument("--retain", default=None, help="facts to keep (needed by *_grad_diff, *_kl)")
    p.add_argument("--lora", action="store_true", help=_field_help("lora"))
    p.add_argument("--top-k", type=int, default=3, help="inverted answers kept per fact (default 3)")
    p.add_argument("--selection", choices=select.STRATEGIES, default="largest",
                   help="which inverted answers to keep by MEMO (default largest; all: every one given)")
    p.add_argument("--stride", type=int, default=5, help="MEMO stride in characters")
    p.add_argument("--distinct-answers", action="store_true",
                   help="pass over a false answer already chosen for another fact (one name learned for several "
                        "questions is learned as an answer to their relation, and their neighbours take it too)")
    _add_train_options(p, method)
    p.add_argument("--no-early-stop", action="store_true")
    p.add_argument("--bf16", action="store_true", help=_field_help("bf16"))
    p.add_argument("--low-memory", action="store_true", help=_field_help("low_memory"))
    p.add_argument("--shard", action="store_true", help=_field_help("shard"))
    _shared_options(p, _add_model, _add_generator, _add_limits)


def _ask_verb(sub) -> None:
    p = _verb(sub, "ask", cmd_ask, help="ask a model questions (greedy)")
    p.add_argument("question", nargs="*")
    p.add_argument("--facts", default=None, help="ask every question in this facts file")
    p.add_argument("--compare", default=None, help="a second model to answer beside the first")
    p.add_argument("--max-new-tokens", type=int, default=None)
    _shared_options(p, _add_model, _add_limits)


def _methods_verb(sub) -> None:
    p = _verb(sub, "methods", cmd_methods, help="list unlearning methods")
    p.add_argument("-v", "--verbose", action="store_true", help="also show each method's key settings and defaults")


def _evaluate_verb(sub) -> None:
    p = _verb(sub, "evaluate", cmd_evaluate,
              help="score forget/retain/holdout sets before and after; JSON + HTML report")
    p.add_argument("--forget", default=None, help="facts to check (default with a RUN_DIR: its facts.jsonl)")
    p.add_argument("--retain", default=None, help="facts that should be kept")
    p.add_argument("--holdout", default=None, help="facts never trained on (membership-inference non-members)")
    p.add_argument("--compare", default=None,
                   help="the other model; default for a RUN_DIR --model: the original named in its run.json")
    p.add_argument("--out", required=True, help="REPORT.json")
    p.add_argument("--html", default=None, help="also write the readable report here")
    p.add_argument("--relearn", action="store_true", help="run the relearning attack on the unlearned model")
    p.add_argument("--no-memo", action="store_true", help="skip MEMO (the slowest measure)")
    p.add_argument("--no-general", action="store_true", help="skip the shipped general-ability set")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="greedy answer length (default 48, as the unlearning probes; the TOFU spec uses 200)")
    _shared_options(p, _add_model, _add_limits)


def _attack_verb(sub) -> None:
    p = _verb(sub, "attack", cmd_attack,
              help="extraction attacks (paraphrase, prefix, few-shot, sampling, relearning): leak rates")
    p.add_argument("--forget", default=None, help="facts to extract (default with a RUN_DIR: its facts.jsonl)")
    p.add_argument("--out", required=True, help="ATTACKS.json: leak rates and every prompt and answer")
    p.add_argument("--attacks", default="all",
                   help="comma-separated, from paraphrase, prefix, few_shot, sampling, relearn (default: all)")
    p.add_argument("--samples", type=int, default=10, help="samples per question at temperature 1 (default 10)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    _shared_options(p, _add_model, _add_limits)


def _tofu_verb(sub) -> None:
    p = _verb(sub, "tofu", cmd_tofu,
              help="TOFU protocol: fine-tune on fictitious authors, unlearn, forget quality + utility")
    p.add_argument("--out", required=True, help="a new folder for report.json, report.html and run/")
    p.add_argument("--method", default="meow")
    p.add_argument("--split", choices=["forget01", "forget05", "forget10"], default="forget01")
    p.add_argument("--authors", type=int, default=None,
                   help="reduced TOFU with N authors (e.g. 4 on a CPU); default: all 200")
    p.add_argument("--data", default=None, help="TOFU folder (default: ../shared/data/tofu next to the repo)")
    p.add_argument("--eval-rows", type=int, default=20, help="with --authors: rows per utility set (default 20)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default 5 full, 3 with --authors)")
    p.add_argument("--lr", type=float, default=None,
                   help="fine-tuning learning rate (default 1e-5 full on GPU, 5e-4 with --authors)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--unlearn-epochs", type=int, default=None)
    p.add_argument("--unlearn-lr", type=float, default=None)
    _shared_options(p, _add_model)


def _push_verb(sub) -> None:
    p = _verb(sub, "push", cmd_push, help="publish a run to the Hugging Face Hub (model card, no forgotten text)",
                       description="The token comes from HF_TOKEN; HF_ENDPOINT picks another Hub.")
    p.add_argument("--run", required=True, help="the RUN_DIR written by `unlearn`")
    p.add_argument("--repo-id", required=True, help="USER/NAME on the Hub (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--adapter-only", action="store_true", help="push the LoRA adapter (runs made with --lora)")
    p.add_argument("--base-model", default=None, help="Hub id of the base model, when it was a local folder")
    p.add_argument("--dry-run", action="store_true", help="write the upload folder to --out instead of pushing")
    p.add_argument("--out", default=None, help="with --dry-run: a new folder for the files")


def build_parser(method: str | None = None) -> argparse.ArgumentParser:
    """The command line; `method`: whose defaults `unlearn --help` shows (the default method's)."""
    from .methods import DEFAULT

    method = method or DEFAULT
    parser = argparse.ArgumentParser(prog="python -m meow_app", description="MEOW Studio: make an LLM forget facts.")
    sub = parser.add_subparsers(dest="verb", required=True)
    _check_verb(sub)
    _invert_verb(sub)
    _memo_verb(sub)
    _unlearn_verb(sub, method)
    _ask_verb(sub)
    _methods_verb(sub)
    _evaluate_verb(sub)
    _attack_verb(sub)
    _tofu_verb(sub)
    _push_verb(sub)
    return parser


def _show_warning(message, category, *args, _default=warnings.showwarning, **kwargs):
    """MeowWarnings as one line on stderr; other warnings as Python shows them."""
    if issubclass(category, MeowWarning):
        _say(f"warning: {message}")
    else:
        _default(message, category, *args, **kwargs)


def _say(line: str) -> None:
    """One line on stderr in one write: a data-parallel run's processes share it, and print's
    separate newline let two processes' errors run together on one line."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _process_prefix() -> str:
    """'process 2 of 4: ' in a data-parallel run's other processes, else nothing."""
    from .distributed import launched_rank, launched_size

    rank, size = launched_rank(), launched_size()
    return f"process {rank} of {size}: " if rank else ""


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(method_in(argv)).parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        args.func(args)
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except PeerFailed as e:  # a data-parallel run: another process failed; the main process says so
        if not _process_prefix():
            _say(f"error: {e}")
        return 1
    except MeowError as e:
        # Every process of a data-parallel run says it (named when not the main one): the first to
        # fail ends the run, and the launcher may stop the main one before it has said anything.
        _say(f"error: {_process_prefix()}{e}")
        return 2
    except Exception as e:  # a bug: say so in one line; MEOW_DEBUG=1 shows the traceback
        if os.environ.get("MEOW_DEBUG"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        _say(f"error: {_process_prefix()}internal error ({type(e).__name__}: {first}); "
             "rerun with MEOW_DEBUG=1 for details")
        return 1
    return 0
