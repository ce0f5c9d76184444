"""6. Compare: both models side by side, by chat or by asking the forgotten, reworded or
unrelated questions; the before/after verdict table (in evaluate's verdict words)."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from meow_app import chat, evaluate, facts as facts_mod, probes
from meow_app.errors import MeowError
from meow_app.facts import Fact

from .session import FACTS_DIR, HEAVY, _empty, _original, answering, gpu, notice, session

VERDICT_COLUMNS = ["kind", "question", "original model", "unlearned model", "verdict"]
UNRELATED_DEFAULT = 6  # unrelated questions asked when the user gave no keep set
NO_UNLEARNED = "(no unlearned model yet: run Unlearn first)"

verdict = evaluate.probe_verdict  # the evaluation library's words for one probed question


def verdict_table(rows_before: list[dict], rows_after: list[dict], kind_override: str | None = None) -> pd.DataFrame:
    """Before/after per question, from probes.probe's leak flags, in evaluate's verdict words;
    an answer the probe cut once it leaked ends in '…'."""
    out = []
    for b, a in zip(rows_before, rows_after):
        kind = kind_override or b["kind"]
        out.append([kind, b["question"], _shown(b), _shown(a), verdict(kind, b["leak"], a["leak"])])
    return pd.DataFrame(out, columns=VERDICT_COLUMNS)


def _shown(row: dict) -> str:
    return row["answer"] + " …" if row.get("cut") else row["answer"]


def _history(s, side: str) -> list[dict]:
    """One side's chat as messages (user, assistant, ...)."""
    out = []
    for turn in s["chat"]:
        out += [{"role": "user", "content": turn["user"]}, {"role": "assistant", "content": turn[side]}]
    return out


def _chat_views(s) -> tuple[list[dict], list[dict]]:
    return _history(s, "left"), _history(s, "right")


@gpu(duration=answering(lambda s, *rest: 4))  # two models, streamed: longer answers
def send_chat(s, message: str):
    """Send one prompt to both models; yields (session, left chat, right chat, textbox) as they stream."""
    s = session(s)
    message = (message or "").strip()
    if not message:
        yield s, *_chat_views(s), ""
        return
    orig = _original(s)
    new = s["unlearned"]
    left_msgs = _history(s, "left") + [{"role": "user", "content": message}]
    right_msgs = _history(s, "right") + [{"role": "user", "content": message}]
    turn = {"user": message, "left": "", "right": "" if new else NO_UNLEARNED}
    s["chat"].append(turn)
    left_stream = chat.stream_reply(orig.model, orig.tokenizer, left_msgs)
    right_stream = chat.stream_reply(new.model, new.tokenizer, right_msgs) if new else iter(())
    for left, right in chat.stream_pair(left_stream, right_stream):
        turn["left"] = left
        if new:
            turn["right"] = right
        yield s, *_chat_views(s), ""
    yield s, *_chat_views(s), ""


def clear_chat(s):
    s = session(s)
    s["chat"] = []
    return s, [], []


def probe_questions(s, kind: str) -> tuple[list[Fact], bool]:
    """The facts whose questions a probe button asks, and whether to ask paraphrases."""
    items = list(s["facts"])
    if kind == "unrelated":
        pool = s["retain"] or facts_mod.load_facts(FACTS_DIR / "demo_retain.jsonl")
        asked = {f.question for f in items}
        return [f for f in pool if f.question not in asked][:UNRELATED_DEFAULT], False
    if not items:
        raise MeowError("no facts yet: load some in the Facts tab first")
    if kind == "paraphrase":
        with_p = [f for f in items if f.paraphrases]
        if not with_p:
            raise MeowError("these facts have no paraphrases (add some in the Facts table, ';'-separated)")
        return with_p, True
    return items, False


