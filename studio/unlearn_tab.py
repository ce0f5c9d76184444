"""5. Unlearn: pick a method, edit its key settings, run the pipeline with live progress, cancel."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import gradio as gr
import pandas as pd

from meow_app import budget, methods, models, pipeline, probes, runs
from meow_app import progress as progress_mod
from meow_app.errors import Cancelled, MeowError
from meow_app.stats import percent
from meow_app.train import TrainConfig

from .compare_tab import verdict_table
from .invert_tab import invert_settings
from .memo_tab import _facts_with_candidates, selected_facts
from .session import (HEAVY, ZERO_GPU, _empty, _facts_or_error, _original, _rows, gpu, model_parameters, notice,
                      runs_root, session)

_STOP: dict[str, threading.Event] = {}  # session id -> cancel flag of its running job

STAGES = {"load": "Loading the model", "probe_before": "Asking the questions before", "invert": "Writing false answers",
          "memo": "Scoring with MEMO", "train": "Training", "probe_after": "Asking the questions after",
          "save": "Saving the unlearned model"}


SETTING_ROW_PX = 44  # a settings table row's height and then some (about 37 px in Gradio 6's default theme)


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
    if cls.falls_back_to:
        needs.append(f"where it does not apply (LoRA, a model it cannot patch) **{cls.falls_back_to}** runs instead, "
                     "as the run's notes then say")
    text = f"**{name}**: {cls.description}" + (f" ({'; '.join(needs)})" if needs else "")
    table = pd.DataFrame([[h, str(getattr(config, h))] for h in method_hyperparameters(name)],
                         columns=["setting", "value"])
    return text, table


def train_config(name: str, hp_table, lora: bool) -> TrainConfig:
    """The method's defaults, overridden by the settings table (values typed as text: TrainConfig.from_text)."""
    base = TrainConfig(**methods.REGISTRY[name].defaults)
    config = TrainConfig.from_text(((row[0], row[1]) for row in _rows(hp_table)), base)
    config.lora = bool(lora)
    config.check()
    return config


def train_overrides(name: str, hp_table, lora: bool) -> dict:
    """The settings the user changed in the table, and LoRA: what carries over where the method
    gives way to its fallback (pipeline.unlearn)."""
    base, config = TrainConfig(**methods.REGISTRY[name].defaults), train_config(name, hp_table, lora)
    return {k: v for k, v in config.to_dict().items() if v != getattr(base, k)}


def new_run_dir(s, method: str) -> Path:
    """A unique folder per run, under this session's own folder."""
    return runs.new_run_dir(runs_root() / s["id"], method)


