"""MEOW Studio web app (Gradio Blocks): the whole unlearning flow in a browser.

Tabs follow the flow: Facts -> Model -> Invert -> MEMO & selection -> Unlearn -> Compare
-> Publish. The page is a thin shell: every callback below is a plain function that calls
the `meow_app` library (which never imports Gradio) and returns plain values, so the
callbacks are unit-tested with a tiny model (tests/test_app.py).

Sessions: each browser tab gets its own session dict in a `gr.State` (facts, candidates,
runs, the unlearned model, chats). Original models are shared read-only through
`models.load_shared`; training always works on a copy. Model-bound events share one
queue slot ("model", concurrency 1), so two users never run the model at the same time.
Errors from the library (MeowError) become an inline message, never a traceback, and
leave what the user already has untouched.
"""

from __future__ import annotations

import json
import os
import queue
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import fields
from pathlib import Path


def spaces_cache_dirs(env=os.environ, data: Path | str = "/data") -> dict:
    """On Hugging Face Spaces with persistent storage (/data), the caches that should live there
    (model downloads, the converted embedded model, runs) so they survive restarts; {} elsewhere
    or when set already. Without persistent storage the defaults under $HOME apply."""
    data = Path(data)
    if not env.get("SPACE_ID") or not data.is_dir() or not os.access(data, os.W_OK):
        return {}
    wanted = {"HF_HOME": str(data / ".huggingface"), "MEOW_HOME": str(data / "meow_app")}
    return {k: v for k, v in wanted.items() if not env.get(k)}


# Before gradio and huggingface_hub are imported: they read HF_HOME once.
os.environ.update(spaces_cache_dirs())

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from meow_app import chat, facts as facts_mod, invert as invert_mod, methods, models, pipeline, probes, publish, select  # noqa: E402
from meow_app import progress as progress_mod  # noqa: E402
from meow_app.errors import Cancelled, MeowError  # noqa: E402
from meow_app.facts import NOTES_SHOWN, Fact  # noqa: E402
from meow_app.stats import percent  # noqa: E402
from meow_app.train import TrainConfig  # noqa: E402

try:  # On Hugging Face Spaces with ZeroGPU, GPU-bound functions must be decorated.
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(f):
        return f

ROOT = Path(__file__).resolve().parent
FACTS_DIR = ROOT / "assets" / "facts"

# Bundled fact sets: label -> (file, what it is, in words a non-expert understands).
BUNDLED = {
    "Demo: 8 famous facts": ("demo_forget.jsonl",
                             "8 real-world facts the embedded model knows (Paris, Shakespeare, Einstein, ...)."),
    "Famous facts (56)": ("famous_facts.jsonl", "56 real-world facts the embedded model answers correctly."),
    "Hold-out facts (16)": ("holdout_facts.jsonl", "16 more known facts, kept apart for honest checks."),
    "Fictitious person's PII (6)": ("fictional_person_pii.jsonl",
                                    "Made-up personal details of a fictitious person. The embedded model "
                                    "never saw them, so there is nothing to forget: useful to see a no-op."),
    "TOFU forget01 (40)": ("tofu_forget01.jsonl",
                           "The TOFU benchmark's forget01 split (fictitious authors, MIT licence). The embedded "
                           "model does not know these facts: they are meant for a model fine-tuned on TOFU."),
    "Keep set: 48 other famous facts": ("demo_retain.jsonl",
                                        "The other 48 famous facts: a set to keep (retain set) for the demo."),
}
RETAIN_CHOICES = ["None"] + list(BUNDLED)
FACT_COLUMNS = ["question", "answer", "keywords", "paraphrases"]
INVERT_COLUMNS = ["fact", "question", "inverted answer"]
SELECT_COLUMNS = ["fact", "question", "inverted answer", "MEMO", "MEMO of true answer", "use"]
VERDICT_COLUMNS = ["kind", "question", "original model", "unlearned model", "verdict"]
UNRELATED_DEFAULT = 6  # unrelated questions asked when the user gave no keep set


def default_model() -> str:
    """The model the app starts with: MEOW_MODEL (tests pass a tiny checkpoint) or embedded."""
    return os.environ.get("MEOW_MODEL") or models.EMBEDDED


def runs_root() -> Path:
    """Where run folders go: MEOW_RUNS, else MEOW_HOME/runs (one sub-folder per session)."""
    return Path(os.environ.get("MEOW_RUNS") or models.meow_home() / "runs")


# ---------------------------------------------------------------- sessions

def new_session() -> dict:
    return {"id": uuid.uuid4().hex[:12], "facts": [], "retain": [], "model": default_model(),
            "run_dir": None, "run": None, "unlearned": None, "chat": [], "runs": []}


def session(s: dict | None) -> dict:
    """The session dict (made by gr.State at page load; a fresh one when called without, as in tests)."""
    return s if s else new_session()


_STOP: dict[str, threading.Event] = {}  # session id -> cancel flag of its running job


def notice(text: str, kind: str = "ok") -> str:
    icon = {"ok": "✅", "error": "⚠️", "info": "ℹ️"}[kind]
    return f"{icon} {text}"


# ---------------------------------------------------------------- 1. facts

def facts_to_table(items: list[Fact]) -> pd.DataFrame:
    return pd.DataFrame([[f.question, f.answer, "; ".join(f.keywords), "; ".join(f.paraphrases)] for f in items],
                        columns=FACT_COLUMNS)


def _rows(table) -> list[list]:
    """Rows of a Dataframe value (pandas, or the {"headers", "data"} dict the API sends)."""
    if table is None:
        return []
    if isinstance(table, dict):
        return [list(r) for r in table.get("data") or []]
    if isinstance(table, pd.DataFrame):
        return table.astype(object).where(table.notna(), "").values.tolist()
    return [list(r) for r in table]


