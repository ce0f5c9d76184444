"""Item 1, inside: where one decoding step's time goes on the embedded model.

    .venv/bin/python bench/decode_step.py                    # rows 1, 8, 30, 64, 128
    .venv/bin/python bench/decode_step.py --rows 30 --no-write

Most of a default `unlearn` run is greedy or sampled decoding (the probes, the inversion,
MEMO, the neighbours' answers, the sampled answers: 73 of 114 s on the 2026-12-06 machine),
one token a row a step, so a step's cost bounds the time goal. For each batch size this times,
in one process: a step as `generation._decode` runs it (the model with a DynamicCache, after
a prefill of --context tokens), the same step with the KV cache written into a preallocated
buffer instead of concatenated (KVInPlace: an alternative, identical logits), and the step's
matrix products alone at the same shapes, one layer's seven and the output head's, separate
and with the projections that share an input fused into one (q, k, v; gate, up). The products
alone are the step's floor in fp32 on this CPU: what is above them is per-operation work
(norms, rotary embedding, attention, the cache, Python).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def timed(fn, repeat: int) -> float:
    """Milliseconds a call, the mean of `repeat` calls after two untimed ones."""
    fn()
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1000


def kv_in_place_cache(config):
    """A DynamicCache whose layers write new keys and values into a buffer with room to spare
    instead of concatenating the whole cache every step."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class KVInPlace(DynamicLayer):
        SPARE = 64

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            have, n = (self.keys.shape[-2] if self.keys.numel() else 0), key_states.shape[-2]
            buf = getattr(self, "buf", None)
            if (buf is None or not have or self.keys.data_ptr() != buf[0].data_ptr()
                    or self.keys.shape[0] != buf[0].shape[0] or have + n > buf[0].shape[-2]):
                b, h, _, d = key_states.shape  # (first use, rows left the batch, or full: a new buffer)
                buf = self.buf = (key_states.new_empty((b, h, have + n + self.SPARE, d)),
                                  value_states.new_empty((b, h, have + n + self.SPARE, d)))
                if have:
                    buf[0][:, :, :have], buf[1][:, :, :have] = self.keys, self.values
            buf[0][:, :, have:have + n], buf[1][:, :, have:have + n] = key_states, value_states
            self.keys, self.values = buf[0][:, :, :have + n], buf[1][:, :, :have + n]
            return self.keys, self.values

    cache = DynamicCache(config=config)
    cache.layers = [KVInPlace() for _ in cache.layers]
    return cache


def step_ms(model, rows: int, context: int, steps: int, in_place: bool):
    """(ms a decoding step, the last step's logits) after a prefill of `context` tokens."""
    import torch
    from transformers import DynamicCache

    torch.manual_seed(0)
    cache = kv_in_place_cache(model.config) if in_place else DynamicCache(config=model.config)
    ids = torch.randint(100, 1000, (rows, context))
    mask = torch.ones(rows, context, dtype=torch.long)
    with torch.no_grad():
        nxt = model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                    logits_to_keep=1).logits[:, -1].argmax(-1)
        start = time.perf_counter()
        for s in range(steps):
            mask = torch.cat([mask, mask.new_ones(rows, 1)], 1)
            logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=torch.full((rows, 1), context + s),
                           past_key_values=cache, use_cache=True).logits[:, -1]
            nxt = logits.argmax(-1)
    return (time.perf_counter() - start) / steps * 1000, logits


def products_ms(model, rows: int, repeat: int) -> tuple[float, float, float]:
    """(one layer's seven products, separate; the same fused; the output head) in ms, at `rows`."""
    import torch
    import torch.nn.functional as F

    layer = model.model.layers[0]
    att, mlp = layer.self_attn, layer.mlp
    x = torch.randn(rows, model.config.hidden_size)
    h = torch.randn(rows, model.config.intermediate_size)
    w = {n: getattr(m, n).weight.detach() for m, names in ((att, ("q_proj", "k_proj", "v_proj", "o_proj")),
                                                           (mlp, ("gate_proj", "up_proj", "down_proj")))
         for n in names}
    qkv, gate_up = torch.cat([w["q_proj"], w["k_proj"], w["v_proj"]]), torch.cat([w["gate_proj"], w["up_proj"]])
    xa = torch.randn(rows, w["o_proj"].shape[1])

    def separate():
        for n in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"):
            F.linear(x, w[n])
        F.linear(xa, w["o_proj"])
        F.linear(h, w["down_proj"])

    def fused():
        F.linear(x, qkv)
        F.linear(x, gate_up)
        F.linear(xa, w["o_proj"])
        F.linear(h, w["down_proj"])

    head = model.lm_head.weight.detach()
    with torch.no_grad():
        return timed(separate, repeat * 10), timed(fused, repeat * 10), timed(lambda: F.linear(x, head), repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8, 30, 64, 128],
                    help="batch sizes (rows decoded at once)")
    ap.add_argument("--context", type=int, default=60,
                    help="tokens already in the cache (a chat prompt and a question)")
    ap.add_argument("--steps", type=int, default=20, help="decoding steps timed for each row count")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    load_before = common.load_average()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from meow_app import models

    model = models.load("embedded").model.eval()
    layers = model.config.num_hidden_layers
    rows, raw = [], []
    for n in a.rows:
        step, logits = step_ms(model, n, a.context, a.steps, in_place=False)
        in_place, logits_in_place = step_ms(model, n, a.context, a.steps, in_place=True)
        separate, fused, head = products_ms(model, n, a.steps)
        floor = separate * layers + head
        same = torch.equal(logits, logits_in_place)
        kv = f"{in_place:.0f} ({in_place / step:.2f}x; {'same' if same else 'other'} logits)"
        joined = fused * layers + head
        rows.append([n, f"**{step:.0f}**", f"{step / n:.1f}", f"{floor:.0f} ({floor / step:.0%})", f"{head:.0f}",
                     f"{step - floor:.0f}", kv, f"{joined:.0f} ({joined / floor:.2f}x)"])
        raw.append({"rows": n, "step_ms": step, "kv_in_place_ms": in_place, "same_logits": same,
                    "products_ms": floor, "fused_products_ms": joined, "head_ms": head})
    body = common.table(["rows", "step (ms)", "ms a row", "products alone (share of the step)",
                         "of which the output head", "the rest (ms)", "KV cache written in place",
                         "products with q,k,v and gate,up fused"], rows)
    body += (f"\nfp32, {layers} layers, {a.context} tokens in the cache before the first timed step, {a.steps} steps "
             "each. The products alone are the step's floor on this CPU; the rest is per-operation work above them.\n")
    common.report("One decoding step, where the time goes (item 1)", body, load_before, raw, "decode_step",
                  not a.no_write)


if __name__ == "__main__":
    main()
