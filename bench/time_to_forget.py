"""Item 1: time to forget on the embedded model, end to end, split by stage.

    .venv/bin/python bench/time_to_forget.py                  # defaults, plus --bf16 where the CPU has bf16 matmul
    .venv/bin/python bench/time_to_forget.py --variants default --no-write
    .venv/bin/python bench/time_to_forget.py --shape 1b         # item 8: on a GPU, a 1B-class model

One `pipeline.unlearn` run per variant (method `meow` with its defaults: invert + MEMO +
select + train + the early-stopping probes) on assets/facts/demo_forget.jsonl (8 facts the
model answers, 15 paraphrases), with assets/facts/demo_retain.jsonl (48 other facts)
given only to be measured (MEOW does not train on it). Each run is a fresh process, so
its peak RSS is its own. The stage times come from run.json; inside the train stage,
the optimiser steps and the early-stopping probes are timed separately (progress events
and a timing wrapper around probes.probe), so it shows where the time goes.

`--shape` (item 8) times the same run on a randomly initialised model of another shape
(`1b`: Llama-3.2-1B's, 1.07B parameters, the embedded tokenizer; or a JSON object of
config changes), saved to a temporary folder first. Random weights know no facts, so the
hit rates mean nothing there and early stopping is off: every run trains its full steps.
On CUDA the model loads in bf16 and training autocasts to bf16 (models.default_dtype).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from meow_app import methods  # noqa: E402

# name -> unlearn options (TrainConfig fields) that differ from the method's defaults
# (the inversion's `generator` is an InvertSettings field, the rest TrainConfig fields)
VARIANTS = {"default": {}, "bf16": {"bf16": True}, "lora": {"lora": True}, "low_memory": {"low_memory": True},
            # meow's recipe before issue 19 (few-shot false answers, neighbours trained on, greedy stop)
            "previous": {"generator": "local", "null_space": 0.0, "anchor_weight": 1.0, "lr": 1e-4, "stop_depth": 0.0},
            # the closed-form edit (methods/meow_edit.py) with its own defaults
            "meow_edit": {},
            # the original model's answers to the shipped questions asked afresh (MEOW_ANSWER_CACHE=0), and
            # `default` again, run after a first `default` has kept them (meow_app/answer_cache.py)
            "no_cache": {"answer_cache": False}, "warm": {},
            # every probe answer to its end, as before probes stopped once an answer leaked
            "whole_probes": {"whole_probes": True},
            # the projection also holding the layers a massive activation left free (docs/forgetting.md round 12)
            "ns_outliers": {"null_space_outliers": 0.1},
            # gated neurons in one MLP (methods/meow_patch.py) with their own defaults
            "meow_patch": {},
            # its neurons in the place of the least used ones, as before the twenty-first round
            "patch_slots": {"patch_widen": False},
            # and with answers sampled again from the patched model after half its epochs (docs/forgetting.md round 14)
            "patch_resample": {"patch_resample": 8},
            # the default before the twenty-seventh round: the hinge as a mean over tokens, the truth's whole sentence
            "round26": {"patch_row_hinge": False, "truth_span": False},
            # the siblings' answers ended after their first sentence (docs/forgetting.md round 29: an option)
            "sibling_sentence": {"sibling_sentences": 1},
            # half the answers sampled from the original to find the truths (docs/forgetting.md round 31: not kept)
            "patch_samples4": {"patch_samples": 4},
            # the neurons' value scaled up before each probe and in the model returned (round 35: an option)
            "patch_scale15": {"patch_scale": 1.5}, "patch_scale2": {"patch_scale": 2.0}}
# variants that run another method than meow
# (`default`, `warm` and the rest run the default method, meow_patch since the sixteenth round of
# docs/forgetting.md; `meow` is the default before it, with its own defaults)
VARIANTS["meow"] = {}
VARIANT_METHODS = {"meow_edit": "meow_edit", "meow_patch": "meow_patch", "patch_resample": "meow_patch",
                   "patch_slots": "meow_patch", "round26": "meow_patch", "sibling_sentence": "meow_patch",
                   "patch_samples4": "meow_patch", "patch_scale15": "meow_patch",
                   "patch_scale2": "meow_patch", "meow": "meow", "previous": "meow", "ns_outliers": "meow",
                   "lora": "meow", "low_memory": "meow"}
INVERT_FIELDS = ("generator",)
GOAL_SECONDS = 60
# Config changes from the embedded (SmolLM2-135M) config; its vocabulary and tied embeddings stay.
SHAPES = {"1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 64}}


def build_shape(changes: dict, folder: Path) -> int:
    """common.random_model saved (with the embedded tokenizer) where models.load reads it;
    returns its parameter count."""
    model, tokenizer = common.random_model(changes)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def forget_once(facts_files: list[str], n_facts: int, overrides: dict, method: str = methods.DEFAULT,
                model: str | None = None, retain_file: str | None = str(common.RETAIN),
                threads: int | None = None) -> dict:
    """One timed unlearn run in this process; returns the stage times and hit rates."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from meow_app import fisher, methods, models, pipeline, probes, train
    from meow_app.facts import load_facts
    from meow_app.train import TrainConfig

    plain_probe = probes.probe_many
    if overrides.get("whole_probes"):
        probes.probe_many = lambda model, tok, sets, *a, **k: plain_probe(
            model, tok, [ps._replace(stop_once_leaked=()) for ps in sets], *a, **k)
    watch = common.Stopwatch()
    # Before and after, the forget, retain and everyday sets go in one pass (pipeline.probe_sets);
    # the early-stopping probes (greedy, and with stop_depth the true answers' probability) apart.
    watch.wrap(pipeline, "probe_sets")
    watch.wrap(train.Trainer, "probe_and_check", lambda *a, **k: "probe_training")
    watch.wrap(pipeline, "anchor_facts")          # inside the train stage (methods with anchors)
    # The Fisher's curvature data (Fisher methods): per_example_grads is a generator, so
    # its time is spent where the curvature consumes it.
    for backend in (fisher.Diagonal, fisher.LowRank):
        watch.wrap(backend, "from_grads", lambda *a, **k: "per_example_grads")
    events = []

    def on_event(e):
        events.append((time.perf_counter(), e))

    forget = [f for path in facts_files for f in load_facts(path)][:n_facts]
    retain = load_facts(retain_file) if retain_file else None
    if not overrides.get("answer_cache", True):
        os.environ["MEOW_ANSWER_CACHE"] = "0"
    train = {k: v for k, v in overrides.items() if k not in INVERT_FIELDS + ("answer_cache", "whole_probes")}
    config = TrainConfig(**{**methods.get(method).defaults, **train})
    invert = pipeline.InvertSettings(**{k: v for k, v in overrides.items() if k in INVERT_FIELDS})
    t = time.perf_counter()
    loaded = models.load(model)
    load_seconds = time.perf_counter() - t
    out = Path(tempfile.mkdtemp()) / "run"
    try:
        run = pipeline.unlearn(forget, out, method, retain=retain, config=config, loaded=loaded, on_event=on_event,
                               invert_settings=invert)
    finally:
        watch.restore()
        probes.probe_many = plain_probe
        shutil.rmtree(out.parent, ignore_errors=True)  # (the saved model: half a GB a run)
    steps, last, in_train = [], None, 0
    for when, e in events:
        if e["type"] == "stage" and e["stage"] == "train":
            last = when
        elif e["type"] == "step" and last is not None:
            steps.append(when - last)
            last = when
        elif e["type"] == "probe":
            in_train += 1
            last = when
    if steps:  # the neighbour answers are generated between the train stage's start and the first step
        steps[0] -= watch.seconds.get("anchor_facts", 0)
    timings = {**run["timings"], "load": round(load_seconds, 2)}  # the model was loaded here, not in unlearn
    return {
        "method": method, "facts": len(forget), "overrides": overrides, "timings": timings,
        "total": round(sum(timings.values()), 1),
        "steps": len(run["steps"]), "step_seconds": round(sum(steps), 1),
        "mean_step": round(sum(steps) / max(len(steps), 1), 2),
        "train_probes": in_train, "spent": {k: round(v, 1) for k, v in watch.seconds.items()},
        "probe_training_seconds": round(watch.seconds.get("probe_training", 0), 1),
        "probe_sets_seconds": round(watch.seconds.get("probe_sets", 0), 1),
        "summary": run["summary"], "stopped_early": run["stopped_early"], "answer_cache": run.get("answer_cache"),
        "method_info": {k: v for k, v in run.get("method_info", {}).items() if k != "steps"},
        "params": sum(p.numel() for p in loaded.model.parameters()),
        "device": loaded.device.type, "dtype": str(loaded.dtype).replace("torch.", ""),
        "gpu_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
    }