def unlearn_job(s, method, hp_table, lora, inv_settings, sel_settings, inv_table, sel_table, stop: threading.Event):
    """Run the pipeline in a thread; yield ("event", event) while it runs and ("run", run) at
    the end. Uses the user's ticks when the MEMO table is filled, else the inverted table,
    else lets the pipeline invert and select itself."""
    if method not in methods.REGISTRY:
        raise MeowError(f"unknown method '{method}'")
    cls = methods.REGISTRY[method]
    items = _facts_or_error(s)
    overrides = train_overrides(method, hp_table, lora)
    if cls.needs_inverted and _rows(sel_table):
        items = selected_facts(s, sel_table)
        sel_settings.top_k = max(len(f.inverted) for f in items)
        sel_settings.strategy = "all"  # every ticked answer, as ticked
    elif cls.needs_inverted and _rows(inv_table):
        items = _facts_with_candidates(s, inv_table)
    if cls.needs_retain and not s["retain"]:
        raise MeowError(f"method '{method}' needs a keep set: choose one in the Facts tab")
    # (named after the method that will run: the default gives way to meow where its settings or the
    # model rule it out, and says so; only a run with no preserved text finds out later)
    chosen = None if method == methods.DEFAULT else method
    out_dir = new_run_dir(s, pipeline.method_for(chosen, overrides, _original(s).model)[0])
    events: queue.Queue = queue.Queue()
    result: dict = {}

    def work():
        try:
            # (the default method as shown: it gives way to its fallback where it cannot run, and says so)
            result["run"] = pipeline.unlearn(items, out_dir, chosen, retain=s["retain"] or None, overrides=overrides,
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


def _pct(x) -> str:
    return percent(x, missing="–")


def run_summary(run: dict) -> str:
    b, a = run["summary"]["before"], run["summary"]["after"]
    lines = [f"**{run['method']}** on {run['model']}: {run['n_forget']} facts, {len(run['steps'])} steps, "
             f"{run['seconds_total']:.0f} s on {run['device']}"
             + (" (stopped early: nothing leaked)" if run['stopped_early'] else ""),
             "", "| | before | after |", "|---|---|---|",
             f"| forget questions answered correctly | {_pct(b['forget']['hit_rate'])} "
             f"| {_pct(a['forget']['hit_rate'])} |",
             f"| same, asked in other words | {_pct(b['forget']['paraphrase_hit_rate'])} "
             f"| {_pct(a['forget']['paraphrase_hit_rate'])} |"]
    if b["retain"]:
        lines.append(f"| facts to keep answered correctly | {_pct(b['retain']['hit_rate'])} "
                     f"| {_pct(a['retain']['hit_rate'])} |")
    every = run["summary"].get("everyday")
    if every:  # asked on every run, so damage shows without a keep set
        lines.append(f"| everyday questions answered correctly (other knowledge) | {every['known_before']} of "
                     f"{every['asked']} | {every['known_after']} of {every['asked']} |")
        lines += ["", f"Other knowledge ({every['asked']} everyday questions): {probes.kept_lost_words(every)}."]
    if run.get("notes"):
        lines += ["", *[f"Note: {n}." for n in run["notes"]]]
    return "\n".join(lines)


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


def _event_status(item: dict, steps: list[dict], progress) -> str | None:
    """The status line for one pipeline event (a step is also added to `steps` and moves the
    progress bar); None for events the page does not show."""
    if item["type"] == "stage":
        status = STAGES.get(item["stage"], item["stage"])
        progress(0, desc=status)
        return status
    if item["type"] == "task":  # (what the train stage does before its first step)
        status = f"Training: {item['text']}"
        progress(0, desc=status)
        return status
    if item["type"] == "step":
        steps.append(item)
        where = progress_mod.step_text(item)
        progress((item["step"], item["total_steps"]), desc=f"Training: {where}")
        return f"Training: {where} (epoch {item['epoch']}), loss {item['loss']:.3f}"
    if item["type"] == "probe":
        deep = (f"the true answer is still likely for {item['still_likely']} of the facts"
                if item.get("still_likely") is not None else "")
        if item["hit_rate"] is None:  # not asked while a true answer is still likely
            return f"After epoch {item['epoch']}: {deep}, training goes on"
        done = f"{_pct(item['hit_rate'])} of forget questions still answered"
        return f"After epoch {item['epoch']}: {done}{'; ' + deep if deep else ''}"
    if item["type"] == "note":  # (the default giving way to meow: said as it happens, not only at the end)
        return f"Note: {item['text']}"
    return None


def run_seconds(s, method, hp_table, lora, n=None) -> float:
    """The run's estimated seconds at most (meow_app.budget), on the device it will use;
    `n`: inverted answers written per fact."""
    # (the method that will run: meow_patch gives way to meow with LoRA, or on a model it cannot patch)
    method, config = pipeline.method_for(None if method == methods.DEFAULT else method,
                                         train_overrides(method, hp_table, lora), _original(s).model)
    cls = methods.REGISTRY[method]
    device = "cuda" if ZERO_GPU else str(_original(s).device)
    return budget.unlearn_seconds(len(s["facts"]), config, model_parameters(s),
                                  device, custom_loop=cls.custom_loop, inverting=cls.needs_inverted,
                                  n_inverted=int(n or 4), edit=cls.name == "meow_edit", patch=cls.name == "meow_patch")


def unlearn_duration(s, method, hp_table, lora, generator=None, n=None, *rest, **kwargs) -> int:
    """ZeroGPU's duration for this run: the whole run happens in one call."""
    try:
        return budget.zerogpu_duration(run_seconds(session(s), method, hp_table, lora, n))
    except (MeowError, KeyError):  # bad settings: the run refuses them at once
        return budget.ZEROGPU_MIN_SECONDS


def run_unlearn(s, method, hp_table, lora, generator, n, base_url, api_model, api_key, top_k, strategy,
                inv_table, sel_table, progress=gr.Progress()):
    """Yields (session, status, loss plot, summary, verdicts) as the run goes. On a ZeroGPU
    Space a run that cannot finish within one GPU call is refused first, in plain words."""
    s = session(s)
    if ZERO_GPU and s["facts"] and method in methods.REGISTRY:
        try:
            refusal = budget.too_long(run_seconds(s, method, hp_table, lora, n))
        except MeowError as e:
            refusal = str(e)
        if refusal:
            yield s, notice(refusal, "error"), loss_figure([]), gr.skip(), gr.skip()
            return
    yield from unlearn_on_gpu(s, method, hp_table, lora, generator, n, base_url, api_model, api_key, top_k,
                              strategy, inv_table, sel_table, progress)


@gpu(duration=unlearn_duration)
def unlearn_on_gpu(s, method, hp_table, lora, generator, n, base_url, api_model, api_key, top_k, strategy,
                   inv_table, sel_table, progress=gr.Progress()):
    """The whole run, in one GPU call on ZeroGPU."""
    stop = _STOP[s["id"]] = threading.Event()
    steps: list[dict] = []
    try:
        job = unlearn_job(s, method, hp_table, lora, invert_settings(generator, n, base_url, api_model, api_key),
                          pipeline.SelectSettings(top_k=int(top_k or 3), strategy=strategy or "largest"),
                          inv_table, sel_table, stop)
        for kind, item in job:
            if kind == "run":
                break
            status = _event_status(item, steps, progress)
            if status is not None:
                yield s, notice(status, "info"), loss_figure(steps), gr.skip(), gr.skip()
        s["unlearned"] = models.load(s["run_dir"], str(_original(s).device))
        run = s["run"]
        saved = runs.probes_json(s["run_dir"])
        # The run's name only: a server path would show the server's file system to every visitor.
        yield (s, notice(f"Done. Run '{Path(s['run_dir']).name}' is ready: try it in the Compare tab."),
               loss_figure(run["steps"]), run_summary(run), verdict_table(saved["before"], saved["after"]))
    except Cancelled:
        yield (s, notice("Cancelled. Nothing was saved; the original model is unchanged.", "info"), loss_figure(steps),
               gr.skip(), gr.skip())
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


def build() -> dict:
    with gr.Tab("5. Unlearn", id="unlearn"):
        names = methods.names()
        first = methods.DEFAULT if methods.DEFAULT in names else names[0]
        with gr.Row():
            method = gr.Dropdown(names, value=first, label="Method", scale=2)
            lora = gr.Checkbox(False, label="LoRA (train small adapters; less memory, merged at the end)", scale=1)
        info0, hp0 = method_info(first)
        method_md = gr.Markdown(info0)
        # Tall enough for every method's rows (meow_patch's 25, the header too): in a table that scrolls inside
        # the page the last rows are out of sight, and a browser test's locator does not find them either.
        rows = max(len(method_hyperparameters(n)) for n in names) + 1
        hp_table = gr.Dataframe(hp0, headers=["setting", "value"], interactive=True, label="Key settings (editable)",
                                elem_id="settings", static_columns=[0], max_height=SETTING_ROW_PX * rows)
        with gr.Row():
            unlearn_btn = gr.Button("Unlearn", variant="primary")
            cancel_btn = gr.Button("Cancel", variant="stop")
        unlearn_msg = gr.Markdown()
        loss_plot = gr.Plot(loss_figure([]), label="Training loss", format="png")
        summary = gr.Markdown()
    return dict(method=method, lora=lora, method_md=method_md, hp_table=hp_table, unlearn_btn=unlearn_btn,
                cancel_btn=cancel_btn, unlearn_msg=unlearn_msg, loss_plot=loss_plot, summary=summary)


def wire(c: dict) -> None:
    """Unlearn reads the Invert and MEMO tabs' settings and tables, and fills the Compare tab's verdicts."""
    state = c["state"]
    c["method"].change(method_info, c["method"], [c["method_md"], c["hp_table"]], api_name="method_info")
    inputs = [state, c["method"], c["hp_table"], c["lora"], c["generator"], c["n_inv"], c["base_url"], c["api_model"],
              c["api_key"], c["top_k"], c["strategy"], c["inv_table"], c["sel_table"]]
    c["unlearn_btn"].click(run_unlearn, inputs, [state, c["unlearn_msg"], c["loss_plot"], c["summary"], c["verdicts"]],
                           api_name="unlearn", show_progress_on=c["unlearn_msg"],  # the loss curve stays visible
                           **HEAVY)
    c["cancel_btn"].click(cancel, state, c["unlearn_msg"], api_name="cancel", queue=False)
