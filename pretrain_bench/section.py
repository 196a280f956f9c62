"""Config building blocks: the frozen, strict `Section` every component's Config derives from, the
translation of pydantic's errors into one line that names the source, the field and the fix, and the
key-by-key merge of one config tree over another."""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from pretrain_bench.errors import UserError, closest


def merged(base: dict, extra: dict) -> dict:
    """`extra` over `base`, key by key into nested sections: a study's `budget: {minutes: 2}` keeps its
    recipe's curriculum, a DeepSpeed `{"zero_optimization": {"overlap_comm": true}}` keeps the stage."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# an AdamW beta: torch refuses one outside [0, 1) only when the optimizer is built, after data preparation
Beta = Annotated[float, Field(ge=0, lt=1)]


class Section(BaseModel):
    """A config section: unknown keys are errors (and so are infinite or NaN numbers), values are validated
    on assignment and frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


def _unwrap(annotation: Any) -> Any:
    """The Section class inside `X | None`, `Annotated[X, ...]`, `list[X]`, or None."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Annotated, list):
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _unwrap(arg)
            if found is not None:
                return found
        return None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def known_keys(root: type[BaseModel], loc: tuple) -> list[str]:
    """Valid key names at the level of `loc[-1]`, for did-you-mean suggestions."""
    cls: Any = root
    for part in loc[:-1]:
        if part.isdigit():  # an entry of a list, whose element class _unwrap has taken
            continue
        if cls is None or part not in cls.model_fields:
            return []
        cls = _unwrap(cls.model_fields[part].annotation)
    return list(cls.model_fields) if cls is not None else []


def override_of(fields: list[str], overrides: dict[str, str]) -> str | None:
    """The command-line override that set one of these dotted fields, a key inside one, or the section holding
    one ('budget.tokens=100' for a section-level "two budgets" error, 'tasks=[...]' for 'tasks.0.path')."""
    for field in fields:
        for key, text in overrides.items():
            if key == field or field.startswith(f"{key}.") or key.startswith(f"{field}."):
                return f"command-line override '{key}={text}'"
    return None


# the dotted fields a problem found across sections names ("data.seq_len 1024 exceeds model.max_position_...")
FIELD = re.compile(r"\b[a-z_]+(?:\.[a-z_]+)+\b")


def blamed(problem: str, source: str, overrides: dict[str, str]) -> str:
    """'file: problem', naming the override too when one set a field the problem names: the file alone
    would send the reader looking for a value it does not hold."""
    given = override_of(FIELD.findall(problem), overrides)
    return f"{source} with {given}: {problem}" if given else f"{source}: {problem}"


def validation_error(err: pydantic.ValidationError, root: type[BaseModel], source: str,
                     overrides: dict[str, str]) -> UserError:
    """One UserError listing every problem: where it came from, which field, what to do."""
    problems = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        dotted = ".".join(loc)
        origin = override_of([dotted], overrides) or source
        if e["type"] == "extra_forbidden":
            # a section that validates part of itself with another Config (MPA's base keys) names them in ctx
            hint = closest(loc[-1], [*known_keys(root, loc), *e.get("ctx", {}).get("known_keys", ())])
            problems.append(f"{origin}: unknown key '{dotted}'{hint}; remove or rename it")
        elif e["type"] == "missing":
            problems.append(f"{origin}: '{dotted}' is required; add it")
        else:
            value = e.get("input")
            problems.append(f"{origin}: '{dotted}' = {value!r} is invalid: {e['msg']}")
    return UserError("; ".join(problems))