def child(argv: list[str]) -> dict:
    import json

    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="default")
    ap.add_argument("--set", default="{}", help="more TrainConfig changes, as JSON")
    ap.add_argument("--method", default=methods.DEFAULT)
    ap.add_argument("--facts", nargs="+", default=[str(common.FORGET)])
    ap.add_argument("--n", type=int, default=10**9)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-retain", action="store_true")
    a = ap.parse_args(argv)
    return forget_once(a.facts, a.n, {**VARIANTS[a.variant], **json.loads(a.set)}, a.method, a.model,
                       None if a.no_retain else str(common.RETAIN), a.threads)


def stage_row(name: str, r: dict) -> list:
    t, s = r["timings"], r["summary"]
    return [name, f"**{r['total']:.0f} s**", f"{t.get('load', 0):.0f}", f"{t.get('probe_before', 0):.0f}",
            f"{t.get('invert', 0):.0f}", f"{t.get('memo_select', 0):.0f}",
            f"{t['train']:.0f} ({r['steps']} steps × {r['mean_step']:.1f} s = {r['step_seconds']:.0f}; "
            f"{r['train_probes']} probes)", f"{t.get('probe_after', 0):.0f}", f"{t.get('save', 0):.0f}",
            f"{common.pct(s['before']['forget']['hit_rate'])} → {common.pct(s['after']['forget']['hit_rate'])}",
            f"{common.pct(s['before']['forget']['paraphrase_hit_rate'])} → "
            f"{common.pct(s['after']['forget']['paraphrase_hit_rate'])}",
            f"{common.pct(s['before']['retain']['hit_rate'])} → {common.pct(s['after']['retain']['hit_rate'])}"
            if s["before"]["retain"] else "n/a",
            f"{r['peak_rss_gib']:.1f} GiB"]


