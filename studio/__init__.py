"""MEOW Studio's web interface (Gradio): one module per tab, each with its layout (`build`),
its callbacks (plain functions, unit-tested without a browser: tests/test_app.py) and its
events (`wire`); `layout.build` puts the tabs together. The `meow_app` library below never
imports Gradio; `app.py` at the repository root launches this."""
