"""Compare every unlearning method on the same real facts, with the same loop and probes.

    PYTHONPATH=. .venv/bin/python bench/compare_methods.py                 # all methods
    PYTHONPATH=. .venv/bin/python bench/compare_methods.py ga fisher_removal

Forget set: assets/facts/demo_forget.jsonl (8 facts the embedded model answers, with
paraphrases); retain set: assets/facts/demo_retain.jsonl (48 other facts it answers),
given to every method (methods that use retain data train on it; all are measured on
it); plus assets/facts/holdout_facts.jsonl (16 more facts no method ever sees) as a
second, untouched check of what else is kept. Each method runs with its own defaults
(`python -m meow_app methods -v`) in a fresh subprocess, so its time and peak memory
are its own. Prints a Markdown table (paste it into docs/methods.md) and writes the raw
numbers to bench/results/compare_methods.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pct  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FORGET = ROOT / "assets/facts/demo_forget.jsonl"
RETAIN = ROOT / "assets/facts/demo_retain.jsonl"
UNSEEN = ROOT / "assets/facts/holdout_facts.jsonl"
ORDER = ["ga", "gd", "kl", "npo", "idk", "sophia_graddiff", "sophia_npo", "sophia_idk",
         "fisher_removal", "fisher_forgetting", "meow", "meow_grad_diff", "meow_kl"]


def one(method: str, extra: list[str], forget: Path = FORGET, unseen: Path = UNSEEN, retain: Path = RETAIN) -> None:
    """Run one method in this process and print its numbers as JSON on the last line."""
    sys.path.insert(0, str(ROOT))
    from meow_app import models, probes
    from meow_app.cli import main as cli_main

    run_dir = Path(tempfile.mkdtemp()) / "run"
    t = time.perf_counter()
    rc = cli_main(["unlearn", "--method", method, "--forget", str(forget), "--retain", str(retain),
                   "--out", str(run_dir), *extra])
    seconds = time.perf_counter() - t
    if rc != 0:
        print(json.dumps({"method": method, "error": rc}))
        return
    run = json.loads((run_dir / "run.json").read_text())
    from meow_app.facts import load_facts

    unseen = load_facts(unseen)
    after = models.load(str(run_dir / "model"))
    before = models.load_shared()
    row = {
        "method": method, "seconds": round(seconds, 1), "train_seconds": run["timings"]["train"],
        "steps": len(run["steps"]), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "summary": run["summary"],
        "unseen_before": probes.probe(before.model, before.tokenizer, unseen, paraphrases=False)["hit_rate"],
        "unseen_after": probes.probe(after.model, after.tokenizer, unseen, paraphrases=False)["hit_rate"],
        "method_info": {k: v for k, v in run.get("method_info", {}).items() if k != "steps"},
    }
    shutil.rmtree(run_dir.parent, ignore_errors=True)  # (the saved model: half a GB a method)
    print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("methods", nargs="*", default=ORDER)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--extra", default="", help="extra options for `unlearn`, e.g. '--lr 2e-5'")
    parser.add_argument("--forget", type=Path, default=FORGET, help="facts to forget (default demo_forget)")
    parser.add_argument("--retain", type=Path, default=RETAIN, help="retain facts (default demo_retain)")
    parser.add_argument("--unseen", type=Path, default=UNSEEN,
                        help="facts no method sees, measured after (default holdout_facts)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "compare_methods.json",
                        help="where the raw numbers go")
    args = parser.parse_args()
    extra = args.extra.split()
    if args.one:
        one(args.methods[0], extra, args.forget, args.unseen, args.retain)
        return
    rows = []
    for method in args.methods:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, __file__, "--one", method, "--extra", args.extra,
                               "--forget", str(args.forget), "--unseen", str(args.unseen),
                               "--retain", str(args.retain)],
                              capture_output=True, text=True, env=env, cwd=ROOT)
        last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        try:
            row = json.loads(last)
        except json.JSONDecodeError:
            row = {"method": method, "error": proc.stderr.strip().splitlines()[-1:] or proc.returncode}
        rows.append(row)
        print(f"done {method}: {row if 'error' in row else ''}", file=sys.stderr, flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
    print("| method | forget hit rate | paraphrase hit rate | retain hit rate | unseen facts kept "
          "| steps | time | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| `{r['method']}` | error: {r['error']} | | | | | | |")
            continue
        s = r["summary"]
        print(f"| `{r['method']}` | {pct(s['before']['forget']['hit_rate'])} → {pct(s['after']['forget']['hit_rate'])} "
              f"| {pct(s['before']['forget']['paraphrase_hit_rate'])} → "
              f"{pct(s['after']['forget']['paraphrase_hit_rate'])} "
              f"| {pct(s['before']['retain']['hit_rate'])} → {pct(s['after']['retain']['hit_rate'])} "
              f"| {pct(r['unseen_before'])} → {pct(r['unseen_after'])} | {r['steps']} | {r['seconds']:.0f} s "
              f"| {r['peak_rss_gib']:.1f} GiB |")


if __name__ == "__main__":
    main()
