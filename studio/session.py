"""What every tab shares: the per-browser session dict, inline notices, table helpers, the
original model, and the ZeroGPU decorator.

Sessions: each browser tab gets its own session dict in a `gr.State` (facts, candidates,
runs, the unlearned model, chats). Original models are shared read-only through
`models.load_shared`; training always works on a copy. Model-bound events share one
queue slot (HEAVY: "model", concurrency 1), so two users never run the model at the same
time. Errors from the library (MeowError) become an inline message (`notice`), never a
traceback, and leave what the user already has untouched.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd

from meow_app import budget, models
from meow_app.errors import MeowError
from meow_app.facts import Fact

try:  # On Hugging Face Spaces with ZeroGPU, GPU-bound functions must be decorated.
    import spaces
except ImportError:
    spaces = None
ZERO_GPU = spaces is not None


def gpu(duration):
    """spaces.GPU(duration=duration) on a ZeroGPU Space, the function as it is elsewhere.
    `duration` takes the function's own arguments and returns the seconds to ask for
    (meow_app.budget): the function runs in a separate process that is cut off after them,
    so only what it returns or yields, and what it writes to disk, survives."""
    def decorate(f):
        return spaces.GPU(duration=duration)(f) if ZERO_GPU else f
    return decorate


def answering(passes):
    """A ZeroGPU duration for a function that answers questions in `passes(s, *args)` batches
    (sampling false answers, MEMO, chat and probes all generate or score in batches)."""
    def duration(s, *args, **kwargs) -> int:
        s = session(s)
        return budget.zerogpu_duration(budget.answer_seconds(passes(s, *args), model_parameters(s), "cuda"))
    return duration


def model_parameters(s) -> int:
    """The original model's parameter count (the budget's model size)."""
    return sum(p.numel() for p in _original(s).model.parameters())

ROOT = Path(__file__).resolve().parent.parent
FACTS_DIR = ROOT / "assets" / "facts"
HEAVY = dict(concurrency_limit=1, concurrency_id="model")  # one model job at a time, others queue


def default_model() -> str:
    """The model the app starts with: MEOW_MODEL (tests pass a tiny checkpoint) or embedded."""
    return os.environ.get("MEOW_MODEL") or models.EMBEDDED


def runs_root() -> Path:
    """Where run folders go: MEOW_RUNS, else MEOW_HOME/runs (one sub-folder per session)."""
    return Path(os.environ.get("MEOW_RUNS") or models.meow_home() / "runs")


def new_session() -> dict:
    return {"id": uuid.uuid4().hex[:12], "facts": [], "retain": [], "model": default_model(),
            "run_dir": None, "run": None, "unlearned": None, "chat": [], "runs": []}


def session(s: dict | None) -> dict:
    """The session dict (made by gr.State at page load; a fresh one when called without, as in tests)."""
    return s if s else new_session()


def notice(text: str, kind: str = "ok") -> str:
    icon = {"ok": "✅", "error": "⚠️", "info": "ℹ️"}[kind]
    return f"{icon} {text}"


def _rows(table) -> list[list]:
    """Rows of a Dataframe value (pandas, or the {"headers", "data"} dict the API sends)."""
    if table is None:
        return []
    if isinstance(table, dict):
        return [list(r) for r in table.get("data") or []]
    if isinstance(table, pd.DataFrame):
        return table.astype(object).where(table.notna(), "").values.tolist()
    return [list(r) for r in table]


def _empty(columns) -> pd.DataFrame:
    return pd.DataFrame([], columns=columns)


def _original(s) -> models.LoadedModel:
    return models.load_shared(s["model"])


def _facts_or_error(s) -> list[Fact]:
    if not s["facts"]:
        raise MeowError("no facts yet: load or type some in the Facts tab first")
    return s["facts"]
