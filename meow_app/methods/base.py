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

    def forget_pairs(self, facts, config) -> list[tuple[str, str]]:
        """(question, answer) pairs trained on each epoch for the forget set."""
        return [(f.question, f.answer) for f in facts]

    def loss(self, model, forget, retain, reference, config):
        """Return (loss tensor, {name: float}) for one step; retain/reference may be None."""
        raise NotImplementedError