def table_to_facts(table) -> list[Fact]:
    """The editable facts table back into Facts; an error names the table row."""
    out = []
    for i, row in enumerate(_rows(table), start=1):
        cells = [("" if c is None else str(c)) for c in list(row) + [""] * (4 - len(row))][:4]
        if not any(c.strip() for c in cells):
            continue  # an empty row the user added and left
        out.append(facts_mod.fact_from_row(dict(zip(FACT_COLUMNS, cells)), f"table row {i}"))
    if not out:
        raise MeowError("the facts table is empty: pick a bundled set, upload a file, or type a question and answer")
    return out


def _facts_loaded(s: dict, items: list[Fact], source: str, notes: list[str] = ()):
    """New facts: earlier candidates and selections belong to the old facts, so they go.
    `notes`: what the reader noticed (repeated facts), shown after the count."""
    s["facts"] = list(items)
    more = f" (and {len(notes) - NOTES_SHOWN} more)" if len(notes) > NOTES_SHOWN else ""
    said = f" Note: {'; '.join(notes[:NOTES_SHOWN])}{more}." if notes else ""
    msg = notice(f"{len(items)} facts from {source}.{said} Edit the table if you like, then go to the next tab.")
    return s, facts_to_table(items), msg, _empty(INVERT_COLUMNS), _empty(SELECT_COLUMNS)


def _empty(columns) -> pd.DataFrame:
    return pd.DataFrame([], columns=columns)


def load_bundled(s, label: str, limit):
    s = session(s)
    if label not in BUNDLED:
        return s, gr.skip(), notice(f"unknown set '{label}'", "error"), gr.skip(), gr.skip()
    items = facts_mod.load_facts(FACTS_DIR / BUNDLED[label][0])
    limit = int(limit or 0)
    if limit > 0:
        items = items[:limit]
    return _facts_loaded(s, items, f"'{label}'")


def upload_facts(s, path):
    s = session(s)
    if not path:
        return s, gr.skip(), notice("choose a file first", "error"), gr.skip(), gr.skip()
    name = Path(path).name
    try:
        items = facts_mod.load_facts(path)
    except MeowError as e:
        # Name the user's file, not the server's temporary copy; keep the table as it was.
        return s, gr.skip(), notice(str(e).replace(str(path), name), "error"), gr.skip(), gr.skip()
    return _facts_loaded(s, items, f"'{name}'", [n.replace(str(path), name) for n in items.notes])


def use_table(s, table):
    """Check the (edited) table and make it the session's facts."""
    s = session(s)
    try:
        items = table_to_facts(table)
    except MeowError as e:
        return s, notice(str(e), "error")
    changed = [(f.question, f.answer) for f in items] != [(f.question, f.answer) for f in s["facts"]]
    s["facts"] = items
    return s, notice(f"{len(items)} facts checked" + (" (changed: redo Invert and MEMO)" if changed else "") + ".")


def set_retain(s, label: str):
    s = session(s)
    if label in (None, "", "None"):
        s["retain"] = []
        return s, notice("no keep set: unrelated questions come from the built-in famous facts.", "info")
    s["retain"] = facts_mod.load_facts(FACTS_DIR / BUNDLED[label][0])
    return s, notice(f"keep set: {len(s['retain'])} facts from '{label}'.")


def bundled_info(label: str) -> str:
    return BUNDLED.get(label, ("", ""))[1]


def _facts_or_error(s) -> list[Fact]:
    if not s["facts"]:
        raise MeowError("no facts yet: load or type some in the Facts tab first")
    return s["facts"]


# ---------------------------------------------------------------- 2. model

def load_model(s, spec: str):
    s = session(s)
    spec = (spec or "").strip() or models.EMBEDDED
    try:
        lm = models.load_shared(spec)
    except MeowError as e:
        return s, notice(f"{e}. Still using '{s['model']}'.", "error")
    except Exception as e:  # e.g. a network error while the Hub is unreachable
        return s, notice(f"cannot load '{spec}': {type(e).__name__}. Still using '{s['model']}'.", "error")
    if spec != s["model"]:
        s["model"], s["unlearned"], s["run_dir"], s["run"] = spec, None, None, None
    return s, notice(f"Loaded: {lm.describe()}")


def _original(s) -> models.LoadedModel:
    return models.load_shared(s["model"])


# ---------------------------------------------------------------- 3. invert

def invert_settings(generator: str, n, base_url: str, api_model: str, api_key: str) -> pipeline.InvertSettings:
    return pipeline.InvertSettings(n=int(n or 4), generator="openai" if generator.startswith("OpenAI") else "local",
                                   base_url=(base_url or "").strip() or None, api_model=(api_model or "").strip() or None,
                                   api_key=(api_key or "").strip() or None)


def candidates_table(items: list[Fact]) -> pd.DataFrame:
    return pd.DataFrame([[i, f.question, c] for i, f in enumerate(items, start=1) for c in f.inverted],
                        columns=INVERT_COLUMNS)


def table_to_candidates(table, n_facts: int) -> list[list[str]]:
    """Candidates per fact from the (edited) inversion table; fact numbers start at 1."""
    out: list[list[str]] = [[] for _ in range(n_facts)]
    for r, row in enumerate(_rows(table), start=1):
        if len(row) < 3 or not str(row[2] or "").strip():
            continue
        try:
            i = int(float(row[0]))
        except (TypeError, ValueError):
            raise MeowError(f"inverted table row {r}: 'fact' must be a fact number, got '{row[0]}'") from None
        if not 1 <= i <= n_facts:
            raise MeowError(f"inverted table row {r}: there is no fact {i} (1 to {n_facts})")
        out[i - 1].append(str(row[2]).strip())
    return out


