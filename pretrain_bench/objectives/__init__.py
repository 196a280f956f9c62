"""The objective registry: built-in objectives by name, a user's own by dotted path ('pkg.mod:Class').

Every module in this package is imported once so that its `@register` runs: adding an objective is
adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil

from pretrain_bench.errors import UserError, closest
from pretrain_bench.objectives.base import Corruption, Objective, ObjectiveConfig, Vocab

__all__ = ["Corruption", "Objective", "ObjectiveConfig", "Vocab", "available", "get", "register"]

_REGISTRY: dict[str, type[Objective]] = {}
_discovered = False


def register(name: str):
    """Class decorator: make an Objective available as `objective.name: <name>`."""

    def add(cls: type[Objective]) -> type[Objective]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"objective '{name}' is registered twice ({_REGISTRY[name]} and {cls})")
        _REGISTRY[name] = cls
        return cls

    return add


def _discover() -> None:
    global _discovered
    if not _discovered:
        _discovered = True
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")


def available() -> dict[str, type[Objective]]:
    """Registered objectives by name, sorted."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type[Objective]:
    """The Objective class for a registered name or a 'package.module:Class' path."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"objective.name '{name}': cannot import it ({e}); give 'package.module:Class' "
                            "for a class importable from the current environment") from None
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise UserError(f"objective.name '{name}' is not a subclass of pretrain_bench.objectives.Objective")
        return cls
    known = available()
    if name not in known:
        raise UserError(f"objective.name: unknown objective '{name}'{closest(name, known)}; "
                        f"choose one of {', '.join(known)} or give 'package.module:Class'")
    return known[name]
