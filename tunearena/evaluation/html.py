"""The results dict -> one self-contained HTML page for people who do not train models.

Everything the page needs is inside it: CSS in a ``<style>`` block, plots drawn by
matplotlib's Agg renderer and embedded as base64 PNG, no script, no external URL. It reads
only the results dict (as ``results.json`` holds it); a section whose key is missing is left
out. Values the page does not know (retrieval diagnostics, cost, latency, training summary,
provenance) are rendered generically as tables, so new keys show up without a code change.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from matplotlib.figure import Figure

from tunearena.evaluation.report import (
    _TEXT_COLUMNS,
    BETTER,
    METRIC_LABELS,
    WORSE,
    _arm_label,
    _as_dict,
    _pct_label,
    _points,
    _signed,
    _stages_view,
    latency_sentence,
)

_ENV = Environment(
    loader=PackageLoader("tunearena.evaluation", "templates"),
    autoescape=True,  # every string from results.json is data, never markup
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ARM_COLOURS = {"base": "#7f7f7f", "base+rag": "#1f77b4", "ft": "#ff7f0e", "ft+rag": "#2ca02c"}
# Stage arms (ft@<stage>, with or without +rag) take these in order of appearance.
_MORE_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#d62728", "#393b79")
_BENCHMARK_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")
_ARM_NAMES = {
    "base": "base model",
    "base+rag": "base model + RAG",
    "base+fewshot": "base model + few-shot examples",
    "ft": "fine-tuned",
    "ft+rag": "fine-tuned + RAG",
}


def render_html(results: dict[str, Any]) -> str:
    """The report as one HTML page: verdict (and the stage-selection warning, if any),
    scores, stages, forgetting, retrieval, cost and latency, training, provenance (in that
    order; sections missing from ``results`` are skipped)."""
    settings = results.get("settings", {})
    conf = settings.get("confidence", 0.95)
    run = _as_dict(results.get("run"))
    training = results.get("training")
    benchmarks = results.get("benchmarks", {})
    colours = _colours(list(dict.fromkeys(a for b in benchmarks.values() for a in b["arms"])))
    stages = _stages_view(results)
    selected = stages["selected"] if stages else None
    if stages:
        stages["plot"] = _stages_plot(results, stages["order"], selected)
    context = {
        "title": "tunearena report" + (f": {run['name']}" if run.get("name") else ""),
        "ci": f"{_pct_label(conf)} CI",
        "decision": _decision(results.get("decision")),
        "headline": results.get("headline", []),
        "benchmarks": [_benchmark(name, b, selected) for name, b in benchmarks.items()],
        "accuracy_plot": _accuracy_plot(benchmarks, conf, colours),
        "stages": stages,
        "text_columns": _TEXT_COLUMNS,
        "forgetting": _forgetting(results.get("forgetting"), colours),
        "language": [_language(name, b) for name, b in
                     (results.get("language_modelling") or {}).items()],
        "retrieval": _tables(results["retrieval"]) if results.get("retrieval") else None,
        "recall_plot": _recall_plot(_as_dict(results.get("retrieval")), list(benchmarks)),
        "cost": _tables(results["cost"]) if results.get("cost") else None,
        "cost_sentence": _cost_sentence(results.get("cost")),
        "latency_sentence": latency_sentence(results.get("latency")),
        "latency": _tables(results["latency"]) if results.get("latency") else None,
        "training": _training(training) if isinstance(training, dict) and training else None,
        "run": _tables({**run, **{f"settings.{k}": v for k, v in settings.items()}})
        if run or settings
        else None,
    }
    return _ENV.get_template("report.html.j2").render(**context)


# -- sections ---------------------------------------------------------------------------


def _decision(decision: dict | None) -> dict | None:
    if not decision:
        return None
    evidence = [
        {
            "comparison": e["comparison"],
            "benchmark": e["benchmark"],
            "diff": _signed(e["diff"]),
            "ci": f"{_signed(e['ci'][0])} to {_signed(e['ci'][1])}",
            "position": e["position"],
            "decisive": e.get("decisive", False),
        }
        for e in decision.get("evidence", [])
    ]
    return {"rule_in_full": [], **decision, "evidence": evidence}


def _arm_name(arm: str) -> str:
    """``ft@qa+rag`` -> ``stage qa + RAG``; the four fixed arms by their plain names."""
    if arm.startswith("ft@"):
        stage, _, context = arm[3:].partition("+")
        return f"stage {stage}" + {"rag": " + RAG", "fewshot": " + few-shot examples"}.get(
            context, "")
    return _ARM_NAMES.get(arm, arm)


def _colours(arms: list[str]) -> dict[str, str]:
    extra = [a for a in arms if a not in _ARM_COLOURS]
    more = {a: _MORE_COLOURS[i % len(_MORE_COLOURS)] for i, a in enumerate(extra)}
    return {**_ARM_COLOURS, **more}


def _benchmark(name: str, bench: dict, selected: str | None = None) -> dict:
    rows = []
    for arm, row in bench["arms"].items():
        lo, hi = row["acc_ci"]
        has_diff = row.get("diff_vs_base") is not None
        rows.append(
            {
                "arm": _arm_label(arm, selected),
                "name": _arm_name(arm),
                "acc": f"{row['acc'] * 100:.1f}%",
                "acc_ci": f"{lo * 100:.1f} to {hi * 100:.1f}",
                "acc_norm": f"{row['acc_norm'] * 100:.1f}%" if "acc_norm" in row else "—",
                "diff": _signed(row["diff_vs_base"]) if has_diff else "—",
                "diff_ci": f"{_signed(row['diff_ci'][0])} to {_signed(row['diff_ci'][1])}"
                if has_diff
                else "—",
                "verdict": row["verdict"],
                "tone": _tone(row["verdict"]),
            }
        )
    pairs = [
        {
            "comparison": comparison,
            "diff": _signed(pair["diff"]),
            "ci": f"{_signed(pair['ci'][0])} to {_signed(pair['ci'][1])}",
            "verdict": pair["verdict"],
            "tone": _tone(pair["verdict"]),
        }
        for comparison, pair in bench.get("pairs", {}).items()
    ]
    primary = bench.get("metrics", ["acc"])[0]
    return {"name": name, "kind": bench["kind"], "n": bench["n"], "rows": rows, "pairs": pairs,
            "metric": METRIC_LABELS.get(primary, primary),
            "track": bench.get("track", "multiple_choice")}


def _language(name: str, bench: dict) -> dict:
    rows = []
    for arm, row in bench["arms"].items():
        has_diff = row.get("diff_vs_base") is not None
        rows.append({
            "arm": arm,
            "value": f"{row['bits_per_byte']:.4f}",
            "ci": "{:.4f} to {:.4f}".format(*row["ci"]),
            "diff": f"{row['diff_vs_base']:+.4f}" if has_diff else "—",
            "diff_ci": "{:+.4f} to {:+.4f}".format(*row["diff_ci"]) if has_diff else "—",
            "verdict": row["verdict"],
            "tone": _tone(row["verdict"]),
        })
    return {"name": name, "n": bench["n"], "rows": rows}


def _tone(verdict: str) -> str:
    """A CSS class for a verdict string: good, bad or neutral."""
    if verdict == BETTER or verdict.startswith("better than"):
        return "good"
    if verdict == WORSE or verdict.startswith("worse than"):
        return "bad"
    return "neutral"


def _forgetting(forgetting: dict | None, colours: dict[str, str]) -> dict | None:
    if not forgetting:
        return None
    tolerance = forgetting.get("tolerance", 0.0)
    checks = [
        {
            **c,
            "change_points": _signed(c["change"]),
            "ci_points": f"{_signed(c['ci'][0])} to {_signed(c['ci'][1])}",
            "tone": {"forgetting": "bad", "none": "good"}.get(c["status"], "neutral"),
        }
        for c in forgetting.get("checks", [])
    ]
    return {
        "summary": forgetting.get("summary", ""),
        "tolerance": _points(tolerance),
        "checks": checks,
        "plot": _forgetting_plot(forgetting.get("checks", []), tolerance, colours),
    }


def _training(training: dict) -> dict:
    history = training.get("history") or []
    summary = {k: v for k, v in training.items() if k != "history"}
    return {"tables": _tables(summary) if summary else [], "loss_plot": _loss_plot(history)}


def _cost_sentence(cost: Any) -> str | None:
    if not isinstance(cost, dict) or not {"device_hours", "usd"} <= cost.keys():
        return None
    rate = cost.get("usd_per_device_hour")
    at = f" at ${rate:g} per hour" if isinstance(rate, int | float) else ""
    device = cost.get("device", "device")
    return (
        f"Fine-tuning used {cost['device_hours']:.3g} {device}-hours, about ${cost['usd']:.2f}{at}."
    )


# -- generic values as tables -------------------------------------------------------------


def _tables(value: Any) -> list[dict]:
    """Any JSON value as a list of ``{title, columns, rows}`` tables.

    A dict's plain values form one key/value table; its dict values that share field names
    (per-benchmark or per-arm numbers) form one table with a row each, the others a
    key/value table each; a list of dicts is a table.
    """
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_row_table(None, {str(i + 1): v for i, v in enumerate(value)}, index="#")]
    if not isinstance(value, dict):
        return [{"title": None, "columns": [], "rows": [[_fmt(value)]]}]
    tables: list[dict[str, Any]] = []
    plain = {k: v for k, v in value.items() if not _is_record(v) and not _is_records(v)}
    if plain:
        rows = [[_label(k), _fmt(v, k)] for k, v in plain.items()]
        tables.append({"title": None, "columns": [], "rows": rows})
    groups: list[dict[str, dict]] = []
    for key, record in ((k, v) for k, v in value.items() if _is_record(v)):
        group = next((g for g in groups if any(record.keys() & r.keys() for r in g.values())), None)
        if group is None:
            groups.append({key: record})
        else:
            group[key] = record
    for group in groups:
        if len(group) == 1:
            ((key, record),) = group.items()
            if all(_is_record(v) for v in record.values()):  # e.g. cost per stage
                tables.append(_row_table(_label(key), record, index=""))
                continue
            rows = [[_label(k), _fmt(v, k)] for k, v in record.items()]
            tables.append({"title": _label(key), "columns": [], "rows": rows})
        else:
            tables.append(_row_table(None, group, index=""))
    for key, records in ((k, v) for k, v in value.items() if _is_records(v)):
        tables.append(_row_table(_label(key), {str(i + 1): r for i, r in enumerate(records)}, "#"))
    return tables


def _row_table(title: str | None, records: dict[str, dict], index: str) -> dict:
    columns = list(dict.fromkeys(k for r in records.values() for k in r))
    rows = [[name, *(_fmt(r.get(c), c) for c in columns)] for name, r in records.items()]
    return {"title": title, "columns": [index, *map(_label, columns)], "rows": rows}


def _is_record(v: Any) -> bool:
    return isinstance(v, dict) and bool(v)


def _is_records(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _label(key: str) -> str:
    """``search_ms_per_question`` -> ``search ms per question``; ``score_s`` -> ``score (s)``."""
    for suffix, unit in (("_s", "s"), ("_ms", "ms"), ("_mb", "MB"), ("_usd", "USD")):
        if key.endswith(suffix):
            key = f"{key[: -len(suffix)]} ({unit})"
            break
    return key.replace("_", " ")


def _fmt(v: Any, key: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) and "recall" in key and 0 <= v <= 1:
        return f"{v * 100:.1f}%"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, list) and all(not isinstance(x, dict | list) for x in v):
        return ", ".join(_fmt(x, key) for x in v)
    if isinstance(v, dict | list):
        return json.dumps(v, separators=(", ", ": "))
    return str(v)


# -- plots ----------------------------------------------------------------------------------


def _png(fig: Figure) -> str:
    """A figure as a ``data:`` URI (Agg renders it; no display, no pyplot state)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _accuracy_plot(benchmarks: dict[str, Any], conf: float, colours: dict[str, str]) -> str | None:
    if not benchmarks:
        return None
    names = list(benchmarks)
    arms = list(dict.fromkeys(a for b in benchmarks.values() for a in b["arms"]))
    width = 0.8 / len(arms)
    fig = Figure(figsize=(max(5.0, 1.2 + 1.6 * len(names)), 3.6))
    ax = fig.add_subplot()
    for i, arm in enumerate(arms):
        xs, accs, lows, highs = [], [], [], []
        for j, name in enumerate(names):
            row = benchmarks[name]["arms"].get(arm)
            if row is None:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            accs.append(row["acc"] * 100)
            lows.append((row["acc"] - row["acc_ci"][0]) * 100)
            highs.append((row["acc_ci"][1] - row["acc"]) * 100)
        ax.bar(
            xs,
            accs,
            width * 0.92,
            yerr=[lows, highs],
            capsize=3,
            color=colours.get(arm, "#9467bd"),
            label=_arm_name(arm),
        )
    ax.set_xticks(range(len(names)), [f"{n}\n({benchmarks[n]['kind']})" for n in names])
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Accuracy per arm; bars show the {_pct_label(conf)} interval")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _png(fig)