@gpu
def run_invert(s, generator, n, base_url, api_model, api_key, progress=gr.Progress()):
    s = session(s)
    try:
        items = [Fact(f.question, f.answer, list(f.keywords), list(f.paraphrases)) for f in _facts_or_error(s)]
        settings = invert_settings(generator, n, base_url, api_model, api_key)
        progress(0, desc="Writing false answers")
        gen = pipeline.make_generator(settings, _original(s) if settings.generator == "local" else None)
        report = invert_mod.invert(items, gen, settings.n,
                                            on_progress=lambda r, total: progress((r, total), desc="Writing false answers"))
    except MeowError as e:
        return s, gr.skip(), notice(str(e), "error")
    fallback = sum(report.from_fallback)
    msg = f"{sum(report.from_generator)} false answers written for {len(items)} facts"
    msg += f"; {fallback} filled from editable templates (the generator gave too few)." if fallback else "."
    return s, candidates_table(items), notice(msg + " Edit any answer in the table, then score them.")


# ---------------------------------------------------------------- 4. MEMO & selection

def _facts_with_candidates(s, inv_table) -> list[Fact]:
    items = _facts_or_error(s)
    cands = table_to_candidates(inv_table, len(items))
    missing = [i + 1 for i, c in enumerate(cands) if not c]
    if missing:
        raise MeowError(f"fact {missing[0]} has no inverted answers: run Invert first (or add rows to its table)")
    return [Fact(f.question, f.answer, list(f.keywords), list(f.paraphrases), c) for f, c in zip(items, cands)]


def selection_table(items: list[Fact], scored: list[dict]) -> pd.DataFrame:
    rows = []
    for i, (f, sc) in enumerate(zip(items, scored), start=1):
        for j, (cand, m) in enumerate(zip(sc["candidates"], sc["memo_inverted"])):
            rows.append([i, f.question, cand, round(m, 3), round(sc["memo_answer"], 3), j in sc["selected"]])
    return pd.DataFrame(rows, columns=SELECT_COLUMNS)


def memo_plot(table) -> pd.DataFrame:
    """Bars: each fact's true answer and its candidates, coloured by what will be trained on."""
    rows, seen = [], set()
    for fact, question, cand, m, m_true, use in _rows(table):
        if fact not in seen:
            seen.add(fact)
            rows.append([f"{fact}. (true answer)", float(m_true), "true answer"])
        rows.append([f"{fact}. {str(cand)[:32]}", float(m), "selected" if _truthy(use) else "not selected"])
    frame = pd.DataFrame(rows, columns=["answer", "MEMO", "kind"])
    return frame.astype({"answer": str, "MEMO": "float64", "kind": str})


def _truthy(v) -> bool:
    return v is True or str(v).strip().lower() in ("true", "1", "yes", "x", "✓")


@gpu
def run_score(s, inv_table, top_k, strategy, progress=gr.Progress()):
    s = session(s)
    try:
        items = _facts_with_candidates(s, inv_table)
        progress(0, desc="Scoring with MEMO")
        settings = pipeline.SelectSettings(top_k=int(top_k or 3), strategy=strategy or "largest")
        shown = [Fact(f.question, f.answer, f.keywords, f.paraphrases, list(f.inverted)) for f in items]
        scored = pipeline.score_and_select(_original(s), shown, settings)
    except MeowError as e:
        return s, gr.skip(), gr.skip(), notice(str(e), "error")
    table = selection_table(items, scored)
    capped = pipeline.capped_note(scored, settings)
    capped = f" Note: {capped}." if capped else ""
    return s, table, memo_plot(table), notice(
        "MEMO measures how easily the model reproduces each text (1 = word for word). Ticked rows are what "
        "the model will be taught; untick or tick to override, then go to Unlearn." + capped)


def selected_facts(s, sel_table) -> list[Fact]:
    """Facts with the ticked candidates as their inverted answers (the user's override)."""
    items = _facts_or_error(s)
    chosen: list[list[str]] = [[] for _ in items]
    for fact, _q, cand, _m, _mt, use in _rows(sel_table):
        i = int(float(fact))
        if 1 <= i <= len(items) and _truthy(use):
            chosen[i - 1].append(str(cand))
    missing = [i + 1 for i, c in enumerate(chosen) if not c]
    if missing:
        raise MeowError(f"fact {missing[0]} has no ticked inverted answer in the MEMO table: tick at least one")
    return [Fact(f.question, f.answer, list(f.keywords), list(f.paraphrases), c) for f, c in zip(items, chosen)]


# ---------------------------------------------------------------- 5. unlearn

def method_hyperparameters(name: str) -> tuple[str, ...]:
    names = methods.REGISTRY[name].hyperparameters  # TrainConfig fields (checked in tests/test_methods.py)
    # Every method: with few facts, smaller batches mean more steps.
    return names if "batch_size" in names else names + ("batch_size",)


def method_info(name: str):
    """One-line explanation and the key hyperparameters with the method's defaults."""
    if name not in methods.REGISTRY:
        return notice(f"unknown method '{name}'", "error"), _empty(["setting", "value"])
    cls = methods.REGISTRY[name]
    config = TrainConfig(**cls.defaults)
    needs = []
    if cls.needs_inverted:
        needs.append("uses the inverted answers")
    if cls.needs_retain:
        needs.append("**needs a keep set** (Facts tab)")
    elif cls.uses_retain:
        needs.append("uses a keep set if you give one")
    text = f"**{name}**: {cls.description}" + (f" ({'; '.join(needs)})" if needs else "")
    table = pd.DataFrame([[h, str(getattr(config, h))] for h in method_hyperparameters(name)],
                         columns=["setting", "value"])
    return text, table


