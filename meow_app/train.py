"""The training loop every method shares: one class, its settings one dataclass.

A method (methods/*.py) says what to train on and what the loss is; this loop does the
rest: copy the original model (never touched), optional LoRA, seeded length-grouped
batches, AdamW, gradient clipping, progress events, cancellation between steps, and
early stopping once the forget probes no longer produce the true answer.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import re
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace

import torch

from . import edit, losses, probes
from .batches import IGNORE, collate, encode_example, length_grouped, to_device
from .distributed import SINGLE, Processes, check_method
from .edit import KEY_CONTEXTS
from .errors import Cancelled, MeowError, MeowWarning
from .fisher import StepScale
from .models import cpu_has_bf16_matmul
from .null_space import NullSpace, unheld_parameters
from .sophia import Sophia
from .subject import SubjectKeys, key_tokens, subject_first, subject_of

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _setting(default, help: str, obvious: bool = False):
    """A TrainConfig field whose `help` is its one description (read by the CLI, as TRL's configs do).
    `obvious`: the option's name says it (--lr), so the CLI's help shows only the default."""
    return field(default=default, metadata={"help": help, "obvious": obvious})


@dataclass
class TrainConfig:
    """Every training setting, each documented once in its `help` (the CLI's option help
    is built from it, followed by the chosen method's default)."""

    epochs: int = _setting(6, "passes over the forget set: an upper bound (early stopping usually ends sooner; "
                              "min_steps can add epochs on a small forget set)")
    min_steps: int = _setting(0, "at least this many optimiser steps may run (more epochs on a small forget set): "
                                 "a step budget that does not shrink with the number of facts, so a learning rate "
                                 "tuned on 8 facts also forgets 1-3 (0 = off: epochs alone decide)")
    lr: float = _setting(5e-5, "learning rate", obvious=True)
    batch_size: int = _setting(16, "forget examples per optimiser step", obvious=True)
    weight_decay: float = _setting(0.01, "weight decay of the optimiser (AdamW or Sophia)", obvious=True)
    num_batch: int = _setting(8, "copies of each fact per epoch (MEOW: cycling its inverted answers)")
    lora: bool = _setting(False, "train LoRA adapters (merged on save) instead of the weights themselves")
    lora_r: int = _setting(16, "LoRA rank", obvious=True)
    lora_alpha: int = _setting(32, "LoRA alpha (the adapters' scale is alpha / r)", obvious=True)
    train_embeddings: bool = _setting(False, "full fine-tuning: also train the (tied) embeddings / output layer "
                                             "and the norms; frozen by default, since moving them shifts every "
                                             "answer's token probabilities at once, not just the fact's")
    train_only: str = _setting("mlp", "full fine-tuning: train only parameters whose name matches this regular "
                                      "expression, e.g. 'layers\\.(1[0-9])\\.mlp' ('' = all layers). Only the MLP "
                                      "blocks (where transformers store most factual associations) by default: on the "
                                      "embedded model this kept ~5-25 points more unrelated facts than training every "
                                      "layer, at the same forgetting (docs/forgetting.md)")
    retain_weight: float = _setting(1.0, "weight of the retain NLL (gd, npo, idk, sophia_*, meow_grad_diff)")
    kl_weight: float = _setting(1.0, "weight of the retain KL (kl, meow_kl)")
    beta: float = _setting(0.1, "NPO inverse temperature")
    rho: float = _setting(0.04, "Sophia (SOUL) clipping threshold: step -lr * sign(m) * min(|m| / (rho * h + eps), "
                                "1), h an EMA of a sampled-label (Gauss-Newton-Bartlett) diagonal curvature estimate")
    beta1: float = _setting(0.9, "Sophia: EMA rate of the gradient m", obvious=True)
    beta2: float = _setting(0.95, "Sophia: EMA rate of the curvature h", obvious=True)
    hessian_every: int = _setting(2, "Sophia: steps between curvature refreshes (one extra forward/backward each)")
    fisher_backend: str = _setting("diag", "Fisher curvature: diag or woodfisher (low rank + damping). Fisher Removal "
                                           "/ Forgetting (methods/fisher_removal.py) take Newton-style steps "
                                           "theta + eta F^-1 g_forget, F a damped empirical Fisher of the retain data")
    fisher_examples: int = _setting(32, "per-example gradients the Fisher is built from (m)")
    fisher_layers: str = _setting("", "woodfisher: only parameters whose name contains this (e.g. 'layers.2')")
    damping: float = _setting(0.01, "Fisher damping lambda, relative to the Fisher's mean diagonal")
    fisher_steps: int = _setting(10, "Newton steps at most (g_forget recomputed each time)")
    trust_region: float = _setting(1e-3, "largest update norm per Newton step, relative to the trained weights' norm")
    eta_grid: int = _setting(4, "step sizes tried per Newton step: trust_region * 2^-k, k < eta_grid")
    retain_budget: float = _setting(0.3, "largest allowed rise of the retain NLL (nats per token) for Fisher methods")
    retain_guard: float = _setting(0.0, "Fisher methods: a step size is kept only if at least this share of the retain "
                                        "facts greedy decoding said still are, up to their truth (every token of "
                                        "the model's own answer to there still its greedy choice; 0 = off)")
    guard_greedy: bool = _setting(False, "Fisher methods: retain_guard counts a retain fact kept where greedy decoding "
                                         "still states its truth (the evaluation's test, decoded for each step size "
                                         "tried) instead of where its own answer is still every token's greedy choice")
    guard_orthogonal: bool = _setting(False, "Fisher methods: each Newton direction is also made orthogonal to the NLL "
                                             "gradients of the retain answers greedy decoding says (retain_guard's), "
                                             "so to first order no step changes them")
    noise_std: float = _setting(0.0, "Fisher Forgetting: per-coordinate noise at the mean curvature")
    noise_clamp: float = _setting(3.0, "Fisher Forgetting: the noise is clamped at this many noise_std", obvious=True)
    edit_layers: str = _setting("", "meow_edit: the layers whose MLP down-projection the false answers are written "
                                    "into, 'A-B' or 'A,B,...' ('' = the early-middle band MEMIT edits, scaled to "
                                    "the model's depth: 4-8 of the embedded model's 30)")
    edit_steps: int = _setting(20, "meow_edit: optimisation steps of each fact's target vector (the weights fixed)")
    edit_answers: int = _setting(1, "meow_edit: false answers per fact its target vector is optimised for (the first "
                                    "selected ones; each costs a row in every step)")
    edit_lr: float = _setting(2.0, "meow_edit: learning rate of the target vectors (Adam)", obvious=True)
    edit_clamp: float = _setting(0.75, "meow_edit: a target vector's largest norm, relative to the residual stream's "
                                       "norm at its token")
    edit_contexts: int = _setting(0, "meow_edit: other messages ending with each fact's subject ('Ukraine', 'Tell "
                                     "me about Ukraine', ...; up to 4) whose keys are written with the fact's change "
                                     "too, so it is not tied to the question's wording (0 = the question alone)")
    edit_damping: float = _setting(0.01, "meow_edit: lambda of the least-squares write, relative to the keys' mean "
                                         "squared norm: larger = smaller weight changes, the targets met less")
    edit_first: bool = _setting(False, "fine-tuning methods: before the first step, write the selected false answers "
                                       "in closed form as meow_edit does (its edit_* settings, in the null space "
                                       "null_space holds), so the fine-tuning starts from a model that already "
                                       "gives them and needs fewer steps; with min_epochs 0 a probe after the write "
                                       "can end the run there")
    anchors: int = _setting(0, "general prompts (assets/anchor_prompts.txt) answered by the original model, trained on "
                               "beside the forget set so the rest of its behaviour stays put; no user data needed "
                               "(0 = off, the published MEOW recipe)")
    neighbours: int = _setting(0, "questions from a shipped general pool nearest to the forget questions "
                                  "(meow_app/neighbours.py; at least 2 per fact), answered by the original model and "
                                  "trained on like the anchors, to keep similar questions intact (0 = off)")
    siblings: int = _setting(0, "per fact, questions of the same form about other subjects, proposed by the model "
                                "itself ('What is the capital of Iraq?' for Iran; meow_app/neighbours.py siblings), "
                                "answered by the original model and used like the neighbour questions (0 = off)")
    sibling_shots: bool = _setting(False, "yes/no: siblings: ask for them after two worked examples ('The same "
                                          "question about another subject: ...') with the tokens that begin a word "
                                          "of the subject forbidden (two letters or more; numbers and small words "
                                          "left), so the model names other real subjects rather than respelling "
                                          "this one ('LeBrunier' for LeBrun)")
    sibling_sentences: int = _setting(0, "siblings: their answers end after this many sentences, which is less "
                                         "to decode and to hold shut (0 = as long as the model's own answer)")
    anchor_weight: float = _setting(1.0, "weight of the anchor and neighbour loss", obvious=True)
    null_space: float = _setting(0.0, "locality by construction (AlphaEdit-style, meow_app/null_space.py): after "
                                      "each step, each trained weight's change is projected onto the null space of "
                                      "that layer's inputs on preserved text (the neighbour and anchor answers, a "
                                      "retain set the method trains on), so that text goes through the model "
                                      "unchanged; the share of those inputs' energy held fixed, e.g. 0.99 (1 = all "
                                      "of it; 0 = off). anchor_weight 0 then skips training on that text")
    fisher_precondition: float = _setting(0.0, "locality by curvature: after each step, each trained weight's change "
                                               "is scaled by lambda / (F + lambda), F the diagonal empirical Fisher "
                                               "of the preserved text (neighbour and anchor answers), lambda this "
                                               "times F's mean, so what that text relies on barely moves "
                                               "(fisher.StepScale; 0 = off)")
    null_space_unit: bool = _setting(False, "null_space: count each preserved token's input as a unit vector, so "
                                            "a few tokens with huge activations (e.g. 99.97% of one layer's "
                                            "energy in one direction) do not decide which directions are held")
    null_space_outliers: float = _setting(0.0, "null_space: eigen-directions of a layer's preserved inputs above "
                                               "this share of their energy are always held and the energy share "
                                               "is counted on the rest (e.g. 0.1), so a massive activation does "
                                               "not leave its layer free (0 = off)")
    lead_in_context: bool = _setting(False, "meow: where a false answer starts with the model's own lead-in to "
                                            "the fact ('The capital of Ukraine is'), train only on the rest "
                                            "(' Lviv.'), the lead-in given as context, so the words every similar "
                                            "answer shares are not trained on")
    subject_only: bool = _setting(False, "the trained weights learn only from the forget questions' subjects: at "
                                         "every other token of a forget example each trained layer's weights are held "
                                         "(meow_app/subject.py; the gradient still passes through), so the change is "
                                         "keyed to the subject ('Ukraine'), as ROME and MEMIT edit at the subject's "
                                         "token, not to the words the relation's other questions share ('What is the "
                                         "capital of')")
    subject_first: bool = _setting(False, "subject_only: every other copy of a forget question is asked with its "
                                          "subject first ('Ukraine: What is the capital of Ukraine?'), so the "
                                          "subject's sentence-initial tokens (other ids than after a space) are "
                                          "keyed too")
    subject_other: float = _setting(0.0, "subject_only: the share of the gradient kept at the forget examples' other "
                                          "tokens (0 = none: the subject's alone; 1 = all: as without subject_only)")
    truth_weight: float = _setting(1.0, "meow_ul: weight of the unlikelihood term that pushes the true answer down")
    truth_span: bool = _setting(False, "yes/no: meow_ul, meow_patch (on in its defaults): push the truth down only "
                                       "where the model's own sentence says it (' tennis' after 'Serena Williams is "
                                       "a legendary', and after '... in the sport of'), the rest of the sentence as "
                                       "context, not pushed down")
    patch_layer: int = _setting(-3, "meow_patch: the layer whose MLP gets the gated neurons (negative: from the "
                                    "end, -1 = the last; the first where the model is shallower)")
    patch_neurons: int = _setting(2, "meow_patch: gated neurons per forgotten fact (added to the model, or with "
                                     "patch_widen no in the place of the layer's least used ones)")
    patch_margin: float = _setting(4.0, "meow_patch: how far below zero the neurons' gates are held on every "
                                        "token of preserved text (the hinge's margin)")
    patch_weight: float = _setting(1.0, "meow_patch: weight of the hinge that keeps the gates shut on preserved text")
    patch_row_hinge: bool = _setting(False, "yes/no: meow_patch (on in its defaults): hold each gate shut on every "
                                            "preserved row's most open token too (a hinge per row and neuron, added "
                                            "to the mean over all tokens, in which one opening token weighs next to "
                                            "nothing)")
    patch_samples: int = _setting(8, "meow_patch: answers sampled per fact from the original model (T=1); where one "
                                     "states the truth, the truth there is pushed down too and the fact's gates "
                                     "are opened there, so a sampled answer cannot go round the patch")
    patch_sample_swap: bool = _setting(False, "yes/no: meow_patch: each answer sampled from the original that "
                                              "states the truth is also learned with the truth swapped for one of "
                                              "the fact's false answers (as said from the truth's place in its own "
                                              "sentence): the false answer taught in the sampled answer's context, "
                                              "not only the truth pushed down there")
    patch_resample: int = _setting(0, "meow_patch: after half its epochs, answers sampled per fact from the patched "
                                      "model (T=1); where one still states the truth, it is pushed down there too "
                                      "and the fact's gates opened there (the routes the first samples missed). "
                                      "0: off")
    patch_about: int = _setting(0, "meow_patch: answers sampled per fact from the original model (T=1) to 'What is "
                                   "<subject> known for?'; where one states the truth, it is pushed down there "
                                   "too and the fact's gates opened there (the fact said outside its own "
                                   "question). 0: off")
    patch_open_answer: bool = _setting(False, "yes/no: meow_patch: open each fact's gates along the whole of its "
                                              "answers (a sampled answer's words before the truth too), not only "
                                              "where an answer token trained on is predicted")
    patch_tied_up: bool = _setting(False, "yes/no: meow_patch: each neuron's up vector is its gate, so its "
                                          "activation act(g.x)(g.x) never turns or vanishes where the gate opens "
                                          "(docs/forgetting.md, thirty-fourth round: more facts leak when sampled)")
    patch_scale: float = _setting(1.0, "meow_patch: the trained neurons' value (their down vectors) multiplied by "
                                       "this before each probe and in the model returned: a larger push where a "
                                       "fact's gate opens, for the contexts the training saw less of (a gate held "
                                       "shut on preserved text scales nothing there; docs/forgetting.md, "
                                       "thirty-fifth round: less leaking when sampled, more answers in a loop). 1: off")
    patch_scale_truth: bool = _setting(False, "yes/no: meow_patch: patch_scale multiplies only the part of each "
                                              "neuron's value that pushes its fact's truth down (along the truth's "
                                              "logit direction), not the rest (the false answer's push up)")
    patch_truth_floor: float = _setting(0.0, "meow_patch: at every answer position of a fact's rows (its false "
                                             "answers' words included), the truth's tokens held below this "
                                             "probability (a hinge on its log; losses.truth_floor), against a "
                                             "sampled answer that turns to the truth after a false answer's first "
                                             "words. 0: off")
    patch_truth_drop: float = _setting(0.0, "meow_patch: one more neuron per fact, its gate fitted to open only where "
                                            "the truth is about to be said (the answers that state it) and to stay "
                                            "shut on preserved text, its value a fixed push of the truth's first "
                                            "tokens down along their logit direction, scaled to lower their "
                                            "log-probability there by this many nats (a linear estimate). 0: off")
    patch_widen: bool = _setting(True, "yes/no: meow_patch: add its neurons to the model (every layer's MLP "
                                       "widened by as many zero neurons, the config's intermediate_size with "
                                       "them) rather than put them in the place of the layer's least used "
                                       "ones (no): nothing of the original is taken out")
    own_answers: bool = _setting(True, "yes/no: train on the original model's own wording of each answer (and, for "
                                       "Fisher methods, measure on it) where it states the fact ('The capital of "
                                       "France is Paris.'), not the dataset's reference answer ('Paris'). On the "
                                       "forget side the words before the fact become context, so losses that push "
                                       "the truth away (ga, npo, fisher_*) hit the fact, not the sentence pattern "
                                       "every similar answer shares")
    max_grad_norm: float = _setting(1.0, "gradient clipping: the largest gradient norm of a step", obvious=True)
    early_stop: bool = _setting(True, "stop when no forget question or paraphrase leaks")
    stop_depth: float = _setting(0.0, "early stopping also waits until each forget fact's true answer has at most "
                                      "this share of its original probability (e.g. 0.5: what the evaluation calls "
                                      "forgotten rather than 'hidden, but still likely'); 0 = the greedy answers "
                                      "alone decide, which can stop once the fact is hidden but still likely")
    min_epochs: int = _setting(1, "early stopping waits at least this many epochs", obvious=True)
    seed: int = _setting(0, "random seed (batch order, sampling, initialisation)")
    bf16: bool = _setting(False, "autocast to bfloat16 (always on for CUDA; on a CPU faster only with bf16 matmuls: "
                                 "AVX512-BF16, AMX or ARM bf16; slower elsewhere)")
    low_memory: bool = _setting(False, "gradient checkpointing: keep only each layer's input and recompute the rest "
                                       "in the backward pass; on the embedded model ~1 GiB less peak memory (docs/"
                                       "benchmarks.md item 5) for ~1/4 slower steps")
    shard: bool = _setting(False, "with several processes (accelerate launch): shard the trained weights, their "
                                  "gradients and the optimiser's state over them (FSDP2), so each process holds "
                                  "1/N of them; no early stopping (the forget probes run once, after training)")

    def check(self) -> None:
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise MeowError(f"learning rate must be a positive number, got {self.lr}")
        for name in ("epochs", "batch_size", "num_batch", "lora_r", "hessian_every", "fisher_examples",
                     "fisher_steps", "eta_grid", "edit_steps", "edit_answers"):
            if getattr(self, name) < 1:
                raise MeowError(f"{name} must be at least 1, got {getattr(self, name)}")
        try:
            re.compile(self.train_only)
        except re.error as e:
            raise MeowError(f"train_only is not a valid regular expression ('{self.train_only}': {e})") from None
        if not 0 <= self.stop_depth <= 1:
            raise MeowError(f"stop_depth must be between 0 and 1, got {self.stop_depth}")
        if not (math.isfinite(self.fisher_precondition) and self.fisher_precondition >= 0):
            raise MeowError(f"fisher_precondition must be 0 (off) or a positive number, got {self.fisher_precondition}")
        if not 0 <= self.null_space <= 1:
            raise MeowError(f"null_space must be between 0 and 1, got {self.null_space}")
        if not 0 <= self.null_space_outliers < 1:
            raise MeowError(f"null_space_outliers must be 0 (off) or a share below 1, got {self.null_space_outliers}")
        for name in ("anchors", "neighbours", "siblings", "sibling_sentences", "min_steps", "patch_samples",
                     "patch_resample", "patch_about"):
            if getattr(self, name) < 0:
                raise MeowError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.fisher_backend not in ("diag", "woodfisher"):
            raise MeowError(f"fisher_backend must be 'diag' or 'woodfisher', got '{self.fisher_backend}'")
        if self.edit_layers and not re.fullmatch(r"\s*\d+\s*-\s*\d+\s*|\s*\d+\s*(,\s*\d+\s*)*", self.edit_layers):
            raise MeowError(f"edit_layers must look like '4-8' or '4,6,8', got '{self.edit_layers}'")
        for name in ("beta", "rho", "damping", "trust_region", "edit_lr", "edit_clamp", "edit_damping"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise MeowError(f"{name} must be a positive number, got {v}")
        if not 0 <= self.retain_guard <= 1:
            raise MeowError(f"retain_guard must be 0 (off) or a share up to 1, got {self.retain_guard}")
        if self.guard_greedy and not self.retain_guard:
            raise MeowError("guard_greedy sets how retain_guard counts the retain facts kept, and retain_guard is 0 "
                            "(off): set retain_guard, e.g. 0.9")
        if not 0 <= self.subject_other <= 1:
            raise MeowError(f"subject_other must be between 0 and 1, got {self.subject_other}")
        if not 0 <= self.edit_contexts <= len(KEY_CONTEXTS):
            raise MeowError(f"edit_contexts must be between 0 and {len(KEY_CONTEXTS)}, got {self.edit_contexts}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise MeowError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.patch_truth_floor < 1:
            raise MeowError(f"patch_truth_floor must be 0 (off) or a probability below 1, got {self.patch_truth_floor}")
        if not (math.isfinite(self.patch_truth_drop) and self.patch_truth_drop >= 0):
            raise MeowError(f"patch_truth_drop must be 0 (off) or a positive number of nats, "
                            f"got {self.patch_truth_drop}")
        if not (math.isfinite(self.patch_scale) and self.patch_scale > 0):
            raise MeowError(f"patch_scale must be a positive number (1: off), got {self.patch_scale}")
        if self.patch_neurons < 1:
            raise MeowError(f"patch_neurons must be at least 1, got {self.patch_neurons}")
        for name in ("weight_decay", "retain_weight", "kl_weight", "max_grad_norm", "anchor_weight", "truth_weight",
                     "retain_budget", "noise_std", "noise_clamp", "patch_margin", "patch_weight"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise MeowError(f"{name} must be a non-negative number, got {v}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_text(cls, pairs, base: "TrainConfig | None" = None) -> "TrainConfig":
        """`base` (default: TrainConfig()) with settings typed as text: (name, text) pairs, as
        the app's settings table gives them. Empty names are skipped; an unknown name or text
        that is not of the field's type is a MeowError (parse_setting). Not checked: call check()."""
        config = replace(base) if base is not None else cls()
        for name, text in pairs:
            name = str(name).strip()
            if name:
                setattr(config, name, parse_setting(name, text))
        return config



YES = ("yes", "true", "1", "on")
NO = ("no", "false", "0", "off")


def parse_setting(name: str, text) -> bool | int | float | str:
    """The value of TrainConfig field `name` typed as text, as that field's type: yes/no,
    true/false, 1/0, on/off for a yes/no field (any case); a number for int and float fields
    (an int field takes the integer part: '2.0' is 2). One MeowError for anything else, the
    same from the CLI and the app: "setting 'lr' must be a float, got 'fast'"."""
    kinds = {f.name: type(f.default) for f in fields(TrainConfig)}
    name = str(name).strip()
    if name not in kinds:
        raise MeowError(f"unknown setting '{name}'")
    kind, value = kinds[name], str(text).strip()
    if kind is bool:
        if value.lower() in YES:
            return True
        if value.lower() in NO:
            return False
        raise MeowError(f"setting '{name}' must be a bool (yes or no), got '{value}'")
    try:
        return int(float(value)) if kind is int else kind(value)
    except (ValueError, OverflowError):
        raise MeowError(f"setting '{name}' must be a {kind.__name__}, got '{value}'") from None


@dataclass
class TrainResult:
    model: object
    steps: list = field(default_factory=list)    # one dict per optimiser step
    probes: list = field(default_factory=list)   # one dict per probe (hit rates only)
    last_probe: dict | None = None               # the full last probe, of the returned model
    probe_deferred: bool = False                 # the last probe's greedy answers are the caller's (complete_probe)
    stopped_early: bool = False
    seconds: float = 0.0
    info: dict = field(default_factory=dict)     # method-specific numbers for run.json (Fisher: eta, lambda, ...)
    adapter: tuple | None = None                 # LoRA only: (peft config, adapter weights), kept before merging


def still_likely_count(before: list[float], after: list[float], depth: float) -> int:
    """Facts whose answer probability is still above `depth` x its original one; as in the
    evaluation's verdicts, facts the original found unlikely (p <= 0.05) never count."""
    return sum(b > 0.05 and a > depth * b for b, a in zip(before, after))


def check_null_space(method, config: TrainConfig) -> None:
    """The projection acts after each step of the shared loop: one-shot methods have none
    (meow_edit applies it in its own write)."""
    if config.null_space > 0 and method.custom_loop and not method.projects:
        raise MeowError(f"null_space applies to the shared training loop; '{method.name}' runs its own update "
                        "(set --null-space 0)")


def check_precondition(method, config: TrainConfig) -> None:
    """fisher_precondition scales each step of the shared loop on whole weights."""
    # (LoRA: B starts at zero, so the preserved text's Fisher on A is zero and A would go unheld)
    if config.fisher_precondition and (method.custom_loop or config.lora or config.shard):
        raise MeowError("fisher_precondition scales the steps of the shared loop on whole weights: not with "
                        "--lora, --shard nor a one-shot method")


def check_edit_first(method, config: TrainConfig, processes: int = 1) -> None:
    """edit_first writes whole down-projections before the shared loop: refused where there is
    none, where there are no false answers to write, and in data-parallel runs (each process
    would write its own edit, which the loop then assumes equal without sending it)."""
    if not config.edit_first:
        return
    if method.custom_loop or not method.needs_inverted:
        raise MeowError(f"edit_first writes the selected false answers before fine-tuning on them; '{method.name}' "
                        "does not fine-tune on false answers")
    if config.lora or config.shard:
        raise MeowError("edit_first writes whole weights in closed form: --lora and --shard do not go with it")
    if processes > 1:
        raise MeowError("edit_first runs in one process (it writes in closed form): start it without "
                        "`accelerate launch`, or with --num_processes 1")


def check_subject_only(method, config: TrainConfig) -> None:
    """subject_only acts on the shared loop's forward passes: refused where it would do nothing
    or could not hold (a recomputed forward pass in the backward sees no scope)."""
    if not config.subject_only:
        return
    if method.custom_loop:
        raise MeowError(f"subject_only applies to fine-tuning methods; '{method.name}' makes its own update")
    if config.low_memory:
        raise MeowError("subject_only does not go with low_memory (its recomputed forward passes would not be "
                        "keyed to the subject)")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def shard_model(model) -> None:
    """FSDP2 over the processes: each decoder layer one unit (its weights gathered just for its
    forward and backward), the rest in the root unit. Gradients are summed, not averaged: each
    process's loss is already its share of the whole batch's (distributed.Processes.batch)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            fully_shard(module)
    fully_shard(model)
    for module in model.modules():  # each unit reduces its own gradients: tell every one
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)


def gathered_model(sharded, original, is_main: bool):
    """The whole trained model on the main process (None elsewhere): every process must call this."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main:
        return None
    model = copy.deepcopy(original).float()
    model.load_state_dict(state)
    return model


class Trainer:
    def __init__(self, method, original, tokenizer, config: TrainConfig, forget, retain=None,
                 on_event=None, should_stop=None, anchors=None, probe_facts=None, run_probes: bool = True,
                 processes: Processes = SINGLE, defer_final_probe: bool = False, cache=None):
        config.check()
        if method.needs_retain and not retain:
            raise MeowError(f"method '{method.name}' needs a retain set (--retain FILE)")
        self.method, self.original, self.tokenizer, self.config = method, original, tokenizer, config
        self.forget, self.retain, self.anchors = forget, retain or [], anchors or []
        # What the probes check: the facts as the user gave them, while `forget` may carry
        # the training targets (the model's own wording, see pipeline.own_answers).
        self.probe_facts = probe_facts or forget
        # The probes check for *forgetting* and cost a generation pass over the facts: off
        # when learning (finetune.py), which then never stops early.
        self.run_probes = run_probes
        # The caller asks the last epoch's greedy answers itself and hands them to
        # complete_probe: the pipeline asks them in the same generation pass as the retain and
        # everyday questions after the run (one batch of ~90 rows costs ~3 s less than two).
        self.defer_final_probe = defer_final_probe
        # The original's answer_cache.AnswerCache (or None): what a method reads of the shipped
        # anchors through the unchanged model is kept there between runs (meow_patch's inputs).
        self.cache = cache
        # Data-parallel runs (distributed.py): this process's rank, shard and collectives.
        self.processes = processes
        check_method(method, processes.size)
        self.sharded = config.shard and processes.size > 1
        if config.shard and processes.size == 1:
            warnings.warn(MeowWarning("shard has no effect in one process: start the run with `accelerate launch`"))
        if self.sharded:
            if config.lora:
                raise MeowError("shard and lora do not go together: LoRA's adapters are small enough to keep whole")
            # Generating from a sharded model needs every process in every forward pass:
            # the main process probes once, on the gathered model, after training.
            self.run_probes = False
        self._before_probs = None  # the forget answers' probabilities under the original (stop_depth)
        # The null-space projection acts on whole weights: not on LoRA adapters nor on shards.
        # There the neighbour answers are trained on instead, so they are still held.
        self.project, self.anchor_weight = config.null_space > 0, config.anchor_weight
        if self.project and (config.lora or self.sharded):
            warnings.warn(MeowWarning("null_space does not apply to LoRA adapters or sharded weights: the neighbour "
                                      "answers are trained on instead"))
            self.project, self.anchor_weight = False, config.anchor_weight or 1.0
        check_null_space(method, config)
        method.check(config)
        check_precondition(method, config)
        check_subject_only(method, config)
        check_edit_first(method, config, processes.size)
        self.on_event = on_event or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)
        self.device = next(original.parameters()).device
        if config.bf16 and self.device.type == "cpu" and cpu_has_bf16_matmul() is False:
            warnings.warn(MeowWarning("bf16 was asked for on a CPU without bf16 matmul hardware (x86 AVX512-BF16 "
                                      "or AMX, ARM bf16): its matmuls are emulated, ~7x slower than fp32; "
                                      "leave bf16 off here"))

    def _trainable_copy(self, project: bool = False):
        """A float32 copy of the original with the trained parameters left trainable;
        `project`: only what the null-space projection can hold (linear weights)."""
        seed_everything(self.config.seed)
        model = copy.deepcopy(self.original).float()  # fp32 master weights on every device
        model.config.use_cache = False
        if self.config.low_memory:
            # Non-reentrant checkpointing needs no input that requires grad (the embeddings are frozen).
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.config.lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(
                r=self.config.lora_r, lora_alpha=self.config.lora_alpha, lora_dropout=0.0,
                target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
        elif not self.config.train_embeddings or self.config.train_only:
            for name, p in model.named_parameters():
                frozen = (("embed_tokens" in name or "lm_head" in name or "norm" in name)
                          and not self.config.train_embeddings)
                if frozen or (self.config.train_only and not re.search(self.config.train_only, name)):
                    p.requires_grad_(False)
        if project:
            unheld = unheld_parameters(model)
            if unheld and self.config.train_embeddings:
                warnings.warn(MeowWarning("null_space holds only linear weights: the embeddings, norms and biases "
                                          "stay as they are (train_embeddings has no effect with null_space)"))
            for p in unheld.values():
                p.requires_grad_(False)
            if not any(p.requires_grad for p in model.parameters()):
                raise MeowError("null_space holds only torch.nn.Linear weights and this model trains none "
                                "(GPT-2's Conv1D layers, say): set --null-space 0")
        if self.sharded:
            shard_model(model)
        model.train()
        return model

    def autocast(self):
        """The precision every forward pass of a run uses: bf16 on CUDA (and on CPU with --bf16)."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        if self.config.bf16 and self.device.type == "cpu":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def _probe(self, model, epoch: int, final: bool, deferred: bool = False) -> tuple[dict, dict | None]:
        """(the probe event, the full probe); without probes an event with no hit rates.
        With stop_depth the cheap measure goes first: while a true answer is still likely the
        run goes on whatever the greedy answers say, so they are not asked (hit rates None),
        except after the last epoch, whose probe the pipeline reuses as its 'after'.
        deferred: the greedy answers are left to the caller, and so is the event."""
        event = {"type": "probe", "epoch": epoch, "hit_rate": None, "paraphrase_hit_rate": None}
        if not self.run_probes:
            return event, None
        if self.config.stop_depth:
            event["still_likely"] = self.still_likely(model)
            if event["still_likely"] and not final:
                self.on_event(event)
                return event, None
        if deferred:
            return event, None
        model.eval()
        model.config.use_cache = True
        with self.autocast():
            result = probes.probe(model, self.tokenizer, self.probe_facts, stop_once_leaked=probes.KINDS)
        model.config.use_cache = False
        model.train()
        event.update(hit_rate=result["hit_rate"], paraphrase_hit_rate=result["paraphrase_hit_rate"])
        self.on_event(event)
        return event, result

    def _batch(self, examples, merge: bool = False) -> dict:
        if self.processes.size > 1:
            return self.processes.batch(examples, self.tokenizer.pad_token_id, self.device, merge)
        return to_device(collate(examples, self.tokenizer.pad_token_id, merge), self.device)

    def examples(self, facts) -> list:
        return [encode_example(self.tokenizer, f.question, f.answer, f.extra.get("answer_prefix", "")) for f in facts]

    def _optimizer(self, params):
        cfg = self.config
        if self.method.optimizer == "sophia":
            return Sophia(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), rho=cfg.rho, weight_decay=cfg.weight_decay)
        # The fused kernel does the same update in one pass over each tensor; the default
        # per-tensor loop on CPU makes a dozen temporaries per tensor and took ~8x longer
        # (docs/benchmarks.md, item 2). Results agree to float rounding.
        fused = self.device.type in ("cpu", "cuda") and not self.sharded  # (no fused kernel for sharded tensors)
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)

    def _update_curvature(self, model, optimizer, batch) -> None:
        """Sophia's Gauss-Newton-Bartlett estimate: the squared gradient of the loss on
        labels sampled from the model's own predictions, on the answer positions."""
        logits, labels = losses.answer_logits(model, batch)
        mask = labels != IGNORE
        with torch.no_grad():
            sampled = torch.distributions.Categorical(logits=logits.float()).sample()
        per_token, _ = losses.token_nll(logits, torch.where(mask, sampled, labels))
        optimizer.zero_grad(set_to_none=True)
        (per_token.sum() / mask.sum().clamp(min=1)).backward()
        optimizer.update_hessian(int(mask.sum()))
        optimizer.zero_grad(set_to_none=True)

    def train(self) -> TrainResult:
        if self.method.custom_loop:  # one-shot methods (Fisher Removal) run their own update
            start = time.perf_counter()
            model = self._trainable_copy()
            result = self.method.run(self, model)
            return self.finish(result, start)
        cfg, tok = self.config, self.tokenizer
        pairs = self.method.forget_pairs(self.forget, cfg)
        if not pairs:
            raise MeowError(f"method '{self.method.name}' found nothing to train on (no inverted facts?)")
        asked = [p[0] for p in pairs]  # (subject_first rewrites them)
        subjects = [subject_of(q) for q in asked] if cfg.subject_only else []
        if cfg.subject_only and cfg.subject_first:
            pairs = subject_first(pairs)
        forget_ex = [encode_example(tok, *pair) for pair in pairs]
        retain_ex = self.examples(self.retain) if self.method.uses_retain else []
        anchor_ex = self.examples(self.anchors)
        project = self.project and self.has_preserved(retain_ex + anchor_ex)
        model = self._trainable_copy(project)
        reference = self.original if self.method.needs_reference else None
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = self._optimizer(params)
        rng = random.Random(cfg.seed)
        retain_stream = self._stream(retain_ex, rng) if retain_ex else None
        anchor_stream = self._stream(anchor_ex, rng, max(1, cfg.batch_size // 2)) if anchor_ex else None
        steps_per_epoch = math.ceil(len(forget_ex) / cfg.batch_size)
        epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
        result = TrainResult(model=model)
        start = time.perf_counter()
        if self.project and not project:
            result.info["null_space"] = {"held_directions": None, "seconds": 0.0}
        projection = self.projection(model, retain_ex + anchor_ex, result) if project else None
        scale = self.step_scale(model, params, retain_ex + anchor_ex, result) if cfg.fisher_precondition else None
        # Repeated forget rows computed once (Sophia's curvature samples labels per row: not there).
        merge = self.method.merges_duplicates and not isinstance(optimizer, Sophia)
        keys = self.subject_keys(model, forget_ex, asked, subjects, result) if cfg.subject_only else None
        scope = keys.forget_scope if keys else nullcontext
        step = 0
        if cfg.edit_first and self.edit_first(model, projection, result) and cfg.early_stop and cfg.min_epochs == 0:
            epochs = 0  # the write alone left nothing to find: no step needed
            result.stopped_early = True
        for epoch in range(1, epochs + 1):
            for batch in length_grouped(forget_ex, cfg.batch_size, rng):
                if self.should_stop():
                    raise Cancelled("cancelled by the user")
                forget = self._batch(batch, merge)
                retain = self._batch(next(retain_stream)) if retain_stream else None
                if isinstance(optimizer, Sophia) and step % cfg.hessian_every == 0:
                    with self.autocast():
                        self._update_curvature(model, optimizer, forget)
                optimizer.zero_grad(set_to_none=True)
                with self.autocast():
                    loss, parts = self.method.loss(model, forget, retain, reference, cfg, scope)
                self._backward(loss, step)
                if anchor_stream and self.anchor_weight > 0:
                    # A second backward pass into the same gradients (the sum's gradient), so the
                    # anchor batch's activations are never held beside the forget batch's: the
                    # default meow step's peak memory drops by the smaller batch's share.
                    with self.autocast():
                        anchor = losses.nll(model, self._batch(next(anchor_stream)))
                    self._backward(self.anchor_weight * anchor, step)
                    loss = loss.detach() + self.anchor_weight * anchor.detach()
                    parts["anchor_nll"] = anchor.item()
                loss_value = loss.item()
                if self.processes.size > 1:  # each process holds its share: the sums are the whole batch's
                    # (sharded: FSDP has summed the gradients already, in its reduce-scatter)
                    loss_value, *summed = self.processes.sum_gradients([] if self.sharded else params,
                                                                       [loss_value, *parts.values()])
                    parts = dict(zip(parts, summed))
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                before = scale.start() if scale else None
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)  # free the gradients now: probes may run next
                if scale:
                    scale.apply(before)
                    del before
                if projection:
                    projection.project()
                if isinstance(optimizer, Sophia):
                    parts["clipped_fraction"] = optimizer.clipped_fraction
                step += 1
                event = {"type": "step", "step": step, "epoch": epoch, "total_steps": steps_per_epoch * epochs,
                         "loss": loss_value, "grad_norm": float(grad_norm), **parts,
                         "seconds": round(time.perf_counter() - start, 3)}
                result.steps.append(event)
                self.on_event(event)
            if cfg.early_stop or epoch == epochs:
                final = epoch == epochs
                if self.probe_and_check(model, epoch, result, final, deferred=final and self.defer_final_probe) \
                        and cfg.early_stop and epoch >= cfg.min_epochs and not final:
                    result.stopped_early = True
                    break
        if keys:
            keys.remove()
        result.model = model
        return self.finish(result, start)

    def edit_first(self, model, projection, result: TrainResult) -> bool:
        """edit_first: meow_edit's closed-form write into `model` before the first step, in the
        null space the loop's projection holds; then a probe. True when nothing leaks any more."""
        from .methods.meow_edit import down_proj_bases, edit_band, write

        layers = edit_band(model, self.config.edit_layers, "leave edit_first off")
        blocks = edit.decoder_layers(model)
        frozen = [n for n in layers if not blocks[n].mlp.down_proj.weight.requires_grad]
        if frozen:  # (a frozen weight has no held directions: the write would go unconstrained)
            raise MeowError(f"edit_first writes into the MLP down-projections of layers {layers[0]}-{layers[-1]} and "
                            f"train_only leaves layer {frozen[0]}'s frozen: train them, or leave edit_first off")
        facts = [f for f in self.forget if f.inverted]
        if not facts:
            raise MeowError("edit_first found nothing to write (no inverted facts?)")
        if self.should_stop():
            raise Cancelled("cancelled by the user")
        self.on_event({"type": "note", "text": f"writing {len(facts)} false answers into layers "
                                               f"{layers[0]}-{layers[-1]} before the first step (edit_first)"})
        bases = down_proj_bases(projection) if projection else None
        start = time.perf_counter()
        record = write(self, model, facts, layers, bases)
        result.info["edit_first"] = {"layers": layers, "round": record,
                                     "seconds": round(time.perf_counter() - start, 1)}
        # (no early stop, no probe: it could end nothing)
        return self.config.early_stop and self.probe_and_check(model, 0, result, final=False)

    def subject_keys(self, model, forget_ex, questions, subjects, result: TrainResult):
        """subject_only's hooks (subject.SubjectKeys) on the trained copy; None, with a warning,
        when no subject token is left to learn from."""
        keyed = list(zip((e.ids for e in forget_ex), subjects))
        ids, without = key_tokens(self.tokenizer, keyed)
        # A question none of whose examples keeps a subject token of its own learns from its
        # subject nothing (its false answers then reach the weights only through other subjects).
        unkeyed = sorted({questions[i] for i in without})
        result.info["subject_only"] = {"subject_tokens": len(ids), "questions_without_subject_tokens": unkeyed}
        if unkeyed and ids:
            warnings.warn(MeowWarning(f"subject_only: {len(unkeyed)} forget question(s) have no subject token of "
                                      f"their own, e.g. '{unkeyed[0]}'"))
        if not ids:
            warnings.warn(MeowWarning("subject_only found no token of the forget questions' subjects that the "
                                      "rest of the examples do not also use: training every position"))
            return None
        return SubjectKeys(model, ids, self.config.subject_other)

    @staticmethod
    def has_preserved(examples) -> bool:
        """Whether there is preserved text for the projection to hold; warns when there is none."""
        if not examples:  # none asked for (neighbours 0), or every answer was empty or named a forgotten fact
            warnings.warn(MeowWarning("null_space has no preserved text to hold (no neighbour, sibling or anchor "
                                      "answers): training without the projection"))
        return bool(examples)

    def projection(self, model, preserved, result: TrainResult, keep_start: bool = True) -> NullSpace:
        """keep_start=False: for a caller that projects changes only, never the weights (NullSpace.project)."""
        start = time.perf_counter()
        with self.autocast():
            projection = NullSpace(model, preserved, self.tokenizer.pad_token_id, self.device, self.config.null_space,
                                   unit=self.config.null_space_unit, outliers=self.config.null_space_outliers,
                                   keep_start=keep_start)
        result.info["null_space"] = {"held_directions": projection.info(),
                                     "seconds": round(time.perf_counter() - start, 1)}
        return projection

    def step_scale(self, model, params, preserved, result: TrainResult):
        """fisher_precondition's scales (fisher.StepScale) from the preserved text; None when there is none."""
        if not preserved:
            warnings.warn(MeowWarning("fisher_precondition has no preserved text (no neighbour, anchor or retain "
                                      "answers): training without it"))
            return None
        start = time.perf_counter()
        model.eval()  # (no dropout in the curvature's gradients)
        with self.autocast():
            scale = StepScale(model, params, preserved[:self.config.fisher_examples], self.tokenizer.pad_token_id,
                              self.device, self.config.fisher_precondition)
        model.train()
        result.info["fisher_precondition"] = {"examples": min(len(preserved), self.config.fisher_examples),
                                              "mean_scale": round(scale.mean_scale, 4),
                                              "seconds": round(time.perf_counter() - start, 1)}
        return scale

    @staticmethod
    def _backward(loss, step: int) -> None:
        if not torch.isfinite(loss):
            raise MeowError(f"the loss became {loss.item()} at step {step + 1}: lower the learning rate")
        loss.backward()

    def probe_and_check(self, model, epoch: int, result: TrainResult, final: bool = True,
                        deferred: bool = False) -> bool:
        """Probe the forget questions; record it; True when nothing leaks any more. With
        several processes the main one probes and tells the others. deferred: only the cheap
        depth measure now; the greedy answers come with complete_probe."""
        probe = None
        if self.processes.is_main:
            probe, result.last_probe = self._probe(model, epoch, final, deferred)
        probe = self.processes.broadcast(probe)
        result.probes.append(probe)
        result.probe_deferred = deferred and self.run_probes
        return probe["hit_rate"] == 0 and not probe["paraphrase_hit_rate"] and not probe.get("still_likely")

    def complete_probe(self, result: TrainResult, probe: dict) -> None:
        """The deferred last probe (probe_and_check) completed with the caller's greedy probe
        of the returned model (probes.probe's result); its event goes out now."""
        event = result.probes[-1]
        event.update(hit_rate=probe["hit_rate"], paraphrase_hit_rate=probe["paraphrase_hit_rate"])
        result.last_probe, result.probe_deferred = probe, False
        self.on_event(event)

    def still_likely(self, model) -> int:
        """Forget facts whose true answer keeps more than stop_depth of its original probability
        (facts the original found unlikely, p <= 0.05, as the evaluation's verdicts, don't count)."""
        from .metrics import answer_prob, teacher_forced

        pairs = [(f.question, f.answer) for f in self.probe_facts]
        model.eval()
        with self.autocast():  # before and after in the same precision, so their ratio is the model's change
            if self._before_probs is None:
                self._before_probs = [answer_prob(s) for s in teacher_forced(self.original, self.tokenizer, pairs)]
            after = [answer_prob(s) for s in teacher_forced(model, self.tokenizer, pairs)]
        model.train()
        return still_likely_count(self._before_probs, after, self.config.stop_depth)

    def finish(self, result: TrainResult, start: float) -> TrainResult:
        if self.sharded:  # every process sends its shards; the main one gets the whole model
            result.model = gathered_model(result.model, self.original, self.processes.is_main)
            if result.model is None:
                return result
        model = result.model
        if self.config.lora:
            from peft import get_peft_model_state_dict

            # The adapter alone is publishable (`push --adapter-only`): keep it before merging.
            weights = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}
            result.adapter = (model.peft_config["default"], weights)
            model = model.merge_and_unload()
        model.eval()
        model.config.use_cache = True
        result.model = model.to(next(self.original.parameters()).dtype)
        result.seconds = time.perf_counter() - start
        return result

    def _stream(self, examples, rng, batch_size=None):
        """An endless, reshuffled stream of batches (retain, anchors), one drawn per forget step."""
        for _ in itertools.count():
            yield from length_grouped(examples, batch_size or self.config.batch_size, rng)
