"""Item 7: how the time to forget grows with the number of facts and with the model size.

    .venv/bin/python bench/scaling.py                          # 1, 4, 16 facts; 135M and 360M shapes
    .venv/bin/python bench/scaling.py --counts 1 4 16 64       # the full series (long: ~500 steps at 64)
    .venv/bin/python bench/scaling.py --skip-facts --no-write  # model sizes only

Facts: real facts the embedded model answers (famous_facts.jsonl, then
holdout_facts.jsonl: 72 in all), the first N; each count is one `unlearn` run with the
`meow` defaults (bench/time_to_forget.py's child, no retain set). Early stopping ends a
run when nothing leaks, and the defaults' step budget (at least 12 steps, at most 3
epochs unless that budget needs more) sets how many steps a small count gets, so the
table gives steps and time per step beside the total.

Model size: only the embedded model is available here (no Hub), so a second size is a
randomly initialised Llama built from a config (SmolLM2-360M's shape), for timing only.
Both sizes are timed as random models of the same recipe (the 135M one from the
embedded model's config): one epoch of the `meow` training loop on demo_forget (8 facts
x 8 copies, 4 steps) and one probe of its 8 questions and 15 paraphrases (48 new tokens).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

FACT_FILES = [str(common.FACTS / "famous_facts.jsonl"), str(common.FACTS / "holdout_facts.jsonl")]
# Config changes from the embedded (SmolLM2-135M) config.
SIZES = {"135M (embedded shape)": {},
         "360M (SmolLM2-360M shape)": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                                       "num_attention_heads": 15, "num_key_value_heads": 5}}


def size_child(argv: list[str]) -> dict:
    from meow_app import methods, probes
    from meow_app.facts import load_facts
    from meow_app.train import TrainConfig, Trainer

    model, tok = common.random_model(json.loads(argv[0]))
    facts = load_facts(common.FORGET)
    for f in facts:
        f.inverted = [f.answer]
    times = []
    cfg = TrainConfig(**{**methods.get("meow").defaults, **common.epochs_exactly(1), "early_stop": False})
    trainer = Trainer(methods.get("meow"), model, tok, cfg, facts,
                      on_event=lambda e: e["type"] == "step" and times.append(time.perf_counter()))
    trainer.probe_and_check = lambda *a: False
    start = time.perf_counter()
    trainer.train()
    steps = [b - a for a, b in zip([start] + times, times)][1:]
    t = time.perf_counter()
    probes.probe(model, tok, facts)
    probe_seconds = time.perf_counter() - t
    return {"params": sum(p.numel() for p in model.parameters()), "step": statistics.median(steps),
            "probe": probe_seconds}


def growth(xs, ys) -> float:
    """Exponent b of y ~ x^b, least squares on logs."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.mean(lx), statistics.mean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main() -> None:
    if "--child" in sys.argv:
        common.child_main(size_child)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--skip-facts", action="store_true")
    ap.add_argument("--skip-sizes", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    load_before = common.load_average()
    raw, body = {"facts": {}, "sizes": {}}, ""
    forget_script = str(Path(__file__).resolve().parent / "time_to_forget.py")
    if not a.skip_facts:
        rows, ok = [], []
        for n in a.counts:
            r = common.run_child(forget_script, ["--facts", *FACT_FILES, "--n", str(n), "--no-retain"])
            raw["facts"][n] = r
            print(f"done {n} facts: {r.get('error', r.get('total'))}", file=sys.stderr, flush=True)
            if "error" in r:
                rows.append([n, "error: " + str(r["error"])] + [""] * 6)
                continue
            t, s = r["timings"], r["summary"]
            ok.append((n, r["total"], t["train"]))
            rows.append([n, f"**{r['total']:.0f} s**", f"{t.get('invert', 0) + t.get('memo_select', 0):.0f} s",
                         f"{t['train']:.0f} s", f"{r['steps']} × {r['mean_step']:.1f} s",
                         f"{common.pct(s['before']['forget']['hit_rate'])} → "
                         f"{common.pct(s['after']['forget']['hit_rate'])}",
                         f"{common.pct(s['before']['forget']['paraphrase_hit_rate'])} → "
                         f"{common.pct(s['after']['forget']['paraphrase_hit_rate'])}"])
        body += common.table(["facts", "total", "invert + MEMO", "train (incl. probes)", "steps × time per step",
                              "forget hit rate", "paraphrase hit rate"], rows)
        if len(ok) >= 2:
            body += (f"\nGrowth, fitted as time ~ facts^b over {', '.join(str(n) for n, _, _ in ok)} facts: "
                     f"whole run b = **{growth([n for n, _, _ in ok], [x for _, x, _ in ok]):.2f}**, "
                     f"train stage b = {growth([n for n, _, _ in ok], [x for _, _, x in ok]):.2f} (1 = linear).\n")
    if not a.skip_sizes:
        rows = []
        for name, changes in SIZES.items():
            r = common.run_child(__file__, [json.dumps(changes)])
            raw["sizes"][name] = r
            print(f"done {name}: {r}", file=sys.stderr, flush=True)
            if "error" in r:
                rows.append([name, "error: " + str(r["error"]), "", "", ""])
                continue
            rows.append([name, f"{r['params'] / 1e6:.0f}M", f"{r['step']:.2f} s", f"{r['probe']:.1f} s",
                         f"{r['peak_rss_gib']:.2f} GiB"])
        body += "\n" + common.table(["model (random weights)", "parameters", "training step (16 examples)",
                                     "one probe (23 prompts)", "peak RSS"], rows)
        sizes = [r for r in raw["sizes"].values() if "error" not in r]
        if len(sizes) == 2:
            p = sizes[1]["params"] / sizes[0]["params"]
            body += (f"\nParameters ×{p:.2f}: training step ×{sizes[1]['step'] / sizes[0]['step']:.2f}, "
                     f"probe ×{sizes[1]['probe'] / sizes[0]['probe']:.2f}.\n")
    common.report("Scaling with facts and model size (item 7)", body, load_before, raw, "scaling", not a.no_write)


if __name__ == "__main__":
    main()