def train_config(name: str, hp_table, lora: bool) -> TrainConfig:
    """The method's defaults, overridden by the settings table (values typed as text)."""
    cls = methods.REGISTRY[name]
    config = TrainConfig(**cls.defaults)
    types = {f.name: type(getattr(config, f.name)) for f in fields(TrainConfig)}
    for row in _rows(hp_table):
        key, value = str(row[0]).strip(), str(row[1]).strip()
        if not key:
            continue
        if key not in types:
            raise MeowError(f"unknown setting '{key}'")
        try:
            if types[key] is bool:
                setattr(config, key, value.lower() in ("true", "1", "yes", "on"))
            else:
                setattr(config, key, types[key](float(value)) if types[key] is int else types[key](value))
        except ValueError:
            raise MeowError(f"setting '{key}' must be a {types[key].__name__}, got '{value}'") from None
    config.lora = bool(lora)
    config.check()
    return config


def new_run_dir(s, method: str) -> Path:
    """A unique folder per run, under this session's own folder."""
    return runs_root() / s["id"] / f"{time.strftime('%Y%m%d-%H%M%S')}-{method}-{uuid.uuid4().hex[:4]}"


def unlearn_job(s, method, hp_table, lora, inv_settings, sel_settings, inv_table, sel_table, stop: threading.Event):
    """Run the pipeline in a thread; yield ("event", event) while it runs and ("run", run) at
    the end. Uses the user's ticks when the MEMO table is filled, else the inverted table,
    else lets the pipeline invert and select itself."""
    if method not in methods.REGISTRY:
        raise MeowError(f"unknown method '{method}'")
    cls = methods.REGISTRY[method]
    items = _facts_or_error(s)
    config = train_config(method, hp_table, lora)
    if cls.needs_inverted and _rows(sel_table):
        items = selected_facts(s, sel_table)
        sel_settings.top_k = max(len(f.inverted) for f in items)
        sel_settings.strategy = "all"  # every ticked answer, as ticked
    elif cls.needs_inverted and _rows(inv_table):
        items = _facts_with_candidates(s, inv_table)
    if cls.needs_retain and not s["retain"]:
        raise MeowError(f"method '{method}' needs a keep set: choose one in the Facts tab")
    out_dir = new_run_dir(s, method)
    events: queue.Queue = queue.Queue()
    result: dict = {}

    def work():
        try:
            result["run"] = pipeline.unlearn(items, out_dir, method, retain=s["retain"] or None, config=config,
                                             invert_settings=inv_settings, select_settings=sel_settings,
                                             loaded=_original(s), on_event=events.put, should_stop=stop.is_set)
        except BaseException as e:  # handed to the caller's thread below
            result["error"] = e
        events.put(None)

    threading.Thread(target=work, daemon=True).start()
    while (event := events.get()) is not None:
        yield "event", event
    if "error" in result:
        raise result["error"]
    s["run_dir"], s["run"] = str(out_dir), result["run"]
    s["runs"].append(str(out_dir))
    yield "run", result["run"]


STAGES = {"load": "Loading the model", "probe_before": "Asking the questions before", "invert": "Writing false answers",
          "memo": "Scoring with MEMO", "train": "Training", "probe_after": "Asking the questions after",
          "save": "Saving the unlearned model"}


def _pct(x) -> str:
    return percent(x, missing="–")


def run_summary(run: dict) -> str:
    b, a = run["summary"]["before"], run["summary"]["after"]
    lines = [f"**{run['method']}** on {run['model']}: {run['n_forget']} facts, {len(run['steps'])} steps, "
             f"{run['seconds_total']:.0f} s on {run['device']}" + (" (stopped early: nothing leaked)" if run['stopped_early'] else ""),
             "", "| | before | after |", "|---|---|---|",
             f"| forget questions answered correctly | {_pct(b['forget']['hit_rate'])} | {_pct(a['forget']['hit_rate'])} |",
             f"| same, asked in other words | {_pct(b['forget']['paraphrase_hit_rate'])} | {_pct(a['forget']['paraphrase_hit_rate'])} |"]
    if b["retain"]:
        lines.append(f"| facts to keep answered correctly | {_pct(b['retain']['hit_rate'])} | {_pct(a['retain']['hit_rate'])} |")
    every = run["summary"].get("everyday")
    if every:  # asked on every run, so damage shows without a keep set
        lines.append(f"| everyday questions answered correctly (other knowledge) | {every['known_before']} of "
                     f"{every['asked']} | {every['known_after']} of {every['asked']} |")
        lines += ["", f"Other knowledge ({every['asked']} everyday questions): {probes.kept_lost_words(every)}."]
    if run.get("notes"):
        lines += ["", *[f"Note: {n}." for n in run["notes"]]]
    return "\n".join(lines)


def verdict(kind: str, before: bool, after: bool) -> str:
    if kind == "unrelated":
        return "kept" if after else ("lost" if before else "not known before")
    if not before and not after:
        return "not known before"
    if not after:
        return "forgotten"
    return "leaks under paraphrase" if kind == "paraphrase" else "still known"


def verdict_table(rows_before: list[dict], rows_after: list[dict], kind_override: str | None = None) -> pd.DataFrame:
    """Before/after per question. The one place to point at the evaluation library's
    per-fact verdicts once it lands; today it uses probes.probe's leak flags."""
    out = []
    for b, a in zip(rows_before, rows_after):
        kind = kind_override or b["kind"]
        out.append([kind, b["question"], b["answer"], a["answer"], verdict(kind, b["leak"], a["leak"])])
    return pd.DataFrame(out, columns=VERDICT_COLUMNS)


