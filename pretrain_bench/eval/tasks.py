"""Downstream tasks: a folder in a GLUE or CLUE/FewCLUE layout (or the built-in offline task) to
labelled examples, with every unreadable line reported as one clear error naming the file and line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import Field

from pretrain_bench.errors import UserError, closest
from pretrain_bench.eval.formats import LAYOUTS, UNSUPPORTED, Layout, layout_name
from pretrain_bench.section import Section

SUBSAMPLE_SEED = 0  # caps and dev splits pick the same rows whatever the fine-tuning seed
DOCSTRINGS = "builtin:docstrings"  # the offline task derived from the built-in corpus (eval/builtin.py)


class TaskConfig(Section):
    """One downstream task and how much of it to use."""

    path: str = Field(description="task folder (GLUE TSV or CLUE/FewCLUE JSON layout) or 'builtin:docstrings'")
    name: str | None = Field(None, description="name in reports (default: the format name, e.g. sst2)")
    format: str | None = Field(None, description="layout of the folder (sst2, cola, stsb, mrpc, qqp, mnli, qnli, "
                               "rte, wnli, tnews, iflytek, ocnli, cmnli, bustm, afqmc, csldcp, csl, cluewsc); "
                               "default: the folder's name")
    train_file: str | None = Field(None, description="training file inside the folder (default: the layout's)")
    dev_file: str | None = Field(None, description="evaluation file inside the folder (default: the layout's dev "
                                 "file; e.g. test_public.json for FewCLUE's larger labelled test set)")
    split_dev: float | None = Field(None, gt=0, lt=1, description="for folders without a training file (QNLI, "
                                    "QQP new_dev.tsv, CLUE dev only): train on this share of the dev rows instead, "
                                    "evaluate on the rest")
    max_train_examples: int | None = Field(None, ge=1, description="train on at most this many examples "
                                           "(a fixed random subset)")
    max_dev_examples: int | None = Field(None, ge=1, description="evaluate on at most this many examples "
                                         "(a fixed random subset)")


@dataclass(frozen=True)
class Examples:
    """Sentences (or sentence pairs) and their labels: label indices, or floats for regression."""

    text_a: list[str]
    text_b: list[str] | None
    labels: list

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices) -> "Examples":
        def pick(values):
            return [values[i] for i in indices]

        return Examples(pick(self.text_a), None if self.text_b is None else pick(self.text_b), pick(self.labels))


@dataclass(frozen=True)
class Task:
    """A loaded task: training examples, one or more evaluation sets ('dev' first) and its metrics."""

    name: str
    labels: tuple[str, ...]  # label names by index; empty for regression
    metrics: tuple[str, ...]
    train: Examples
    evals: dict[str, Examples]
    notes: tuple[str, ...] = field(default=())  # skipped rows and similar facts for the report

    @property
    def regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1

    def metric_keys(self) -> list[str]:
        """'accuracy' on dev, 'accuracy_mismatched' on MNLI's dev_mismatched, ..."""
        return [metric if split == "dev" else f"{metric}_{split.removeprefix('dev_')}"
                for split in self.evals for metric in self.metrics]


def load_task(cfg: TaskConfig, cache_dir: Path) -> Task:
    """The task `cfg` names, with its caps and dev split applied."""
    if cfg.path == DOCSTRINGS:
        from pretrain_bench.eval.builtin import docstrings_task

        task = docstrings_task(cache_dir, task_name(cfg))
    else:
        task = _folder_task(cfg)
    return _capped(task, cfg)


def task_name(cfg: TaskConfig) -> str:
    """The name a task goes by in reports: its `name`, else its format (sst2, cola, ...) or 'docstrings'."""
    return cfg.name or ("docstrings" if cfg.path == DOCSTRINGS else format_of(cfg))


def format_of(cfg: TaskConfig) -> str:
    name = cfg.format or layout_name(Path(cfg.path).name)
    if name in UNSUPPORTED:
        raise UserError(f"task {cfg.path}: {UNSUPPORTED[name]}; leave it out of the task list")
    if name not in LAYOUTS:
        raise UserError(f"task {cfg.path}: unknown task format '{name}'{closest(name, LAYOUTS)}; name the "
                        f"folder after its task or set the task's format to one of {', '.join(LAYOUTS)}")
    return name


def _folder_task(cfg: TaskConfig) -> Task:
    folder = Path(cfg.path).expanduser()
    if not folder.is_dir():
        raise UserError(f"task path '{cfg.path}' is not a folder; give a GLUE/CLUE task folder or 'builtin:docstrings'")
    format_name = format_of(cfg)
    layout = LAYOUTS[format_name]
    eval_names = {**layout.evals, **({"dev": (cfg.dev_file,)} if cfg.dev_file else {})}
    train_names = (cfg.train_file,) if cfg.train_file else layout.train
    files = {split: _pick(folder, names) for split, names in eval_names.items()}
    if files["dev"] is None:
        raise UserError(f"task {folder}: no evaluation file ({' or '.join(eval_names['dev'])}); "
                        "add it or set the task's dev_file")
    files = {split: path for split, path in files.items() if path is not None}
    notes: list[str] = []
    rows = {split: _read(path, layout, notes) for split, path in files.items()}
    if cfg.split_dev is not None:
        order = np.random.default_rng(SUBSAMPLE_SEED).permutation(len(rows["dev"]))
        cut = int(round(len(order) * cfg.split_dev))
        if cut in (0, len(order)):
            raise UserError(f"task {folder}: split_dev={cfg.split_dev} leaves one side of the {len(order)} dev rows "
                            "empty; choose a share between them")
        rows["train"] = [rows["dev"][i] for i in sorted(order[:cut])]
        rows["dev"] = [rows["dev"][i] for i in sorted(order[cut:])]
        files["train"] = files["dev"]
        notes.append(f"trained on {cut} of the {len(order)} rows of {files['dev'].name} (split_dev={cfg.split_dev}), "
                     "evaluated on the rest")
    else:
        files["train"] = _pick(folder, train_names)
        if files["train"] is None:
            raise UserError(f"task {folder}: no training file ({' or '.join(train_names)}); add it, set the task's "
                            "train_file, or set its split_dev (e.g. 0.5) to train on part of the dev file")
        rows["train"] = _read(files["train"], layout, notes)
    labels = () if layout.regression else layout.labels or _labels_found(rows)
    examples = {split: _examples(split_rows, layout, labels, files[split]) for split, split_rows in rows.items()}
    train = examples.pop("train")
    return Task(name=task_name(cfg), labels=labels, metrics=layout.metrics, train=train, evals=examples,
                notes=tuple(notes))


