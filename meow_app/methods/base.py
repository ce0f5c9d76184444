"""What every unlearning method provides to the shared training loop (train.py)."""

from __future__ import annotations

from contextlib import nullcontext

from .. import losses

REGISTRY: dict[str, type] = {}


def register(cls):
    REGISTRY[cls.name] = cls
    return cls


class Method:
    name = ""
    description = ""          # one line, shown by `methods` and in the app
    needs_inverted = False    # trains on inverted facts (runs invert + MEMO + select first)
    needs_retain = False      # cannot run without a retain set
    # Draws a retain batch each step when a retain set is given; a custom loop that reads the
    # retain set in any way says so here too (its original answers are then kept whole).
    uses_retain = False
    needs_reference = False   # keeps a frozen copy of the original model
    # The term that holds the retain set in place, added when a retain batch is drawn:
    # "nll" (retain_weight x its NLL), "kl" (kl_weight x KL to the original), "" none.
    # OpenUnlearning's GradDiff `retain_loss_type`; a method only writes its forget term.
    retain_loss = ""
    defaults: dict = {}       # TrainConfig fields this method wants changed by default
    hyperparameters: tuple = ("epochs", "lr")  # the TrainConfig fields worth showing for it
    not_carried: tuple = ()  # its own settings, which its falls_back_to does not get
    optimizer = "adamw"       # adamw | sophia (the shared loop builds it)
    custom_loop = False       # True: run(trainer, model) replaces the shared loop (one-shot methods)
    projects = False          # a custom_loop method that applies null_space itself (meow_edit)
    one_process = ""          # why a custom_loop method runs in one process, where the default reason is wrong
    # The forget batch's repeated rows are computed once (batches.collate(merge=True)): only
    # for a forget term that weighs them back (losses.nll, losses.nll_or_unlikelihood).
    merges_duplicates = False
    tofu_defaults: dict = {}  # TrainConfig fields changed on top of `defaults` in the TOFU protocol (tofu.py)
    # The method run instead, with the user's settings, where this one does not apply (NotApplicable).
    falls_back_to = ""

    def check(self, config) -> None:
        """Refuse settings this method cannot run with, before any work (MeowError;
        NotApplicable where the setting is fine but this method cannot use it)."""

    def check_model(self, model, config=None, facts: int = 0) -> None:
        """Refuse a model this method cannot train, once it is loaded (NotApplicable); with the
        run's config and number of facts to forget, where they matter."""

    def check_anchors(self, anchors) -> None:
        """Refuse a run whose preserved text (neighbour, sibling and anchor answers) this
        method cannot work without, once it is known (NotApplicable)."""

    def unchanged_below(self, model, config) -> int:
        """The decoder layers (by index) below which this method changes nothing in the model
        (0: it may change any): the probes after a run check the original's answers from there
        up (drafts.py). Checked after the run (drafts.Drafts.same_below), so a wrong one costs time only."""
        return 0

    def forget_pairs(self, facts, config) -> list[tuple[str, str]]:
        """(question, answer[, answer prefix]) trained on each epoch: each fact num_batch times."""
        return [(f.question, f.answer, f.extra.get("answer_prefix", ""))
                for f in facts for _ in range(config.num_batch)]

    def forget_loss(self, model, forget, reference, config):
        """(loss tensor, {name: float}) on the forget batch; reference may be None."""
        raise NotImplementedError

    def retain_term(self, model, retain, reference, config):
        """The weighted retain term `retain_loss` selects, and its parts."""
        if self.retain_loss == "kl":  # stay close to the original's next-token distributions
            kl = losses.kl_to_reference(model, reference, retain)
            return config.kl_weight * kl, {"retain_kl": kl.item()}
        r = losses.nll(model, retain)  # "nll": keep answering the retain questions
        return config.retain_weight * r, {"retain_nll": r.item()}

    def loss(self, model, forget, retain, reference, config, forget_scope=nullcontext):
        """Return (loss tensor, {name: float}) for one step; retain/reference may be None.
        forget_scope: a context the forget term alone is computed in (train.py's subject_only)."""
        with forget_scope():
            loss, parts = self.forget_loss(model, forget, reference, config)
        if self.retain_loss and retain is not None:
            term, retain_parts = self.retain_term(model, retain, reference, config)
            loss, parts = loss + term, {**parts, **retain_parts}
        return loss, parts

    def run(self, trainer, model):
        """custom_loop methods: update `model` (a trainable copy) and return a TrainResult."""
        raise NotImplementedError
