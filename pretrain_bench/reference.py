"""The config reference (docs/configuration.md), rendered from the Config classes themselves so the
docs cannot drift from the code: `python -m pretrain_bench.reference > docs/configuration.md`."""

from __future__ import annotations

import json
import types
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pretrain_bench.section import _unwrap


def _default(field) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return ""
    else:
        return "required"
    if isinstance(value, BaseModel):
        return ""
    return f"`{json.dumps(value, default=str)}`"


def _type(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:  # the constraints are in the meaning column
        return _type(args[0])
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def section_rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        if (field.json_schema_extra or {}).get("internal"):  # filled by a validator, never written by users
            continue
        nested = _unwrap(field.annotation)
        if nested is not None and typing.get_origin(field.annotation) is not list:
            if field.default is None:  # an optional section: its keys' "required" holds once it is given
                rows.append(f"| `{prefix}{name}` | section or null | `null` | {field.description or ''} |")
            rows += section_rows(nested, f"{prefix}{name}.")
            continue
        rows.append(f"| `{prefix}{name}` | {_type(field.annotation)} | {_default(field)} | {field.description or ''} |")
    return rows


def render() -> str:
    from pretrain_bench.config import RunConfig
    from pretrain_bench.objectives import available

    head = "| key | type | default | meaning |\n|---|---|---|---|"
    parts = ["# Configuration reference", "",
             "Generated from the Config classes (`python -m pretrain_bench.reference > docs/configuration.md`); "
             "a test keeps it current. Every key can be set in YAML or on the command line as `key.sub=value`.", "",
             "## Run", "", head, *[r for r in section_rows(RunConfig, "") if not r.startswith("| `objective.")]]
    for name, cls in available().items():
        parts += ["", f"## objective.name: {name}", "", cls.summary, "", head,
                  *[r for r in section_rows(cls.Config, "objective.") if not r.startswith("| `objective.name`")]]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")
