"""Item 3: batched MEMO (meow_app.memo.score_facts) against the one-cut-at-a-time reference
(meow_app.memo.memo_reference: one greedy generation per cut at batch size 1, as the
MEOW authors' code does), on the embedded model.

    .venv/bin/python bench/memo_speed.py                 # 20 facts of famous_facts.jsonl
    .venv/bin/python bench/memo_speed.py --facts 56 --no-write

The facts are inverted first with the local model (the pipeline's default, 4 candidates
each, seed 0); then every text (the true answer and each candidate) is scored both ways,
side by side in this one process, in pipeline's settings (suffix mode, stride 5,
continuation = target tokens + 4). Reports both times, the speed-up and how far the
scores differ.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GOAL_SPEEDUP = 10
GOAL_MEAN_DIFF = 0.01


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--facts", type=int, default=20, help="how many facts of the file")
    ap.add_argument("--file", default=str(common.FACTS / "famous_facts.jsonl"))
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    load_before = common.load_average()

    from meow_app import invert, memo, models, pipeline
    from meow_app.facts import load_facts

    lm = models.load("embedded")
    facts = load_facts(a.file)[:a.facts]
    settings = pipeline.SelectSettings()
    t = time.perf_counter()
    invert.invert(facts, invert.LocalGenerator(lm.model, lm.tokenizer), pipeline.InvertSettings().n, seed=0)
    invert_seconds = time.perf_counter() - t
    items = [(f.question, text) for f in facts for text in [f.answer, *f.inverted]]
    n_cuts = sum(len(memo.cuts(q, x, settings.memo_mode, settings.memo_stride)) for q, x in items)

    t = time.perf_counter()
    batched = [s for answer, cands in memo.score_facts(lm.model, lm.tokenizer, facts, settings.memo_mode,
                                                        settings.memo_stride, settings.memo_length)
               for s in [answer, *cands]]
    batched_seconds = time.perf_counter() - t
    t = time.perf_counter()
    reference = [memo.memo_reference(lm.model, lm.tokenizer, q, x, settings.memo_mode, settings.memo_stride,
                                     settings.memo_length) for q, x in items]
    reference_seconds = time.perf_counter() - t

    diffs = [abs(b - r) for b, r in zip(batched, reference)]
    mean_diff = sum(diffs) / len(diffs)
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    speedup = reference_seconds / batched_seconds
    rows = [["reference (one cut at a time, batch 1)", len(items), n_cuts, f"{reference_seconds:.1f} s", "1.0x"],
            ["batched (`memo.score_facts`)", len(items), n_cuts, f"{batched_seconds:.1f} s", f"**{speedup:.1f}x**"]]
    body = common.table(["implementation", "texts", "cuts (generations)", "time", "speed-up"], rows)
    body += (f"\n{len(facts)} facts ({Path(a.file).name}), each with its true answer and "
             f"{pipeline.InvertSettings().n} inverted candidates from the local model (inverting took "
             f"{invert_seconds:.0f} s, not counted). Scores: mean absolute difference **{mean_diff:.4f}** "
             f"(goal <= {GOAL_MEAN_DIFF}), {sum(d > 1e-9 for d in diffs)} of {len(diffs)} texts differ at all, "
             f"largest {diffs[worst]:.3f} on {items[worst][1]!r} (batched {batched[worst]:.3f}, reference "
             f"{reference[worst]:.3f}). Speed-up goal >= {GOAL_SPEEDUP}x: "
             f"**{'met' if speedup >= GOAL_SPEEDUP else 'not met'}**; agreement goal: "
             f"**{'met' if mean_diff <= GOAL_MEAN_DIFF else 'not met'}**.\n")
    raw = {"items": items, "batched": batched, "reference": reference, "batched_seconds": batched_seconds,
           "reference_seconds": reference_seconds, "cuts": n_cuts, "invert_seconds": invert_seconds}
    common.report("MEMO, batched against the reference (item 3)", body, load_before, raw, "memo_speed",
                  not a.no_write)


if __name__ == "__main__":
    main()