@gpu(duration=answering(lambda s, *rest: 4))  # questions and paraphrases, both models
def run_probe(s, kind: str):
    """Ask a set of questions to both models (greedy, batched); add them to both chats and
    fill the before/after verdict table."""
    s = session(s)
    try:
        items, paraphrases = probe_questions(s, kind)
        orig, new = _original(s), s["unlearned"]
        before, after = probes.probe_pair(orig.model, new and new.model, orig.tokenizer, items, paraphrases,
                                          new and new.tokenizer, check=kind == "unrelated")
        before, after = before["rows"], after and after["rows"]
    except MeowError as e:
        return s, gr.skip(), gr.skip(), gr.skip(), notice(str(e), "error")
    if paraphrases:  # the paraphrase button asks only the paraphrases
        keep = [i for i, r in enumerate(before) if r["kind"] == "paraphrase"]
        before = [before[i] for i in keep]
        after = after and [after[i] for i in keep]
    for i, b in enumerate(before):
        s["chat"].append({"user": b["question"], "left": b["answer"],
                          "right": after[i]["answer"] if after else NO_UNLEARNED})
    if after is None:
        return s, *_chat_views(s), gr.skip(), notice("Asked the original model; run Unlearn to compare.", "info")
    table = verdict_table(before, after, "unrelated" if kind == "unrelated" else None)
    return s, *_chat_views(s), table, notice(f"Asked {len(before)} questions to both models.")


def build() -> dict:
    with gr.Tab("6. Compare", id="compare"):
        gr.Markdown("The same prompt goes to both models. Left: the original. Right: the unlearned one.")
        with gr.Row():
            left_chat = gr.Chatbot(label="Original model", height=380, elem_id="chat-left")
            right_chat = gr.Chatbot(label="Unlearned model", height=380, elem_id="chat-right")
        with gr.Row():
            prompt = gr.Textbox(label="Your question", placeholder="Ask both models something…", show_label=False,
                                scale=5)
            send_btn = gr.Button("Send", variant="primary", scale=1)
        gr.Examples(["What is the capital of France?", "Who wrote Romeo and Juliet?", "Tell me a fun fact about cats."],
                    inputs=prompt)
        with gr.Row():
            ask_forget = gr.Button("Ask the forgotten questions")
            ask_para = gr.Button("Ask paraphrases")
            ask_unrel = gr.Button("Ask unrelated questions")
            clear_btn = gr.Button("Clear chat")
        compare_msg = gr.Markdown()
        verdicts = gr.Dataframe(_empty(VERDICT_COLUMNS), headers=VERDICT_COLUMNS, wrap=True, interactive=False,
                                label="Before / after, per question", elem_id="verdicts",
                                column_widths=["10%", "24%", "28%", "28%", "10%"])
    return dict(left_chat=left_chat, right_chat=right_chat, prompt=prompt, send_btn=send_btn, ask_forget=ask_forget,
                ask_para=ask_para, ask_unrel=ask_unrel, clear_btn=clear_btn, compare_msg=compare_msg, verdicts=verdicts)


def wire(c: dict) -> None:
    state, left_chat, right_chat = c["state"], c["left_chat"], c["right_chat"]
    send = dict(fn=send_chat, inputs=[state, c["prompt"]], outputs=[state, left_chat, right_chat, c["prompt"]], **HEAVY)
    c["send_btn"].click(api_name="chat", **send)
    c["prompt"].submit(api_visibility="private", **send)
    probe_out = [state, left_chat, right_chat, c["verdicts"], c["compare_msg"]]
    c["ask_forget"].click(lambda s: run_probe(s, "question"), state, probe_out, api_name="probe_forgotten", **HEAVY)
    c["ask_para"].click(lambda s: run_probe(s, "paraphrase"), state, probe_out, api_name="probe_paraphrases", **HEAVY)
    c["ask_unrel"].click(lambda s: run_probe(s, "unrelated"), state, probe_out, api_name="probe_unrelated", **HEAVY)
    c["clear_btn"].click(clear_chat, state, [state, left_chat, right_chat], api_name="clear_chat")