def _forgetting_plot(checks: list[dict], tolerance: float, colours: dict[str, str]) -> str | None:
    if not checks:
        return None
    fig = Figure(figsize=(6.4, 0.9 + 0.45 * len(checks)))
    ax = fig.add_subplot()
    ys = list(range(len(checks)))[::-1]
    for y, c in zip(ys, checks, strict=True):
        change, (lo, hi) = c["change"] * 100, c["ci"]
        ax.errorbar(
            change,
            y,
            xerr=[[change - lo * 100], [hi * 100 - change]],
            fmt="o",
            capsize=3,
            color=colours.get(c["arm"], "#9467bd"),
        )
    ax.axvline(0, color="#444", linewidth=0.8)
    ax.axvline(
        -tolerance * 100,
        color="#d62728",
        linestyle="--",
        label=f"tolerance ({_signed(-tolerance)} points)",
    )
    left = min(-tolerance * 100, *(c["ci"][0] * 100 for c in checks)) - 2
    right = max(0.0, *(c["ci"][1] * 100 for c in checks)) + 2
    ax.axvspan(left, -tolerance * 100, color="#d62728", alpha=0.07, label="beyond the tolerance")
    ax.set_xlim(left, right)
    ax.set_ylim(-0.6, len(checks) - 0.4)
    ax.set_yticks(ys, [f"{c['arm']} on {c['benchmark']}" for c in checks])
    ax.set_xlabel("change in general accuracy vs base (points)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small")
    return _png(fig)


