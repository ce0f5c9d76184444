"""Fisher Removal (Gu, Rashid, Sultana, Mehnaz 2024): Newton-style steps that undo what
the forget facts taught the model,

    theta <- theta + eta F^-1 g_forget,

g_forget the gradient of the forget answers' mean NLL (the step goes uphill on it) and
F a damped empirical Fisher of data the model must keep (meow_app/fisher.py). Dividing by
F shrinks the step along directions the kept data relies on, which is why it damages
the rest of the model less than plain gradient ascent.

Raw Newton steps explode, so each step (a) searches eta on a log grid, largest first,
from the trust region (an update norm relative to the weights' norm) down, (b) keeps the
largest eta whose retain NLL stays within `retain_budget` of the original and
that does raise the forget NLL, (c) recomputes
g_forget at the new weights. With `retain_guard` a step size must also leave that share of the
retain facts said by greedy decoding as before, up to their truth (the mean NLL over whole
sentences moves little when one neighbour's answer word flips). It stops when the forget probes
no longer leak, when no eta fits the budget, or after `fisher_steps` steps. With `null_space`
each direction is first projected off the inputs the retain and anchor answers give each layer (null_space.py), so
no step changes what that text computes. fisher_meow.py swaps what the steps go down on
(`objective`) for MEOW's loss.

Curvature data: the retain set when given; else the anchor prompts (the original model's
own answers to general questions, on by default); else (--anchors 0) the original
model's own sampled answers to the forget questions.
"""

from __future__ import annotations

import dataclasses
import random
import time

import torch

from .. import fisher, generation, losses, metrics, probes
from ..batches import collate, to_device
from ..errors import Cancelled, MeowError
from ..facts import Fact
from ..train import TrainResult
from .base import Method, register

MAX_WOODFISHER_BYTES = 4 << 30


def curvature_facts(trainer) -> tuple[list, str]:
    if trainer.retain:
        return list(trainer.retain), "retain"
    if trainer.anchors:
        return list(trainer.anchors), "anchors"
    tok, model = trainer.tokenizer, trainer.original
    prompts = [generation.encode(tok, generation.chat_prompt(tok, f.question)) for f in trainer.forget] * 4
    ids = generation.generate_ids(model, tok, prompts, 32, do_sample=True, generator_seed=trainer.config.seed)
    samples = [Fact(p_fact.question, tok.decode(t, skip_special_tokens=True).strip())
               for p_fact, t in zip(trainer.forget * 4, ids)]
    return [f for f in samples if f.answer], "forget_samples"


