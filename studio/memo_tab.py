"""4. MEMO & selection: score each false answer with MEMO, tick the ones to train on."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from meow_app import budget, pipeline, select
from meow_app.errors import MeowError
from meow_app.facts import Fact
from meow_app.train import YES

from .invert_tab import table_to_candidates
from .session import HEAVY, _empty, _facts_or_error, _original, _rows, answering, gpu, notice, session

SELECT_COLUMNS = ["fact", "question", "inverted answer", "MEMO", "MEMO of true answer", "use"]


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
    """A tick of the MEMO table's 'use' column: a checkbox's True, or yes-text (train.YES) or a mark."""
    return v is True or str(v).strip().lower() in YES + ("x", "✓")


@gpu(duration=answering(lambda s, *rest: 1 + len(s["facts"]) * 8 / budget.BATCH))  # answers x cuts, scored
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


def build() -> dict:
    with gr.Tab("4. MEMO & selection", id="memo"):
        gr.Markdown("**MEMO** scores how readily the model reproduces a text, from 0 to 1. The false answers it finds "
                    "most natural are the cheapest to learn and push the truth out best, so the top-k are ticked. "
                    "Change the ticks to override.")
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
    return dict(top_k=top_k, strategy=strategy, score_btn=score_btn, score_msg=score_msg, sel_table=sel_table,
                memo_bars=memo_bars)


def wire(c: dict) -> None:
    """Scores the Invert tab's (edited) table."""
    state = c["state"]
    c["score_btn"].click(run_score, [state, c["inv_table"], c["top_k"], c["strategy"]],
                         [state, c["sel_table"], c["memo_bars"], c["score_msg"]], api_name="score", **HEAVY)
    c["sel_table"].input(memo_plot, c["sel_table"], c["memo_bars"], api_visibility="private")
