"""Item 2: training efficiency against the FLOP floor, on the embedded model (CPU).

    .venv/bin/python bench/train_efficiency.py               # all variants, 2 epochs each
    .venv/bin/python bench/train_efficiency.py --variants default bf16 --epochs 3 --no-write

The batches are MEOW's: each demo_forget question num_batch (8) times with its selected
false answers in the model's own words, made as pipeline.unlearn makes them. Every
variant runs the library's training loop
(`train.Trainer`, method `meow`, its defaults plus the variant's change) on the same
examples in this one process; each step's time comes from the loop's step events and
each batch's shape from a wrapper around `collate`. The first step of a variant is
warm-up and not counted.

FLOPs per step are counted for what the step computes: forward 2 x matmul params x
tokens (+ the output layer on the answer positions only, + attention scores), the
backward pass through the activations about the same again, and weight gradients
2 x trainable matmul params x tokens (MLP blocks only by default; LoRA: its adapters).
The floor is the useful FLOPs at the machine's matmul rate, measured here with a large
torch matmul in the variant's dtype. Useful tokens: no padding, the prompt start all
rows of a batch share (the chat template's system prompt) once per batch and each
distinct question once (MEOW repeats each num_batch times), as the loss computes them
(losses._shared_forward); the "nothing shared" variant computes every row whole, which
counts as waste like padding.

`unlearn` with the `meow` defaults also trains each step on a batch of neighbour questions
with the original model's answers (pipeline.anchor_facts); the "default + neighbours"
variant includes it (its FLOPs counted the same way), the others time the forget batch.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GOAL_RATIO = 1.5
# name -> TrainConfig changes, and how the variant departs from the library's loop:
# threads (torch threads), batching ("random": not grouped by length), fused (AdamW kernel)
VARIANTS = {
    "default": {},
    "default + neighbours (unlearn's step)": {"neighbours": True},
    "nothing shared (before)": {"no_share": True},
    "per-tensor AdamW (before)": {"fused": False},
    "random batches": {"batching": "random"},
    "1 thread": {"threads": 1},
    "bf16 autocast": {"config": {"bf16": True}},
    "lora": {"config": {"lora": True}},
}


def matmul_rate(dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of an n x n @ n x n matmul, best of repeated runs for about `seconds`."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def step_flops(cfg, shapes: list[tuple[int, int]], logit_rows: int, trainable: int, lora: int) -> float:
    """FLOPs of one forward + backward over pieces of (tokens computed, keys each attends
    to at most), with output-layer logits for `logit_rows` positions; see the module docstring."""
    d, L, ff, v = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    per_token = L * (2 * d * d + 2 * d * kv + 3 * d * ff) + lora  # matmul params every token passes
    tokens = sum(t for t, _ in shapes)
    scores = sum(4 * L * d * t * w for t, w in shapes)  # QK^T and AV
    forward = 2 * per_token * tokens + 2 * d * v * logit_rows + scores
    return 2 * forward + 2 * trainable * tokens  # forward + activation grads (~ forward) + weight grads


def batch_pieces(batch, lens: list[int], shared_path: bool) -> tuple[list, list]:
    """(useful, computed) pieces of (tokens, keys attended) of a collated batch. Useful: the
    start all rows share once, each distinct prompt's rest once, each row's own part
    (batches.collate). Computed: what losses.answer_logits ran, padding included: those three
    passes (shared_path) or every row the batch's full width."""
    shared, keep = batch["shared"], batch["keep"]
    middles = batch["middle_mask"].sum(1).tolist()
    own = batch["own_mask"].sum(1).tolist()
    useful = [(shared, shared)] + [(m, shared + m) for m in middles] + [(o, t) for o, t in zip(own, lens)]
    if shared_path:
        width = batch["middle_ids"].shape[1]
        computed = ([(shared, shared)] + [(width, shared + width)] * len(middles)
                    + [(keep, shared + width + keep)] * len(lens))
    else:
        computed = [(batch["input_ids"].shape[1],) * 2] * len(lens)
    return useful, computed


