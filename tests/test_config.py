"""Config errors: one line that names the source, the field and the fix."""

import pytest
import yaml

from pretrain_bench import config
from pretrain_bench.errors import UserError
from tests.conftest import REPO


def load(tmp_path, text, *overrides):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return config.load(path, list(overrides))


def test_shipped_configs_validate():
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if "run_dir" in raw and "objectives" not in raw:  # run configs (study configs are checked by the compare tests)
            config.load(path)


def test_defaults_and_required_keys(tmp_path):
    cfg = load(tmp_path, "run_dir: r\n", "budget.minutes=1")
    assert cfg.objective.name == "mlm" and cfg.model.size == "tiny" and cfg.train.max_steps is None
    with pytest.raises(UserError, match="neither train.max_steps nor a budget is set"):
        load(tmp_path, "run_dir: r\n")
    assert cfg.data.path and cfg.seed == 0
    with pytest.raises(UserError, match="'run_dir' is required"):
        load(tmp_path, "seed: 1\n")


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(UserError, match=r"c.yaml: unknown key 'train.lrr' \(did you mean 'lr'\?\)"):
        load(tmp_path, "run_dir: r\ntrain:\n  lrr: 0.1\n")
    with pytest.raises(UserError, match=r"unknown key 'objective.masking.rat' \(did you mean 'rate'\?\)"):
        load(tmp_path, "run_dir: r\nobjective:\n  name: mlm\n  masking:\n    rat: 0.2\n")


def test_wrong_type_names_field_and_override(tmp_path):
    with pytest.raises(UserError, match=r"'train.micro_batch_size' = 'many' is invalid"):
        load(tmp_path, "run_dir: r\ntrain:\n  micro_batch_size: many\n")
    with pytest.raises(UserError, match=r"command-line override 'train.lr=-1': 'train.lr' = -1 is invalid"):
        load(tmp_path, "run_dir: r\n", "train.lr=-1")


def test_overrides_parse_yaml_values(tmp_path):
    cfg = load(tmp_path, "run_dir: r\n", "train.eval_at=[0.5]", "model.size=mini", "budget.minutes=3",
               "objective.masking.selection=bernoulli")
    assert cfg.train.eval_at == [0.5] and cfg.model.size == "mini" and cfg.budget.seconds == 180
    assert cfg.objective.masking.selection == "bernoulli"
    with pytest.raises(UserError, match="write it as key.sub=value"):
        load(tmp_path, "run_dir: r\n", "train.lr")


def test_override_text_is_read_as_a_person_means_it(tmp_path):
    """A YAML comment sign inside the text is text; YAML 1.1's base-60 numbers are not numbers, in an
    override or a file ('1:30' would otherwise be 90 hours)."""
    cfg = load(tmp_path, "run_dir: r\ntrain:\n  max_steps: 1\n", "run_dir=runs/my run #2",
               "data.exclude=['notes #1.txt', b.txt]")
    assert cfg.run_dir == "runs/my run #2" and cfg.data.exclude == ["notes #1.txt", "b.txt"]
    with pytest.raises(UserError, match=r"command-line override 'budget.hours=1:30': 'budget.hours' = '1:30' is invalid"):
        load(tmp_path, "run_dir: r\n", "budget.hours=1:30")
    with pytest.raises(UserError, match=r"'budget.hours' = '1:30' is invalid"):
        load(tmp_path, "run_dir: r\nbudget:\n  hours: 1:30\n")
    assert load(tmp_path, "run_dir: r\ntrain:\n  lr: 2.0e-3\n  max_steps: 1_000\n").train.max_steps == 1000
    with pytest.raises(UserError, match=r"command-line override 'seed=#3': 'seed' = '#3' is invalid"):
        load(tmp_path, "run_dir: r\ntrain:\n  max_steps: 1\n", "seed=#3")


