"""Item 5: peak memory (RSS) of an `unlearn` run, full and LoRA, and of the web app with
both chat models loaded, on the embedded model. Each is a fresh process; its peak RSS is
its own (getrusage of that process at its end).

    .venv/bin/python bench/memory.py                 # unlearn runs of 1 epoch (the peak is reached in the first steps)
    .venv/bin/python bench/memory.py --epochs 3      # the whole default run (early stopping)

The unlearn runs are bench/time_to_forget.py's (method `meow`, demo_forget, demo_retain
measured). The app run imports app.py, builds the interface (not served), loads the
original model the way the app shares it and a second copy as the unlearned model (what
the app loads from a run folder), and streams one side-by-side chat reply through
`studio.compare_tab.send_chat`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GOAL_GIB = 4 / 1.073741824  # 4 GB


def app_child(argv: list[str]) -> dict:
    import app
    from meow_app import models
    from studio import compare_tab, session

    app.build()
    s = session.new_session()
    s["unlearned"] = models.load("embedded")
    chunks = list(compare_tab.send_chat(s, "Tell me about the history of Paris."))
    _, left, right, _ = chunks[-1]
    return {"left_chars": len(left[-1]["content"]), "right_chars": len(right[-1]["content"])}


def main() -> None:
    if "--child" in sys.argv:
        common.child_main(app_child)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=None, help="substrings of the process names to run (e.g. app, LoRA)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    load_before = common.load_average()
    forget_script = str(Path(__file__).resolve().parent / "time_to_forget.py")
    todo = {
        "unlearn, the default method (meow_patch: a few gated neurons)": (
            forget_script, ["--variant", "default", "--set", json.dumps(common.epochs_exactly(a.epochs))]),
        "unlearn, meow, full (MLP blocks)": (forget_script, ["--variant", "meow", "--set",
                                                             json.dumps(common.epochs_exactly(a.epochs))]),
        "unlearn, meow, LoRA": (forget_script, ["--variant", "lora", "--set",
                                                json.dumps(common.epochs_exactly(a.epochs))]),
        "unlearn, meow, full, --low-memory (gradient checkpointing)": (
            forget_script, ["--variant", "low_memory", "--set", json.dumps(common.epochs_exactly(a.epochs))]),
        "web app, both chat models loaded, one side-by-side reply": (__file__, []),
    }
    runs = {name: common.run_child(*job) for name, job in todo.items()
            if not a.only or any(o in name for o in a.only)}
    rows = []
    for name, r in runs.items():
        if "error" in r:
            rows.append([name, "error: " + str(r["error"]), "", ""])
            continue
        gib = r["peak_rss_gib"]
        rows.append([name, f"**{gib:.2f} GiB** ({gib * 1.073741824:.2f} GB)", f"{r['wall_seconds']:.0f} s",
                     "met" if gib <= GOAL_GIB else "not met"])
    body = common.table(["process", "peak RSS", "wall time", "goal <= 4 GB"], rows)
    body += f"\nUnlearn runs: each method's defaults with epochs = {a.epochs} (min_steps 0).\n"
    common.report("Peak memory (item 5)", body, load_before, runs, "memory", not a.no_write)


if __name__ == "__main__":
    main()
