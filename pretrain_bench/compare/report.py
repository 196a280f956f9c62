"""The report folder: report.md (the tables a researcher reads), results.json (every number, per seed)
and the plots. Written from the results dict alone, so every number in the Markdown is in the JSON."""

from __future__ import annotations

import json
from pathlib import Path

from pretrain_bench.compare.config import FLOOR
from pretrain_bench.train.checkpoint import atomic_write_text

LOSS_PLOT, SCORES_PLOT = "pretrain_loss.png", "downstream.png"


def points(value: float | None) -> str:
    """A metric as GLUE prints it: x100, one decimal."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def spread(summary: dict) -> str:
    """'median [min, max]' over seeds, or the one value."""
    if summary["n"] == 1:
        return points(summary["median"])
    return f"{points(summary['median'])} [{points(summary['min'])}, {points(summary['max'])}]"


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _budget(study: dict) -> str:
    budget = study["budget"]
    for key, unit in (("hours", "h"), ("minutes", "min")):
        if budget.get(key) is not None:
            return f"{budget[key]:g} {unit} of training time"
    if budget.get("tokens") is not None:
        return f"{budget['tokens']:,} tokens"
    return f"{study['train']['max_steps']:,} optimizer steps"


def is_floor(entry: dict) -> bool:
    return entry["init"] == "random"


def floor_of(entry: dict) -> str:
    """The label of the floor an objective is scored against (results written before floors per architecture
    name none: theirs is FLOOR)."""
    return entry.get("floor") or FLOOR


def floor_labels(models: dict) -> list[str]:
    return [label for label, entry in models.items() if is_floor(entry)]


def _floor_lines(results: dict) -> list[str]:
    """For each objective and task: does it beat the random-init floor of its architecture, and by how much."""
    models = results["models"]
    if not floor_labels(models):
        return ["No random-init floor was run (random_init_floor: false)."]
    lines = []
    for label, entry in models.items():
        if is_floor(entry):
            continue
        floor = floor_of(entry)
        for task, scores in entry["tasks"].items():
            ours, base = scores["score"], models[floor]["tasks"][task]["score"]
            gap = 100 * (ours["median"] - base["median"])
            if ours["min"] > base["max"]:
                verdict = "beats the floor on every seed (the seed ranges do not overlap)"
            elif gap > 0:
                verdict = "beats the floor by the median, but the seed ranges overlap"
            else:
                verdict = "does **not** beat the floor"
            lines.append(f"- `{label}` on {task}: {gap:+.1f} points against {floor} (median); {verdict}.")
    return lines


def _speed_note(models: dict) -> list[str]:
    """Runs that saw very different token counts: on a time budget that is either the objectives' own cost
    per token or other load on the machine; the reader should know which comparison they are looking at."""
    speeds = {label: e["pretrain"]["tokens_per_s"] for label, e in models.items() if e["pretrain"] and e["pretrain"]["tokens_per_s"]}
    if len(speeds) < 2 or max(speeds.values()) < 1.2 * min(speeds.values()):
        return []
    fast, slow = max(speeds, key=speeds.get), min(speeds, key=speeds.get)
    return ["", f"Note: `{fast}` ran {speeds[fast] / speeds[slow]:.1f}x faster than `{slow}` in tokens/s, so it saw that many "
            "times more data in the same time. If the objectives cost the same per token, the machine was busy with other "
            "work during one of them; repeat the study on a quiet machine, or set budget.tokens to compare at equal data."]


def _machine_lines(models: dict) -> list[str]:
    """Where each run's tokens/s was measured: a wall-clock budget buys what its machine runs."""
    machines: dict[str, list[str]] = {}
    for label, entry in models.items():
        run = entry["pretrain"]
        if run and run.get("machine"):
            machines.setdefault(f"{run['machine']}, {run['precision']}", []).append(f"`{label}`")
    if not machines:
        return []
    return ["", *(f"Pre-trained on {name}: {', '.join(labels)}." for name, labels in machines.items())]


def _floor_sentence(floors: list[str]) -> str:
    if not floors:
        return "."
    if len(floors) == 1:
        return f"; `{floors[0]}` is the same architecture fine-tuned from fresh weights."
    return (f"; {', '.join(f'`{f}`' for f in floors)} are the objectives' architectures (one per architecture "
            "exported) fine-tuned from fresh weights, each the floor of the objectives that share it.")


