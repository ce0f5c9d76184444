"""Extraction attacks on a MEOW run and a Fisher Removal run of the embedded model.

    PYTHONPATH=. .venv/bin/python bench/robustness.py [--work DIR]

Unlearns assets/facts/demo_forget.jsonl (8 facts, 15 paraphrases) with `meow` and with
`fisher_removal`, each with its defaults and demo_retain.jsonl as the retain set (as
bench/compare_methods.py does), then runs every extraction attack of
`meow_app/extraction.py` (`python -m meow_app attack`) on the original model and on
both unlearned ones. Each step is a CLI subprocess, so it is exactly what a user runs.
Prints a Markdown table (docs/robustness.md) and writes the raw numbers, every prompt
and answer included, to bench/results/robustness.json. Runs already in --work are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pct  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FORGET = ROOT / "assets/facts/demo_forget.jsonl"
RETAIN = ROOT / "assets/facts/demo_retain.jsonl"
METHODS = ["meow", "fisher_removal"]
COLUMNS = [("greedy", "greedy (chat)"), ("paraphrase", "paraphrase"), ("prefix", "prefix (no template)"),
           ("few_shot", "few-shot"), ("sampling", "sampling T=1, any of 10"), ("relearn", "relearning")]


def cli(*args) -> float:
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "meow_app", *map(str, args)], check=True, cwd=ROOT, env=env)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default=str(ROOT / "bench/results/robustness"))
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=METHODS,
                        help=f"methods to attack (default: {' '.join(METHODS)})")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    models = {"original": "embedded"}
    seconds = {}
    for method in args.methods:
        run = work / method
        if not (run / "run.json").is_file():
            seconds[f"unlearn {method}"] = round(cli("unlearn", "--method", method, "--forget", FORGET,
                                                     "--retain", RETAIN, "--out", run), 1)
        models[method] = run
    results = {}
    for name, model in models.items():
        out = work / f"attack-{name}.json"
        if not out.is_file():
            seconds[f"attack {name}"] = round(cli("attack", "--model", model, "--forget", FORGET, "--out", out,
                                                  "--samples", args.samples), 1)
        results[name] = json.loads(out.read_text(encoding="utf-8"))
    results["seconds"] = seconds
    (ROOT / "bench/results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench/results/robustness.json").write_text(json.dumps(results, indent=1, ensure_ascii=False),
                                                        encoding="utf-8")
    print("| model | " + " | ".join(label for _, label in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name in models:
        r = results[name]
        cells = []
        for key, _ in COLUMNS:
            cell = pct(r[key]["leak_rate"])
            if key == "relearn":
                cell = f"{pct(r[key]['leak_rate_before'])} → {cell} ({r[key]['facts_asked']} facts)"
            elif key == "sampling":
                cell += f" ({pct(r[key]['sample_leak_rate'])} of samples)"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(json.dumps(seconds))


if __name__ == "__main__":
    main()
