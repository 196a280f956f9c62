"""`compare` end to end on a tiny budget with two objectives (mlm and the test plug-in), two generated
tasks and the random-init floor: the report's table, JSON and plots exist and agree; a second call
reuses every finished run and result; the study config fails early with one clear line."""

import json
import re
from pathlib import Path

import pytest
import yaml
from matplotlib.image import imread

from pretrain_bench.cli import main
from pretrain_bench.compare import config
from pretrain_bench.compare.report import spread
from pretrain_bench.errors import UserError
from pretrain_bench.train import rundir
from tests import tasks
from tests.conftest import REPO

pytestmark = pytest.mark.e2e
LABELS = ["mlm", "shuffled", "random-init"]
STEPS, MICRO_BATCH, SEQ_LEN = 8, 16, 64


def study_config(root: Path, corpus_file, cache_dir) -> dict:
    return {
        "run_dir": str(root / "study"), "seed": 0,
        "data": {"path": str(corpus_file), "cache_dir": str(cache_dir), "seq_len": SEQ_LEN, "num_proc": 1,
                 "tokenizer": {"vocab_size": 400}},
        "model": {"size": "tiny"},
        "train": {"max_steps": STEPS, "micro_batch_size": MICRO_BATCH, "num_workers": 0, "threads": 1, "lr": 2e-3, "log_every": 2,
                  "eval_at": [0.5, 1.0], "eval_batches": 2, "checkpoint_every_minutes": None},
        "objectives": [{"name": "mlm"},
                       {"name": "tests.plugins.shuffle_objective:Shuffled", "label": "shuffled",
                        "masking": {"rate": 0.3}}],
        "tasks": [{"path": str(tasks.write(root / "SST-2", "binary", train=48, dev=24))},
                  {"path": str(tasks.write(root / "STS-B", "regression", train=48, dev=24)), "name": "sts"}],
        "finetune": {"epochs": 2, "batch_size": 16, "lr": 2e-3, "seeds": [0, 1], "threads": 1},
    }


def run(path: Path, capsys, *overrides) -> str:
    assert main(["compare", str(path), *overrides]) == 0
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def study(tmp_path_factory, corpus_file, cache_dir):
    root = tmp_path_factory.mktemp("compare")
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study_config(root, corpus_file, cache_dir)))
    with pytest.MonkeyPatch.context() as patch:  # module-scoped capture of the first run's log
        lines = []
        patch.setattr("sys.stderr", _Tee(lines))
        assert main(["compare", str(path)]) == 0
    return path, root / "study", "".join(lines)


class _Tee:
    def __init__(self, lines):
        self.lines = lines

    def write(self, text):
        self.lines.append(text)

    def flush(self):
        pass


