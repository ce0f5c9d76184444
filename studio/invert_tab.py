"""3. Invert: false answers per fact, written by the local model or an OpenAI-compatible API."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from meow_app import budget, pipeline
from meow_app import invert as invert_mod
from meow_app.errors import MeowError
from meow_app.facts import Fact

from .session import HEAVY, _empty, _facts_or_error, _original, _rows, answering, gpu, notice, session

INVERT_COLUMNS = ["fact", "question", "inverted answer"]


# What the "Who writes them" choices mean to pipeline.InvertSettings.generator.
GENERATOR_CHOICES = {"Local model, continuing its own answer": "lead_in",
                     "Local model, its answers about similar subjects": "siblings",
                     "Local model, its own answer first, then similar subjects": "lead_in_siblings",
                     "Local model": "local",
                     "OpenAI-compatible API": "openai"}
DEFAULT_GENERATOR = "Local model, continuing its own answer"


def invert_settings(generator: str, n, base_url: str, api_model: str, api_key: str) -> pipeline.InvertSettings:
    return pipeline.InvertSettings(n=int(n or 4), generator=GENERATOR_CHOICES.get(generator, "lead_in"),
                                   base_url=(base_url or "").strip() or None,
                                   api_model=(api_model or "").strip() or None,
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


@gpu(duration=answering(lambda s, generator, n, *rest: 1 + len(s["facts"]) * int(n or 4) / budget.BATCH))
def run_invert(s, generator, n, base_url, api_model, api_key, progress=gr.Progress()):
    s = session(s)
    try:
        items = [Fact(f.question, f.answer, list(f.keywords), list(f.paraphrases)) for f in _facts_or_error(s)]
        settings = invert_settings(generator, n, base_url, api_model, api_key)
        progress(0, desc="Writing false answers")
        gen = pipeline.make_generator(settings, _original(s) if settings.generator != "openai" else None)
        report = invert_mod.invert(items, gen, settings.n,
                                   on_progress=lambda r, total: progress((r, total), desc="Writing false answers"))
    except MeowError as e:
        return s, gr.skip(), notice(str(e), "error")
    fallback = sum(report.from_fallback)
    msg = f"{sum(report.from_generator)} false answers written for {len(items)} facts"
    msg += f"; {fallback} filled from editable templates (the generator gave too few)." if fallback else "."
    return s, candidates_table(items), notice(msg + " Edit any answer in the table, then score them.")


def build() -> dict:
    with gr.Tab("3. Invert", id="invert"):
        gr.Markdown("The model is taught **false answers** to each question, so the true one loses its place. "
                    "Here they are written, by the model itself or by an API model. Edit any of them.")
        with gr.Row():
            generator = gr.Radio(list(GENERATOR_CHOICES), value=DEFAULT_GENERATOR, label="Who writes them",
                                 info="'continuing its own answer': the model starts its usual answer and a "
                                      "different name is sampled where the truth would go (same kind of answer); "
                                      "'similar subjects': its answers to the same question about other subjects; "
                                      "'own answer first': the first, and the second for a fact it leaves short; "
                                      "'Local model': it writes them from examples of false answers")
            n_inv = gr.Slider(1, 8, value=4, step=1, label="False answers per fact")
        with gr.Row(visible=False) as api_row:
            base_url = gr.Textbox(label="Base URL (empty = OpenAI)", placeholder="http://localhost:8000/v1")
            api_model = gr.Textbox(label="Model name", placeholder="gpt-4o-mini")
            api_key = gr.Textbox(label="API key (or OPENAI_API_KEY; never stored)", type="password")
        invert_btn = gr.Button("Write false answers", variant="primary")
        invert_msg = gr.Markdown()
        inv_table = gr.Dataframe(_empty(INVERT_COLUMNS), headers=INVERT_COLUMNS, interactive=True, wrap=True,
                                 label="False answers (editable)")
    return dict(generator=generator, n_inv=n_inv, api_row=api_row, base_url=base_url, api_model=api_model,
                api_key=api_key, invert_btn=invert_btn, invert_msg=invert_msg, inv_table=inv_table)


def wire(c: dict) -> None:
    state = c["state"]
    c["generator"].change(lambda g: gr.update(visible=g.startswith("OpenAI")), c["generator"], c["api_row"],
                          api_visibility="private")
    c["invert_btn"].click(run_invert, [state, c["generator"], c["n_inv"], c["base_url"], c["api_model"], c["api_key"]],
                          [state, c["inv_table"], c["invert_msg"]], api_name="invert", **HEAVY)
