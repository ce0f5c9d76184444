"""How long a job will take, estimated before it starts, from its size alone: the facts, the
training steps, the model's parameters and the device.

A ZeroGPU Space runs each GPU function in a separate process for at most the duration it
asked for (`spaces.GPU(duration=...)`, 60 s unless told, at most ZEROGPU_MAX_SECONDS): a
run that outlives it is cut off and loses everything. The app asks for what the job needs
and, when a job cannot fit, says so before starting it.

The speeds are coarse on purpose (a margin, not a promise): GPU ones are an H200 slice's
order of magnitude for models up to a few billion parameters, CPU ones were measured on
this project's 2-core machines (docs/benchmarks.md item 1: ~9 s a default MEOW step and
~10 s a probe pass on the 135M embedded model).
"""

from __future__ import annotations

import math

ZEROGPU_MAX_SECONDS = 300  # the longest call a ZeroGPU Space may ask for (5 minutes)
ZEROGPU_MIN_SECONDS = 30
MARGIN = 1.5               # asked for = estimate x MARGIN: being cut off costs the whole run

# (fixed, per billion parameters) seconds: one optimiser step of a default batch; one
# generated token for a batch of questions; loading the weights; null_space's set-up (a pass
# over the preserved text and an eigendecomposition per trained layer: ~15 s for the 135M
# model on 2 cores, docs/benchmarks.md; a layer's cost grows with its width cubed, so this
# per-billion figure is generous for small models and may be short for wide ones).
SPEEDS = {
    "cuda": {"step": (0.08, 0.3), "token": (0.02, 0.01), "load": (5.0, 2.0), "null_space": (2.0, 60.0)},
    "cpu": {"step": (1.0, 60.0), "token": (0.1, 1.5), "load": (3.0, 10.0), "null_space": (5.0, 100.0)},
}
ANSWER_TOKENS = 48  # generation.MAX_NEW_TOKENS: the longest greedy answer a probe waits for
BATCH = 32          # questions answered together in one pass


def _cost(device: str, kind: str, billions: float) -> float:
    fixed, per_billion = SPEEDS["cuda" if device.startswith("cuda") else "cpu"][kind]
    return fixed + per_billion * billions


def answer_seconds(passes: float, n_params: int, device: str) -> float:
    """Batched greedy answering: `passes` batches of questions, each up to ANSWER_TOKENS long."""
    return passes * ANSWER_TOKENS * _cost(device, "token", n_params / 1e9)


def sampled_per_fact(config) -> int:
    """Answers meow_patch samples a fact (methods/meow_patch.py): patch_samples, patch_resample
    and patch_about together."""
    return config.patch_samples + config.patch_resample + config.patch_about


def rows_per_fact(config, patch: bool = False) -> int:
    """Training rows a fact gives an epoch: num_batch false answers; meow_patch adds its truth
    rows and up to one per sampled answer."""
    return config.num_batch + ((2 + sampled_per_fact(config)) if patch and config.truth_weight > 0 else 0)


def epochs_run(n_facts: int, config, patch: bool = False) -> int:
    """The epochs the shared loop runs at most (train.py: min_steps can add some on few facts)."""
    per_epoch = math.ceil(n_facts * rows_per_fact(config, patch) / config.batch_size)
    return max(config.epochs, math.ceil(config.min_steps / per_epoch))


def training_steps(n_facts: int, config, custom_loop: bool = False, edit: bool = False, patch: bool = False) -> int:
    """Optimiser steps at most (early stopping can end sooner); one-shot second-order methods
    count their line search's forward passes as steps; meow_edit its target vectors' steps
    (a forward and backward pass over one row per false answer: a step's cost for each
    batch_size of them)."""
    if edit:
        return config.epochs * config.edit_steps * math.ceil(n_facts * config.edit_answers / config.batch_size)
    if patch:  # its own loop, with the shared loop's batching over its own rows
        return epochs_run(n_facts, config, True) * math.ceil(n_facts * rows_per_fact(config, True) / config.batch_size)
    if custom_loop:
        return config.fisher_steps * (2 + math.ceil(config.eta_grid / 2))
    return epochs_run(n_facts, config) * math.ceil(n_facts * config.num_batch / config.batch_size)


def unlearn_seconds(n_facts: int, config, n_params: int, device: str, custom_loop: bool = False,
                    inverting: bool = True, n_inverted: int = 4, edit: bool = False, patch: bool = False) -> float:
    """A whole unlearning run (load, probes, inversion, MEMO, training, probes, save), at most."""
    billions = n_params / 1e9
    probe = math.ceil(n_facts * 3 / BATCH)                # a forget probe: the questions and their paraphrases
    epochs = (config.epochs if edit else epochs_run(n_facts, config, True) if patch
              else config.fisher_steps if custom_loop else epochs_run(n_facts, config))
    passes = (probe + 2                                   # forget, retain, everyday before
              + (2 * math.ceil(n_facts * n_inverted / BATCH) if inverting else 0)  # false answers, MEMO
              + (1 if config.anchors or config.neighbours or config.siblings else 0)  # the anchors' own answers
              + probe * (epochs if config.early_stop else 1)       # a probe per epoch (early stopping) or one
              + (math.ceil(n_facts * sampled_per_fact(config) / BATCH) + 1  # its samples,
                 if patch else 0)                                                              # siblings
              + 2)                                        # retain and everyday after
    steps = training_steps(n_facts, config, custom_loop, edit, patch)
    projection = _cost(device, "null_space", billions) if config.null_space and not config.lora else 0.0
    # stop_depth: a teacher-forced pass over the facts per probe, about one generated token's cost each.
    depth = probe * epochs * _cost(device, "token", billions) if config.stop_depth else 0.0
    return (_cost(device, "load", billions) + answer_seconds(passes, n_params, device)
            + steps * _cost(device, "step", billions) + projection + depth)


def zerogpu_duration(seconds: float) -> int:
    """What to ask ZeroGPU for: the estimate with its margin, within the Space's bounds."""
    return int(min(ZEROGPU_MAX_SECONDS, max(ZEROGPU_MIN_SECONDS, math.ceil(seconds * MARGIN))))


def too_long(seconds: float, limit: int = ZEROGPU_MAX_SECONDS) -> str | None:
    """In plain words, why a job cannot run in one call of at most `limit` seconds; None when it fits."""
    if seconds * MARGIN <= limit:
        return None
    return (f"This run would need about {math.ceil(seconds * MARGIN / 60)} minutes of GPU time, and this Space "
            f"can give one run at most {limit // 60} minutes: it would be cut off and lose everything. Forget "
            "fewer facts or lower the epochs, or run MEOW Studio on your own machine (see the README).")
