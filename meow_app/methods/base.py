"""What every unlearning method provides to the shared training loop (train.py)."""

from __future__ import annotations

REGISTRY: dict[str, type] = {}


def register(cls):
    REGISTRY[cls.name] = cls
    return cls


class Method:
    name = ""
    description = ""          # one line, shown by `methods` and in the app
    needs_inverted = False    # trains on inverted facts (runs invert + MEMO + select first)
    needs_retain = False      # cannot run without a retain set
    uses_retain = False       # draws a retain batch each step when a retain set is given
    needs_reference = False   # keeps a frozen copy of the original model
    defaults: dict = {}       # TrainConfig fields this method wants changed by default
    hyperparameters: tuple = ("epochs", "lr")  # the TrainConfig fields worth showing for it
    optimizer = "adamw"       # adamw | sophia (the shared loop builds it)
    custom_loop = False       # True: run(trainer, model) replaces the shared loop (one-shot methods)

    def forget_pairs(self, facts, config) -> list[tuple[str, str]]:
        """(question, answer[, answer prefix]) trained on each epoch: each fact num_batch times."""
        return [(f.question, f.answer, f.extra.get("answer_prefix", "")) for f in facts for _ in range(config.num_batch)]

    def loss(self, model, forget, retain, reference, config):
        """Return (loss tensor, {name: float}) for one step; retain/reference may be None."""
        raise NotImplementedError

    def run(self, trainer, model):
        """custom_loop methods: update `model` (a trainable copy) and return a TrainResult."""
        raise NotImplementedError
