"""The report's plots, drawn by matplotlib's Agg renderer and returned as base64 PNG
``data:`` URIs, so the HTML page needs no file beside it."""

from __future__ import annotations

import base64
import io

from matplotlib.figure import Figure

from tunearena.evaluation.report.formats import pct_label, signed
from tunearena.evaluation.report.view import arm_name
from tunearena.evaluation.results import Benchmark, BenchmarkRetrieval, ForgettingCheck, Stages

_ARM_COLOURS = {"base": "#7f7f7f", "base+rag": "#1f77b4", "ft": "#ff7f0e", "ft+rag": "#2ca02c"}
# Stage arms (ft@<stage>, with or without +rag) take these in order of appearance.
_MORE_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#d62728", "#393b79")
_BENCHMARK_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")


def colours(arms: list[str]) -> dict[str, str]:
    """A colour per arm: the four fixed arms keep theirs, others take the next free one."""
    extra = [a for a in arms if a not in _ARM_COLOURS]
    more = {a: _MORE_COLOURS[i % len(_MORE_COLOURS)] for i, a in enumerate(extra)}
    return {**_ARM_COLOURS, **more}


def png(fig: Figure) -> str:
    """A figure as a ``data:`` URI (Agg renders it; no display, no pyplot state)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def accuracy_plot(benchmarks: dict[str, Benchmark], conf: float, colours: dict[str, str]
                  ) -> str | None:
    """Each arm's score on each benchmark, with its interval as error bars."""
    if not benchmarks:
        return None
    names = list(benchmarks)
    arms = list(dict.fromkeys(a for b in benchmarks.values() for a in b.arms))
    width = 0.8 / len(arms)
    fig = Figure(figsize=(max(5.0, 1.2 + 1.6 * len(names)), 3.6))
    ax = fig.add_subplot()
    for i, arm in enumerate(arms):
        xs, accs, lows, highs = [], [], [], []
        for j, name in enumerate(names):
            row = benchmarks[name].arms.get(arm)
            if row is None:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            accs.append(row.score * 100)
            lows.append((row.score - row.score_ci[0]) * 100)
            highs.append((row.score_ci[1] - row.score) * 100)
        ax.bar(
            xs,
            accs,
            width * 0.92,
            yerr=[lows, highs],
            capsize=3,
            color=colours.get(arm, "#9467bd"),
            label=arm_name(arm),
        )
    ax.set_xticks(range(len(names)), [f"{n}\n({benchmarks[n].kind})" for n in names])
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Accuracy per arm; bars show the {pct_label(conf)} interval")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return png(fig)


def forgetting_plot(checks: list[ForgettingCheck], tolerance: float, colours: dict[str, str]
                    ) -> str | None:
    """Each forgetting check's change with its interval, against the tolerance line."""
    if not checks:
        return None
    fig = Figure(figsize=(6.4, 0.9 + 0.45 * len(checks)))
    ax = fig.add_subplot()
    ys = list(range(len(checks)))[::-1]
    for y, c in zip(ys, checks, strict=True):
        change, (lo, hi) = c.change * 100, c.ci
        ax.errorbar(
            change,
            y,
            xerr=[[change - lo * 100], [hi * 100 - change]],
            fmt="o",
            capsize=3,
            color=colours.get(c.arm, "#9467bd"),
        )
    ax.axvline(0, color="#444", linewidth=0.8)
    ax.axvline(
        -tolerance * 100,
        color="#d62728",
        linestyle="--",
        label=f"tolerance ({signed(-tolerance)} points)",
    )
    left = min(-tolerance * 100, *(c.ci[0] * 100 for c in checks)) - 2
    right = max(0.0, *(c.ci[1] * 100 for c in checks)) + 2
    ax.axvspan(left, -tolerance * 100, color="#d62728", alpha=0.07, label="beyond the tolerance")
    ax.set_xlim(left, right)
    ax.set_ylim(-0.6, len(checks) - 0.4)
    ax.set_yticks(ys, [f"{c.arm} on {c.benchmark}" for c in checks])
    ax.set_xlabel("change in general accuracy vs base (points)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small")
    return png(fig)


