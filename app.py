"""MEOW Studio web app (Gradio Blocks).

The full studio (facts, inversion, MEMO, unlearning, side-by-side chat, publishing) is
being built; for now this page loads the embedded model and answers questions, so the
install-and-start command can be checked end to end. All work is done by `meow_app`.
"""

from __future__ import annotations

import os

import gradio as gr

from meow_app import generation, models


def ask(question: str, model_spec: str) -> tuple[str, str]:
    if not question.strip():
        return "", "Type a question first."
    try:
        lm = models.load_shared(model_spec.strip() or models.EMBEDDED)
    except models.MeowError as e:
        return "", f"⚠️ {e}"
    return generation.answer(lm.model, lm.tokenizer, [question])[0], f"Loaded: {lm.describe()}"


def build() -> gr.Blocks:
    with gr.Blocks(title="MEOW Studio") as demo:
        gr.Markdown("# MEOW Studio\nMake a language model forget facts, and check that it did. "
                    "The unlearning studio arrives in the next release; meanwhile, ask the model a question. "
                    "The command line (`python -m meow_app unlearn ...`) already does the whole job.")
        with gr.Row():
            model = gr.Textbox(value=models.EMBEDDED, label="Model (embedded, a Hugging Face id, or a run folder)")
            status = gr.Markdown()
        question = gr.Textbox(label="Question", placeholder="Who wrote Romeo and Juliet?")
        answer = gr.Textbox(label="Answer", interactive=False)
        gr.Examples(["Who wrote Romeo and Juliet?", "What is the capital of France?"], inputs=question)
        gr.Button("Ask", variant="primary").click(ask, [question, model], [answer, status])
        demo.load(lambda: f"Loaded: {models.load_shared().describe()}", None, status)
    return demo


if __name__ == "__main__":
    port = int(os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or 7860)
    build().queue(default_concurrency_limit=2).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), server_port=port)
