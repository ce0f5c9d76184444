"""MEOW through gated neurons: the false answers learned by a few new neurons of one MLP
(meow_app/patch.py) that fire on the forgotten facts and are held shut on preserved text,
instead of by changing weights every input goes through. The truth is pushed down too
(meow_ul's unlikelihood): the gate is what keeps that from reaching other facts.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import time
import warnings
from pathlib import Path

import torch

from .. import generation, losses, neighbours, patch, probes
from ..batches import IGNORE, encode_example, length_grouped
from ..edit import decoder_layers
from ..invert import truth_token_ids
from ..errors import Cancelled, MeowError, MeowWarning, NotApplicable
from ..train import TrainConfig, TrainResult
from .base import register
from .meow import Meow
from .meow_ul import truth_pairs


@register
class MeowPatch(Meow):
    name = "meow_patch"
    description = ("MEOW in a few gated neurons of one MLP (Transformer-Patcher style) that fire on the forgotten "
                   "facts and are held shut on preserved text; the truth pushed down as well")
    custom_loop = True
    one_process = "its few neurons are trained in a loop of its own"
    tofu_defaults = {}  # (not meow's TOFU recipe: its lr is for whole weights, not fresh neurons)
    # Chosen on eval_c (siblings, neurons, margin), eval_a (anchors, margin) and eval_c and eval_d
    # (samples), docs/forgetting.md thirteenth round: the siblings are the negatives that keep a
    # gate shut on the fact's own relation (Sri Lanka for Myanmar), the anchors on general text;
    # the sampled answers open the gates where a sampled answer would say the truth. Its neurons are
    # added, not put in the place of others (twenty-first round: taking any 16 out cost a general
    # question or a neighbour, whichever 16). The hinge holds each preserved row's most open token
    # and the truth is pushed down on its own words only (twenty-seventh round: 108 of 109
    # neighbours kept against 97, and more targets on the sets neither was read from, at two seeds).
    defaults = {"lr": 1e-2, "epochs": 4, "min_steps": 16, "neighbours": 32, "siblings": 8, "anchors": 32,
                "stop_depth": 0.5, "weight_decay": 0.0, "truth_weight": 1.0, "truth_span": True, "patch_neurons": 2,
                "patch_margin": 4.0, "patch_row_hinge": True, "patch_samples": 8, "patch_widen": True}
    hyperparameters = ("epochs", "min_steps", "lr", "num_batch", "neighbours", "siblings", "sibling_shots", "anchors",
                       "patch_layer", "patch_neurons", "patch_margin", "patch_weight", "patch_row_hinge",
                       "patch_samples", "patch_sample_swap", "patch_resample", "patch_about", "patch_open_answer",
                       "patch_truth_floor", "patch_truth_drop", "patch_tied_up", "patch_scale",
                       "patch_scale_truth", "patch_widen", "truth_weight", "truth_span", "stop_depth")

    falls_back_to = "meow"
    # Its own settings mean nothing to meow (the rest, lr included, are the user's for the run).
    not_carried = ("patch_layer", "patch_neurons", "patch_margin", "patch_weight", "patch_row_hinge", "patch_samples",
                   "patch_sample_swap", "patch_resample", "patch_about", "patch_open_answer", "patch_truth_floor",
                   "patch_truth_drop", "patch_tied_up", "patch_scale", "patch_scale_truth", "patch_widen")

    def check(self, config) -> None:
        if config.lora or config.shard:
            raise NotApplicable("meow_patch trains a few neurons of its own: --lora and --shard do not apply to it")
        if not (config.neighbours or config.siblings or config.anchors):
            raise NotApplicable("meow_patch holds its neurons shut on preserved text, and --neighbours, --siblings "
                                "and --anchors 0 leave it none")
        if config.patch_scale_truth and config.patch_scale == 1:
            raise MeowError("patch_scale_truth says which part of the value patch_scale multiplies, and patch_scale "
                            "1 multiplies nothing: set --patch-scale too (1.5, say)")
        if config.patch_truth_drop and config.truth_weight <= 0:
            raise MeowError("patch_truth_drop fits its neurons where the truth is said in the rows that push it "
                            "down, and truth_weight 0 leaves none")
        # Settings of the shared fine-tuning loop, which it does not run: as the default it gives
        # way to meow, which uses them; asked for by name it says so rather than drop them.
        base = TrainConfig()
        loop_only = [name for name in SHARED_LOOP_ONLY if getattr(config, name) != getattr(base, name)]
        if loop_only:
            flags = ", ".join("--" + n.replace("_", "-") for n in loop_only)
            raise NotApplicable(f"{flags} set{'s' if len(loop_only) == 1 else ''} the shared fine-tuning loop, "
                                "which meow_patch does not run")

    def check_model(self, model, config=None, facts: int = 0) -> None:
        blocks = decoder_layers(model)
        layer = patched_layer(len(blocks), config.patch_layer if config else self.defaults.get("patch_layer", -3)) \
            if blocks else 0
        mlp = getattr(blocks[layer], "mlp", None) if blocks else None  # (the patched one: MoE models mix kinds)
        linear = (isinstance(getattr(mlp, n, None), torch.nn.Linear) and getattr(mlp, n).bias is None
                  for n in ("gate_proj", "up_proj", "down_proj"))
        if mlp is None or not all(linear) or not hasattr(mlp, "act_fn"):
            raise NotApplicable(f"meow_patch adds neurons to a gated MLP block without biases (gate_proj, up_proj, "
                                f"down_proj, act_fn: Llama, Qwen, Mistral, Gemma) and this model's layer {layer} "
                                "has none: use --method meow")
        neurons = facts * (config.patch_neurons if config else self.defaults["patch_neurons"])
        neurons += facts if config and config.patch_truth_drop else 0
        width = mlp.gate_proj.out_features
        if neurons > width // 4:
            raise NotApplicable(f"meow_patch would train {neurons} neurons beside layer {layer}'s {width} (at most "
                                f"a quarter): forget fewer facts at once, or lower patch_neurons")

    def check_anchors(self, anchors) -> None:
        if not anchors:
            raise NotApplicable("meow_patch holds its neurons shut on preserved text and found none (no neighbour, "
                                "sibling or anchor answer: set --neighbours, --siblings or --anchors above 0; an "
                                "empty answer, or one that names a fact being forgotten, is left out)")

    def unchanged_below(self, model, config) -> int:
        blocks = decoder_layers(model)
        return patched_layer(len(blocks), config.patch_layer) if blocks else 0

    def forget_pairs(self, facts, config):
        truth = truth_pairs(facts, config) if config.truth_weight > 0 else []
        sampled = [(f.question, said, lead, True) for f in facts if f.inverted
                   for lead, said in f.extra.get("sampled_truths", [])] if config.truth_weight > 0 else []
        sampled += [(asked, said, lead, True) for f in facts if f.inverted
                    for asked, lead, said in f.extra.get("about_truths", [])] if config.truth_weight > 0 else []
        swapped = swapped_pairs(facts) if config.patch_sample_swap and config.truth_weight > 0 else []
        return super().forget_pairs(facts, config) + truth + sampled + swapped

    def forget_loss(self, model, forget, reference, config):
        # (the truth floor reads every answer position's logits; without it, the labelled ones alone are made)
        with_floor = config.patch_truth_floor and "truth_ids" in forget
        logits_labels = losses.answer_logits(model, forget) if with_floor else None
        loss, nll, unlikely = losses.nll_or_unlikelihood(model, forget, config.truth_weight, logits_labels)
        parts = {"forget_nll": nll, "truth_unlikelihood": unlikely}
        if with_floor:
            floor = losses.truth_floor(*logits_labels, forget["truth_ids"], config.patch_truth_floor)
            loss, parts["truth_floor"] = loss + floor, floor.item()
        return loss, parts

    def run(self, trainer, model) -> TrainResult:
        cfg, tok, device = trainer.config, trainer.tokenizer, trainer.device
        facts = [f for f in trainer.forget if f.inverted]
        if not facts:
            raise MeowError("meow_patch found nothing to train on (no inverted facts?)")
        self.check_model(model, cfg, len(facts))
        blocks = decoder_layers(model)
        layer = patched_layer(len(blocks), cfg.patch_layer)
        self.check_anchors(trainer.anchors)
        preserved_ex = trainer.examples(trainer.anchors)
        for p in model.parameters():
            p.requires_grad_(False)
        model.train()
        mlp = blocks[layer].mlp
        start = time.perf_counter()
        # The facts as the user gave them, by question: their keywords mark the truth (`facts`
        # may carry the model's own sentence as the answer).
        given = {f.question: f for f in trainer.probe_facts}
        if (cfg.patch_samples or cfg.patch_about) and cfg.truth_weight > 0:
            trainer.on_event({"type": "task", "text": "sampling the original model's answers, to find where each "
                                                      "fact's truth is said"})
            facts = with_sampled_truths(trainer.original, tok, facts, cfg.patch_samples, cfg.seed, given,
                                        about=cfg.patch_about)
        pairs = self.forget_pairs(facts, cfg)
        forget_ex = [encode_example(tok, *pair) for pair in pairs]
        distinct = list({tuple(e.ids): e for e in forget_ex}.values())
        trainer.on_event({"type": "task", "text": "reading the preserved text and the answers through the model "
                                                  "once (the steps reuse it)"})
        with trainer.autocast():
            held, kept = preserved_inputs(trainer, model, layer, preserved_ex)
            below, at_mlp = patch.inputs_at(model, [blocks[layer], mlp], distinct, tok.pad_token_id, device)
            # Steps run only the layers from the patch's up, on what the frozen ones gave once.
            tail = patch.Tail(model, layer, distinct, below)
            if not tail.agrees(distinct[0], tok.pad_token_id):
                tail = model
        # Each fact's neurons open where its answers (the false ones and the truth) are said.
        pair_question = {tuple(e.ids): pair[0] for e, pair in zip(forget_ex, pairs)}
        question = {tuple(e.ids): q for e, q in zip(forget_ex, owners(facts, pairs))}
        asked = [question[tuple(e.ids)] for e in distinct]
        starts = answer_starts(tok, distinct, [pair_question[tuple(e.ids)] for e in distinct]) \
            if cfg.patch_open_answer else None
        positives = fact_rows(facts, distinct, asked, at_mlp, starts)
        # (patch_truth_floor: each row's fact's truth tokens, as the user's keywords spell them)
        truth = {f.question: torch.tensor(truth_token_ids(tok, given.get(f.question, f)), dtype=torch.long)
                 for f in facts} if cfg.patch_truth_floor else {}
        truth_of = {ids: truth[q] for ids, q in question.items()} if truth else {}
        wanted = len(facts) * (cfg.patch_neurons + (1 if cfg.patch_truth_drop else 0))
        slots = patch.widen(model, blocks, wanted) if cfg.patch_widen else None
        widened = slots is not None
        if cfg.patch_widen and not widened:
            warnings.warn(MeowWarning("patch_widen: this model's MLPs are not all plain gated ones of one width, so "
                                      "the neurons take the place of the patched layer's least used ones instead"))
        slots = slots if widened else patch.least_used(mlp, held, wanted)
        slots, truth_slots = slots[:len(facts) * cfg.patch_neurons], slots[len(facts) * cfg.patch_neurons:]
        positives = [p for p in positives for _ in range(cfg.patch_neurons)]
        held_rows = patch.row_of([len(e.ids) for e in preserved_ex], held.device) if cfg.patch_row_hinge else None
        stoppers, stopper_info = None, None
        if truth_slots:  # (before the seed: the gates' start is the same with it or without it)
            stoppers, stopper_info = truth_stoppers(tail, mlp, truth_slots, facts, given, tok, distinct, asked,
                                                    at_mlp, held, cfg, held_rows)
        # (patch_scale_truth: each neuron's fact's truth, as its logit direction)
        truth_dirs = torch.stack([patch.logit_direction(model, patch.first_token_ids(
            tok, list(given.get(f.question, f).keywords) or [given.get(f.question, f).answer]))
            for f in facts for _ in range(cfg.patch_neurons)]) if cfg.patch_scale_truth else None
        torch.manual_seed(cfg.seed)
        gates = patch.Patch(mlp, slots, positives, held, cfg.patch_margin,  # (the stoppers' hook is off here)
                            rows=held_rows, tied=cfg.patch_tied_up)
        params = list(gates.parameters())
        optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        rng = random.Random(cfg.seed)
        steps_per_epoch = math.ceil(len(forget_ex) / cfg.batch_size)
        epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
        resample_after = max(1, epochs // 2) if cfg.patch_resample and cfg.truth_weight > 0 else 0
        result = TrainResult(model=model)
        step = 0
        try:
            for epoch in range(1, epochs + 1):
                for batch in length_grouped(forget_ex, cfg.batch_size, rng):
                    if trainer.should_stop():
                        raise Cancelled("cancelled by the user")
                    optimizer.zero_grad(set_to_none=True)
                    with trainer.autocast():
                        inputs = trainer._batch(batch, merge=True)
                        if tail is not model:  # (the tail takes ids to look its inputs up, not shared prefixes)
                            inputs.pop("middle_ids")
                        if truth_of:
                            inputs["truth_ids"] = row_truths(inputs, truth_of)
                        loss, parts = self.forget_loss(tail, inputs, None, cfg)
                    hinge = gates.gate_hinge(held, cfg.patch_margin, held_rows) + gates.open_hinge(cfg.patch_margin)
                    loss = loss + cfg.patch_weight * hinge
                    trainer._backward(loss, step)
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    step += 1
                    event = {"type": "step", "step": step, "epoch": epoch, "total_steps": steps_per_epoch * epochs,
                             "loss": loss.item(), "grad_norm": float(grad_norm), **parts, "gate_hinge": hinge.item(),
                             "seconds": round(time.perf_counter() - start, 3)}
                    result.steps.append(event)
                    trainer.on_event(event)
                final = epoch == epochs
                if epoch == resample_after and not final:  # (and no early stop before its rows are trained)
                    added = self._resample(trainer, model, facts, gates, tail, layer, epoch, given)
                    truth_of.update({tuple(e.ids): truth[q] for e, q in added} if truth_of else {})
                    added = [e for e, _ in added]
                    forget_ex = forget_ex + added
                    result.info["resampled_truths"] = len(added)
                    steps_per_epoch = math.ceil(len(forget_ex) / cfg.batch_size)
                if cfg.early_stop or final:
                    if stoppers is not None:  # (a probe is of the model as it would be returned)
                        stoppers.attach()
                    trained = gates.down.detach().clone() if cfg.patch_scale != 1 else None
                    gates.scale(cfg.patch_scale, truth_dirs)
                    if trainer.probe_and_check(model, epoch, result, final,
                                               deferred=final and trainer.defer_final_probe) and cfg.early_stop \
                            and epoch >= cfg.min_epochs and epoch > resample_after and not final:
                        result.stopped_early = True
                        break
                    if not final:
                        if trained is not None:  # (the training goes on from its own value, exactly)
                            with torch.no_grad():
                                gates.down.copy_(trained)
                        if stoppers is not None:
                            stoppers.remove()
            result.info["patch"] = {"layer": layer, "neurons": len(slots), "slots": slots, "added": widened,
                                    "preserved_tokens": int(held.shape[0]), "preserved_rows_kept": kept,
                                    "frozen_layers_cached": tail is not model,
                                    "open_on_preserved": round(gates.firing(held), 5),
                                    "open_on_own_fact_answers": round(gates.firing_own(), 3)}
            if stopper_info is not None:
                result.info["patch"]["truth_stoppers"] = stopper_info
            if stoppers is not None:  # (the last probe put its hook on; write needs none)
                stopper_info["open_on_preserved"] = round(stoppers.firing(held), 5)
                stoppers.write()
            gates.write()
        finally:
            gates.remove()
            if stoppers is not None:
                stoppers.remove()
        return result

    def _resample(self, trainer, model, facts, gates, tail, layer: int, epoch: int, given: dict) -> list:
        """patch_resample: answers sampled from the patched model that still state the truth,
        as new rows that push it down, each fact's gates opened where they say it; returns
        (row, its fact's question) pairs. given: the facts as the user gave them, by question."""
        cfg, tok = trainer.config, trainer.tokenizer
        again = with_sampled_truths(model, tok, facts, cfg.patch_resample, cfg.seed + epoch, given)
        pairs = [(f.question, said, lead, True) for f in again for lead, said in f.extra["sampled_truths"]]
        asked = {}  # the new rows (one per distinct text), each with its fact's question
        for p in pairs:
            e = encode_example(tok, *p)
            asked.setdefault(tuple(e.ids), (e, p[0]))
        if not asked:
            return []
        new = [e for e, _ in asked.values()]
        blocks = decoder_layers(model)
        with trainer.autocast():
            below, at_mlp = patch.inputs_at(model, [blocks[layer], blocks[layer].mlp], new, tok.pad_token_id,
                                            trainer.device)
        if tail is not model:
            tail.states.update({tuple(e.ids): x for e, x in zip(new, below)})
        questions = [q for _, q in asked.values()]
        starts = answer_starts(tok, new, questions) if cfg.patch_open_answer else None
        for i, rows in enumerate(fact_rows(facts, new, questions, at_mlp, starts)):
            for k in range(i * cfg.patch_neurons, (i + 1) * cfg.patch_neurons):
                gates.positives[k] = torch.cat([gates.positives[k], rows])
        return list(asked.values())


def preserved_inputs(trainer, model, layer: int, examples) -> tuple[torch.Tensor, int]:
    """(the patched layer's MLP input at every token of the preserved rows, as patch.mlp_inputs
    gives it; how many rows went through trainer.cache). A shipped anchor's rows (a general
    prompt or a neighbour question with the original's answer: extra["shipped"]) are the same
    every run on the same model, so where the trainer has the original's cache they are read once
    and kept; the others (siblings, made from the user's questions) are read every run and never
    kept. `model`: the trainer's copy of the original, unchanged yet; examples:
    trainer.examples(trainer.anchors). Call it under trainer.autocast()."""
    tok, device = trainer.tokenizer, trainer.device
    mlp = decoder_layers(model)[layer].mlp
    assert len(examples) == len(trainer.anchors)

    def read(exs) -> list[torch.Tensor]:
        return patch.inputs_at(model, [mlp], exs, tok.pad_token_id, device)[0] if exs else []

    cache = trainer.cache
    shipped = [i for i, f in enumerate(trainer.anchors) if f.extra.get("shipped")] \
        if cache is not None and cache.model is trainer.original else []
    if not shipped:
        return torch.cat(read(examples)), 0
    # The shipped rows the run left out are kept too (AnswerCache.left_out), their inputs unused.
    left_out = [encode_example(tok, q, a) for q, a in cache.left_out]
    by_ids = {tuple(e.ids): e for e in [examples[i] for i in shipped] + left_out}
    # (autocast changes the floats: its runs keep theirs apart)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    precision = "autocast" if torch.is_autocast_enabled(device.type) else dtype
    kept = cache.states(f"patch_inputs.{layer}.{precision}", [examples[i].ids for i in shipped] +
                        [e.ids for e in left_out], lambda rows: read([by_ids[tuple(r)] for r in rows]),
                        Path(patch.__file__).read_bytes())
    at = mlp.gate_proj.weight.device  # (where the layer's own inputs are: a model spread over devices)
    others = sorted(set(range(len(examples))) - set(shipped))
    rows = dict(zip(shipped, (x.to(at) for x in kept))) | dict(zip(others, read([examples[i] for i in others])))
    return torch.cat([rows[i] for i in range(len(examples))]), len(shipped)


def false_from_truth(fact, k: int) -> str:
    """The fact's k-th false answer (cycling) as said from where the truth begins in the model's
    own sentence: " Pokhara." for "The capital of Nepal is Pokhara." after the lead-in "The
    capital of Nepal is" (extra["answer_prefix"], own_answers). '' where the false answer does
    not carry that lead-in (nothing to say after another sentence's start)."""
    lead = fact.extra.get("answer_prefix", "")
    false = fact.inverted[k % len(fact.inverted)]
    return false[len(lead):] if lead and false.startswith(lead) and false[len(lead):].strip() else ""


def swapped_pairs(facts) -> list[tuple]:
    """patch_sample_swap: for each answer sampled from the original that states the truth
    (extra["sampled_truths"]: the answer up to it, the truth as said), a row that learns a false
    answer in the truth's place (false_from_truth, cycling through the fact's false answers)."""
    out = []
    for f in facts:
        own = f.extra.get("answer_prefix", "").strip()
        for k, (lead, _) in enumerate(f.extra.get("sampled_truths", []) if f.inverted else []):
            # (where the sample begins as the model's own sentence does, its false answers are learned there already)
            if lead.strip() != own and (false := false_from_truth(f, k)):
                out.append((f.question, false if lead else false.lstrip(), lead))
    return out


def truth_positions(example, words: list[str], tokenizer) -> list[int]:
    """The positions of a row whose next token begins one of the words (case aside, at the start
    of a word: not "rome" in "Chrome"): where the truth is about to be said in an answer that
    states it."""
    start = next((i for i, t in enumerate(example.labels) if t != IGNORE), len(example.labels))
    answer = example.ids[start:]
    lowered = [w.lower().strip() for w in words if w.strip()]
    out = []
    for k in range(len(answer)):
        said = tokenizer.decode(answer[k:], skip_special_tokens=True)
        rest, head = said.lstrip().lower(), tokenizer.decode(answer[k:k + 1], skip_special_tokens=True).strip()
        before = tokenizer.decode(answer[:k], skip_special_tokens=True) if said == said.lstrip() else ""
        if head and any(rest.startswith(w) for w in lowered) and not (before and before[-1].isalnum()):
            out.append(start + k - 1)
    return out


# Sharper than fitted: act(z) * z is 0.29 at z = -4, where the fit leaves preserved text, and 0.02 at -8.
STOPPER_SHARPEN = 2.0
# A stopper that needs more than this scale lowers its truth too little at scale 1 to trust the
# linear estimate, and would push hard wherever its gate leaks: it gets no value instead.
STOPPER_MAX_SCALE = 100.0


def truth_stoppers(tail, mlp, slots, facts, given, tokenizer, examples, asked, inputs, held, cfg, held_rows=None):
    """patch_truth_drop: (a patch.Patch of one neuron per fact that has such positions, its hook
    off; what to report). Each neuron's gate is fitted to open where the fact's truth is about to
    be said in the rows that state it (the truth and the answers sampled from the original) and to
    stay shut on the preserved rows `held`; its up vector is its gate (an activation near 0 where
    the gate is shut) and its down vector minus the truth's first tokens' logit direction, scaled
    so that their log-probability at those positions falls by cfg.patch_truth_drop nats (linear
    from the fall at scale 1). The fact's trained neurons learn a value that works in the contexts
    they were trained in (docs/forgetting.md, nineteenth round); this one acts the same in any
    context its gate opens on, so its gate must be the narrower. None where no fact has one.
    held_rows (patch_row_hinge): each held token's row, so its gates are held as the facts' are."""
    rows, at_of, ids_of, counts = [], [], [], []
    for f in facts:
        truth = given.get(f.question, f)
        words = list(truth.keywords) or [truth.answer]
        mine = [(e, x) for e, q, x in zip(examples, asked, inputs) if q == f.question and e.unlikely]
        at = [truth_positions(e, words, tokenizer) for e, _ in mine]
        found = [x[ps] for (_, x), ps in zip(mine, at) if ps]
        counts.append(sum(len(r) for r in found))
        if found:  # (a fact without one leaves its slot as it was: the original neuron, or an added zero one)
            rows.append(torch.cat(found))
            at_of.append([(e, ps) for (e, _), ps in zip(mine, at) if ps])
            ids_of.append(sorted(set(patch.first_token_ids(tokenizer, words))
                                 | {e.ids[p + 1] for (e, _), ps in zip(mine, at) for p in ps}))
    if not rows:
        return None, {"positions": counts}
    stoppers = patch.Patch(mlp, slots[:len(rows)], rows, held, cfg.patch_margin, rows=held_rows)
    try:
        directions = torch.stack([patch.logit_direction(tail.model if isinstance(tail, patch.Tail) else tail, ids)
                                  for ids in ids_of])

        def fall(scale: float) -> list[float]:
            with torch.no_grad():
                stoppers.down.copy_(-scale * directions.T.to(stoppers.down))
            return [float(torch.tensor(patch.mean_logp(tail, [e for e, _ in pairs], [ps for _, ps in pairs],
                                                       [ids] * len(pairs))).mean())
                    for pairs, ids in zip(at_of, ids_of)]

        with torch.no_grad():
            stoppers.gate.mul_(STOPPER_SHARPEN)
            stoppers.up.copy_(stoppers.gate)
        for p in stoppers.parameters():
            p.requires_grad_(False)
        base, one = fall(0.0), fall(1.0)
        scales = [cfg.patch_truth_drop / (b - o) if b - o > 1e-3 else 0.0 for b, o in zip(base, one)]
        scales = [round(x, 3) if x <= STOPPER_MAX_SCALE else 0.0 for x in scales]
        with torch.no_grad():
            stoppers.down.copy_(-directions.T.to(stoppers.down) * torch.tensor(scales).to(stoppers.down))
    finally:
        # Off while the fact's neurons train: with the truth already down where they are
        # trained, they learned less of it (eval_g, docs/forgetting.md twentieth round).
        stoppers.remove()
    return stoppers, {"slots": stoppers.slots, "positions": counts, "scales": scales}


def row_truths(inputs, truth_of: dict) -> list[torch.Tensor]:
    """Each batch row's truth tokens (truth_of: by the row's token ids; none for a row not in it)."""
    ids, mask = inputs["input_ids"].tolist(), inputs["attention_mask"].bool().tolist()
    none = torch.zeros(0, dtype=torch.long)
    return [truth_of.get(tuple(t for t, k in zip(r, m) if k), none) for r, m in zip(ids, mask)]


def patched_layer(layers: int, patch_layer: int) -> int:
    """patch_layer as an index (negative: from the end; the first where the model is shallower)."""
    if patch_layer >= layers:
        raise MeowError(f"patch_layer must be below {layers} (this model's layers), got {patch_layer}")
    return max(0, layers + patch_layer) if patch_layer < 0 else patch_layer


# TrainConfig fields only the shared fine-tuning loop reads (meow and the other fine-tuning methods).
SHARED_LOOP_ONLY = ("null_space", "null_space_unit", "null_space_outliers", "fisher_precondition", "edit_first",
                    "subject_only", "train_only", "anchor_weight")


def owners(facts, pairs) -> list[str]:
    """The question of the fact each forget pair is for: its own, but an answer about the
    subject (patch_about) is the fact's whose truth it states, found by its text (two facts
    about Turkey share "What is Turkey known for?")."""
    about = {(asked, said, lead): f.question for f in facts for asked, lead, said in f.extra.get("about_truths", [])}
    return [about.get(tuple(p[:3]), p[0]) for p in pairs]


def fact_rows(facts, examples, asked: list[str], inputs: list[torch.Tensor],
              starts: list[int] | None = None) -> list[torch.Tensor]:
    """Each fact's answer rows (patch.answer_rows) from the examples asked its question (`asked`:
    each example's question): where that fact's neurons open. Empty for a fact with none.
    starts: per example, where its answer begins (patch_open_answer)."""
    out = []
    starts = starts or [None] * len(examples)
    for f in facts:
        mine = [(e, x, s) for e, q, x, s in zip(examples, asked, inputs, starts) if q == f.question]
        if not mine:
            out.append(inputs[0].new_zeros(0, inputs[0].shape[-1]))
            continue
        es, xs, ss = zip(*mine)
        out.append(patch.answer_rows(es, xs, None if ss[0] is None else list(ss)))
    return out


def answer_starts(tokenizer, examples, asked: list[str]) -> list[int]:
    """Where each example's answer begins: after its question's chat prompt, before any lead-in."""
    lengths = {q: len(generation.encode(tokenizer, generation.chat_prompt(tokenizer, q))) for q in set(asked)}
    return [min(lengths[q], next(i for i, t in enumerate(e.labels) if t != IGNORE)) for e, q in zip(examples, asked)]


def about_question(question: str) -> str:
    """The fact's subject asked about outside its question: "What is Serena Williams known
    for?" (for "What is Serena Williams's sport?" too); '' where no subject is found."""
    frame, subject, rest = neighbours.question_parts(question)
    said = neighbours.bare_subject(subject)
    unquoted = subject.strip().strip(neighbours.QUOTE_CHARS + " ")
    if said and rest == "" and re.search(rf"(?:'s|’s)[{neighbours.QUOTE_CHARS}]*$", subject.strip()):
        said = unquoted  # a name that ends so ("McDonald's"), not a possessive
    article = unquoted.split()[0] if unquoted.split() else ""
    before = frame.split()[-1] if frame.split() else ""
    if said and article.lower() in neighbours.ARTICLES and not said.startswith(article):
        said = f"{article} {said}"  # kept as asked: "The Godfather", "the world"
    elif said and before.lower() in neighbours.ARTICLES:  # "Who painted the Mona Lisa?": the Mona Lisa
        said = f"{before} {said}"  # ("... does a dermatologist treat?": a dermatologist)
    return f"What is {said} known for?" if said else ""


def with_sampled_truths(model, tokenizer, facts, samples: int, seed: int, given: dict | None = None,
                        about: int = 0) -> list:
    """Copies of the facts whose extra["sampled_truths"] holds, for each of `samples` answers
    sampled from the model at T=1 that states the truth, (the answer up to it, the truth as
    said there): " Croatian" after "The official language of Croatia is the". `given`: the
    facts as the user gave them, by question, whose keywords or short answer mark the truth.
    about: as many answers to about_question, kept in extra["about_truths"] as (that question,
    the answer up to the truth, the truth)."""
    asked = [[f.question] * samples + ([about_question(f.question)] * about if about_question(f.question) else [])
             for f in facts]
    prompts = [generation.encode(tokenizer, generation.chat_prompt(tokenizer, q)) for qs in asked for q in qs]
    truths = [(given or {}).get(f.question, f) for f, qs in zip(facts, asked) for _ in qs]

    def said(i, ids) -> bool:  # a row ends once it has said the truth: only the text up to it is used
        return probes.first_mention(tokenizer.decode(ids, skip_special_tokens=True), truths[i]) >= 0

    was_training = model.training
    model.eval()
    try:  # (its own seed: not the evaluation's samples, which are drawn from the unlearned model anyway)
        ids = generation.generate_ids(model, tokenizer, prompts, generation.MAX_NEW_TOKENS, generation.ANSWER_BATCH,
                                      do_sample=True, temperature=1.0, generator_seed=seed + 7919, stop=said)
    finally:
        model.train(was_training)
    out, at_row = [], 0
    for f, qs in zip(facts, asked):
        truth = truths[at_row]
        found, found_about = [], []
        for q, t in zip(qs, ids[at_row:at_row + len(qs)]):
            text = tokenizer.decode(t, skip_special_tokens=True)
            pair = probes.said_truth(text, truth)
            if pair is None:
                continue
            if q == f.question and pair not in found:
                found.append(pair)
            elif q != f.question and (q, *pair) not in found_about:
                found_about.append((q, *pair))
        at_row += len(qs)
        out.append(dataclasses.replace(f, extra={**f.extra, "sampled_truths": found, "about_truths": found_about}))
    return out