def test_a_partial_finetune_schedule_keeps_the_finetuning_defaults():
    from pretrain_bench.eval.finetune import FinetuneConfig

    schedule = FinetuneConfig(schedule={"floor": 0.1}).schedule
    assert (schedule.shape, schedule.warmup, schedule.floor) == ("cosine", 0.1, 0.1)
    assert FinetuneConfig(schedule={"shape": "linear"}).schedule.warmup == 0.1


def test_unknown_objective_and_cross_field_checks(tmp_path):
    with pytest.raises(UserError, match="did you mean 'mlm'"):
        load(tmp_path, "run_dir: r\nobjective:\n  name: mlmm\n")
    with pytest.raises(UserError, match="not divisible by model.num_heads"):
        load(tmp_path, "run_dir: r\nmodel:\n  hidden_size: 100\n  num_heads: 3\n")
    with pytest.raises(UserError, match="give one of hours, minutes, tokens"):
        load(tmp_path, "run_dir: r\nbudget:\n  hours: 1\n  tokens: 100\n")
    with pytest.raises(UserError, match="does not divide data.seq_len"):
        load(tmp_path, "run_dir: r\nbudget:\n  tokens: 1000\n  seq_len_curriculum: [{until: 0.5, seq_len: 48}]\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load(tmp_path, "run_dir: [r\n")
    with pytest.raises(UserError, match="config file not found"):
        config.load(tmp_path / "missing.yaml")


def test_every_field_is_documented():
    """Every config field carries a one-line description (the docs and --help are built from them)."""
    from pydantic import BaseModel

    seen, missing = set(), []

    def walk(model: type[BaseModel], prefix: str):
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            annotation = field.annotation
            nested = next((a for a in getattr(annotation, "__args__", (annotation,))
                           if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if nested is not None:
                walk(nested, f"{prefix}{name}.")
            elif not field.description and name != "name":
                missing.append(prefix + name)

    from pretrain_bench.objectives import available

    walk(config.RunConfig, "")
    for cls in available().values():
        walk(cls.Config, "objective.")
    assert not missing, f"fields without description: {missing}"


def test_configuration_reference_is_current():
    from pretrain_bench.reference import render

    assert (REPO / "docs" / "configuration.md").read_text() == render(), \
        "regenerate: python -m pretrain_bench.reference > docs/configuration.md"


def test_a_run_made_before_a_setting_existed_still_resumes(tmp_path):
    """A setting added to the tool since a run was made counts at its default, not as a change of config;
    a real change still blocks --resume."""
    from pretrain_bench.train import rundir

    cfg = config.load(REPO / "configs" / "tiny-cpu.yaml", [f"run_dir={tmp_path}"]).model_dump(mode="json")
    saved = yaml.safe_load(yaml.safe_dump(cfg))
    del saved["data"]["exclude"]  # as a run made before data.exclude existed wrote it
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    rundir.check(tmp_path, cfg, resume=True, overwrite=False)
    changed = {**cfg, "train": {**cfg["train"], "lr": cfg["train"]["lr"] * 2}}
    with pytest.raises(UserError, match="the run was made with a different config .*train.lr"):
        rundir.check(tmp_path, changed, resume=True, overwrite=False)


def test_max_steps_may_change_on_resume_only_where_a_budget_sets_the_length(tmp_path):
    """Without a budget, train.max_steps is what progress, and so the learning-rate schedule, is measured
    against: changing it would change what the resumed run learns. With a budget it is only a cap."""
    from pretrain_bench.train import rundir

    for budget, blocked in (([], True), (["budget.tokens=50000"], False)):
        cfg = config.load(REPO / "configs" / "tiny-cpu.yaml", [f"run_dir={tmp_path}", *budget])
        saved = cfg.model_dump(mode="json")
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
        longer = {**saved, "train": {**saved["train"], "max_steps": saved["train"]["max_steps"] * 2}}
        if blocked:
            with pytest.raises(UserError, match="the run was made with a different config .*train.max_steps"):
                rundir.check(tmp_path, longer, resume=True, overwrite=False)
        else:
            rundir.check(tmp_path, longer, resume=True, overwrite=False)