def stages_plot(stages: Stages, benchmarks: dict[str, Benchmark], selected: str | None
                ) -> str | None:
    """Accuracy on each benchmark after each stage, one line per benchmark; the base
    model's accuracy a dashed line in the same colour."""
    order = stages.order
    if not order or not benchmarks:
        return None
    fig = Figure(figsize=(max(5.0, 2.4 + 1.1 * len(order)), 3.6))
    ax = fig.add_subplot()
    xs = range(len(order))
    for i, (name, bench) in enumerate(benchmarks.items()):
        colour = _BENCHMARK_COLOURS[i % len(_BENCHMARK_COLOURS)]
        points = [(x, stages.matrix.get(stage, {}).get(name)) for x, stage in enumerate(order)]
        scored = [(x, cell.acc * 100) for x, cell in points if cell]
        label = f"{name} ({bench.kind})"
        if scored:
            ax.plot(*zip(*scored, strict=True), marker="o", color=colour, label=label)
        base = bench.arms.get("base")
        if base is not None:
            ax.axhline(base.score * 100, color=colour, linestyle="--", linewidth=1, alpha=0.8)
    if selected in order:
        x = order.index(selected)
        ax.axvspan(x - 0.3, x + 0.3, color="#ff7f0e", alpha=0.12, label=f"ft = {selected}")
    ax.plot([], [], color="#555", linestyle="--", linewidth=1, label="base model (dashed)")
    ax.set_xticks(list(xs), order)
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_ylim(0, 100)
    ax.set_xlabel("after stage")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy after each stage")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small")
    return png(fig)


def recall_plot(retrieval: dict[str, BenchmarkRetrieval], benchmark_names: list[str]
                ) -> str | None:
    """The gold document's recall against k, one line per benchmark with a ``recall_curve``;
    a dotted line and a ring mark the configured ``k`` (the passages the model is given)."""
    curves = {
        name: sorted((int(k), r * 100) for k, r in stats.recall_curve.items())
        for name, stats in retrieval.items()
        if stats.recall_curve
    }
    if not curves:
        return None
    # Colours follow the benchmark order, as in the stages plot.
    order = list(dict.fromkeys([*benchmark_names, *curves]))
    fig = Figure(figsize=(6.0, 3.4))
    ax = fig.add_subplot()
    top_ks: set[int] = set()
    for name, points in curves.items():
        colour = _BENCHMARK_COLOURS[order.index(name) % len(_BENCHMARK_COLOURS)]
        ax.plot(*zip(*points, strict=True), marker="o", color=colour, label=name)
        top_k = retrieval[name].k
        if top_k is not None:
            top_ks.add(top_k)
            at_k = [r for k, r in points if k == top_k]
            if at_k:
                ax.plot(top_k, at_k[0], marker="o", markersize=11, fillstyle="none", color=colour)
    for top_k in sorted(top_ks):
        ax.axvline(top_k, color="#444", linestyle=":", linewidth=1, label=f"top_k = {top_k}")
    ax.set_xticks(sorted({k for points in curves.values() for k, _ in points} | top_ks))
    ax.set_ylim(0, 104)  # room for the markers of a perfect recall
    ax.set_xlabel("k (passages retrieved)")
    ax.set_ylabel("gold document recall (%)")
    ax.set_title("Recall at k of the gold document")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small")
    return png(fig)


def loss_plot(history: list[dict[str, float]]) -> str | None:
    series = {
        key: [(h["step"], h[key]) for h in history if "step" in h and h.get(key) is not None]
        for key in ("train_loss", "val_loss")
    }
    if not any(series.values()):
        return None
    fig = Figure(figsize=(6.0, 3.2))
    ax = fig.add_subplot()
    for key, points in series.items():
        if points:
            steps, losses = zip(*points, strict=True)
            ax.plot(
                steps, losses, marker="o" if len(points) < 30 else None, label=key.replace("_", " ")
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return png(fig)