@register
class FisherRemoval(Method):
    name = "fisher_removal"
    description = "Second order: Newton steps up the forget loss, preconditioned by the retain data's Fisher"
    custom_loop = True
    uses_retain = True
    projects = True  # (null_space: each step's direction projected off the preserved text's inputs)
    defaults = {"anchors": 32}
    hyperparameters = ("fisher_backend", "damping", "fisher_steps", "trust_region", "eta_grid", "retain_budget",
                       "retain_guard", "guard_greedy", "guard_orthogonal", "fisher_examples", "null_space",
                       "neighbours")

    def run(self, trainer, model) -> TrainResult:
        cfg, tok, device = trainer.config, trainer.tokenizer, trainer.device
        start = time.perf_counter()  # step events carry the time so far, as the shared loop's do
        params = updated_parameters(model, cfg)
        kept, source = curvature_facts(trainer)
        kept_ex = trainer.examples(kept)
        forget_ex = self.forget_examples(trainer)
        sample = random.Random(cfg.seed).sample(kept_ex, min(cfg.fisher_examples, len(kept_ex)))
        pad = tok.pad_token_id
        model.eval()  # no dropout: the same weights give the same losses

        def nll(examples):
            with trainer.autocast():
                return fisher.mean_nll(model, examples, pad, device)

        forget_batch = to_device(collate(forget_ex, pad, self.merge_rows), device)

        def objective() -> float:
            with torch.no_grad(), trainer.autocast():
                return float(self.objective(model, forget_batch, cfg))

        with trainer.autocast():
            curvature = fisher.BACKENDS[cfg.fisher_backend].from_grads(
                fisher.per_example_grads(model, params, sample, pad, device), cfg.damping)
        retain0, forget0 = nll(kept_ex), objective()
        guard = Guard(model, tok, kept, device, trainer.autocast, cfg.guard_greedy, cfg.guard_orthogonal) \
            if cfg.retain_guard > 0 or cfg.guard_orthogonal else None
        theta0 = fisher.flatten(params)
        radius = cfg.trust_region * float(theta0.norm())
        result = TrainResult(model=model)
        # (as the shared loop's: the retain answers and the anchors)
        preserved = trainer.examples(list(trainer.retain or []) + list(trainer.anchors)) if cfg.null_space > 0 else []
        projection = trainer.projection(model, preserved, result, keep_start=False) \
            if cfg.null_space > 0 and trainer.has_preserved(preserved) else None
        info = {"curvature_data": source, "curvature_examples": len(sample), "backend": cfg.fisher_backend,
                "lambda": curvature.damping, "parameters": sum(p.numel() for p in params),
                "retain_nll_before": retain0, f"{self.objective_name}_before": self.reported(forget0), "steps": []}
        if guard is not None:
            info["retain_guarded"] = len(guard.facts if guard.greedy else guard.paths)
        for step in range(1, cfg.fisher_steps + 1):
            if trainer.should_stop():
                raise Cancelled("cancelled by the user")
            with trainer.autocast():
                g, now = fisher.flat_grad(model, params, forget_batch, lambda m, b: self.objective(m, b, cfg))
            # Downhill on the objective, each direction divided by how much the kept data relies on it.
            direction = -curvature.solve(g)
            if projection is not None:
                direction = projected(params, direction, projection)
            if cfg.guard_orthogonal:
                direction = guard.orthogonal(params, direction)
            record = line_search(params, direction, radius, cfg, now, retain0, lambda: nll(kept_ex), objective,
                                 guard.share if guard is not None else None)
            if record is None:
                info["stopped"] = self.stuck + (" and guard" if cfg.retain_guard > 0 else "")
                break
            named = self.named(record)
            info["steps"].append(named)
            event = {"type": "step", "step": step, "epoch": step, "total_steps": cfg.fisher_steps,
                     "loss": record["objective"], **named, "seconds": round(time.perf_counter() - start, 3)}
            result.steps.append(event)
            trainer.on_event(event)
            self.after_step(trainer, model, params, curvature, info)
            if trainer.probe_and_check(model, step, result) and cfg.early_stop:
                result.stopped_early = step < cfg.fisher_steps
                break
        else:
            info.setdefault("stopped", "reached fisher_steps")
        info["retain_nll_after"], info[f"{self.objective_name}_after"] = nll(kept_ex), self.reported(objective())
        info["update_norm_total"] = float((fisher.flatten(params) - theta0).norm())
        if result.last_probe is None:
            trainer.probe_and_check(model, len(info["steps"]), result)
        result.info = {**result.info, **info}  # (null_space: the projection's own record)
        return result

    # What the steps go down on, and its name in run.json: here minus the forget answers' NLL
    # (its steps go uphill on the NLL); fisher_meow swaps it for MEOW's loss.
    objective_name = "forget_nll"
    stuck = "no step size raised the forget loss within the retain budget"
    merge_rows = False

    def forget_examples(self, trainer) -> list:
        return trainer.examples(trainer.forget)

    def objective(self, model, batch, cfg) -> torch.Tensor:
        return -losses.nll(model, batch)

    @staticmethod
    def reported(value: float) -> float:
        """The objective as run.json names it (the forget NLL: minus the objective)."""
        return -value

    def named(self, record: dict) -> dict:
        out = {k: v for k, v in record.items() if k != "objective"}
        return {**out, self.objective_name: self.reported(record["objective"])}

    def after_step(self, trainer, model, params, curvature, info) -> None:
        """Fisher Forgetting adds its noise here."""


