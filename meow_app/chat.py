"""Streaming multi-turn chat, used by the app's side-by-side Compare tab.

`stream_reply` yields the growing answer of one model as it is generated (greedy, so the
same prompt gives the same answer every time and two models differ only by what they
learned); `stream_pair` runs two of them at once and yields both texts together, so the
original and the unlearned model answer the same prompt side by side.
"""

from __future__ import annotations

import queue
import threading

import torch

from . import generation


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """A multi-turn conversation ([{"role", "content"}, ...]) in the model's chat template."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return generation.encode(tokenizer, text)


def stream_reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 96):
    """Yield the reply so far, growing token by token, to the last user message."""
    from transformers import TextIteratorStreamer

    ids = torch.tensor([prompt_ids(tokenizer, messages)], device=next(model.parameters()).device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                  do_sample=False, temperature=None, top_p=None, top_k=None, streamer=streamer,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=generation.eos_ids(model, tokenizer))
    errors: list[BaseException] = []

    def run():
        try:
            with torch.no_grad():
                model.generate(**kwargs)
        except BaseException as e:  # reported to the reader below, not lost in the thread
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text.strip()
    thread.join()
    if errors:
        raise errors[0]


def stream_pair(left, right):
    """Run two reply streams at once; yield (left_text, right_text) whenever either grows."""
    updates: queue.Queue = queue.Queue()
    done = object()

    def pump(side, stream):
        try:
            for text in stream:
                updates.put((side, text))
        except BaseException as e:
            updates.put((side, e))
        updates.put((side, done))

    texts, running = ["", ""], 2
    for side, stream in enumerate((left, right)):
        threading.Thread(target=pump, args=(side, stream), daemon=True).start()
    while running:
        side, item = updates.get()
        if item is done:
            running -= 1
            continue
        if isinstance(item, BaseException):
            raise item
        texts[side] = item
        yield texts[0], texts[1]