def markdown(results: dict) -> str:
    study, tasks, models = results["study"], results["tasks"], results["models"]
    recipe = study["finetune"]
    model = study["model"]
    seeds = len(recipe["seeds"])
    task_names = list(tasks)
    out = [f"# Objective comparison: {Path(study['run_dir']).name}", ""]
    floors = floor_labels(models)
    out += [f"{len(models) - len(floors)} objective(s) pre-trained on `{study['data']['path']}` with the same "
            f"tokenizer, model ({model['size']} {model['arch']}), seed ({study['seed']}) and budget "
            f"({_budget(study)}), then fine-tuned on {len(task_names)} task(s) with one recipe "
            f"(epochs {recipe['epochs']}, batch {recipe['batch_size']}, lr {recipe['lr']:g}, "
            f"{recipe['schedule']['shape']} schedule, max {recipe['max_seq_len']} tokens) over {seeds} seed(s)"
            + _floor_sentence(floors), ""]

    out += ["## Downstream scores", "",
            f"Dev-set task score x100: median over {seeds} fine-tuning seed(s), [min, max] in brackets. "
            "A task's score is the mean of its metrics (named in the header), as GLUE averages them.", ""]
    header = ["model", "objective"] + [f"{t} ({'/'.join(tasks[t]['metrics'])})" for t in task_names] + ["average"]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, entry in models.items():
        cells = [f"`{label}`", entry["objective"] or "none (random init)"]
        cells += [spread(entry["tasks"][t]["score"]) for t in task_names] + [points(entry["average"])]
        out.append("| " + " | ".join(cells) + " |")

    out += ["", "## Pre-training", "",
            "Tokens/s is tokens seen over training time (evaluation, checkpoints and export excluded). Losses are "
            "each objective's own training loss: compare them between runs of the same objective only.", ""]
    header = ["model", "objective", "steps", "tokens seen", "training s", "tokens/s", "final train loss",
              "final eval loss", "stopped by"]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, entry in models.items():
        run = entry["pretrain"]
        if run is None:
            continue
        cells = [f"`{label}`", run["objective"], _number(run["steps"]), _number(run["tokens"]),
                 _number(run["training_seconds"], 1), _number(run["tokens_per_s"], 0), _number(run["final_loss"]),
                 _number(run["final_eval_loss"]), str(run["stop_reason"])]
        out.append("| " + " | ".join(cells) + " |")
    out += _machine_lines(models) + _speed_note(models)

    out += ["", "## Against the floor", "", *_floor_lines(results)]

    out += ["", "## Every metric", "", f"Median x100 over {seeds} seed(s), [min, max].", ""]
    header = ["task", "metric"] + [f"`{label}`" for label in models]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task in task_names:
        for metric in tasks[task]["metrics"]:
            cells = [task, metric] + [spread(entry["tasks"][task]["metrics"][metric]) for entry in models.values()]
            out.append("| " + " | ".join(cells) + " |")

    out += ["", "## Tasks", ""]
    for task in task_names:
        info = tasks[task]
        evals = ", ".join(f"{n:,} {split}" for split, n in info["eval_examples"].items())
        labels = (f"{len(info['labels'])} classes (the commonest dev label is {points(info['majority_dev_accuracy'])}% of dev)"
                  if info["labels"] else "regression")
        out.append(f"- **{task}** (`{info['path']}`): {labels}, {info['train_examples']:,} train, {evals} examples"
                   + "".join(f"; {note}" for note in info["notes"]))

    out += ["", "## Plots", "", f"![pre-training loss]({LOSS_PLOT})", "", f"![downstream scores]({SCORES_PLOT})", "",
            "Every number above, and each seed's result, is in `results.json`."]
    return "\n".join(out) + "\n"


def write(results: dict, folder: Path) -> Path:
    """report.md, results.json and the plots in `folder`; returns report.md's path."""
    from pretrain_bench.compare import plots

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "results.json", json.dumps(results, indent=1))
    plots.pretrain_loss(results, folder / LOSS_PLOT)
    plots.downstream(results, folder / SCORES_PLOT)
    atomic_write_text(folder / "report.md", markdown(results))
    return folder / "report.md"
