"""7. Publish: preview and push the last run to the Hugging Face Hub; or download it as a zip."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from meow_app import publish, runs
from meow_app.errors import MeowError

from .session import _empty, notice, session

PUBLISH_COLUMNS = ["file", "bytes"]


def _last_run(s) -> Path:
    if not s["run_dir"] or not Path(s["run_dir"]).is_dir():
        raise MeowError("no run yet: unlearn first")
    return Path(s["run_dir"])


# Zips are made here and gradio serves its own copy of each (a run's zip holds the model: half
# a GB), so one older than ZIP_AGE seconds is no longer needed and the next download removes it.
ZIPS = Path(tempfile.gettempdir()) / "meow-zips"
ZIP_AGE = 600


def zip_folder() -> Path:
    """A new folder under ZIPS for one zip, the folders older than ZIP_AGE removed first."""
    ZIPS.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in ZIPS.iterdir():
        try:
            if now - old.stat().st_mtime > ZIP_AGE:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:  # (another download removed it first)
            pass
    return Path(tempfile.mkdtemp(dir=ZIPS))


def download_run(s):
    """The session's last run folder as a zip, forgotten text included (for the user alone)."""
    try:
        run_dir = _last_run(session(s))
    except MeowError as e:
        return None, notice(str(e), "error")
    zipped = str(runs.zip_run(run_dir, zip_folder()))
    return zipped, notice(f"{Path(zipped).name}: the unlearned model (a Hugging Face checkpoint), run.json, "
                          "facts.jsonl and probes.json. The last two hold the forgotten text: share with care.")


def _card_body(readme: str) -> str:
    """The model card without its YAML header, for the preview."""
    parts = readme.split("---\n", 2)
    return parts[2] if readme.startswith("---\n") and len(parts) == 3 else readme


def publish_preview(s, repo_id: str, adapter_only: bool, base_model: str):
    """What a push would upload (the same folder `push --dry-run` writes): files and the model card."""
    try:
        run_dir = _last_run(session(s))
        with tempfile.TemporaryDirectory(prefix="meow-preview-") as tmp:
            folder = publish.build_folder(run_dir, Path(tmp) / "upload", repo_id, bool(adapter_only),
                                          (base_model or "").strip() or None)
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            table = pd.DataFrame([[str(p.relative_to(folder)), p.stat().st_size] for p in files],
                                 columns=PUBLISH_COLUMNS)
            card = _card_body((folder / "README.md").read_text(encoding="utf-8"))
    except MeowError as e:
        return _empty(PUBLISH_COLUMNS), "", notice(str(e), "error")
    return table, card, notice(f"{len(table)} files would be uploaded to {repo_id.strip()}; nothing forgotten "
                               "found in them. The forgotten facts, false answers and probe answers stay here.")


def publish_push(s, repo_id: str, private: bool, adapter_only: bool, base_model: str, token: str,
                 oauth_token: gr.OAuthToken | None = None):
    """Push the last run to the Hub. The token: typed here, else the Spaces sign-in, else HF_TOKEN."""
    token = (token or "").strip() or (oauth_token.token if oauth_token else None) or os.environ.get("HF_TOKEN")
    try:
        result = publish.push(_last_run(session(s)), repo_id, token, bool(private), bool(adapter_only),
                              (base_model or "").strip() or None)
    except MeowError as e:
        if not token and str(e).startswith("no Hugging Face token"):  # (the library's words are for the CLI)
            return notice("no Hugging Face token: paste one with write access into the token field, sign in with "
                          "Hugging Face (on Spaces), or set HF_TOKEN", "error")
        return notice(str(e), "error")
    return notice(f"Pushed {len(result['files'])} files to [{result['url']}]({result['url']}) "
                  f"([commit]({result['commit_url']})).")



def build() -> dict:
    with gr.Tab("7. Publish", id="publish"):
        gr.Markdown("Push the unlearned model to the Hugging Face Hub with a model card (method, settings, "
                    "before/after numbers). The forgotten facts never leave: every file is checked for them "
                    "before upload. *Preview* shows exactly what would be uploaded.")
        with gr.Row():
            repo_box = gr.Textbox(label="Repository (USER/NAME; created if missing)", scale=3)
            private_box = gr.Checkbox(True, label="Private", scale=1)
            adapter_box = gr.Checkbox(False, label="LoRA adapter only (runs trained with LoRA)", scale=1)
        with gr.Row():
            base_box = gr.Textbox(label="Base model's Hub id (only if the model was a local folder)")
            token_box = gr.Textbox(label="Hugging Face token with write access (or HF_TOKEN; never stored)",
                                   type="password")
        if os.environ.get("SPACE_ID"):  # Hugging Face sign-in exists on Spaces only (README: hf_oauth)
            gr.LoginButton()
        with gr.Row():
            preview_btn = gr.Button("Preview files")
            push_btn = gr.Button("Push to the Hub", variant="primary")
        publish_msg = gr.Markdown()
        publish_files = gr.Dataframe(_empty(PUBLISH_COLUMNS), headers=PUBLISH_COLUMNS, interactive=False,
                                     label="Files to upload")
        card_md = gr.Markdown(label="Model card")
        gr.Markdown("Or download the whole run folder, forgotten text included, for yourself:")
        zip_btn = gr.Button("Make a zip of the last run")
        zip_file = gr.File(label="Run folder (zip)")
        zip_msg = gr.Markdown()
    return dict(repo_box=repo_box, private_box=private_box, adapter_box=adapter_box, base_box=base_box,
                token_box=token_box, preview_btn=preview_btn, push_btn=push_btn, publish_msg=publish_msg,
                publish_files=publish_files, card_md=card_md, zip_btn=zip_btn, zip_file=zip_file, zip_msg=zip_msg)


def wire(c: dict) -> None:
    state = c["state"]
    c["zip_btn"].click(download_run, state, [c["zip_file"], c["zip_msg"]], api_name="download_run")
    c["preview_btn"].click(publish_preview, [state, c["repo_box"], c["adapter_box"], c["base_box"]],
                           [c["publish_files"], c["card_md"], c["publish_msg"]], api_name="publish_preview")
    c["push_btn"].click(publish_push, [state, c["repo_box"], c["private_box"], c["adapter_box"], c["base_box"],
                                       c["token_box"]], c["publish_msg"], api_name="publish_push")
