"""The sampling leak's floor: how often the original model names a fact's truth for a subject
it cannot know.

    .venv/bin/python bench/chance_leak.py                       # the seven held-out sets
    .venv/bin/python bench/chance_leak.py --sets eval_e --compare bench/results/forgetting_round21.json

bench/forgetting.py's sampling leak asks each forgotten fact's question at T=1, 10 samples,
and counts the fact if any sample names its truth; the target is at most 1 of 8 facts. Here
the same question is asked about made-up subjects (`extraction.chance`: "In which month is
Velmora celebrated?" for Halloween's October, three names) on the original model. A model
that knows nothing of a subject still names the truth by chance where the answers are few
(twelve months, seven continents): a model that has truly forgotten the fact would too. Per
set: the share of made-up subjects whose samples named the truth, averaged over the facts,
the facts expected to leak by chance out of 8, and the chance that at most 1 of 8 does (the
target) if each fact leaks as often as its made-up subjects do. `--compare` puts the
unlearned model's sampling leak from a bench/forgetting.py results file beside it.

Writes bench/results/chance_leak.json and prints a Markdown table (does not append to
docs/benchmarks.md: the table goes to docs/forgetting.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SETS = ("eval_a", "eval_b", "eval_c", "eval_d", "eval_e", "eval_f", "eval_g")


def at_most(rates: list[float], k: int) -> float:
    """P(at most k of independent events happen), each with its own probability."""
    dist = [1.0]  # dist[j]: P(j happened so far)
    for p in rates:
        dist = [(dist[j] if j < len(dist) else 0) * (1 - p) + (dist[j - 1] * p if j else 0)
                for j in range(len(dist) + 1)]
    return sum(dist[:k + 1])


def measured(path: Path | None) -> dict:
    """The default row's sampling leak per set in a bench/forgetting.py results file (its first row of each set)."""
    if not path:
        return {}
    out = {}
    for r in json.loads(path.read_text())["rows"]:
        if "error" not in r and not r["overrides"].get("seed"):  # (a row whose run failed has no numbers)
            out.setdefault(r["set"], r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--samples", type=int, default=10, help="samples per question at T=1 (default 10)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare", type=Path, default=None, help="a bench/forgetting.py results file")
    ap.add_argument("--json", type=Path, default=common.RESULTS / "chance_leak.json")
    a = ap.parse_args()

    import torch

    from meow_app import extraction, models
    from meow_app.facts import load_facts

    torch.set_num_threads(a.threads)
    loaded = models.load(None)
    rows, table = [], []
    rows_after = measured(a.compare)
    for name in a.sets:
        facts = load_facts(common.FACTS / f"{name}_forget.jsonl")
        got = extraction.chance(loaded.model, loaded.tokenizer, facts, samples=a.samples)
        rates = [x for x in got["per_fact"] if x is not None]
        row = {"set": name, "facts": len(facts), "with_subject": len(rates), "chance_leak": got["leak_rate"],
               "expected_facts": sum(rates), "p_target_by_chance": at_most(rates, len(facts) // 8),
               "per_fact": dict(zip([f.question for f in facts], got["per_fact"])),
               "leaks": [r["answer"] for r in got["rows"] if r["leak"]]}
        after = rows_after.get(name)
        row["unlearned_leak"] = after["sampling_leak_after"] if after else None
        rows.append(row)
        table.append([name, f"{row['with_subject']} of {row['facts']}", common.pct(row["chance_leak"]),
                      f"{row['expected_facts']:.1f}", common.pct(row["p_target_by_chance"]),
                      "" if after is None else f"{common.pct(after['sampling_leak_after'])}"])
        print(name, {q: x for q, x in row["per_fact"].items()}, flush=True)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"machine": common.machine(), "samples": a.samples, "rows": rows}, indent=1))
    print(common.table(["set", "facts with a subject", "chance leak (made-up subjects)",
                        "facts expected to leak by chance", "P(at most 1 of 8 by chance)",
                        "unlearned model's sampling leak"], table))


if __name__ == "__main__":
    main()