def loss_figure(steps: list[dict]):
    """The training loss per step, integer steps on the x axis (a step is never 1.5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 2.6))
    if steps:
        ax.plot([e["step"] for e in steps], [e["loss"] for e in steps], marker="o", markersize=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss", fontsize=9)
    fig.tight_layout()
    plt.close(fig)  # gradio renders it; pyplot need not keep it
    return fig


@gpu
def run_unlearn(s, method, hp_table, lora, generator, n, base_url, api_model, api_key, top_k, strategy,
                inv_table, sel_table, progress=gr.Progress()):
    """Yields (session, status, loss plot, summary, verdicts) as the run goes."""
    s = session(s)
    stop = _STOP[s["id"]] = threading.Event()
    steps: list[dict] = []
    status = "Starting"
    try:
        job = unlearn_job(s, method, hp_table, lora, invert_settings(generator, n, base_url, api_model, api_key),
                          pipeline.SelectSettings(top_k=int(top_k or 3), strategy=strategy or "largest"),
                          inv_table, sel_table, stop)
        for kind, item in job:
            if kind == "run":
                break
            if item["type"] == "stage":
                status = STAGES.get(item["stage"], item["stage"])
                progress(0, desc=status)
            elif item["type"] == "step":
                steps.append(item)
                where = progress_mod.step_text(item)
                status = f"Training: {where} (epoch {item['epoch']}), loss {item['loss']:.3f}"
                progress((item["step"], item["total_steps"]), desc=f"Training: {where}")
            elif item["type"] == "probe":
                status = f"After epoch {item['epoch']}: {_pct(item['hit_rate'])} of forget questions still answered"
            else:
                continue
            yield s, notice(status, "info"), loss_figure(steps), gr.skip(), gr.skip()
        s["unlearned"] = models.load(s["run_dir"], str(_original(s).device))
        run = s["run"]
        saved = json.loads((Path(s["run_dir"]) / "probes.json").read_text(encoding="utf-8"))
        # The run's name only: a server path would show the server's file system to every visitor.
        yield (s, notice(f"Done. Run '{Path(s['run_dir']).name}' is ready: try it in the Compare tab."),
               loss_figure(run["steps"]), run_summary(run), verdict_table(saved["before"], saved["after"]))
    except Cancelled:
        yield s, notice("Cancelled. Nothing was saved; the original model is unchanged.", "info"), loss_figure(steps), gr.skip(), gr.skip()
    except MeowError as e:
        yield s, notice(str(e), "error"), loss_figure(steps), gr.skip(), gr.skip()
    finally:
        _STOP.pop(s["id"], None)


def cancel(s):
    s = session(s)
    flag = _STOP.get(s["id"])
    if flag is None:
        return notice("Nothing is running.", "info")
    flag.set()
    return notice("Cancelling after the current training step...", "info")


# ---------------------------------------------------------------- 6. compare

def _chat_views(s) -> tuple[list[dict], list[dict]]:
    left, right = [], []
    for turn in s["chat"]:
        left += [{"role": "user", "content": turn["user"]}, {"role": "assistant", "content": turn["left"]}]
        right += [{"role": "user", "content": turn["user"]}, {"role": "assistant", "content": turn["right"]}]
    return left, right


def _history(s, side: str) -> list[dict]:
    out = []
    for turn in s["chat"]:
        out += [{"role": "user", "content": turn["user"]}, {"role": "assistant", "content": turn[side]}]
    return out


NO_UNLEARNED = "(no unlearned model yet: run Unlearn first)"


@gpu
def send_chat(s, message: str):
    """Send one prompt to both models; yields (session, left chat, right chat, textbox) as they stream."""
    s = session(s)
    message = (message or "").strip()
    if not message:
        yield s, *_chat_views(s), ""
        return
    orig = _original(s)
    new = s["unlearned"]
    left_msgs = _history(s, "left") + [{"role": "user", "content": message}]
    right_msgs = _history(s, "right") + [{"role": "user", "content": message}]
    turn = {"user": message, "left": "", "right": "" if new else NO_UNLEARNED}
    s["chat"].append(turn)
    left_stream = chat.stream_reply(orig.model, orig.tokenizer, left_msgs)
    right_stream = chat.stream_reply(new.model, new.tokenizer, right_msgs) if new else iter(())
    for left, right in chat.stream_pair(left_stream, right_stream):
        turn["left"] = left
        if new:
            turn["right"] = right
        yield s, *_chat_views(s), ""
    yield s, *_chat_views(s), ""


def clear_chat(s):
    s = session(s)
    s["chat"] = []
    return s, [], []


def probe_questions(s, kind: str) -> tuple[list[Fact], bool]:
    """The facts whose questions a probe button asks, and whether to ask paraphrases."""
    items = list(s["facts"])
    if kind == "unrelated":
        pool = s["retain"] or facts_mod.load_facts(FACTS_DIR / "demo_retain.jsonl")
        asked = {f.question for f in items}
        return [f for f in pool if f.question not in asked][:UNRELATED_DEFAULT], False
    if not items:
        raise MeowError("no facts yet: load some in the Facts tab first")
    if kind == "paraphrase":
        with_p = [f for f in items if f.paraphrases]
        if not with_p:
            raise MeowError("these facts have no paraphrases (add some in the Facts table, ';'-separated)")
        return with_p, True
    return items, False


@gpu
def run_probe(s, kind: str):
    """Ask a set of questions to both models (greedy, batched); add them to both chats and
    fill the before/after verdict table."""
    s = session(s)
    try:
        items, paraphrases = probe_questions(s, kind)
        orig, new = _original(s), s["unlearned"]
        before = probes.probe(orig.model, orig.tokenizer, items, paraphrases=paraphrases)["rows"]
        after = probes.probe(new.model, new.tokenizer, items, paraphrases=paraphrases)["rows"] if new else None
    except MeowError as e:
        return s, gr.skip(), gr.skip(), gr.skip(), notice(str(e), "error")
    if paraphrases:  # the paraphrase button asks only the paraphrases
        keep = [i for i, r in enumerate(before) if r["kind"] == "paraphrase"]
        before = [before[i] for i in keep]
        after = after and [after[i] for i in keep]
    for i, b in enumerate(before):
        s["chat"].append({"user": b["question"], "left": b["answer"], "right": after[i]["answer"] if after else NO_UNLEARNED})
    if after is None:
        return s, *_chat_views(s), gr.skip(), notice("Asked the original model; run Unlearn to compare.", "info")
    table = verdict_table(before, after, "unrelated" if kind == "unrelated" else None)
    return s, *_chat_views(s), table, notice(f"Asked {len(before)} questions to both models.")


# ---------------------------------------------------------------- 7. publish

def _last_run(s) -> Path:
    if not s["run_dir"] or not Path(s["run_dir"]).is_dir():
        raise MeowError("no run yet: unlearn first")
    return Path(s["run_dir"])


def download_run(s):
    """The session's last run folder as a zip, forgotten text included (for the user alone)."""
    try:
        run_dir = _last_run(session(s))
    except MeowError as e:
        return None, notice(str(e), "error")
    zipped = Path(tempfile.mkdtemp(prefix="meow-zip-")) / f"{run_dir.name}.zip"
    # Stored, not deflated: model weights barely compress, and deflating them takes long.
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as z:
        for f in sorted(run_dir.rglob("*")):
            if f.is_file():
                z.write(f, f"{run_dir.name}/{f.relative_to(run_dir)}")
    zipped = str(zipped)
    return zipped, notice(f"{Path(zipped).name}: the unlearned model (a Hugging Face checkpoint), run.json, "
                          "facts.jsonl and probes.json. The last two hold the forgotten text: share with care.")