COLUMNS = ["variant", "total", "load", "probe before", "invert", "MEMO + select", "train (steps; probes)",
           "probe after", "save", "forget hit rate", "paraphrase hit rate", "retain hit rate (48)", "peak RSS"]


def main() -> None:
    if "--child" in sys.argv:
        common.child_main(child)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # On a CPU without bf16 matmul hardware (no avx512_bf16 / amx_bf16: e.g. AMD Zen 3) bf16
    # matmuls run ~7x slower than fp32 and the bf16 run takes far longer than 18 minutes.
    import torch

    from meow_app.models import cpu_has_bf16_matmul

    # (On CUDA training always autocasts to bf16: the bf16 variant would repeat the default.)
    bf16_fast = not torch.cuda.is_available() and bool(cpu_has_bf16_matmul())
    ap.add_argument("--variants", nargs="+", default=["default", "bf16"] if bf16_fast else ["default"],
                    choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the runs (default: torch's)")
    ap.add_argument("--shape", default=None,
                    help=f"time a random model of this shape ({', '.join(SHAPES)}, or a JSON object of config changes)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to docs/benchmarks.md")
    a = ap.parse_args()
    load_before = common.load_average()
    rows, raw, shape_args, title = [], {}, [], "Time to forget (item 1)"
    if a.shape:
        import json

        changes = SHAPES[a.shape] if a.shape in SHAPES else json.loads(a.shape)
        folder = Path(tempfile.mkdtemp()) / "model"
        params = build_shape(changes, folder)
        shape_args = ["--model", str(folder), "--set", json.dumps({"early_stop": False})]
        title = f"Time to forget, {params / 1e9:.2f}B-parameter random model ({a.shape}) (item 8)"
    for name in a.variants:
        extra = (["--variant", name, "--method", VARIANT_METHODS.get(name, methods.DEFAULT)]
                 + (["--threads", str(a.threads)] if a.threads else []) + shape_args)
        r = common.run_child(__file__, extra)
        raw[name] = r
        print(f"done {name}: {r.get('error', r.get('total'))}", file=sys.stderr, flush=True)
        rows.append([name, "error: " + str(r["error"])] + [""] * (len(COLUMNS) - 2) if "error" in r
                    else stage_row(name, r))
    body = (common.table(COLUMNS, rows) +
            f"\nSeconds per stage; goal: whole run <= {GOAL_SECONDS} s with the facts gone. "
            "Probe times include the 48 retain questions (before and after), asked only to measure.\n")
    for name, r in raw.items():
        if "error" not in r:
            body += (f"\n- `{name}`: early-stopping probes {r['probe_training_seconds']:.0f} s "
                     f"({r['train_probes']} in training), probes before and after (forget, retain and everyday "
                     f"sets, one pass each) {r['probe_sets_seconds']:.0f} s, "
                     f"optimiser steps {r['step_seconds']:.0f} s, neighbour answers "
                     f"{r['spent'].get('anchor_facts', 0):.0f} s.")
            if r.get("answer_cache"):
                body += (f" Shipped questions' answers: {r['answer_cache']['hits']} from the cache, "
                         f"{r['answer_cache']['misses']} asked.")
            if r.get("gpu_peak_gib") is not None:
                body += f" Peak GPU memory {r['gpu_peak_gib']:.1f} GiB ({r['dtype']})."
    if a.shape:
        body += ("\nRandom weights, early stopping off: every run trains its full steps; the hit rates mean "
                 "nothing (the model knows no facts).\n")
    common.report(title, body + "\n", load_before, raw, "time_to_forget", not a.no_write)


if __name__ == "__main__":
    main()
