"""The run config: YAML plus `key.sub=value` overrides, validated as a whole before any work.

Each component owns its section (data_prep.prepare.DataConfig, models.backbone.ModelConfig,
train.loop.TrainConfig, train.budget.BudgetConfig, the objective's own Config); this module only
assembles them, resolves the objective by name and turns every problem into one clear line.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
import pydantic
import yaml
from pydantic import Field

from data_prep.prepare import DataConfig
from pretrain_bench import objectives
from pretrain_bench.errors import UserError
from pretrain_bench.models.backbone import ModelConfig
from pretrain_bench.objectives.base import ObjectiveConfig
from pretrain_bench.section import Section, blamed, validation_error
from pretrain_bench.train.budget import BudgetConfig
from pretrain_bench.train.loop import TrainConfig


class RunConfig(Section):
    """One pre-training run."""

    run_dir: str = Field(min_length=1, description="folder for config.yaml, metrics, checkpoints and final/")
    seed: int = Field(0, ge=0, description="seeds initialisation, data order and corruption")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    objective: ObjectiveConfig = Field(default_factory=lambda: ObjectiveConfig(name="mlm"))
    train: TrainConfig = Field(default_factory=TrainConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


class ConfigLoader(yaml.SafeLoader):
    """YAML 1.1 without its base-60 numbers: `hours: 1:30` is a value to refuse, not 90 hours."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver(  # PyYAML's own patterns, less the sexagesimal alternative
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?"
                                          r"|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def parse_yaml(text: str):
    return yaml.load(text, Loader=ConfigLoader)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found; give a YAML file such as configs/tiny-cpu.yaml")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys to values")
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict[str, str]:
    """Apply `a.b=value` strings (values parsed as YAML) in place; returns {dotted key: text}."""
    applied = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"command-line override '{item}': write it as key.sub=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"command-line override '{item}': '{part}' is not a section")
            node = child
        try:
            value = parse_yaml(text) if text else ""
        except yaml.YAMLError:
            value = text
        if re.search(r"(^|\s)#", text) and not isinstance(value, list | dict):  # 'run_dir=runs/my run #2' is
            value = text  # the text, not what precedes the '#' that YAML reads as a comment
        node[parts[-1]] = value
        applied[key] = text
    return applied


def validate(raw: dict, source: str, overrides: dict[str, str] | None = None,
             root: type[RunConfig] = RunConfig) -> RunConfig:
    """Validate a raw config tree whose objective section is checked against the named objective's Config."""
    raw = dict(raw)
    objective_raw = raw.setdefault("objective", {})
    if not isinstance(objective_raw, dict):
        raise UserError(f"{source}: 'objective' must be a mapping with a 'name' "
                        f"(one of {', '.join(objectives.available())})")
    objective_raw.setdefault("name", "mlm")
    objective_cls = objectives.get(str(objective_raw["name"]))
    model = pydantic.create_model(root.__name__, __base__=root, objective=(objective_cls.Config, ...))
    try:
        cfg = model.model_validate(raw)
    except pydantic.ValidationError as e:
        raise validation_error(e, model, source, overrides or {}) from None
    problems = cfg.model.problems() + objective_cls.check(cfg.objective, cfg.model) + cfg.train.problems(cfg)
    if problems:
        raise UserError("; ".join(blamed(problem, source, overrides or {}) for problem in problems))
    return cfg


def load(path: str | Path, overrides: list[str] = (), root: type[RunConfig] = RunConfig) -> RunConfig:
    raw = read_yaml(path)
    applied = apply_overrides(raw, list(overrides))
    return validate(raw, str(path), applied, root)
