"""What every benchmark script shares: the machine header, Markdown tables, the results
file, and running one measurement in a fresh child process (own time, own peak memory).

Each script prints its table and appends a dated section to docs/benchmarks.md, headed
by the machine it ran on and the load average at the time: the machine may be shared
with other jobs, so absolute times are only comparable within one section, where every
comparison was measured side by side in the same run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "bench" / "results"
FACTS = ROOT / "assets" / "facts"
FORGET = FACTS / "demo_forget.jsonl"
RETAIN = FACTS / "demo_retain.jsonl"


def epochs_exactly(n: int) -> dict:
    """TrainConfig changes for exactly n epochs: meow's step budget (min_steps) would
    otherwise add epochs on a small forget set."""
    return {"epochs": n, "min_steps": 0}

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from meow_app.stats import percent as pct  # noqa: E402, F401  (the library's one percentage format, for the bench scripts)


def random_model(changes: dict):
    """A randomly initialised Llama of the embedded model's config with `changes` (another
    shape, for timing only), and the embedded tokenizer."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from meow_app import models

    where = models.embedded_checkpoint()
    config = AutoConfig.from_pretrained(where)
    for k, v in changes.items():
        setattr(config, k, v)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = config.pad_token_id
    return model, models.load_tokenizer(where)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_matmul_flags() -> str:
    """The CPU's widest vector extensions. "AMD EPYC" covers machines with and without
    bf16 matmul hardware (a Zen 4 has avx512_bf16, a Zen 3 only avx2), and bf16 speed
    differs ~20x between them, so the header says which one ran."""
    from meow_app.models import cpu_flags

    have = cpu_flags()
    if not have:
        return "flags unknown"
    return ", ".join(f for f in ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "bf16"] if f in have) or "no avx2"


def load_average() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def machine() -> dict:
    import torch

    device = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"cores": os.cpu_count(), "cpu": f"{cpu_model()}; {cpu_matmul_flags()}", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": device, "python": platform.python_version()}


def header(title: str, command: str, load_before: str) -> str:
    """The section heading: what ran, when, where, and how busy the machine was."""
    m = machine()
    return (f"### {title}: {datetime.datetime.now():%Y-%m-%d %H:%M}\n\n"
            f"Machine: {m['cores']} cores ({m['cpu']}), torch {m['torch']} ({m['threads']} threads), "
            f"device {m['device']}, Python {m['python']}. Load average (1/5/15 min) at start "
            f"{load_before}, at end {load_average()} (other jobs shared the machine when above ~{m['cores']}).\n\n"
            f"```bash\n{command}\n```\n")


def table(columns: list[str], rows: list[list]) -> str:
    """A Markdown table; cells are printed with str()."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def command_line() -> str:
    return ".venv/bin/python " + shlex.join([str(Path(sys.argv[0]).resolve().relative_to(ROOT)), *sys.argv[1:]])


def report(title: str, body: str, load_before: str, results: dict | list | None = None,
           name: str | None = None, write: bool = True) -> str:
    """Print the section, append it to docs/benchmarks.md, keep the raw numbers in bench/results/."""
    section = header(title, command_line(), load_before) + "\n" + body
    print(section)
    if write:
        with DOC.open("a", encoding="utf-8") as f:
            f.write("\n" + section)
    if results is not None and name:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2, default=str))
    return section


def run_child(script: str, args: list[str], timeout: float | None = None) -> dict:
    """Run `script --child ARGS` in a fresh Python; its last stdout line is a JSON object
    (see child_main, which adds the child's own peak RSS). Adds the child's wall time."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    with subprocess.Popen([sys.executable, script, "--child", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    seconds = time.perf_counter() - start
    last = out.strip().splitlines()[-1] if out.strip() else ""
    try:
        row = json.loads(last)
    except json.JSONDecodeError:
        tail = err.strip().splitlines()[-3:]
        row = {"error": " / ".join(tail) or f"exit {proc.returncode}"}
    row.setdefault("wall_seconds", round(seconds, 1))
    return row


def peak_rss_gib() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child_main(fn) -> None:
    """In a child: run fn(args) and print its result dict as the last stdout line, with peak RSS."""
    row = fn(sys.argv[sys.argv.index("--child") + 1:])
    row["peak_rss_gib"] = round(peak_rss_gib(), 2)
    print(json.dumps(row, default=str), flush=True)


class Stopwatch:
    """Seconds spent in chosen library functions, by patching them for the measurement:
    `watch.wrap(probes, "probe", lambda *a, **k: "retain" if ... else "forget")`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._undo = []

    def wrap(self, module, name: str, bucket=None) -> None:
        plain = getattr(module, name)

        def timed(*args, **kwargs):
            key = bucket(*args, **kwargs) if bucket else name
            t = time.perf_counter()
            try:
                return plain(*args, **kwargs)
            finally:
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t
                self.calls[key] = self.calls.get(key, 0) + 1

        setattr(module, name, timed)
        self._undo.append((module, name, plain))

    def restore(self) -> None:
        for module, name, plain in reversed(self._undo):
            setattr(module, name, plain)
        self._undo.clear()