def updated_parameters(model, cfg) -> list:
    """The parameters the Newton steps change (with WoodFisher, only --fisher-layers), checked
    against WoodFisher's memory bound."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.fisher_backend == "woodfisher" and cfg.fisher_layers:
        named = [(n, p) for n, p in named if cfg.fisher_layers in n]
    if not named:
        raise MeowError("no parameters left to update: check --train-only / --fisher-layers")
    dim = sum(p.numel() for _, p in named)
    if cfg.fisher_backend == "woodfisher" and cfg.fisher_examples * dim * 4 > MAX_WOODFISHER_BYTES:
        raise MeowError(f"WoodFisher would store {cfg.fisher_examples} x {dim:,} gradients "
                        f"({cfg.fisher_examples * dim * 4 / 2**30:.1f} GiB): restrict it with --fisher-layers "
                        "(e.g. 'layers.2') or --lora, or lower --fisher-examples")
    return [p for _, p in named]


def projected(params, direction, projection) -> torch.Tensor:
    """The direction with each weight's part taken off its layer's preserved inputs (null_space:
    dW (I - U U^T)), so no step along it changes what that text gives the layer."""
    out, offset = [], 0
    for p in params:
        n = p.numel()
        out.append(projection.change(p, direction[offset:offset + n].view_as(p)).reshape(-1))
        offset += n
    return torch.cat(out)


def line_search(params, direction, radius: float, cfg, now: float, retain0: float, retain_nll_now,
                objective_now, kept_now=None) -> dict | None:
    """The largest step along `direction` (from the trust region down, halving) whose retain NLL
    rise stays within the budget, that keeps at least cfg.retain_guard of the guarded answers
    (`kept_now`: their share still kept; None: no guard) and that lowers the objective (`now`
    before the step); the weights are left there. None (weights restored) when no step qualifies."""
    base = fisher.flatten(params)
    for k in range(cfg.eta_grid):
        eta = radius / float(direction.norm().clamp(min=1e-30)) * 2.0 ** -k
        fisher.assign(params, base + eta * direction)
        retain_nll = retain_nll_now()
        if retain_nll - retain0 > cfg.retain_budget:
            continue
        kept = kept_now() if kept_now is not None else None
        if kept is not None and kept < cfg.retain_guard:
            continue
        # A long step can overshoot into a region where the objective rises again.
        after = objective_now()
        if after < now:
            return {"eta": eta, "update_norm": eta * float(direction.norm()), "objective": after,
                    "retain_nll": retain_nll, **({"retain_kept": round(kept, 4)} if kept is not None else {})}
    fisher.assign(params, base)
    return None


def answer_paths(facts) -> list[tuple[str, str]]:
    """(question, answer up to the end of the truth's words) for each fact whose answer states
    its truth (probes.said_truth, whole words). Where every token of it is the model's greedy
    choice (metrics.teacher_forced's argmax hits), greedy decoding says the answer that far,
    truth included: what retain_guard watches (a step can flip the words before the truth as
    well: "The capital of Nepal is" said another way never reaches "Kathmandu")."""
    out = []
    for f in facts:
        # (by its keywords where it has them: its answer may be the model's whole sentence)
        marked = dataclasses.replace(f, answer="") if f.keywords else f
        found = probes.said_truth(f.extra.get("answer_prefix", "") + f.answer, marked, whole_words=True)
        if found is not None:
            out.append((f.question, "".join(found)))
    return out


class Guard:
    """retain_guard: the retain answers the original says, and the share of them a model with
    the current weights still says. By default each answer is teacher-forced up to its truth
    (answer_paths: said where every token is the greedy choice); with `greedy` (guard_greedy)
    each question is answered by greedy decoding and kept where the answer states the truth, the
    evaluation's own test (a reworded start that still says it counts; it costs a decoding pass
    for each step size tried). `orthogonal` (guard_orthogonal) needs the teacher-forced answers'
    rows for their gradients."""

    def __init__(self, model, tokenizer, facts, device, autocast, greedy: bool = False, orthogonal: bool = False):
        self.model, self.tokenizer, self.device, self.autocast = model, tokenizer, device, autocast
        self.pad_id, self.greedy = tokenizer.pad_token_id, greedy
        paths = answer_paths(facts) if orthogonal or not greedy else []
        self.paths = [p for p, k in zip(paths, self._kept(paths)) if k]
        self.watched = [metrics.answer_example(tokenizer, *p) for p in self.paths]  # (guard_orthogonal's rows)
        self.facts = [f for f, k in zip(facts, self._said(facts)) if k] if greedy else []
        if not (self.facts if greedy else self.paths):
            raise MeowError("retain_guard / guard_orthogonal watch the retain facts greedy decoding says, "
                            "and find none (no retain fact, or none whose answer states it)")

    def _kept(self, paths) -> list[bool]:
        with self.autocast():
            return [all(s.hit) for s in metrics.teacher_forced(self.model, self.tokenizer, paths)]

    def _said(self, facts) -> list[bool]:
        with self.autocast():
            rows = probes.probe(self.model, self.tokenizer, facts, paraphrases=False,
                                stop_once_leaked=probes.KINDS)["rows"]
        return [bool(r["leak"]) for r in rows]

    def share(self) -> float:
        if self.greedy:
            return sum(self._said(self.facts)) / len(self.facts)
        return sum(self._kept(self.paths)) / len(self.paths)

    def orthogonal(self, params, direction: torch.Tensor) -> torch.Tensor:
        """guard_orthogonal: the direction less its part in the span of the watched answers' NLL
        gradients at the current weights, d - G^T (G G^T)^-1 G d, so to first order a step along
        it changes none of them (orthogonal gradient descent's constraint). G is kept in bf16
        (k rows of the trained weights' size); the guard checks what the step really does."""
        if not self.watched:  # (guard_greedy: facts decoding says whose own answer is not teacher-forced so)
            return direction
        with self.autocast():
            grads = [g.to(torch.bfloat16) for g in
                     fisher.per_example_grads(self.model, params, self.watched, self.pad_id, self.device)]
        k = len(grads)
        gram = torch.zeros(k, k, dtype=torch.float64)
        along = torch.zeros(k, dtype=torch.float64)
        for i in range(k):
            gi = grads[i].float()
            along[i] = float(gi @ direction)
            for j in range(i + 1):
                gram[i, j] = gram[j, i] = float(gi @ grads[j].float())
        # (a relative ridge: two watched answers can share most of their gradient)
        x = torch.linalg.solve(gram + 1e-6 * gram.diagonal().mean() * torch.eye(k, dtype=gram.dtype), along)
        out = direction.clone()
        for i in range(k):
            out -= float(x[i]) * grads[i].float()
        return out