def _pick(folder: Path, names) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _labels_found(rows: dict[str, list[dict]]) -> tuple[str, ...]:
    found = {row["label"] for split_rows in rows.values() for row in split_rows}
    return tuple(sorted(found, key=lambda v: (0, int(v), v) if v.lstrip("-").isdigit() else (1, 0, v)))


def _examples(rows: list[dict], layout: Layout, labels, path: Path) -> Examples:
    if not rows:
        raise UserError(f"{path}: no labelled rows; check the file and the task's format")
    if layout.regression:
        try:
            values = [float(row["label"]) for row in rows]
        except ValueError:
            bad = next(row for row in rows if not _is_float(row["label"]))
            raise UserError(f"{path}:{bad['line']}: score '{bad['label']}' is not a number") from None
    else:
        index = {name: i for i, name in enumerate(labels)}
        unknown = next((row for row in rows if row["label"] not in index), None)
        if unknown is not None:
            raise UserError(f"{path}:{unknown['line']}: label '{unknown['label']}' is not one of {', '.join(labels)}; "
                            "fix the row or check the task's format")
        values = [index[row["label"]] for row in rows]
    pairs = len(layout.text) == 2
    return Examples([row["a"] for row in rows], [row["b"] for row in rows] if pairs else None, values)


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _read(path: Path, layout: Layout, notes: list[str]) -> list[dict]:
    """Rows as {'a', 'b', 'label', 'line'}; unlabeled (and, for QQP, malformed) rows are skipped and noted."""
    records = _tsv_records(path, layout) if layout.reader == "tsv" else _jsonl_records(path)
    rows, unlabeled, malformed = [], 0, 0
    for line, record in records:
        if record is None:
            malformed += 1
            continue
        if layout.rewrite is not None:
            try:
                record = layout.rewrite(record)
            except (KeyError, TypeError, ValueError) as e:
                raise UserError(f"{path}:{line}: cannot read the row ({type(e).__name__}: {e}); check the task's format") from None
        missing = [f for f in (*layout.text, layout.label) if f not in record]
        if missing:
            raise UserError(f"{path}:{line}: no field {', '.join(map(repr, missing))}; check the task's format "
                            f"(this one reads {', '.join(map(repr, (*layout.text, layout.label)))})")
        label = str(record[layout.label]).strip()
        if label in layout.unlabeled:
            unlabeled += 1
            continue
        texts = [str(record[f]) for f in layout.text]
        rows.append({"a": texts[0], "b": texts[1] if len(texts) > 1 else None, "label": label, "line": line})
    for count, what in ((unlabeled, "without a gold label"), (malformed, "with missing fields")):
        if count:
            notes.append(f"{path.name}: skipped {count} row{'s' * (count > 1)} {what}")
    return rows


def _tsv_records(path: Path, layout: Layout):
    """GLUE TSV: tab-separated, no quoting; a header line unless the layout names its columns."""
    lines = _text(path).split("\n")  # not splitlines(): sentences may hold \x0b, \x1c or U+2028
    lines = [line.removesuffix("\r") for line in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise UserError(f"{path}: empty file")
    first = lines[0].split("\t")
    needed = {*layout.text, layout.label}
    if needed <= set(first):
        header, body, start = first, lines[1:], 2
    elif layout.columns is not None:
        header, body, start = list(layout.columns), lines, 1
    else:
        raise UserError(f"{path}:1: expected a header line naming {', '.join(sorted(needed))}; "
                        "use the GLUE file as distributed or set the task's format")
    for number, line in enumerate(body, start):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):  # a stray tab would cut the last column's sentence short, silently
            if layout.skip_malformed:
                yield number, None
                continue
            raise UserError(f"{path}:{number}: {len(fields)} tab-separated fields where the header has "
                            f"{len(header)} ({', '.join(header)}); fix or remove the line")
        yield number, dict(zip(header, fields))


def _jsonl_records(path: Path):
    for number, line in enumerate(_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number}: invalid JSON ({e.msg}); CLUE files hold one JSON object per line") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number}: not a JSON object; CLUE files hold one object per line")
        yield number, record


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 at byte {e.start}; convert the file to UTF-8") from None


def _capped(task: Task, cfg: TaskConfig) -> Task:
    """Apply max_train_examples / max_dev_examples as fixed random subsets (file order kept)."""
    def cap(examples: Examples, limit: int | None) -> Examples:
        if limit is None or len(examples) <= limit:
            return examples
        keep = np.random.default_rng(SUBSAMPLE_SEED).permutation(len(examples))[:limit]
        return examples.take(sorted(keep))

    evals = {split: cap(examples, cfg.max_dev_examples) for split, examples in task.evals.items()}
    return Task(task.name, task.labels, task.metrics, cap(task.train, cfg.max_train_examples), evals, task.notes)
