"""MEOW Studio: make a language model forget facts, and verify that it did.

The library never imports Gradio; the web app (app.py) and the CLI (cli.py) sit on top.
"""

__version__ = "0.1.0"
