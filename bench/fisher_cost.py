"""Item 6: the cost of second-order unlearning: Fisher Removal with a diagonal Fisher and
with WoodFisher (m = 8 and 32 stored gradients) against one epoch of first-order training
(gd: gradient ascent + retain NLL; meow), on the same facts, embedded model, CPU.

    .venv/bin/python bench/fisher_cost.py                     # one Newton step each
    .venv/bin/python bench/fisher_cost.py --fisher-steps 10   # the default number of steps

Forget: demo_forget (8 facts); retain: demo_retain (48, the Fisher's curvature data and
gd's retain batches). Each run is a fresh process (bench/time_to_forget.py's child), so
its peak RSS is its own. "train" is the pipeline's train stage (for the Fisher methods
it includes building the curvature and, like every method, the forget probes after
each update); the curvature's per-example gradients and the anchor answers are timed
on their own. WoodFisher with m = 32 over all MLP blocks would store 32 x 80M floats
(10 GiB, which the method refuses); both WoodFisher runs are therefore limited to the
MLP blocks of layers 2 and 20-29 (`--fisher-layers layers.2`, 11 of 30 layers), so
they differ only in m.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WOOD_LAYERS = "layers.2"


def variants(fisher_steps: int) -> dict:
    newton = {"fisher_steps": fisher_steps}
    return {
        "gd, 1 epoch (1 step: one batch of the 8 facts)": ("gd", {"epochs": 1}),
        "meow, 1 epoch (4 steps, with its neighbours)": ("meow", common.epochs_exactly(1)),
        "fisher_removal, diagonal (m = 32)": ("fisher_removal", newton),
        "fisher_removal, WoodFisher m = 8": ("fisher_removal", {**newton, "fisher_backend": "woodfisher",
                                                                 "fisher_examples": 8, "fisher_layers": WOOD_LAYERS}),
        "fisher_removal, WoodFisher m = 32": ("fisher_removal", {**newton, "fisher_backend": "woodfisher",
                                                                  "fisher_examples": 32, "fisher_layers": WOOD_LAYERS}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fisher-steps", type=int, default=1, help="Newton steps at most (the method's default is 10)")
    ap.add_argument("--only", nargs="*", default=None, help="substrings of the variant names to run")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    load_before = common.load_average()
    script = str(Path(__file__).resolve().parent / "time_to_forget.py")
    rows, raw = [], {}
    for name, (method, changes) in variants(a.fisher_steps).items():
        if a.only and not any(o in name for o in a.only):
            continue
        r = common.run_child(script, ["--method", method, "--set", json.dumps(changes)])
        raw[name] = r
        print(f"done {name}: {r.get('error', r.get('total'))}", file=sys.stderr, flush=True)
        if "error" in r:
            rows.append([name, "error: " + str(r["error"])] + [""] * 6)
            continue
        spent, s, info = r["spent"], r["summary"], r["method_info"]
        curvature = spent.get("per_example_grads", 0)
        train = r["timings"]["train"] - spent.get("anchor_facts", 0)
        rows.append([name, f"**{train:.0f} s**", f"{curvature:.0f} s" if curvature else "-",
                     (f"{r['steps']} "
                      f"({info.get('stopped', 'early stop' if r['stopped_early'] else '')})").replace(" ()", ""),
                     f"{(r['step_seconds'] - curvature - spent.get('anchor_facts', 0)) / max(r['steps'], 1):.1f} s",
                     f"{common.pct(s['before']['forget']['hit_rate'])} → "
                     f"{common.pct(s['after']['forget']['hit_rate'])}",
                     f"**{r['peak_rss_gib']:.2f} GiB**"])
    body = common.table(["update", "train stage (without anchors)", "of it: Fisher's per-example gradients",
                         "updates", "per update (incl. step-size search / probe)", "forget hit rate",
                         "peak RSS (whole run)"], rows)
    body += (f"\nFisher Removal with at most {a.fisher_steps} Newton step(s); its default is 10, each preceded by "
             "a step-size search over up to 4 sizes (retain and forget NLL at each).\n")
    common.report("Second-order cost: Fisher Removal against first-order training (item 6)", body, load_before,
                  raw, "fisher_cost", not a.no_write)


if __name__ == "__main__":
    main()
