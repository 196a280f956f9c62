"""Run a study: pre-train every objective (reusing finished runs, resuming interrupted ones), fine-tune
each on every task over the recipe's seeds (reusing results already on disk), plus the random-init
floor, and gather everything the report shows into one results dict.

Layout of the study folder:
    runs/<label>/                     one pre-training run per objective (config, metrics, final/)
    finetune/<label>/<task>/seedN.json  one fine-tuning result, keyed by what produced it
    report/                           report.md, results.json, plots
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from pretrain_bench.compare.config import FLOOR, StudyConfig
from pretrain_bench.errors import UserError
from pretrain_bench.eval.finetune import encode_task, finetune_once, load_tokenizer, model_folder
from pretrain_bench.eval.metrics import summarize
from pretrain_bench.eval.tasks import Task, load_task
from pretrain_bench.train import rundir
from pretrain_bench.train.checkpoint import atomic_write_text
from pretrain_bench.train.run import EXPORT_INFO, train

# Recipe keys that change speed only, not the result: changing them keeps cached fine-tuning results.
OPERATIONAL_KEYS = {"seeds", "threads", "eval_batch_size", "keep_freed_memory"}


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def pretrain(study: StudyConfig, runs: dict, log: Callable[[str], None]) -> None:
    """Each objective's run: a finished one (final/ written) is reused if made with the same settings, an
    interrupted one resumed from its last checkpoint (train() refuses one made with other settings)."""
    for number, (label, cfg) in enumerate(runs.items(), 1):
        run_dir = Path(cfg.run_dir)
        config_file = run_dir / "config.yaml"
        settings = cfg.model_dump(mode="json")
        if (run_dir / "final" / EXPORT_INFO).is_file():
            # any change but how the run was watched makes the finished run another experiment
            changed = rundir.differences(rundir.saved_config(config_file), settings)
            blocking = {k: v for k, v in changed.items() if k not in rundir.RESUMABLE_KEYS - {"train.max_steps"}}
            if blocking:
                detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(blocking.items())[:5])
                raise UserError(f"objective '{label}': the finished run in {run_dir} was made with other settings "
                                f"({detail}); to redo it, delete {run_dir}; to keep it, give the study another run_dir")
            log(f"compare: [{number}/{len(runs)}] '{label}': finished run reused ({run_dir})")
            continue
        started = config_file.is_file()
        log(f"compare: [{number}/{len(runs)}] '{label}': {'resuming' if started else 'pre-training'} "
            f"{cfg.objective.name} in {run_dir}")
        train(cfg, resume=started, log=log)


def export_info(folder: Path) -> dict | None:
    """The pretrain_bench.json of an exported model (beside it, or one level up for multi-model exports)."""
    for candidate in (folder / EXPORT_INFO, folder.parent / EXPORT_INFO):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def pretrain_record(cfg) -> dict:
    """What the report shows of one pre-training run: its export summary and loss curves."""
    run_dir = Path(cfg.run_dir)
    info = json.loads((run_dir / "final" / EXPORT_INFO).read_text())
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_lines = [r for r in lines if r["split"] == "train" and r.get("loss") is not None]
    eval_lines = [r for r in lines if r["split"] == "eval" and r.get("eval_loss") is not None]
    seconds = info["training_seconds"]
    return {
        "objective": cfg.objective.name, "run_dir": str(run_dir), "steps": info["steps"], "tokens": info["tokens"],
        "training_seconds": seconds, "tokens_per_s": info["tokens"] / seconds if seconds else None,
        "stop_reason": info.get("stop_reason"), "export_seconds": info.get("export_seconds"),
        "precision": info.get("precision"), "machine": info.get("machine"),  # absent before 2026-12-07
        "final_loss": train_lines[-1]["loss"] if train_lines else None,
        "final_eval_loss": eval_lines[-1]["eval_loss"] if eval_lines else None,
        "curve": {k: [r[k] for r in train_lines] for k in ("step", "tokens", "elapsed_s", "loss")},
        "eval_curve": {k: [r[k] for r in eval_lines] for k in ("step", "tokens", "elapsed_s", "eval_loss")},
    }


class Finetuner:
    """Fine-tunes models on tasks seed by seed, each result cached in its own file."""

    def __init__(self, study: StudyConfig, log: Callable[[str], None]):
        self.study, self.log = study, log
        self.root = Path(study.run_dir) / "finetune"
        self.recipe = study.finetune.model_dump(mode="json", exclude=OPERATIONAL_KEYS)
        self.tokenizers: dict[Path, object] = {}
        self.encoded: dict[tuple, tuple] = {}  # (task, tokenizer) -> encoded examples: shared by every model
        self.example_digests: dict[str, str] = {}  # task name -> digest of its examples

    def results(self, label: str, folder: Path, init: str, task: Task, task_cfg) -> list[dict]:
        # what makes the result: the pre-training run's summary, or for the floor the architecture and tokenizer
        identity = (export_info(folder) if init == "pretrained"
                    else [(folder / "config.json").read_text(), self._tokenizer_hash(folder)])
        if task.name not in self.example_digests:  # the examples themselves: the built-in task changes with the packages
            self.example_digests[task.name] = _digest([task.labels, asdict(task.train),
                                                       {split: asdict(examples) for split, examples in task.evals.items()}])
        key = _digest({"recipe": self.recipe, "task": task_cfg.model_dump(mode="json"), "init": init,
                       "model": identity, "examples": self.example_digests[task.name]})
        out, reused = [], []
        for seed in self.study.finetune.seeds:
            path = self.root / label / task.name / f"seed{seed}.json"
            cached = json.loads(path.read_text()) if path.is_file() else None
            if cached is not None and cached["key"] == key:
                out.append(cached["result"])
                reused.append(seed)
                continue
            if cached is not None:
                self.log(f"compare: {path} was made with another recipe, task or checkpoint; fine-tuning again")
            result = self._run(folder, init, task, seed)
            self.log(f"compare: '{label}' on {task.name}, seed {seed}: " + ", ".join(
                f"{k} {100 * v:.1f}" for k, v in result["metrics"].items()) + f" ({result['seconds']:.0f}s)")
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({"key": key, "result": result}, indent=1))
            out.append(result)
        if reused:
            self.log(f"compare: '{label}' on {task.name}: seed(s) {', '.join(map(str, reused))} reused")
        return out

    def _tokenizer(self, folder: Path):
        if folder not in self.tokenizers:
            self.tokenizers[folder] = load_tokenizer(folder)
        return self.tokenizers[folder]

    def _tokenizer_hash(self, folder: Path) -> str:
        from data_prep.tokenizer import fingerprint

        return fingerprint(self._tokenizer(folder))

    def _run(self, folder: Path, init: str, task: Task, seed: int) -> dict:
        tokenizer = self._tokenizer(folder)
        memo = (task.name, self._tokenizer_hash(folder))
        if memo not in self.encoded:
            self.encoded[memo] = encode_task(tokenizer, task, self.study.finetune.max_seq_len)
        train, evals = self.encoded[memo]
        return finetune_once(folder, tokenizer, task, train, evals, self.study.finetune, seed, init)


def floors(exports: dict[str, Path]) -> dict[str, tuple[Path, list[str]]]:
    """One random-init floor per architecture the objectives exported (an ELECTRA discriminator is another model
    than a BERT): floor label -> (an export to take the architecture from, the objectives it is the floor of).
    The first architecture's floor is FLOOR; another's is FLOOR-<the first objective with it>."""
    groups: dict[str, list[str]] = {}
    for label, folder in exports.items():
        config = json.loads((folder / "config.json").read_text())
        config.pop("architectures", None)  # the pre-training head: every floor gets the task's head instead
        groups.setdefault(_digest(config), []).append(label)
    return {FLOOR if i == 0 else f"{FLOOR}-{labels[0]}": (exports[labels[0]], labels)
            for i, labels in enumerate(groups.values())}


def run_study(study: StudyConfig, runs: dict, log: Callable[[str], None] = print) -> dict:
    """Pre-train, fine-tune, and return the results the report is written from."""
    cache_dir = Path(study.data.cache_dir).expanduser()
    tasks = [(cfg, load_task(cfg, cache_dir)) for cfg in study.tasks]  # bad task files fail before any training
    pretrain(study, runs, log)
    models = {label: (model_folder(cfg.run_dir), "pretrained", cfg.objective.name) for label, cfg in runs.items()}
    floor_of = {}
    if study.random_init_floor:
        for floor, (folder, labels) in floors({label: model[0] for label, model in models.items()}).items():
            models[floor] = (folder, "random", None)
            floor_of |= dict.fromkeys(labels, floor)
    finetuner = Finetuner(study, log)
    results = {"study": study.model_dump(mode="json"), "tasks": {}, "models": {}}
    for task_cfg, task in tasks:
        for note in task.notes:
            log(f"compare: {task.name}: {note}")
        dev_labels = task.evals["dev"].labels
        results["tasks"][task.name] = {
            "path": task_cfg.path, "labels": list(task.labels), "metrics": task.metric_keys(),
            "train_examples": len(task.train), "eval_examples": {s: len(e) for s, e in task.evals.items()},
            # what always answering the commonest dev label scores in accuracy: the chance line
            "majority_dev_accuracy": None if task.regression else max(map(dev_labels.count, set(dev_labels))) / len(dev_labels),
            "notes": list(task.notes)}
    for label, (folder, init, objective) in models.items():
        entry = {"objective": objective, "init": init, "model": str(folder), "floor": floor_of.get(label),
                 "pretrain": pretrain_record(runs[label]) if label in runs else None, "tasks": {}}
        for task_cfg, task in tasks:
            seeds = finetuner.results(label, folder, init, task, task_cfg)
            entry["tasks"][task.name] = {
                "score": summarize([r["score"] for r in seeds]),
                "metrics": {k: summarize([r["metrics"][k] for r in seeds]) for k in task.metric_keys()},
                "seeds": seeds}
        scores = [t["score"]["median"] for t in entry["tasks"].values()]
        entry["average"] = sum(scores) / len(scores)
        results["models"][label] = entry
    return results