def plain_batches(examples, batch_size, rng):
    """Batches in random order, not grouped by length (what length grouping saves)."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    return [[examples[i] for i in order[b:b + batch_size]] for b in range(0, len(order), batch_size)]


def measure(name, lm, facts, epochs: int, neighbours=None) -> dict:
    import torch

    from meow_app import losses, methods, train
    from meow_app.train import TrainConfig, Trainer

    variant = VARIANTS[name]
    changes, threads = variant.get("config", {}), variant.get("threads")
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    config = TrainConfig(**{**methods.get("meow").defaults, **changes, **common.epochs_exactly(epochs),
                            "early_stop": False})
    shapes, times = [], []
    plain_collate, plain_grouped = train.collate, train.length_grouped

    def recording_collate(batch, pad_id):
        out = plain_collate(batch, pad_id)
        lens = [len(e.ids) for e in batch]
        useful, computed = batch_pieces(out, lens, losses._can_share(lm.model, out))
        shapes.append((lens, out["keep"], useful, computed))
        return out

    train.collate = recording_collate
    can_share = losses._can_share
    if variant.get("no_share"):
        losses._can_share = lambda model, batch: False
    if variant.get("batching") == "random":
        train.length_grouped = plain_batches
    # unlearn's step also trains on the neighbour questions' original answers (a second
    # batch, collated after the forget batch); the other variants time the forget batch alone.
    anchors = neighbours if variant.get("neighbours") else None
    calls = 2 if anchors else 1  # collates per step
    trainer = Trainer(methods.get("meow"), lm.model, lm.tokenizer, config, facts, anchors=anchors,
                      on_event=lambda e: e["type"] == "step" and times.append(time.perf_counter()))
    trainer.probe_and_check = lambda *a: False  # steps only: no probes here
    if variant.get("fused") is False:
        trainer._optimizer = lambda params: torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    watch = common.Stopwatch()
    watch.wrap(torch.optim.AdamW, "step")
    start = time.perf_counter()
    try:
        result = trainer.train()
    finally:
        watch.restore()
        train.collate, train.length_grouped = plain_collate, plain_grouped
        losses._can_share = can_share
        torch.set_num_threads(threads_before)
    steps = [b - a for a, b in zip([start] + times, times)][1:]  # drop the warm-up step
    model = result.model
    trainable = 0
    copy = trainer._trainable_copy()  # the trainable set as the loop saw it
    for n, p in copy.named_parameters():
        if p.requires_grad and p.dim() == 2 and "embed" not in n and "lm_head" not in n:
            trainable += p.numel()
    lora = trainable if config.lora else 0
    del copy, model
    cfg = lm.model.config
    useful = [step_flops(cfg, u, keep * len(lens), trainable, lora) for lens, keep, u, _ in shapes]
    padded_flops = [step_flops(cfg, c, keep * len(lens), trainable, lora) for lens, keep, _, c in shapes]
    # One step is `calls` collates; the first step is warm-up.
    flops_useful = [sum(useful[i:i + calls]) for i in range(calls, len(useful), calls)]
    flops_padded = [sum(padded_flops[i:i + calls]) for i in range(calls, len(padded_flops), calls)]
    real = sum(sum(t for t, _ in u) for _, _, u, _ in shapes)
    padded = sum(sum(t for t, _ in c) for _, _, _, c in shapes)
    return {"variant": name, "steps": len(steps), "mean_step": statistics.mean(steps),
            "median_step": statistics.median(steps), "optimizer": watch.seconds["step"] / watch.calls["step"],
            "tokens_per_step": real * calls / len(shapes),
            "pad_share": 1 - real / padded, "flops_useful": statistics.mean(flops_useful),
            "flops_padded": statistics.mean(flops_padded), "trainable": trainable,
            "dtype": "bf16" if config.bf16 else "fp32", "threads": threads or threads_before}


def meow_examples(lm):
    """demo_forget with its selected false answers in the model's words, as pipeline.unlearn
    makes them (invert, MEMO, top-3, answer style): what `meow` trains on."""
    from meow_app import invert, pipeline, probes
    from meow_app.facts import load_facts

    facts = load_facts(common.FORGET)
    before = probes.probe(lm.model, lm.tokenizer, facts, paraphrases=False)
    invert.invert(facts, pipeline.make_generator(pipeline.InvertSettings(), lm), pipeline.InvertSettings().n, seed=0)
    pipeline.score_and_select(lm, facts, pipeline.SelectSettings())
    own = {r["fact"]: r["answer"] for r in before["rows"]}
    for i, f in enumerate(facts):
        f.inverted = [invert.in_answer_style(c, f, own[i]) or c for c in f.inverted]
    return facts


def methods_defaults() -> dict:
    from meow_app import methods

    return methods.get("meow").defaults


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--epochs", type=int, default=2, help="epochs of 4 steps per variant")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    load_before = common.load_average()
    import torch

    from meow_app import models

    # bf16 only when a variant uses it: on a CPU without bf16 hardware one 2048² bf16 matmul
    # takes about a minute (0.29 GFLOP/s measured on an AVX2-only EPYC).
    rates = {"fp32": matmul_rate(torch.float32)}
    if any(VARIANTS[n].get("config", {}).get("bf16") for n in a.variants):
        rates["bf16"] = matmul_rate(torch.bfloat16)
    lm = models.load("embedded")
    facts = meow_examples(lm)
    neighbours = None
    if any(VARIANTS[n].get("neighbours") for n in a.variants):
        from meow_app import pipeline

        neighbours = pipeline.anchor_facts(lm, facts, 0, methods_defaults()["neighbours"])
    random.seed(0)
    results = []
    for name in a.variants:
        r = measure(name, lm, facts, a.epochs, neighbours)
        r["floor"] = r["flops_useful"] / rates[r["dtype"]]
        results.append(r)
        print(f"done {name}: {r['median_step']:.2f} s/step", file=sys.stderr, flush=True)
    rows = []
    for r in results:
        rows.append([r["variant"], r["dtype"], r["threads"], f"{r['median_step']:.2f} s", f"{r['optimizer']:.2f} s",
                     f"{r['tokens_per_step']:.0f}", f"{r['tokens_per_step'] / r['median_step']:.0f}",
                     f"{100 * r['pad_share']:.1f}%", f"{r['flops_useful'] / 1e9:.0f}",
                     f"{r['flops_useful'] / r['median_step'] / 1e9:.0f}", f"{r['floor']:.2f} s",
                     f"**{r['median_step'] / r['floor']:.2f}x**"])
    body = ("Measured matmul rate (2048² torch matmul, best of ~2 s): "
            + ", ".join(f"{k} **{v / 1e9:.3g} GFLOP/s**" for k, v in rates.items()) + ".\n\n")
    body += common.table(["variant", "dtype", "threads", "step (median)", "of it AdamW", "tokens/step", "tokens/s",
                          "wasted tokens", "GFLOP/step (useful)", "achieved GFLOP/s", "floor/step", "step / floor"],
                         rows)
    body += (f"\nGoal: step <= {GOAL_RATIO}x floor. Floor = useful FLOPs / matmul rate of the variant's dtype; "
             "tokens/step counts useful tokens (no padding; the shared prompt start once a batch, each distinct "
             "question once); wasted tokens: padding and repeats, as a share of the tokens computed; "
             f"trainable matmul params: {results[0]['trainable'] / 1e6:.1f}M (MLP blocks) for the full variants.\n")
    common.report("Training efficiency against the FLOP floor (item 2)", body, load_before,
                  {"rates": rates, "results": results}, "train_efficiency", not a.no_write)


if __name__ == "__main__":
    main()