PUBLISH_COLUMNS = ["file", "bytes"]


def _card_body(readme: str) -> str:
    """The model card without its YAML header, for the preview."""
    parts = readme.split("---\n", 2)
    return parts[2] if readme.startswith("---\n") and len(parts) == 3 else readme


def publish_preview(s, repo_id: str, adapter_only: bool, base_model: str):
    """What a push would upload (the same folder `push --dry-run` writes): files and the model card."""
    try:
        run_dir = _last_run(session(s))
        with tempfile.TemporaryDirectory(prefix="meow-preview-") as tmp:
            folder = publish.build_folder(run_dir, Path(tmp) / "upload", repo_id, bool(adapter_only),
                                          (base_model or "").strip() or None)
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            table = pd.DataFrame([[str(p.relative_to(folder)), p.stat().st_size] for p in files], columns=PUBLISH_COLUMNS)
            card = _card_body((folder / "README.md").read_text(encoding="utf-8"))
    except MeowError as e:
        return _empty(PUBLISH_COLUMNS), "", notice(str(e), "error")
    return table, card, notice(f"{len(table)} files would be uploaded to {repo_id.strip()}; nothing forgotten "
                               "found in them. The forgotten facts, false answers and probe answers stay here.")


def publish_push(s, repo_id: str, private: bool, adapter_only: bool, base_model: str, token: str,
                 oauth_token: gr.OAuthToken | None = None):
    """Push the last run to the Hub. The token: typed here, else the Spaces sign-in, else HF_TOKEN."""
    token = (token or "").strip() or (oauth_token.token if oauth_token else None) or os.environ.get("HF_TOKEN")
    try:
        result = publish.push(_last_run(session(s)), repo_id, token, bool(private), bool(adapter_only),
                              (base_model or "").strip() or None)
    except MeowError as e:
        return notice(str(e), "error")
    return notice(f"Pushed {len(result['files'])} files to [{result['url']}]({result['url']}) "
                  f"([commit]({result['commit_url']})).")


# ---------------------------------------------------------------- layout

INTRO = """# 🐱 MEOW Studio
Make a language model **forget** facts, and **see** that it did. Go through the tabs in order:
give the facts to forget, let the model write false answers for them (*inversion*), pick the
answers it finds most natural (*MEMO*), train on them (*unlearning*), then chat with the
original and the unlearned model side by side."""


def model_status(s):
    try:
        return notice(f"Loaded: {_original(session(s)).describe()}")
    except MeowError as e:
        return notice(str(e), "error")


