"""Item 4: chat streaming speed on the embedded model (meow_app.chat), alone and two side
by side as the app's Compare tab runs them.

    .venv/bin/python bench/chat_speed.py
    .venv/bin/python bench/chat_speed.py --max-new-tokens 200 --no-write

For each prompt: one model streaming alone (`chat.stream_reply`), then two models
streaming together (`chat.stream_pair` of two `stream_reply`s, the original and a second
copy of it standing in for the unlearned model: same size, same compute). Time to first
token = from the call to the first non-empty text; tokens/s = the reply's tokens after
the first, over the time after the first. Greedy, so every run gives the same reply.

Beside them, what bounds a decoding step: at batch size 1 every step reads all the
weights once, so the machine's memory read rate (measured here by summing one copy of
the weights) sets a floor on the time per token whatever the code does; and one bare
forward step (the model with its KV cache, no `generate`, no streaming) shows how much
of the step is the model itself.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PROMPTS = ["Tell me about the history of Paris.", "Explain how a bicycle works.",
           "Write a short story about a cat who learns to swim."]
GOAL_TOKENS_PER_SECOND = 40
GOAL_FIRST_TOKEN = 1.0


def timed_stream(stream, count_tokens, sides: int = 1):
    """Consume a stream of texts (or tuples of texts); per side: (first token s, tokens/s, tokens)."""
    start = time.perf_counter()
    first, last, final = [None] * sides, [start] * sides, [""] * sides
    for item in stream:
        texts = item if isinstance(item, tuple) else (item,)
        now = time.perf_counter()
        for k, text in enumerate(texts):
            if text and first[k] is None:
                first[k] = now
            if text != final[k]:
                last[k], final[k] = now, text
    out = []
    for k in range(sides):
        n = count_tokens(final[k])
        span = last[k] - first[k] if first[k] else 0
        out.append((first[k] - start if first[k] else float("nan"), (n - 1) / span if span > 0 else float("nan"), n))
    return out


def decoding_bounds(model, tok) -> dict:
    """The weight-read floor per token and one bare cached forward step, both measured."""
    import torch

    from meow_app.generation import chat_prompt, encode

    with torch.no_grad():
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        flat.sum()
        start = time.perf_counter()
        for _ in range(10):
            flat.sum()
        read_s = (time.perf_counter() - start) / 10
        nbytes = flat.numel() * flat.element_size()
        del flat
        ids = torch.tensor([encode(tok, chat_prompt(tok, PROMPTS[0]))])
        out = model(input_ids=ids, use_cache=True)
        cache, nxt, steps = out.past_key_values, out.logits[:, -1:].argmax(-1), []
        for _ in range(40):
            start = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            steps.append(time.perf_counter() - start)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return {"weight_mb": nbytes / 1e6, "read_gb_s": nbytes / read_s / 1e9, "floor_ms": read_s * 1e3,
            "bare_step_ms": statistics.median(steps[5:]) * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-new-tokens", type=int, default=96, help="the app's default reply length")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    load_before = common.load_average()
    from meow_app import chat, models

    lm = models.load("embedded")
    second = copy.deepcopy(lm.model)
    tok = lm.tokenizer

    def count(text):
        return len(tok(text, add_special_tokens=False)["input_ids"])

    def reply(model, prompt):
        return chat.stream_reply(model, tok, [{"role": "user", "content": prompt}], a.max_new_tokens)

    timed_stream(reply(lm.model, "Hello"), count)  # warm-up
    bounds = decoding_bounds(lm.model, tok)
    alone, pair = [], []
    for prompt in PROMPTS:
        alone.append(timed_stream(reply(lm.model, prompt), count)[0])
        pair.append(timed_stream(chat.stream_pair(reply(lm.model, prompt), reply(second, prompt)), count, 2))
        print(f"done {prompt!r}: alone {alone[-1]}, pair {pair[-1]}", file=sys.stderr, flush=True)

    def row(name, runs):
        ttft = [r[0] for r in runs]
        tps = [r[1] for r in runs]
        return [name, f"{statistics.mean(r[2] for r in runs):.0f}",
                f"{statistics.mean(ttft):.2f} s (max {max(ttft):.2f})",
                f"**{statistics.mean(tps):.1f}** (min {min(tps):.1f})"]

    rows = [row("one model alone", alone), row("side by side: left", [p[0] for p in pair]),
            row("side by side: right", [p[1] for p in pair])]
    body = common.table(["streaming", "tokens per reply (mean)", "time to first token (mean)", "tokens/s (mean)"], rows)
    tps_alone = statistics.mean(r[1] for r in alone)
    ttft_worst = max(max(r[0] for r in alone), max(p[k][0] for p in pair for k in (0, 1)))
    body += (f"\n{len(PROMPTS)} prompts, greedy, at most {a.max_new_tokens} new tokens. Goal >= "
             f"{GOAL_TOKENS_PER_SECOND} tok/s alone: "
             f"**{'met' if tps_alone >= GOAL_TOKENS_PER_SECOND else 'not met'}**; "
             f"first token < {GOAL_FIRST_TOKEN:.0f} s (worst of all runs {ttft_worst:.2f} s): "
             f"**{'met' if ttft_worst < GOAL_FIRST_TOKEN else 'not met'}**.\n")
    b = bounds
    body += (f"\nWhat bounds a step: the weights are {b['weight_mb']:.0f} MB and this machine reads memory at "
             f"{b['read_gb_s']:.1f} GB/s (summing them), so a token costs at least **{b['floor_ms']:.1f} ms** "
             f"(at most **{1e3 / b['floor_ms']:.0f} tok/s**) in this dtype; one bare forward step with the KV cache "
             f"(no generate, no streaming) takes **{b['bare_step_ms']:.1f} ms** "
             f"({1e3 / b['bare_step_ms']:.0f} tok/s).\n")
    common.report("Chat streaming (item 4)", body, load_before, {"alone": alone, "pair": pair, "bounds": bounds},
                  "chat_speed", not a.no_write)


if __name__ == "__main__":
    main()
