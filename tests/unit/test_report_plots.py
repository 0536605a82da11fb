"""The report's plots, read off the matplotlib figures they build: headroom above a full
score, one bar per distinct model, stage lines that follow the stage tree, and curves that
stay visible when they coincide."""

from __future__ import annotations

import pytest
from matplotlib.container import BarContainer

from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.report import plots, summarise
from tunearena.evaluation.results import BenchmarkRetrieval, Results

BENCHMARKS = [
    BenchmarkConfig(name="products", path="p.jsonl", kind="domain"),
    BenchmarkConfig(name="world_facts", path="w.jsonl", kind="general"),
]
ARMS = ["base", "base+rag", "ft@docs", "ft@qa", "ft@qa_replay", "ft", "ft+rag"]


def _scores(n: int, n_correct: int, prefix: str) -> list[dict]:
    return [{"id": f"{prefix}{i}", "acc": int(i < n_correct), "acc_norm": 0} for i in range(n)]


def _tree_results(qa_start: str | None = "docs") -> Results:
    """Three stages as the demo runs them: docs (from base), then qa and qa_replay, both from
    docs (siblings); ft is qa_replay. Base answers every general question, so a bar reaches
    100%."""
    right = {"base": (8, 80), "base+rag": (20, 80), "ft@docs": (18, 79), "ft@qa": (30, 60),
             "ft@qa_replay": (33, 76)}
    samples = {
        arm: {"products": _scores(40, d, "p"), "world_facts": _scores(80, g, "w")}
        for arm, (d, g) in right.items()
    }
    samples["ft"] = samples["ft@qa_replay"]
    samples["ft+rag"] = {"products": _scores(40, 36, "p"), "world_facts": _scores(80, 75, "w")}
    stages = {
        "order": ["docs", "qa", "qa_replay"],
        "selection": {"selected": "qa_replay"},
        "stages": {
            "docs": {"start_from": "base"},
            "qa": {"start_from": qa_start},
            "qa_replay": {"start_from": "docs"},
        },
    }
    cfg = EvaluationConfig(benchmarks=BENCHMARKS, arms=ARMS, bootstrap_samples=200)
    return summarise(samples, BENCHMARKS, cfg, ReportConfig(), {"stages": stages})


@pytest.fixture(scope="module")
def results() -> Results:
    return _tree_results()


def _colours(results: Results) -> dict[str, str]:
    return plots.colours(list(dict.fromkeys(a for b in results.benchmarks.values()
                                            for a in b.arms)))


def _accuracy(results: Results, selected: str | None):
    fig = plots.accuracy_figure(results.benchmarks, 0.95, _colours(results), selected)
    assert fig is not None
    return fig.axes[0]


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_percent_axes_leave_headroom_above_a_full_score_and_ticks_end_at_100(results):
    ax = _accuracy(results, "qa_replay")
    heights = [bar.get_height() for c in ax.containers if isinstance(c, BarContainer)
               for bar in c]
    assert max(heights) == pytest.approx(100.0)  # base on world_facts
    bottom, top = ax.get_ylim()
    assert bottom == 0 and top > max(heights)
    assert max(ax.get_yticks()) == 100

    stage_fig = plots.stages_figure(results.stages, results.benchmarks, "qa_replay")
    stage_ax = stage_fig.axes[0]
    assert stage_ax.get_ylim()[1] > 100 and max(stage_ax.get_yticks()) == 100

    retrieval = {"products": BenchmarkRetrieval(k=2, recall_curve={"1": 0.8, "2": 1.0})}
    recall_ax = plots.recall_figure(retrieval, ["products"]).axes[0]
    assert recall_ax.get_ylim()[1] > 100 and max(recall_ax.get_yticks()) == 100


def test_loss_axis_leaves_room_above_the_largest_loss():
    history = [{"step": s, "train_loss": 4.0 - s / 10} for s in range(1, 11)]
    history[4]["val_loss"] = 3.9
    ax = plots.loss_figure(history).axes[0]
    bottom, top = ax.get_ylim()
    assert top > 3.9 and bottom < 3.0
    styles = {line.get_label(): line.get_linestyle() for line in ax.lines}
    assert styles["train loss"] != styles["val loss"]


