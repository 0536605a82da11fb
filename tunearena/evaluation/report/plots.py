"""The report's plots, drawn by matplotlib's Agg renderer and returned as base64 PNG
``data:`` URIs, so the HTML page needs no file beside it.

Each ``*_figure`` function builds the matplotlib figure (what the tests inspect); its
``*_plot`` twin encodes it for the page.
"""

from __future__ import annotations

import base64
import io

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tunearena.evaluation.arm import Arm
from tunearena.evaluation.report.formats import pct_label, signed
from tunearena.evaluation.report.view import arm_label, arm_name
from tunearena.evaluation.results import Benchmark, BenchmarkRetrieval, ForgettingCheck, Stages

_ARM_COLOURS = {"base": "#7f7f7f", "base+rag": "#1f77b4", "ft": "#ff7f0e", "ft+rag": "#2ca02c"}
# Stage arms (ft@<stage>, with or without +rag) take these in order of appearance.
_MORE_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#d62728", "#393b79")
# A benchmark keeps its colour, marker and line style in every plot; lines that lie on top of
# each other (two recalls of 100%) stay told apart by marker and style, not colour alone.
_BENCHMARK_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")
_BENCHMARK_MARKERS = ("o", "s", "^", "D", "v", "P")
_BENCHMARK_STYLES = ("-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)))
# Percent axes run to 105 so a full bar, a point at 100 and its marker clear the frame; the
# ticks still end at 100.
_PERCENT_TOP = 105
_PERCENT_TICKS = range(0, 101, 20)


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


def _png(fig: Figure | None) -> str | None:
    return png(fig) if fig is not None else None


def _percent_axis(ax: Axes) -> None:
    ax.set_ylim(0, _PERCENT_TOP)
    ax.set_yticks(list(_PERCENT_TICKS))


def same_as_ft(arms: list[str], selected: str | None) -> set[str]:
    """The ``ft@<selected>`` arms (with or without a context) that ``ft`` (with the same
    context) stands for among ``arms``: the same model, drawn once, as ``ft``."""
    if selected is None:
        return set()
    parsed = [Arm.parse(a) for a in arms]
    return {str(p.at_stage(selected)) for p in parsed if p.model == "ft" and p.stage is None}


def _legend_name(arm: str, selected: str | None) -> str:
    """``ft`` says which stage it is: ``fine-tuned (= stage qa)``."""
    parsed = Arm.parse(arm)
    if selected and parsed.model == "ft" and parsed.stage is None:
        return f"{arm_name(arm)} (= {arm_name(str(parsed.at_stage(selected)))})"
    return arm_name(arm)


def accuracy_figure(benchmarks: dict[str, Benchmark], conf: float, colours: dict[str, str],
                    selected: str | None = None) -> Figure | None:
    """Each arm's score on each benchmark, with its interval as error bars; one bar per
    distinct model, so ``ft@<selected>`` is drawn as ``ft``."""
    if not benchmarks:
        return None
    names = list(benchmarks)
    every = list(dict.fromkeys(a for b in benchmarks.values() for a in b.arms))
    repeats = same_as_ft(every, selected)
    arms = [a for a in every if a not in repeats]
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
            label=_legend_name(arm, selected),
        )
    ax.set_xticks(range(len(names)), [f"{n}\n({benchmarks[n].kind})" for n in names])
    _percent_axis(ax)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Accuracy per arm; bars show the {pct_label(conf)} interval")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def accuracy_plot(benchmarks: dict[str, Benchmark], conf: float, colours: dict[str, str],
                  selected: str | None = None) -> str | None:
    """``accuracy_figure`` as a ``data:`` URI."""
    return _png(accuracy_figure(benchmarks, conf, colours, selected))


def forgetting_figure(checks: list[ForgettingCheck], tolerance: float, colours: dict[str, str],
                      selected: str | None = None) -> Figure | None:
    """Each forgetting check's change with its interval, against the tolerance line; one row
    per distinct model, so ``ft@<selected>`` is drawn as ``ft``."""
    repeats = same_as_ft(list(dict.fromkeys(c.arm for c in checks)), selected)
    checks = [c for c in checks if c.arm not in repeats]
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
    # Two points either side, so no interval's cap sits on the frame.
    left = min(-tolerance * 100, *(c.ci[0] * 100 for c in checks)) - 2
    right = max(0.0, *(c.ci[1] * 100 for c in checks)) + 2
    ax.axvspan(left, -tolerance * 100, color="#d62728", alpha=0.07, label="beyond the tolerance")
    ax.set_xlim(left, right)
    ax.set_ylim(-0.6, len(checks) - 0.4)
    ax.set_yticks(ys, [f"{arm_label(c.arm, selected)} on {c.benchmark}" for c in checks])
    ax.set_xlabel("change in general accuracy vs base (points)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small")
    return fig


