"""The study config: the run settings every objective shares (data, model, train, budget, seed), the
objectives to compare, the downstream tasks and the fine-tuning recipe. Validated as a whole before
any work, each objective against its own Config, with one line per problem."""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
from pydantic import Field

from data_prep.prepare import DataConfig
from pretrain_bench import config as run_config
from pretrain_bench.errors import UserError
from pretrain_bench.eval.finetune import FinetuneConfig
from pretrain_bench.eval.tasks import DOCSTRINGS, TaskConfig, task_name
from pretrain_bench.models.backbone import ModelConfig
from pretrain_bench.section import Section, blamed, merged, validation_error
from pretrain_bench.train.budget import AMOUNTS, BudgetConfig
from pretrain_bench.train.loop import TrainConfig

FLOOR = "random-init"  # the label of the randomly initialised encoder
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # labels name folders
SHARED = ("seed", "data", "model", "train", "budget")  # what every objective's run shares


class StudyConfig(Section):
    """Objectives side by side at equal budget, each fine-tuned on every task."""

    run_dir: str = Field(min_length=1, description="study folder: runs/<label>/ (pre-training), finetune/ (results per seed), report/")
    pretrain_recipe: str | None = Field(None, description="a pre-training config (e.g. configs/recipes/cpu-10min.yaml) "
                                        "whose seed, data, model, train and budget the study starts from; the "
                                        "sections written here override it key by key")
    seed: int = Field(0, ge=0, description="pre-training seed, the same for every objective")
    data: DataConfig = Field(default_factory=DataConfig, description="the corpus and tokenizer, shared")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the encoder shape, shared")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation settings, shared")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="the equal budget of every run")
    objectives: list[dict] = Field(min_length=1, description="objective sections (name + its own keys) with an "
                                   "optional label; each is checked against its objective's Config")
    tasks: list[TaskConfig] = Field(min_length=1, description="downstream tasks (folders or builtin:docstrings)")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="the one fine-tuning recipe")
    random_init_floor: bool = Field(True, description="also fine-tune a randomly initialised encoder of the same "
                                    "shape: the floor every objective should beat")


def load(path: str | Path, overrides: list[str] = ()) -> tuple[StudyConfig, dict[str, run_config.RunConfig]]:
    """The study and one validated RunConfig per objective label, in the config's order."""
    raw = run_config.read_yaml(path)
    applied = run_config.apply_overrides(raw, list(overrides))
    return validate(over_recipe(raw, str(path)), str(path), applied)


def over_recipe(raw: dict, source: str) -> dict:
    """The study's shared sections laid key by key over those of its `pretrain_recipe`, if it names one."""
    recipe = raw.get("pretrain_recipe")
    if recipe is None:
        return raw
    if not Path(str(recipe)).is_file():
        raise UserError(f"{source}: pretrain_recipe '{recipe}' is not a file; give a pre-training config such as "
                        f"configs/recipes/cpu-10min.yaml (relative to the working directory, as every path)")
    base = run_config.read_yaml(recipe)
    run_config.validate(base, str(recipe))  # a whole pre-training config: its problems are named in its file
    shared = {key: base[key] for key in SHARED if key in base}
    budget = raw.get("budget")
    if isinstance(budget, dict) and any(k in budget for k in AMOUNTS):  # the study's amount replaces the recipe's
        shared["budget"] = {k: v for k, v in (shared.get("budget") or {}).items() if k not in AMOUNTS}
    return merged(shared, raw)


def validate(raw: dict, source: str, applied: dict[str, str] | None = None):
    try:
        study = StudyConfig.model_validate(raw)
    except pydantic.ValidationError as e:
        raise validation_error(e, StudyConfig, source, applied or {}) from None
    runs = {}
    shared = study.model_dump(mode="json", include=set(SHARED))
    for i, entry in enumerate(study.objectives):
        entry = dict(entry)
        label = str(entry.pop("label", entry.get("name", "mlm")))
        where = f"{source}: objectives[{i}]"
        if not LABEL.match(label) or label.startswith(FLOOR):
            raise UserError(f"{where}: label '{label}' cannot name a folder (or is reserved); use letters, digits, "
                            f"'-', '_', '.', '+', not starting '{FLOOR}'")
        if label in runs:
            raise UserError(f"{where}: label '{label}' is used twice; give each objective a distinct label")
        run_dir = str(Path(study.run_dir) / "runs" / label)
        try:
            runs[label] = run_config.validate({**shared, "run_dir": run_dir, "objective": entry}, where, applied)
        except UserError as e:  # name the list entry, not the single-run key
            message = re.sub(r"\bobjective\.", f"objectives[{i}].", str(e))
            raise UserError(message if message.startswith(source) else f"{source}: {message}") from None
    problems = []  # between fine-tuning and the model: found now, not after pre-training
    if study.finetune.pooling is not None and study.model.arch != "crammed":
        problems.append(f"finetune.pooling '{study.finetune.pooling}' needs model.arch crammed (ModernBERT pools by "
                        f"config; BERT and ELECTRA classifiers read [CLS]); set finetune.pooling: null")
    layers = study.model.dims()[0]
    if study.finetune.reinit_top_layers > layers:
        problems.append(f"finetune.reinit_top_layers {study.finetune.reinit_top_layers} exceeds the encoder's "
                        f"{layers} layers; lower it")
    if study.finetune.max_seq_len > study.model.max_position_embeddings:
        problems.append(f"finetune.max_seq_len {study.finetune.max_seq_len} exceeds model.max_position_embeddings "
                        f"{study.model.max_position_embeddings}; lower the former")
    if problems:
        raise UserError("; ".join(blamed(problem, source, applied or {}) for problem in problems))
    names = []
    for i, task in enumerate(study.tasks):
        where = f"{source}: tasks[{i}]"
        if task.path != DOCSTRINGS and not Path(task.path).expanduser().is_dir():
            raise UserError(f"{where}.path '{task.path}' is not a folder; give a GLUE/CLUE task folder or '{DOCSTRINGS}'")
        try:
            name = task_name(task)  # resolves the folder's format
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        if name in names:
            raise UserError(f"{where}: a second task named '{name}'; give one of them a distinct 'name'")
        if not LABEL.match(name):
            raise UserError(f"{where}: name '{name}' cannot name a folder; use letters, digits, '-', '_', '.', '+'")
        names.append(name)
    return study, runs
