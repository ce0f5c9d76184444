"""MEOW by a closed-form edit: the selected false answers written straight into a band of
MLP layers (MEMIT's write, AlphaEdit's null-space constraint; meow_app/edit.py), instead
of fine-tuning the whole model on them.

Each round: one target vector per fact optimised at its question's last word token, then
one least-squares change per layer of the band. More rounds (`epochs`) repeat it from the
edited model while the probes say a fact is still answered or still likely (stop_depth).
"""

from __future__ import annotations

import re
import time
import warnings

from .. import edit
from ..errors import Cancelled, MeowError, MeowWarning
from ..subject import subject_of
from ..train import TrainResult
from .base import Method, register


@register
class MeowEdit(Method):
    name = "meow_edit"
    description = ("MEOW as a closed-form edit (MEMIT/AlphaEdit): the false answers written into a band of MLP "
                   "layers, away from what preserved text uses; no fine-tuning, no retain data")
    needs_inverted = True
    custom_loop = True
    projects = True
    one_process = "it writes in closed form"
    # Measured on eval_a and demo_forget (docs/forgetting.md, fourth round): one round of 20 target
    # steps; a second round went no deeper and lost more neighbours.
    defaults = {"epochs": 1, "neighbours": 32, "null_space": 0.99, "stop_depth": 0.5}
    hyperparameters = ("epochs", "edit_layers", "edit_steps", "edit_answers", "edit_contexts", "edit_damping",
                       "null_space", "neighbours")

    def check(self, config) -> None:
        if config.lora or config.shard:
            raise MeowError("meow_edit writes whole weights in closed form: --lora and --shard do not apply to it")

    def run(self, trainer, model) -> TrainResult:
        cfg = trainer.config
        layers = edit_band(model, cfg.edit_layers, "use --method meow")
        facts = [f for f in trainer.forget if f.inverted]
        if not facts:
            raise MeowError("meow_edit found nothing to write (no inverted facts?)")
        skipped = [f.question for f in trainer.forget if not f.inverted]
        if skipped:
            warnings.warn(MeowWarning(f"meow_edit has no false answer for {len(skipped)} of {len(trainer.forget)} "
                                      f"facts and leaves them as they are: {'; '.join(skipped[:3])}"))
        # Only the band's down-projections change: everything else keeps the original's weights.
        written = re.compile(r"(^|\.)layers\.(%s)\.mlp\.down_proj\.weight$" % "|".join(map(str, layers)))
        for name, p in model.named_parameters():
            p.requires_grad_(bool(written.search(name)))
        model.eval()
        start = time.perf_counter()
        result = TrainResult(model=model)
        bases = None
        preserved = trainer.examples(trainer.anchors)
        if cfg.null_space > 0 and trainer.has_preserved(preserved):
            bases = down_proj_bases(trainer.projection(model, preserved, result, keep_start=False))
        rounds = []
        for epoch in range(1, cfg.epochs + 1):
            if trainer.should_stop():
                raise Cancelled("cancelled by the user")
            rounds.append(write(trainer, model, facts, layers, bases))
            losses = rounds[-1]["target_nll"]
            event = {"type": "step", "step": epoch, "epoch": epoch, "total_steps": cfg.epochs, "loss": losses[-1],
                     "target_nll_start": losses[0], "seconds": round(time.perf_counter() - start, 3)}
            result.steps.append(event)
            trainer.on_event(event)
            final = epoch == cfg.epochs
            if trainer.probe_and_check(model, epoch, result, final) and cfg.early_stop and not final:
                result.stopped_early = True
                break
        result.info = {**result.info, "edit": {"layers": layers, "false_answers": rounds[0]["false_answers"],
                                            "facts_without_false_answers": len(skipped),
                                            "key_contexts": rounds[0]["key_contexts"],
                                            "rounds": rounds}}
        return result


def edit_band(model, spec: str, otherwise: str) -> list[int]:
    """The layers written (edit.band), or a MeowError that says what to do `otherwise`."""
    if edit.decoder_layers(model) is None:
        raise MeowError("the closed-form edit writes into Llama-style MLP blocks (model.layers[i].mlp.down_proj) "
                        f"and this model has none: {otherwise}")
    try:
        return edit.band(model, spec)
    except ValueError as e:
        raise MeowError(str(e)) from None


def down_proj_bases(projection) -> dict:
    """A null_space.NullSpace's held directions by layer index, for the band's down-projections."""
    return {int(re.search(r"layers\.(\d+)\.", name).group(1)): b for name, b in projection.bases.items()
            if name.endswith("down_proj")}


def write(trainer, model, facts, layers: list[int], bases: dict | None) -> dict:
    """One round of the edit on `model`: each fact's target vector, then the band's least-squares
    writes (in the null space of `bases`). Returns the round's record for run.json."""
    cfg, tok, device = trainer.config, trainer.tokenizer, trainer.device
    questions, answers = [f.question for f in facts], [list(f.inverted[:cfg.edit_answers]) for f in facts]
    extra = edit.key_contexts([subject_of(q) for q in questions], cfg.edit_contexts)
    training = model.training
    model.eval()  # (the probes and the shared loop leave the model in training mode)
    with trainer.autocast():
        z, positions, losses = edit.targets(model, tok, questions, answers, layers[-1], cfg.edit_steps,
                                            cfg.edit_lr, cfg.edit_clamp, device)
    with trainer.autocast():  # (the precision z was reached in)
        written = edit.spread(model, tok, questions, z, positions, layers, bases, cfg.edit_damping, device, extra)
    model.train(training)
    return {"target_nll": [round(x, 4) for x in losses], "layers": written,
            "false_answers": sum(map(len, answers)), "key_contexts": len(extra)}