def forgetting_plot(checks: list[ForgettingCheck], tolerance: float, colours: dict[str, str],
                    selected: str | None = None) -> str | None:
    """``forgetting_figure`` as a ``data:`` URI."""
    return _png(forgetting_figure(checks, tolerance, colours, selected))


def _parent(stages: Stages, stage: str) -> str | None:
    """The node a stage started from: ``base`` or an earlier stage; None when its record
    does not say."""
    record = stages.stages.get(stage)
    start = record.start_from if record else None
    return start.removeprefix("ft@") if start else None


def stages_figure(stages: Stages, benchmarks: dict[str, Benchmark], selected: str | None
                  ) -> Figure | None:
    """Accuracy on each benchmark of the base model and after each stage, drawn as the stage
    tree: a segment joins a stage only to the model it started from (``start_from``), so
    sibling stages are never joined. The base model's accuracy is also a dashed line in the
    benchmark's colour."""
    order = stages.order
    if not order or not benchmarks:
        return None
    nodes = ["base", *order]
    x_of = {node: x for x, node in enumerate(nodes)}
    parents = {stage: _parent(stages, stage) for stage in order}
    fig = Figure(figsize=(max(5.0, 2.4 + 1.1 * len(nodes)), 3.6))
    ax = fig.add_subplot()
    for i, (name, bench) in enumerate(benchmarks.items()):
        colour = _BENCHMARK_COLOURS[i % len(_BENCHMARK_COLOURS)]
        marker = _BENCHMARK_MARKERS[i % len(_BENCHMARK_MARKERS)]
        base = bench.arms.get("base")
        value = {"base": base.score * 100 if base is not None else None}
        for stage in order:
            cell = stages.matrix.get(stage, {}).get(name)
            value[stage] = cell.acc * 100 if cell else None
        for stage, parent in parents.items():
            start, end = value.get(parent or ""), value[stage]
            if parent is not None and start is not None and end is not None:
                ax.plot([x_of[parent], x_of[stage]], [start, end], color=colour, linestyle="-")
        scored = [(x_of[n], v) for n, v in value.items() if v is not None]
        if scored:
            ax.plot(*zip(*scored, strict=True), color=colour, marker=marker, linestyle="none")
        # The legend's entry: line and marker together, as the plot draws them.
        ax.plot([], [], color=colour, marker=marker, linestyle="-", label=f"{name} ({bench.kind})")
        if base is not None:
            ax.axhline(base.score * 100, color=colour, linestyle="--", linewidth=1, alpha=0.5)
    if selected in x_of:
        x = x_of[selected]
        ax.axvspan(x - 0.3, x + 0.3, color="#ff7f0e", alpha=0.12, label=f"ft = {selected}")
    ax.plot([], [], color="#555", linestyle="--", linewidth=1, label="base model (dashed)")
    ticks = ["base"] + [f"{s}\n(from {parents[s]})" if parents[s] else s for s in order]
    ax.set_xticks(range(len(nodes)), ticks)
    ax.set_xlim(-0.5, len(nodes) - 0.5)
    _percent_axis(ax)
    ax.set_xlabel("model (a line joins a stage to the model it started from)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy after each stage")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small")
    return fig


def stages_plot(stages: Stages, benchmarks: dict[str, Benchmark], selected: str | None
                ) -> str | None:
    """``stages_figure`` as a ``data:`` URI."""
    return _png(stages_figure(stages, benchmarks, selected))