def test_one_bar_per_distinct_model_and_ft_names_its_stage(results):
    arms = list(results.benchmarks["products"].arms)
    assert "ft@qa_replay" in arms and "ft" in arms
    ax = _accuracy(results, "qa_replay")
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == len(arms) - 1  # ft@qa_replay is ft, drawn once
    assert all(len(c) == len(results.benchmarks) for c in bars)
    legend = _legend(ax)
    assert "fine-tuned (= stage qa_replay)" in legend
    assert "fine-tuned + RAG (= stage qa_replay + RAG)" in legend
    assert "stage qa_replay" not in legend and "stage qa" in legend
    # Without a selected stage every arm is a model of its own.
    assert len([c for c in _accuracy(results, None).containers
                if isinstance(c, BarContainer)]) == len(arms)


def test_forgetting_rows_are_distinct_models(results):
    checks = results.forgetting.checks
    assert {"ft", "ft@qa_replay"} <= {c.arm for c in checks}
    fig = plots.forgetting_figure(checks, 0.05, _colours(results), "qa_replay")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == len(checks) - 1
    assert "ft (= ft@qa_replay) on world_facts" in labels
    assert not any(label.startswith("ft@qa_replay ") for label in labels)


def _segments(ax) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Each solid line drawn with data, as ((x0, x1), (y0, y1))."""
    return [(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in ax.lines
            if line.get_linestyle() == "-" and len(line.get_xdata()) >= 2]


def test_stage_lines_join_each_stage_only_to_the_model_it_started_from(results):
    ax = plots.stages_figure(results.stages, results.benchmarks, "qa_replay").axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["base", "docs\n(from base)", "qa\n(from docs)", "qa_replay\n(from docs)"]
    x = {"base": 0, "docs": 1, "qa": 2, "qa_replay": 3}
    segments = _segments(ax)
    # Each benchmark: base -> docs, docs -> qa, docs -> qa_replay; the siblings never joined.
    assert len(segments) == 3 * len(results.benchmarks)
    assert sorted(xs for xs, _ in segments) == sorted(
        [(x["base"], x["docs"]), (x["docs"], x["qa"]), (x["docs"], x["qa_replay"])]
        * len(results.benchmarks))
    assert not any(set(xs) == {x["qa"], x["qa_replay"]} for xs, _ in segments)
    # A segment runs from the parent's score to the child's.
    matrix = results.stages.matrix
    for name in results.benchmarks:
        docs, replay = matrix["docs"][name].acc * 100, matrix["qa_replay"][name].acc * 100
        assert ((x["docs"], x["qa_replay"]), pytest.approx((docs, replay))) in segments


def test_a_stage_whose_start_is_not_recorded_is_a_point_without_a_line():
    results = _tree_results(qa_start=None)
    ax = plots.stages_figure(results.stages, results.benchmarks, "qa_replay").axes[0]
    assert not any(2 in xs for xs, _ in _segments(ax))
    points = [line for line in ax.lines if line.get_linestyle() == "None"]
    assert all(2 in line.get_xdata() for line in points)
    assert [t.get_text() for t in ax.get_xticklabels()][2] == "qa"


def test_coinciding_recall_curves_differ_in_marker_style_and_width():
    curve = {"1": 0.6, "2": 1.0, "5": 1.0}
    retrieval = {name: BenchmarkRetrieval(k=2, recall_curve=curve)
                 for name in ("lumora_products", "lumora_answers")}
    ax = plots.recall_figure(retrieval, ["lumora_products", "lumora_answers"]).axes[0]
    curves = {line.get_label(): line for line in ax.lines
              if line.get_label() in retrieval}
    first, second = curves["lumora_products"], curves["lumora_answers"]
    assert list(first.get_ydata()) == list(second.get_ydata())  # on top of each other
    assert first.get_marker() != second.get_marker()
    assert first.get_linestyle() != second.get_linestyle()
    # The first drawn is wider, so the second lies inside it rather than hiding it.
    assert first.get_linewidth() > second.get_linewidth()
    assert first.get_markersize() > second.get_markersize()
    assert second.get_zorder() > first.get_zorder()
    assert {"lumora_products", "lumora_answers", "top_k = 2"} <= set(_legend(ax))


def test_plots_encode_as_png_data_uris(results):
    uri = plots.stages_plot(results.stages, results.benchmarks, "qa_replay")
    assert uri is not None and uri.startswith("data:image/png;base64,")
    assert plots.recall_plot({}, []) is None
