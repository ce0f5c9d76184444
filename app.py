"""MEOW Studio web app (Gradio Blocks): the whole unlearning flow in a browser. `python app.py`

Tabs follow the flow: Facts -> Model -> Invert -> MEMO & selection -> Unlearn -> Compare
-> Publish. The interface is the `studio` package (one module per tab, `studio.layout`
puts them together); every callback there is a plain function that calls the `meow_app`
library (which never imports Gradio) and returns plain values, so the callbacks are
unit-tested with a tiny model (tests/test_app.py). This file only sets the caches up and
launches it.
"""

from __future__ import annotations

import os
from pathlib import Path


def spaces_cache_dirs(env=os.environ, data: Path | str = "/data") -> dict:
    """On Hugging Face Spaces with persistent storage (/data), the caches that should live there
    (model downloads, the converted embedded model, runs) so they survive restarts; {} elsewhere
    or when set already. Without persistent storage the defaults under $HOME apply."""
    data = Path(data)
    if not env.get("SPACE_ID") or not data.is_dir() or not os.access(data, os.W_OK):
        return {}
    wanted = {"HF_HOME": str(data / ".huggingface"), "MEOW_HOME": str(data / "meow_app")}
    return {k: v for k, v in wanted.items() if not env.get(k)}


# Before gradio and huggingface_hub are imported (by studio): they read HF_HOME once.
os.environ.update(spaces_cache_dirs())

from meow_app import facts as facts_mod, pipeline  # noqa: E402
from studio.layout import build  # noqa: E402, F401 (app.build: the page, for tests and bench/memory.py)
from studio.session import runs_root  # noqa: E402


def main() -> None:
    port = int(os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or 7860)
    # Runs of an app that was killed (not stopped) left hidden partial folders: not runs, remove them.
    pipeline.remove_stale_partials(runs_root(), depth=2)
    # The facts limit, enforced by the web server itself: a larger upload is refused while it
    # streams in, before it is written to disk (the reader's own check comes after that).
    # run_history off: gradio would otherwise keep every call's inputs in the browser (API keys
    # and tokens typed into password fields, the facts being forgotten) and offer to upload them.
    build().queue(default_concurrency_limit=2).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), server_port=port,
        max_file_size=facts_mod.MAX_FILE_BYTES, run_history=False)


if __name__ == "__main__":
    main()