def recall_figure(retrieval: dict[str, BenchmarkRetrieval], benchmark_names: list[str]
                  ) -> Figure | None:
    """The gold document's recall against k, one line per benchmark with a ``recall_curve``;
    a dotted line and a ring mark the configured ``k`` (the passages the model is given).
    Curves that coincide stay visible: each has its own marker and line style, and the
    first drawn is the widest, so a later one lies inside it."""
    curves = {
        name: sorted((int(k), r * 100) for k, r in stats.recall_curve.items())
        for name, stats in retrieval.items()
        if stats.recall_curve
    }
    if not curves:
        return None
    # Colour, marker and style follow the benchmark order, as in the stages plot.
    order = list(dict.fromkeys([*benchmark_names, *curves]))
    fig = Figure(figsize=(6.0, 3.4))
    ax = fig.add_subplot()
    top_ks: set[int] = set()
    widest = len(curves) - 1
    ring_size = 9 + 2.5 * widest
    for drawn, (name, points) in enumerate(curves.items()):
        i = order.index(name)
        colour = _BENCHMARK_COLOURS[i % len(_BENCHMARK_COLOURS)]
        ax.plot(*zip(*points, strict=True), color=colour, label=name,
                marker=_BENCHMARK_MARKERS[i % len(_BENCHMARK_MARKERS)],
                linestyle=_BENCHMARK_STYLES[i % len(_BENCHMARK_STYLES)],
                linewidth=1.5 + 1.5 * (widest - drawn), markersize=5 + 2.5 * (widest - drawn),
                zorder=2 + drawn)
        top_k = retrieval[name].k
        if top_k is not None:
            top_ks.add(top_k)
            at_k = [r for k, r in points if k == top_k]
            if at_k:
                ax.plot(top_k, at_k[0], marker="o", markersize=ring_size, fillstyle="none",
                        color=colour, linestyle="none")
    for top_k in sorted(top_ks):
        ax.axvline(top_k, color="#444", linestyle=":", linewidth=1, label=f"top_k = {top_k}")
    ax.set_xticks(sorted({k for points in curves.values() for k, _ in points} | top_ks))
    _percent_axis(ax)
    ax.set_xlabel("k (passages retrieved)")
    ax.set_ylabel("gold document recall (%)")
    ax.set_title("Recall at k of the gold document")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small")
    return fig


def recall_plot(retrieval: dict[str, BenchmarkRetrieval], benchmark_names: list[str]
                ) -> str | None:
    """``recall_figure`` as a ``data:`` URI."""
    return _png(recall_figure(retrieval, benchmark_names))


def loss_figure(history: list[dict[str, float]]) -> Figure | None:
    """Training and validation loss against step, a tenth of the range left above and below."""
    series = {
        key: [(h["step"], h[key]) for h in history if "step" in h and h.get(key) is not None]
        for key in ("train_loss", "val_loss")
    }
    if not any(series.values()):
        return None
    fig = Figure(figsize=(6.0, 3.2))
    ax = fig.add_subplot()
    styles = {"train_loss": ("o", "-"), "val_loss": ("s", "--")}
    for key, points in series.items():
        if points:
            steps, losses = zip(*points, strict=True)
            marker, linestyle = styles[key]
            ax.plot(steps, losses, marker=marker if len(points) < 30 else None,
                    linestyle=linestyle, label=key.replace("_", " "))
    ax.margins(y=0.1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return fig


def loss_plot(history: list[dict[str, float]]) -> str | None:
    """``loss_figure`` as a ``data:`` URI."""
    return _png(loss_figure(history))


def sweep_figure(points: list[tuple[str, float, float]], tolerance: float,
                 chosen: str) -> Figure | None:
    """A sweep's scored trials: domain gain against the largest general drop (points), the
    forgetting tolerance drawn, the chosen trial marked; None with no scored trial."""
    if not points:
        return None
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    drops = [p[2] * 100 for p in points]
    right = max(tolerance * 100, *drops) + 2
    ax.axvspan(tolerance * 100, right, color="#d62728", alpha=0.07,
               label="beyond the tolerance")
    ax.axvline(tolerance * 100, color="#d62728", linestyle="--",
               label=f"tolerance ({tolerance * 100:g} points)")
    for trial, gain, drop in points:
        mine = trial == chosen
        ax.scatter([drop * 100], [gain * 100], s=70 if mine else 40, zorder=3,
                   marker="*" if mine else "o", color="#ff7f0e" if mine else "#7f7f7f",
                   label="the stage's model" if mine else None)
        ax.annotate(trial, (drop * 100, gain * 100), textcoords="offset points", xytext=(5, 4),
                    fontsize="x-small")
    ax.set_xlim(min(0.0, *drops) - 2, right)
    ax.axhline(0, color="#444", linewidth=0.8)
    ax.set_xlabel("largest drop on a general benchmark vs base (points)")
    ax.set_ylabel("domain gain vs base (points)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small")
    return fig


def sweep_plot(points: list[tuple[str, float, float]], tolerance: float,
               chosen: str) -> str | None:
    """``sweep_figure`` as a ``data:`` URI."""
    return _png(sweep_figure(points, tolerance, chosen))
