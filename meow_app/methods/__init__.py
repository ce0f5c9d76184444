"""The method registry. A method is one file in this folder that defines a `Method`
subclass decorated with `@register`; it is found by name from the CLI and the app.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Method, REGISTRY, register

__all__ = ["Method", "REGISTRY", "register", "get", "names", "DEFAULT"]

# What `unlearn` runs unless told otherwise: it won on the held-out sets none of its settings
# was chosen on (docs/forgetting.md, sixteenth round); where it cannot run, meow (falls_back_to).
DEFAULT = "meow_patch"

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")


def get(name: str) -> Method:
    from ..errors import MeowError

    if name not in REGISTRY:
        raise MeowError(f"unknown method '{name}'; choose one of: {', '.join(names())}")
    return REGISTRY[name]()


def names() -> list[str]:
    return sorted(REGISTRY)