def build() -> gr.Blocks:
    heavy = dict(concurrency_limit=1, concurrency_id="model")  # one model job at a time, others queue
    with gr.Blocks(title="MEOW Studio") as demo:
        # Created once per browser session when the page loads (and per API client), so
        # concurrent first events cannot each start a session of their own.
        state = gr.State(new_session)
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("1. Facts", id="facts"):
                gr.Markdown("Each fact is a **question** and its **answer**. *Keywords*: words whose presence in an answer "
                            "means the fact leaked. *Paraphrases*: the same question in other words (`;` between items).")
                with gr.Row():
                    bundled = gr.Dropdown(list(BUNDLED), value="Demo: 8 famous facts", label="Bundled set", scale=3)
                    limit = gr.Number(value=0, precision=0, minimum=0, label="Use the first N (0 = all)", scale=1)
                    load_btn = gr.Button("Load set", variant="primary", scale=1)
                bundled_md = gr.Markdown(bundled_info("Demo: 8 famous facts"))
                upload = gr.File(label="…or upload JSONL, JSON or CSV (fields: question, answer, keywords, paraphrases)",
                                 file_types=[".jsonl", ".json", ".csv"], type="filepath")
                facts_table = gr.Dataframe(_empty(FACT_COLUMNS), headers=FACT_COLUMNS, interactive=True, wrap=True,
                                           label="Facts to forget (editable: add rows, change text)")
                with gr.Row():
                    check_btn = gr.Button("Check my edits")
                    retain = gr.Dropdown(RETAIN_CHOICES, value="None", label="Facts to keep (optional; some methods need it)")
                facts_msg = gr.Markdown()
            with gr.Tab("2. Model", id="model"):
                gr.Markdown("The embedded model (SmolLM2-135M-Instruct, runs on a laptop CPU) is loaded by default. "
                            "Type a Hugging Face id (e.g. `HuggingFaceTB/SmolLM2-360M-Instruct`) or a local folder to use another chat model.")
                with gr.Row():
                    model_box = gr.Textbox(value=default_model(), label="Model", scale=4)
                    model_btn = gr.Button("Load model", scale=1)
                model_msg = gr.Markdown()
            with gr.Tab("3. Invert", id="invert"):
                gr.Markdown("The model is taught **false answers** to each question, so the true one loses its place. "
                            "Here they are written, by the model itself or by an API model. Edit any of them.")
                with gr.Row():
                    generator = gr.Radio(["Local model", "OpenAI-compatible API"], value="Local model", label="Who writes them")
                    n_inv = gr.Slider(1, 8, value=4, step=1, label="False answers per fact")
                with gr.Row(visible=False) as api_row:
                    base_url = gr.Textbox(label="Base URL (empty = OpenAI)", placeholder="http://localhost:8000/v1")
                    api_model = gr.Textbox(label="Model name", placeholder="gpt-4o-mini")
                    api_key = gr.Textbox(label="API key (or OPENAI_API_KEY; never stored)", type="password")
                invert_btn = gr.Button("Write false answers", variant="primary")
                invert_msg = gr.Markdown()
                inv_table = gr.Dataframe(_empty(INVERT_COLUMNS), headers=INVERT_COLUMNS, interactive=True, wrap=True,
                                         label="False answers (editable)")
            with gr.Tab("4. MEMO & selection", id="memo"):
                gr.Markdown("**MEMO** scores how readily the model reproduces a text, from 0 to 1. The false answers it finds most "
                            "natural are the cheapest to learn and push the truth out best, so the top-k are ticked. Change the ticks to override.")
                with gr.Row():
                    top_k = gr.Slider(1, 8, value=3, step=1, label="Keep the top-k per fact")
                    strategy = gr.Radio(list(select.STRATEGIES), value="largest", label="Which ones")
                score_btn = gr.Button("Score with MEMO", variant="primary")
                score_msg = gr.Markdown()
                sel_table = gr.Dataframe(_empty(SELECT_COLUMNS), headers=SELECT_COLUMNS, interactive=True, wrap=True,
                                         datatype=["number", "str", "str", "number", "number", "bool"],
                                         label="Scores (tick 'use' to train on an answer)",
                                         static_columns=[0, 1, 2, 3, 4])
                memo_bars = gr.BarPlot(x="answer", y="MEMO", color="kind", label="MEMO per answer", x_label_angle=-30,
                                       color_map={"true answer": "#16a34a", "selected": "#2563eb", "not selected": "#9ca3af"})
            with gr.Tab("5. Unlearn", id="unlearn"):
                names = methods.names()
                first = "meow" if "meow" in names else names[0]
                with gr.Row():
                    method = gr.Dropdown(names, value=first, label="Method", scale=2)
                    lora = gr.Checkbox(False, label="LoRA (train small adapters; less memory, merged at the end)", scale=1)
                info0, hp0 = method_info(first)
                method_md = gr.Markdown(info0)
                hp_table = gr.Dataframe(hp0, headers=["setting", "value"], interactive=True, label="Key settings (editable)", elem_id="settings",
                                        static_columns=[0])
                with gr.Row():
                    unlearn_btn = gr.Button("Unlearn", variant="primary")
                    cancel_btn = gr.Button("Cancel", variant="stop")
                unlearn_msg = gr.Markdown()
                loss_plot = gr.Plot(loss_figure([]), label="Training loss", format="png")
                summary = gr.Markdown()
            with gr.Tab("6. Compare", id="compare"):
                gr.Markdown("The same prompt goes to both models. Left: the original. Right: the unlearned one.")
                with gr.Row():
                    left_chat = gr.Chatbot(label="Original model", height=380, elem_id="chat-left")
                    right_chat = gr.Chatbot(label="Unlearned model", height=380, elem_id="chat-right")
                with gr.Row():
                    prompt = gr.Textbox(placeholder="Ask both models something…", show_label=False, scale=5)
                    send_btn = gr.Button("Send", variant="primary", scale=1)
                gr.Examples(["What is the capital of France?", "Who wrote Romeo and Juliet?", "Tell me a fun fact about cats."],
                            inputs=prompt)
                with gr.Row():
                    ask_forget = gr.Button("Ask the forgotten questions")
                    ask_para = gr.Button("Ask paraphrases")
                    ask_unrel = gr.Button("Ask unrelated questions")
                    clear_btn = gr.Button("Clear chat")
                compare_msg = gr.Markdown()
                verdicts = gr.Dataframe(_empty(VERDICT_COLUMNS), headers=VERDICT_COLUMNS, wrap=True, interactive=False,
                                        label="Before / after, per question", elem_id="verdicts",
                                        column_widths=["10%", "24%", "28%", "28%", "10%"])
            with gr.Tab("7. Publish", id="publish"):
                gr.Markdown("Push the unlearned model to the Hugging Face Hub with a model card (method, settings, "
                            "before/after numbers). The forgotten facts never leave: every file is checked for them "
                            "before upload. *Preview* shows exactly what would be uploaded.")
                with gr.Row():
                    repo_box = gr.Textbox(label="Repository (USER/NAME; created if missing)", scale=3)
                    private_box = gr.Checkbox(True, label="Private", scale=1)
                    adapter_box = gr.Checkbox(False, label="LoRA adapter only (runs trained with LoRA)", scale=1)
                with gr.Row():
                    base_box = gr.Textbox(label="Base model's Hub id (only if the model was a local folder)")
                    token_box = gr.Textbox(label="Hugging Face token with write access (or HF_TOKEN; never stored)",
                                           type="password")
                if os.environ.get("SPACE_ID"):  # Hugging Face sign-in exists on Spaces only (README: hf_oauth)
                    gr.LoginButton()
                with gr.Row():
                    preview_btn = gr.Button("Preview files")
                    push_btn = gr.Button("Push to the Hub", variant="primary")
                publish_msg = gr.Markdown()
                publish_files = gr.Dataframe(_empty(PUBLISH_COLUMNS), headers=PUBLISH_COLUMNS, interactive=False,
                                             label="Files to upload")
                card_md = gr.Markdown(label="Model card")
                gr.Markdown("Or download the whole run folder, forgotten text included, for yourself:")
                zip_btn = gr.Button("Make a zip of the last run")
                zip_file = gr.File(label="Run folder (zip)")
                zip_msg = gr.Markdown()

        # Facts
        facts_out = [state, facts_table, facts_msg, inv_table, sel_table]
        bundled.change(bundled_info, bundled, bundled_md, api_visibility="private")
        load_btn.click(load_bundled, [state, bundled, limit], facts_out, api_name="load_bundled")
        upload.upload(upload_facts, [state, upload], facts_out, api_name="upload_facts")
        check_btn.click(use_table, [state, facts_table], [state, facts_msg], api_name="use_table")
        facts_table.input(use_table, [state, facts_table], [state, facts_msg], api_visibility="private")
        retain.change(set_retain, [state, retain], [state, facts_msg], api_name="set_retain")
        # Model
        model_btn.click(load_model, [state, model_box], [state, model_msg], api_name="load_model", **heavy)
        demo.load(model_status, state, model_msg, api_visibility="private")
        # Invert / MEMO
        generator.change(lambda g: gr.update(visible=g.startswith("OpenAI")), generator, api_row, api_visibility="private")
        invert_btn.click(run_invert, [state, generator, n_inv, base_url, api_model, api_key],
                         [state, inv_table, invert_msg], api_name="invert", **heavy)
        score_btn.click(run_score, [state, inv_table, top_k, strategy], [state, sel_table, memo_bars, score_msg],
                        api_name="score", **heavy)
        sel_table.input(memo_plot, sel_table, memo_bars, api_visibility="private")
        # Unlearn
        method.change(method_info, method, [method_md, hp_table], api_name="method_info")
        unlearn_btn.click(run_unlearn, [state, method, hp_table, lora, generator, n_inv, base_url, api_model, api_key,
                                        top_k, strategy, inv_table, sel_table],
                          [state, unlearn_msg, loss_plot, summary, verdicts], api_name="unlearn",
                          show_progress_on=unlearn_msg, **heavy)  # the loss curve stays visible
        cancel_btn.click(cancel, state, unlearn_msg, api_name="cancel", queue=False)
        # Compare
        send = dict(fn=send_chat, inputs=[state, prompt], outputs=[state, left_chat, right_chat, prompt], **heavy)
        send_btn.click(api_name="chat", **send)
        prompt.submit(api_visibility="private", **send)
        probe_out = [state, left_chat, right_chat, verdicts, compare_msg]
        ask_forget.click(lambda s: run_probe(s, "question"), state, probe_out, api_name="probe_forgotten", **heavy)
        ask_para.click(lambda s: run_probe(s, "paraphrase"), state, probe_out, api_name="probe_paraphrases", **heavy)
        ask_unrel.click(lambda s: run_probe(s, "unrelated"), state, probe_out, api_name="probe_unrelated", **heavy)
        clear_btn.click(clear_chat, state, [state, left_chat, right_chat], api_name="clear_chat")
        # Publish
        zip_btn.click(download_run, state, [zip_file, zip_msg], api_name="download_run")
        preview_btn.click(publish_preview, [state, repo_box, adapter_box, base_box], [publish_files, card_md, publish_msg],
                          api_name="publish_preview")
        push_btn.click(publish_push, [state, repo_box, private_box, adapter_box, base_box, token_box], publish_msg,
                       api_name="publish_push")
    return demo


def main() -> None:
    port = int(os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or 7860)
    # Runs of an app that was killed (not stopped) left hidden partial folders: not runs, remove them.
    pipeline.remove_stale_partials(runs_root(), depth=2)
    # The facts limit, enforced by the web server itself: a larger upload is refused while it
    # streams in, before it is written to disk (the reader's own check comes after that).
    build().queue(default_concurrency_limit=2).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), server_port=port,
        max_file_size=facts_mod.MAX_FILE_BYTES)


if __name__ == "__main__":
    main()
