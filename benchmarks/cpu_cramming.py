"""The CPU cramming study's summary: every `pretrain-bench compare` report given, in one table and two plots
(pre-training loss against time; downstream score against tokens seen, each beside its random-init floor).

    python benchmarks/cpu_cramming.py docs/cpu-cramming/results/*.json runs/study/s5 --out docs/cpu-cramming

Each argument is a study folder (its report/results.json is read and kept as <out>/results/<name>.json) or
such a kept file, so the table and plots can be redrawn after the run folders are gone.
Writes <out>/runs.md (one row per pre-trained model: what differs from the first study's config, tokens,
final losses, the median score and seed range per task, the floor's, the gap) and <out>/*.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretrain_bench.compare.config import validate  # noqa: E402
from pretrain_bench.compare.report import floor_of, is_floor, spread  # noqa: E402
from pretrain_bench.compare.runner import OPERATIONAL_KEYS  # noqa: E402
from pretrain_bench.errors import UserError  # noqa: E402
from pretrain_bench.train.rundir import RESUMABLE_KEYS  # noqa: E402


def flat(value, prefix: str = "") -> dict:
    if not isinstance(value, dict):
        return {prefix[:-1]: value}
    out = {}
    for key, inner in value.items():
        out.update(flat(inner, f"{prefix}{key}."))
    return out


def current(study: dict) -> dict:
    """A kept study config read through today's schema: settings added since it ran count at their defaults."""
    try:
        return validate(study, "results.json")[0].model_dump(mode="json")
    except UserError:
        return study


def lever(study: dict, reference: dict) -> str:
    """The settings of this study that differ from the reference study, as key=value."""
    sections = ("data", "model", "train", "budget", "finetune")
    mine, theirs = (flat({k: v for k, v in current(config).items() if k in sections}) for config in (study, reference))
    # how a run was run, not what it was
    watched = RESUMABLE_KEYS - {"train.max_steps"} | {f"finetune.{k}" for k in OPERATIONAL_KEYS}
    return ", ".join(f"{k}={v}" for k, v in mine.items() if theirs.get(k) != v and k not in watched) or "reference"


def rows(reports: list[tuple[str, dict]]) -> list[dict]:
    reference = reports[0][1]["study"]
    out = []
    for name, results in reports:
        for label, entry in results["models"].items():
            if is_floor(entry):
                continue
            floor = results["models"].get(floor_of(entry))
            run = entry["pretrain"]
            row = {"study": name, "label": label, "lever": lever(results["study"], reference),
                   "tokens": run["tokens"], "minutes": run["training_seconds"] / 60, "loss": run["final_loss"],
                   "eval_loss": run["final_eval_loss"], "curve": run["curve"], "tasks": {}}
            for task, scores in entry["tasks"].items():
                base = floor["tasks"][task]["score"] if floor else None
                row["tasks"][task] = (scores["score"], base)
            out.append(row)
    return out


def table(all_rows: list[dict]) -> str:
    tasks = sorted({t for r in all_rows for t in r["tasks"]})
    head = "| study | objective | differs from the first | tokens | min | loss (train / held-out) | " + " | ".join(
        f"{t}: ours [range] / floor / gap" for t in tasks) + " |"
    lines = [head, "|" + "---|" * (6 + len(tasks))]
    for r in all_rows:
        cells = []
        for t in tasks:
            if t not in r["tasks"]:
                cells.append("")
                continue
            ours, base = r["tasks"][t]
            text = spread(ours)
            if base:
                text += f" / {100 * base['median']:.1f} / {100 * (ours['median'] - base['median']):+.1f}"
            cells.append(text)
        lines.append(f"| {r['study']} | {r['label']} | {r['lever']} | {r['tokens']:,} | {r['minutes']:.1f} | "
                     f"{r['loss']:.2f} / {r['eval_loss']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plots(all_rows: list[dict], out: Path) -> None:
    fig, axes = plt.subplots(figsize=(7, 4.5))
    axes.set_prop_cycle(color=plt.cm.tab20.colors)  # a colour per run, past ten runs too
    drawn = set()
    for r in all_rows:
        curve = (tuple(r["curve"]["elapsed_s"]), tuple(r["curve"]["loss"]))
        if curve in drawn:  # a study that only fine-tunes again reuses another's pre-training
            continue
        drawn.add(curve)
        axes.plot([s / 60 for s in r["curve"]["elapsed_s"]], r["curve"]["loss"], label=f"{r['study']}/{r['label']}")
    axes.set(xlabel="training time (min)", ylabel="training loss (log scale)", title="pre-training loss against time",
             yscale="log")  # ELECTRA's loss (generator MLM + 50 x detection BCE) is five times MLM's
    axes.grid(alpha=0.3)
    # below the axes: inside, forty runs' names would cover the curves
    axes.legend(fontsize="xx-small", ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.savefig(out / "loss_vs_time.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    tasks = sorted({t for r in all_rows for t in r["tasks"]})
    fig, panels = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    colours = {id(r): plt.cm.tab20.colors[i % 20] for i, r in enumerate(all_rows)}  # a run's colour in every panel
    for axes, task in zip(panels[0], tasks):
        for r in (r for r in all_rows if task in r["tasks"]):
            ours, base = r["tasks"][task]
            axes.errorbar(r["tokens"], 100 * ours["median"], yerr=[[100 * (ours["median"] - ours["min"])],
                          [100 * (ours["max"] - ours["median"])]], fmt="o", capsize=3, color=colours[id(r)],
                          label=f"{r['study']}/{r['label']}")
            if base:
                axes.scatter(r["tokens"], 100 * base["median"], marker="x", color=colours[id(r)])
        axes.set(xscale="log", xlabel="pre-training tokens", ylabel="dev score (x100)",
                 title=f"{task}: median of seeds (o),\nits random-init floor (x)")
        axes.grid(alpha=0.3)
        # below the panel: the runs fill its middle, where a legend inside would hide them
        axes.legend(fontsize="xx-small", ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.subplots_adjust(wspace=0.25)
    fig.savefig(out / "score_vs_tokens.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def load(source: Path) -> tuple[str, dict]:
    """(name, results) of a study folder or of a results file kept from one."""
    if source.is_file():
        return source.stem, json.loads(source.read_text())
    return source.name, json.loads((source / "report" / "results.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", help="compare run folders (each holds report/results.json) or kept "
                   "<out>/results/<name>.json files")
    p.add_argument("--out", default="docs/cpu-cramming", help="folder for runs.md, the plots and results/")
    args = p.parse_args()
    reports = [load(Path(s)) for s in args.studies]
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    for name, results in reports:
        (out / "results" / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    all_rows = rows(reports)
    (out / "runs.md").write_text(table(all_rows))
    plots(all_rows, out)
    print(table(all_rows))


if __name__ == "__main__":
    main()
