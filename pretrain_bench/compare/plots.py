"""The report's plots (matplotlib, no display needed): pre-training loss against time and tokens, and
each task's scores per model, every seed a dot and the median a bar across them."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402

from pretrain_bench.compare.report import is_floor  # noqa: E402


def pretrain_loss(results: dict, path: Path) -> None:
    """Training loss (lines) and held-out loss (dots) of each run, against training time and tokens seen."""
    fig, (by_time, by_tokens) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for label, entry in results["models"].items():
        run = entry["pretrain"]
        if run is None:
            continue
        line, = by_time.plot(run["curve"]["elapsed_s"], run["curve"]["loss"], label=label)
        by_tokens.plot(run["curve"]["tokens"], run["curve"]["loss"], color=line.get_color(), label=label)
        by_time.scatter(run["eval_curve"]["elapsed_s"], run["eval_curve"]["eval_loss"], color=line.get_color(), s=18)
        by_tokens.scatter(run["eval_curve"]["tokens"], run["eval_curve"]["eval_loss"], color=line.get_color(), s=18)
    # log scale: objectives' losses differ in kind (ELECTRA's is generator MLM + 50 x detection BCE), and
    # each curve's shape has to stay readable beside the others
    by_time.set(xlabel="training time (s)", ylabel="loss (log scale)", title="loss against time", yscale="log")
    by_tokens.set(xlabel="tokens seen", title="loss against tokens")
    by_tokens.legend(title="lines: training, dots: held-out", fontsize="small")
    for axes in (by_time, by_tokens):
        axes.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def downstream(results: dict, path: Path) -> None:
    """One panel per task: each model's seed scores (dots) and their median (a bar across them), x100, on an
    axis fitted to the scores so that differences of a point stay visible; the dashed line is what always
    answering the commonest label scores, on tasks measured by accuracy alone."""
    tasks, models = list(results["tasks"]), list(results["models"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.0, 1.1 * len(models)) * len(tasks), 4), squeeze=False)
    for panel, task in zip(axes[0], tasks):
        info = results["tasks"][task]
        for x, label in enumerate(models):
            summary = results["models"][label]["tasks"][task]["score"]
            color = "0.5" if is_floor(results["models"][label]) else f"C{x}"
            panel.hlines(100 * summary["median"], x - 0.3, x + 0.3, color=color, linewidth=2.5)
            panel.scatter([x] * summary["n"], [100 * v for v in summary["values"]], color=color, s=18, zorder=3)
        if info["metrics"] == ["accuracy"] and info.get("majority_dev_accuracy") is not None:
            panel.axhline(100 * info["majority_dev_accuracy"], color="0.6", linestyle="--", linewidth=1,
                          label="commonest label")
            panel.legend(fontsize="small", loc="lower right")
        panel.set_xticks(range(len(models)), models, rotation=30, ha="right")
        panel.set_xlim(-0.6, len(models) - 0.4)
        panel.set(title=f"{task} ({'/'.join(info['metrics'])})", ylabel="dev score x100 (bar: median)")
        panel.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
