"""Item 9: what a second data-parallel process costs and saves (bench/../meow_app/distributed.py).

    .venv/bin/python bench/data_parallel.py                 # 1 process x 2 threads vs 2 processes x 1 thread
    .venv/bin/python bench/data_parallel.py --epochs 2 --no-write

The same `unlearn` (demo facts, `meow` defaults, a fixed number of epochs, no early
stopping) run three ways on this machine's cores: one process with all of them, one
process with one thread, and `accelerate launch` with two processes (gloo) of one thread
each. Timings are run.json's stages (the train stage is where the processes share the
work; probes, inversion and MEMO run on the main process alone) and the wall time of the
whole command, launcher included. On 2 cores the two processes compete with a
two-thread process for the same cores, so this measures the overhead of the split
(all-reduce, duplicated model, launcher) more than any speed-up; GPU rows need a machine
with GPUs (bench/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "meow_app"]
ONE = [sys.executable, "-m", "meow_app"]


def timed_run(launcher: list[str], threads: int, out: Path, epochs: int) -> dict:
    # (--method meow, named: the default, meow_patch, runs in one process and would give way to meow in two)
    cmd = launcher + ["unlearn", "--method", "meow", "--forget", str(common.FORGET), "--out", str(out),
                      "--device", "cpu", "--epochs", str(epochs), "--min-steps", "0", "--no-early-stop", "--seed", "0"]
    env = {**os.environ, "PYTHONPATH": str(common.ROOT), "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    run = json.loads((out / "run.json").read_text())
    steps = run["steps"]
    return {"wall": wall, "timings": run["timings"], "steps": len(steps),
            "step_seconds": (steps[-1]["seconds"] - steps[0]["seconds"]) / max(1, len(steps) - 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = ap.parse_args()
    load = common.load_average()
    cores = os.cpu_count() or 1
    ways = [("1 process, all threads", ONE, cores), ("1 process, 1 thread", ONE, 1),
            ("2 processes (gloo), 1 thread each", LAUNCH, 1)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, launcher, threads) in enumerate(ways):
            results[name] = timed_run(launcher, threads, Path(tmp) / f"run{i}", args.epochs)
    base = results[ways[0][0]]
    rows = []
    for name, r in results.items():
        rows.append([name, r["steps"], f"{r['step_seconds']:.1f} s", f"{r['timings']['train']:.0f} s",
                     f"{r['timings']['train'] / base['timings']['train']:.2f}x", f"{r['wall']:.0f} s",
                     f"{r['wall'] / base['wall']:.2f}x"])
    body = common.table(["run", "steps", "per step", "train stage", "vs first", "whole command", "vs first"], rows)
    body += (f"\n`unlearn` of the {common.FORGET.name} facts, `meow` defaults, {args.epochs} epoch(s), no early "
             "stopping, fp32. GPU rows: not measured (no GPU machine; `bash bench/gpu_check.sh` runs the 2-GPU "
             "case).\n")
    common.report("Data-parallel processes (item 9)", body, load, results, "data_parallel", write=not args.no_write)


if __name__ == "__main__":
    main()
