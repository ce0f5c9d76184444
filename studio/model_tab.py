"""2. Model: the chat model every step uses (embedded by default, a Hub id or a folder)."""

from __future__ import annotations

import gradio as gr

from meow_app import models
from meow_app.errors import MeowError

from .session import HEAVY, _original, default_model, notice, session


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


def model_status(s):
    try:
        return notice(f"Loaded: {_original(session(s)).describe()}")
    except MeowError as e:
        return notice(str(e), "error")


def build() -> dict:
    with gr.Tab("2. Model", id="model"):
        gr.Markdown("The embedded model (SmolLM2-135M-Instruct, runs on a laptop CPU) is loaded by default. "
                    "Type a Hugging Face id (e.g. `HuggingFaceTB/SmolLM2-360M-Instruct`) or a local folder to use "
                    "another chat model.")
        with gr.Row():
            model_box = gr.Textbox(value=default_model(), label="Model", scale=4)
            model_btn = gr.Button("Load model", scale=1)
        model_msg = gr.Markdown()
    return dict(model_box=model_box, model_btn=model_btn, model_msg=model_msg)


def wire(c: dict) -> None:
    state = c["state"]
    c["model_btn"].click(load_model, [state, c["model_box"]], [state, c["model_msg"]], api_name="load_model", **HEAVY)
    c["demo"].load(model_status, state, c["model_msg"], api_visibility="private")
