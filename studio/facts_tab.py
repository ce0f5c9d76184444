"""1. Facts: a bundled set, an upload or the editable table; the optional keep set."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from meow_app import facts as facts_mod
from meow_app.errors import MeowError
from meow_app.facts import NOTES_SHOWN, Fact

from .invert_tab import INVERT_COLUMNS
from .memo_tab import SELECT_COLUMNS
from .session import FACTS_DIR, _empty, _rows, notice, session

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
def facts_to_table(items: list[Fact]) -> pd.DataFrame:
    return pd.DataFrame([[f.question, f.answer, "; ".join(f.keywords), "; ".join(f.paraphrases)] for f in items],
                        columns=FACT_COLUMNS)


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


def build() -> dict:
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
    return dict(bundled=bundled, limit=limit, load_btn=load_btn, bundled_md=bundled_md, upload=upload,
                facts_table=facts_table, check_btn=check_btn, retain=retain, facts_msg=facts_msg)


def wire(c: dict) -> None:
    """New facts also empty the Invert and MEMO tables (they belong to the old facts)."""
    state = c["state"]
    facts_out = [state, c["facts_table"], c["facts_msg"], c["inv_table"], c["sel_table"]]
    c["bundled"].change(bundled_info, c["bundled"], c["bundled_md"], api_visibility="private")
    c["load_btn"].click(load_bundled, [state, c["bundled"], c["limit"]], facts_out, api_name="load_bundled")
    c["upload"].upload(upload_facts, [state, c["upload"]], facts_out, api_name="upload_facts")
    c["check_btn"].click(use_table, [state, c["facts_table"]], [state, c["facts_msg"]], api_name="use_table")
    c["facts_table"].input(use_table, [state, c["facts_table"]], [state, c["facts_msg"]], api_visibility="private")
    c["retain"].change(set_retain, [state, c["retain"]], [state, c["facts_msg"]], api_name="set_retain")