def table(markdown: str, first_header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header starts with `first_header`, as cells."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_report_table_json_and_plots_agree(study):
    _, folder, log = study
    report = folder / "report"
    results = json.loads((report / "results.json").read_text())
    assert list(results["models"]) == LABELS and list(results["tasks"]) == ["sst2", "sts"]
    markdown = (report / "report.md").read_text()
    scores = table(markdown, "model")
    assert [row[0] for row in scores] == [f"`{label}`" for label in LABELS]
    for row, label in zip(scores, LABELS):
        entry = results["models"][label]
        assert row[2:4] == [spread(entry["tasks"][t]["score"]) for t in ("sst2", "sts")]
        assert row[4] == f"{100 * entry['average']:.1f}"
        for task in ("sst2", "sts"):
            seeds = entry["tasks"][task]["seeds"]
            assert [s["seed"] for s in seeds] == [0, 1] and {s["init"] for s in seeds} == {
                "random" if label == "random-init" else "pretrained"}
            assert entry["tasks"][task]["score"]["values"] == [s["score"] for s in seeds]
            assert all((folder / "finetune" / label / task / f"seed{s}.json").is_file() for s in (0, 1))
    sst2_dev = [int(line.split("\t")[1]) for line in (Path(results["tasks"]["sst2"]["path"]) / "dev.tsv").read_text().splitlines()[1:]]
    majority = max(sst2_dev.count(0), sst2_dev.count(1)) / len(sst2_dev)
    assert results["tasks"]["sst2"]["majority_dev_accuracy"] == majority and results["tasks"]["sts"]["majority_dev_accuracy"] is None
    assert f"the commonest dev label is {100 * majority:.1f}% of dev" in markdown
    median = results["models"]["mlm"]["tasks"]["sts"]["metrics"]["pearson"]["median"]
    assert re.search(rf"\| sts \| pearson \| {100 * median:.1f} ", markdown)

    pretraining = {row[0].strip("`"): row for row in table(markdown, "model | objective | steps")}
    assert list(pretraining) == ["mlm", "shuffled"]
    for label in ("mlm", "shuffled"):
        run = results["models"][label]["pretrain"]
        info = json.loads((folder / "runs" / label / "final" / "pretrain_bench.json").read_text())
        assert run["steps"] == info["steps"] == STEPS
        assert run["tokens"] == info["tokens"] == STEPS * MICRO_BATCH * SEQ_LEN  # the same budget for both
        assert pretraining[label][2:4] == [str(STEPS), f"{run['tokens']:,}"]
        assert run["tokens_per_s"] == pytest.approx(run["tokens"] / run["training_seconds"])
        assert run["curve"]["tokens"][-1] == run["tokens"] and len(run["eval_curve"]["eval_loss"]) == 2
        assert f"{run['final_loss']:.3f}" == pretraining[label][6]
        assert run["machine"] == info["machine"] and run["precision"] == info["precision"] == "fp32"
    machine = results["models"]["mlm"]["pretrain"]["machine"]
    assert f"Pre-trained on {machine}, fp32: `mlm`, `shuffled`." in markdown
    assert results["models"]["shuffled"]["objective"] == "tests.plugins.shuffle_objective:Shuffled"

    # equal settings: the two runs differ in their objective and nothing else
    configs = [yaml.safe_load((folder / "runs" / label / "config.yaml").read_text()) for label in ("mlm", "shuffled")]
    assert {key.split(".")[0] for key in rundir.differences(*configs)} == {"objective", "run_dir"}

    for plot in ("pretrain_loss.png", "downstream.png"):
        image = imread(report / plot)
        assert image.shape[0] > 200 and image.shape[1] > 400 and image.std() > 0  # drawn, not blank
        assert f"]({plot})" in markdown
    assert "'mlm': pre-training" in log and "'shuffled': pre-training" in log


def test_second_call_reuses_finished_runs_and_results(study, capsys):
    path, folder, _ = study
    watched = [folder / "runs" / label / "metrics.jsonl" for label in ("mlm", "shuffled")]
    watched += sorted((folder / "finetune").rglob("seed*.json"))
    before = {p: p.stat().st_mtime_ns for p in watched}
    results_before = json.loads((folder / "report" / "results.json").read_text())["models"]

    log = run(path, capsys, "finetune.threads=2", "finetune.keep_freed_memory=false", "train.log_every=4")  # speed, watching
    assert log.count("finished run reused") == 2 and "pre-training" not in log
    assert re.findall(r"seed \d+: ", log) == []  # no fine-tuning at all
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert json.loads((folder / "report" / "results.json").read_text())["models"] == results_before

    redo = folder / "finetune" / "shuffled" / "sts" / "seed1.json"
    redo.unlink()
    log = run(path, capsys)
    assert re.findall(r"'(\S+)' on (\S+), seed (\d+): ", log) == [("shuffled", "sts", "1")]
    again = json.loads(redo.read_text())["result"]
    first = next(s for s in results_before["shuffled"]["tasks"]["sts"]["seeds"] if s["seed"] == 1)
    assert (again["metrics"], again["epoch_train_loss"]) == (first["metrics"], first["epoch_train_loss"])  # same seed
    assert all(p.stat().st_mtime_ns == t for p, t in before.items() if p != redo)


def test_a_changed_recipe_or_task_file_is_fine_tuned_again(study, capsys):
    path, folder, _ = study
    log = run(path, capsys, "finetune.lr=1e-3")
    assert log.count("was made with another recipe, task or checkpoint; fine-tuning again") == 3 * 2 * 2
    results = json.loads((folder / "report" / "results.json").read_text())
    dev = Path(results["tasks"]["sst2"]["path"]) / "dev.tsv"
    dev.write_text(dev.read_text() + "the cat sits on a mat\t1\n")  # the same settings, other examples
    log = run(path, capsys, "finetune.lr=1e-3")
    assert {(label, task) for label, task, _ in re.findall(r"'(\S+)' on (\S+), seed (\d+): ", log)} == {
        (label, "sst2") for label in LABELS}


def test_changed_pretraining_settings_are_refused_before_any_work(study, capsys):
    path, folder, _ = study
    assert main(["compare", str(path), "train.lr=1e-3"]) == 2
    error = capsys.readouterr().err
    assert "objective 'mlm': the finished run" in error and "train.lr: 0.002 -> 0.001" in error
    assert f"delete {folder / 'runs' / 'mlm'}" in error


@pytest.mark.parametrize("change,message", [
    ({"objectives": [{"name": "mlm"}, {"name": "mlm", "masking": {"rate": 0.3}}]}, r"objectives\[1\]: label 'mlm' is used twice"),
    ({"objectives": [{"name": "mlm", "label": "random-init"}]}, r"objectives\[0\]: label 'random-init'"),
    ({"objectives": [{"name": "mlm", "label": "random-init-mlm"}]}, r"objectives\[0\]: label 'random-init-mlm'"),
    ({"objectives": [{"name": "mlm", "masking": {"rat": 0.3}}]}, r"unknown key 'objectives\[0\]\.masking\.rat' \(did you mean 'rate'\?\)"),
    ({"objectives": [{"name": "mlmm"}]}, r"study.yaml: objectives\[0\]\.name: unknown objective 'mlmm' \(did you mean 'mlm'\?\)"),
    ({"objectives": [{"name": "mpa", "base_config": {"masking": {"rate": 0.4}}}]},
     r"objectives\[0\]\.base_config' = .* write the base objective's keys flat in objectives\[0\]\.\*"),
    ({"objectives": []}, r"'objectives' = \[\] is invalid"),
    ({"tasks": [{"path": "nowhere/SST-2"}]}, r"tasks\[0\]\.path 'nowhere/SST-2' is not a folder"),
    ({"tasks": [{"path": "builtin:docstrings"}, {"path": "builtin:docstrings"}]}, r"tasks\[1\]: a second task named 'docstrings'"),
    ({"finetune": {"seeds": []}}, r"'finetune\.seeds' = \[\] is invalid"),
    ({"finetune": {"pooling": "mean"}}, r"study.yaml: finetune.pooling 'mean' needs model.arch crammed"),
    ({"budget": {"minutes": 1, "tokens": 5}}, r"give one of hours, minutes, tokens"),
    ({"finetune": {"reinit_top_layers": 3}}, r"study.yaml: finetune.reinit_top_layers 3 exceeds the encoder's 2 layers"),
    ({"finetune": {"max_seq_len": 1024}}, r"study.yaml: finetune.max_seq_len 1024 exceeds model.max_position_embeddings"),
])
def test_study_config_errors(tmp_path, corpus_file, cache_dir, change, message):
    raw = {**study_config(tmp_path, corpus_file, cache_dir), **change}
    with pytest.raises(UserError, match=message):
        config.validate(raw, "study.yaml")


def test_a_problem_across_sections_names_the_override_that_caused_it(tmp_path, corpus_file, cache_dir):
    raw = {**study_config(tmp_path, corpus_file, cache_dir), "finetune": {"reinit_top_layers": 3, "max_seq_len": 256},
           "model": {"size": "tiny", "max_position_embeddings": 128}}
    with pytest.raises(UserError) as caught:
        config.validate(raw, "study.yaml", {"finetune.reinit_top_layers": "3"})
    assert str(caught.value) == (
        "study.yaml with command-line override 'finetune.reinit_top_layers=3': finetune.reinit_top_layers 3 exceeds "
        "the encoder's 2 layers; lower it; study.yaml: finetune.max_seq_len 256 exceeds "
        "model.max_position_embeddings 128; lower the former")


def test_pretrain_recipe_is_overridden_key_by_key(tmp_path, corpus_file, cache_dir):
    recipe = {"run_dir": "r", "seed": 3, "model": {"size": "mini", "hidden_size": 128, "num_heads": 4},
              "train": {"lr": 5e-3, "micro_batch_size": 8}, "budget": {"minutes": 10},
              "objective": {"name": "wwm"}}  # a recipe's own objective is not the study's
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    raw = study_config(tmp_path, corpus_file, cache_dir)
    del raw["model"], raw["seed"]
    raw["train"] = {"lr": 1e-3}
    raw["pretrain_recipe"] = str(tmp_path / "recipe.yaml")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    study, runs = config.load(path, ["budget.minutes=2"])
    run = runs["mlm"]
    assert (run.seed, run.model.size, run.model.hidden_size) == (3, "mini", 128)  # from the recipe
    assert (run.train.lr, run.train.micro_batch_size) == (1e-3, 8)  # the study's key over the recipe's section
    assert run.budget.minutes == 2 and run.objective.name == "mlm" and run.data.seq_len == SEQ_LEN
    _, runs = config.load(path, ["budget.tokens=4096"])  # another kind of budget replaces the recipe's minutes
    assert (runs["mlm"].budget.tokens, runs["mlm"].budget.minutes) == (4096, None)

    recipe["model"]["num_heads"] = 3  # the recipe's own mistake is named in the recipe's file
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(UserError, match=r"recipe.yaml: model.hidden_size 128 is not divisible by model.num_heads 3"):
        config.load(path)
    with pytest.raises(UserError, match=r"study.yaml: pretrain_recipe 'nowhere.yaml' is not a file; give a "
                                        r"pre-training config such as configs/recipes/cpu-10min.yaml"):
        config.load(path, ["pretrain_recipe=nowhere.yaml"])


def test_each_architecture_is_scored_against_its_own_floor(tmp_path):
    """An ELECTRA discriminator is another model than a BERT: each objective is compared with a random-init model
    of the architecture it exported (the pre-training head aside), not with the first objective's."""
    from pretrain_bench.compare.report import _floor_lines
    from pretrain_bench.compare.runner import floors

    bert = {"model_type": "bert", "hidden_size": 64, "architectures": ["BertForMaskedLM"]}
    exports = {}
    for label, exported in (("mlm", bert), ("mac", {**bert, "architectures": ["BertForPreTraining"]}),
                            ("electra", {"model_type": "electra", "hidden_size": 64,
                                         "architectures": ["ElectraForPreTraining"]})):
        (tmp_path / label).mkdir()
        (tmp_path / label / "config.json").write_text(json.dumps(exported))
        exports[label] = tmp_path / label
    assert floors(exports) == {"random-init": (exports["mlm"], ["mlm", "mac"]),
                               "random-init-electra": (exports["electra"], ["electra"])}

    def scored(median):
        return {"sst2": {"score": {"median": median, "min": median, "max": median}}}

    models = {"mlm": {"init": "pretrained", "floor": "random-init", "tasks": scored(0.8)},
              "electra": {"init": "pretrained", "floor": "random-init-electra", "tasks": scored(0.6)},
              "random-init": {"init": "random", "floor": None, "tasks": scored(0.7)},
              "random-init-electra": {"init": "random", "floor": None, "tasks": scored(0.5)}}
    every_seed = "beats the floor on every seed (the seed ranges do not overlap)"
    assert _floor_lines({"models": models}) == [
        f"- `mlm` on sst2: +10.0 points against random-init (median); {every_seed}.",
        f"- `electra` on sst2: +10.0 points against random-init-electra (median); {every_seed}."]


@pytest.mark.parametrize("name", ["quickstart", "compare-en", "compare-zh", "study/main-job-cpu-10min"])
def test_shipped_study_configs_validate(name):
    study, runs = config.load(REPO / "configs" / f"{name}.yaml")
    assert len(runs) >= 2 and study.random_init_floor and len(study.finetune.seeds) >= 3
    assert len({run.model_dump_json(exclude={"run_dir", "objective"}) for run in runs.values()}) == 1  # equal settings


def test_study_task_and_recipe_fields_are_documented():
    from pretrain_bench.eval.finetune import FinetuneConfig, FinetuneJob
    from pretrain_bench.eval.tasks import TaskConfig

    missing = [f"{model.__name__}.{name}" for model in (config.StudyConfig, TaskConfig, FinetuneConfig, FinetuneJob)
               for name, field in model.model_fields.items() if not field.description]
    assert not missing
