"""The placeholder web app builds, answers through the library, and shows errors inline."""

import gradio as gr

import app


def test_app_builds_and_answers_with_a_local_model(tiny_dir):
    assert isinstance(app.build(), gr.Blocks)
    answer, status = app.ask("Who wrote Hamlet?", tiny_dir)
    assert isinstance(answer, str) and status.startswith("Loaded:")


def test_app_shows_bad_model_inline():
    answer, status = app.ask("Who wrote Hamlet?", "/no/such/model")
    assert answer == "" and "does not exist" in status
    assert app.ask("   ", "embedded") == ("", "Type a question first.")
