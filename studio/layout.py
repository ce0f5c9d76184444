"""The page: the intro, the seven tabs in the order of the flow, then their events.

Every tab module has `build()` (its layout, inside its own gr.Tab; returns its components
by name) and `wire(c)` (its events). Layout first, all tabs, because some events cross
tabs: Unlearn reads the Invert and MEMO tabs and fills Compare's verdicts; new facts empty
the Invert and MEMO tables. `c` holds every tab's components, the session state and the page.
"""

from __future__ import annotations

import gradio as gr

from . import compare_tab, facts_tab, invert_tab, memo_tab, model_tab, publish_tab, unlearn_tab
from .session import new_session

TABS = (facts_tab, model_tab, invert_tab, memo_tab, unlearn_tab, compare_tab, publish_tab)

INTRO = """# 🐱 MEOW Studio
Make a language model **forget** facts, and **see** that it did. Go through the tabs in order:
give the facts to forget, let the model write false answers for them (*inversion*), pick the
answers it finds most natural (*MEMO*), train on them (*unlearning*), then chat with the
original and the unlearned model side by side."""


# gradio keeps a copy of every file it serves or is given (uploaded facts, a run's zip: half a
# GB): every hour, the copies older than an hour go, so a long-running Space's disk stays bounded.
DELETE_CACHE = (3600, 3600)


def build() -> gr.Blocks:
    with gr.Blocks(title="MEOW Studio", delete_cache=DELETE_CACHE) as demo:
        # Created once per browser session when the page loads (and per API client), so
        # concurrent first events cannot each start a session of their own.
        c = {"demo": demo, "state": gr.State(new_session)}
        gr.Markdown(INTRO)
        with gr.Tabs():
            for tab in TABS:
                parts = tab.build()
                assert not parts.keys() & c.keys(), f"{tab.__name__}: names taken by another tab"
                c.update(parts)
        for tab in TABS:
            tab.wire(c)
    return demo