def _stages_plot(results: dict[str, Any], order: list[str], selected: str | None) -> str | None:
    """Accuracy on each benchmark after each stage, one line per benchmark; the base
    model's accuracy a dashed line in the same colour."""
    matrix = _as_dict(_as_dict(results.get("stages")).get("matrix"))
    benchmarks = results.get("benchmarks", {})
    if not order or not benchmarks:
        return None
    fig = Figure(figsize=(max(5.0, 2.4 + 1.1 * len(order)), 3.6))
    ax = fig.add_subplot()
    xs = range(len(order))
    for i, (name, bench) in enumerate(benchmarks.items()):
        colour = _BENCHMARK_COLOURS[i % len(_BENCHMARK_COLOURS)]
        points = [(x, _as_dict(matrix.get(stage)).get(name)) for x, stage in enumerate(order)]
        scored = [(x, cell["acc"] * 100) for x, cell in points if cell]
        label = f"{name} ({bench['kind']})"
        if scored:
            ax.plot(*zip(*scored, strict=True), marker="o", color=colour, label=label)
        base = bench["arms"].get("base")
        if base is not None:
            ax.axhline(base["acc"] * 100, color=colour, linestyle="--", linewidth=1, alpha=0.8)
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
    return _png(fig)


def _recall_plot(retrieval: dict[str, Any], benchmark_names: list[str]) -> str | None:
    """The gold document's recall against k, one line per benchmark with a ``recall_curve``;
    a dotted line and a ring mark the configured ``k`` (the passages the model is given)."""
    curves = {
        name: sorted((int(k), r * 100) for k, r in stats["recall_curve"].items())
        for name, stats in retrieval.items()
        if isinstance(stats, dict) and _is_record(stats.get("recall_curve"))
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
        top_k = retrieval[name].get("k")
        if isinstance(top_k, int):
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
    return _png(fig)


def _loss_plot(history: list[dict]) -> str | None:
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
    return _png(fig)
