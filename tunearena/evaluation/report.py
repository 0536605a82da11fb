"""Per-question scores -> results dict (the source of truth) -> Markdown report.

Every number is a fraction in [0, 1] in the results dict; "points" in sentences and
tables are percentage points (a fraction x 100), printed with one decimal.
"""

from __future__ import annotations

from typing import Any

from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.stats import mean_ci, paired_diff_ci

BETTER, WORSE, NO_EVIDENCE = "better than base", "worse than base", "no evidence of a difference"

_ARM_LABELS = {"base+rag": "RAG", "ft": "Fine-tuning", "ft+rag": "Fine-tuning plus RAG"}
_OWN_KEYS = ("settings", "arms", "benchmarks", "forgetting", "headline", "samples")


def summarise(
    samples: dict[str, dict[str, list[dict]]],
    benchmarks: list[BenchmarkConfig],
    eval_cfg: EvaluationConfig,
    report_cfg: ReportConfig,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Turn ``samples[arm][benchmark]`` (lists from ``score_model``) into the results dict.

    Keys: ``settings``, ``arms``, ``benchmarks`` (per benchmark: kind, n and per arm
    acc / CI / acc_norm / paired diff vs base / verdict), ``forgetting`` (each non-base
    arm on each general benchmark), ``headline`` (plain sentences), ``samples`` (kept as
    given), then the keys of ``extra`` (e.g. ``training``, ``retrieval``, ``run``).
    """
    extra = extra or {}
    clash = sorted(set(extra) & set(_OWN_KEYS))
    if clash:
        raise ValueError(f"extra must not override the report's own keys: {clash}")
    unknown = sorted(set(samples) - set(eval_cfg.arms))
    if unknown:
        raise ValueError(f"samples hold arms that are not configured: {unknown}")
    if "base" not in samples:
        raise ValueError("samples have no 'base' arm; every difference is taken against it")
    arms = [a for a in eval_cfg.arms if a in samples]
    conf, n_boot = eval_cfg.confidence, eval_cfg.bootstrap_samples
    tolerance = report_cfg.forgetting_tolerance

    per_benchmark: dict[str, Any] = {}
    for bench in benchmarks:
        scores = _aligned_scores(samples, arms, bench.name)
        base_acc = scores["base"]["acc"]
        rows: dict[str, Any] = {}
        for arm in arms:
            acc, lo, hi = mean_ci(scores[arm]["acc"], conf, n_boot)
            row: dict[str, Any] = {
                "acc": acc,
                "acc_ci": [lo, hi],
                "acc_norm": _mean(scores[arm]["acc_norm"]),
                "diff_vs_base": None,
                "diff_ci": None,
                "verdict": "reference",
            }
            if arm != "base":
                diff, dlo, dhi = paired_diff_ci(scores[arm]["acc"], base_acc, conf, n_boot)
                row.update(diff_vs_base=diff, diff_ci=[dlo, dhi], verdict=_verdict(dlo, dhi))
            rows[arm] = row
        per_benchmark[bench.name] = {"kind": bench.kind, "n": len(base_acc), "arms": rows}

    forgetting = _forgetting(per_benchmark, arms, tolerance, conf)
    results: dict[str, Any] = {
        "settings": {
            "confidence": conf,
            "bootstrap_samples": n_boot,
            "forgetting_tolerance": tolerance,
            "limit": eval_cfg.limit,
        },
        "arms": arms,
        "benchmarks": per_benchmark,
        "forgetting": forgetting,
        "headline": _headline(per_benchmark, arms, forgetting, conf),
        "samples": samples,
    }
    results.update(extra)
    return results


def _aligned_scores(
    samples: dict[str, dict[str, list[dict]]], arms: list[str], name: str
) -> dict[str, dict[str, list[int]]]:
    """Per arm, the acc and acc_norm lists of one benchmark, checked to be the same questions."""
    base_ids: list[str] | None = None
    out = {}
    for arm in arms:
        if name not in samples[arm]:
            raise ValueError(f"arm {arm!r} has no scores for benchmark {name!r}")
        rows = samples[arm][name]
        if not rows:
            raise ValueError(f"arm {arm!r} has no questions scored for benchmark {name!r}")
        ids = [r["id"] for r in rows]
        if base_ids is None:
            base_ids = ids
        elif ids != base_ids:
            # A paired difference is only meaningful question by question.
            raise ValueError(
                f"benchmark {name!r}: arm {arm!r} scored different questions than base "
                f"({len(ids)} vs {len(base_ids)}, or in another order)"
            )
        out[arm] = {"acc": [r["acc"] for r in rows], "acc_norm": [r["acc_norm"] for r in rows]}
    return out


def _mean(values: list[int]) -> float:
    return sum(values) / len(values)


def _verdict(lo: float, hi: float) -> str:
    if lo > 0:
        return BETTER
    if hi < 0:
        return WORSE
    return NO_EVIDENCE


def _forgetting(
    per_benchmark: dict[str, Any], arms: list[str], tolerance: float, conf: float
) -> dict[str, Any]:
    general = [name for name, b in per_benchmark.items() if b["kind"] == "general"]
    checks = []
    for arm in arms[1:]:
        for name in general:
            row = per_benchmark[name]["arms"][arm]
            change, (lo, hi) = row["diff_vs_base"], row["diff_ci"]
            # Forgetting is claimed only when the whole interval lies past the tolerance,
            # and ruled out only when none of it does; otherwise the data cannot tell.
            if hi < -tolerance:
                status = "forgetting"
            elif lo >= -tolerance:
                status = "none"
            else:
                status = "inconclusive"
            checks.append(
                {
                    "arm": arm,
                    "benchmark": name,
                    "change": change,
                    "ci": [lo, hi],
                    "status": status,
                    "sentence": _forgetting_sentence(
                        arm, name, change, lo, hi, status, tolerance, conf
                    ),
                }
            )
    if not general:
        summary = "No general benchmark was scored, so forgetting was not measured."
    elif len(arms) == 1:
        summary = "Only the base arm was scored, so there is nothing to compare for forgetting."
    elif any(c["status"] == "forgetting" for c in checks):
        lost = sorted(
            {f"{c['arm']} on {c['benchmark']}" for c in checks if c["status"] == "forgetting"}
        )
        summary = f"Forgetting beyond the {_points(tolerance)} tolerance: {', '.join(lost)}."
    elif any(c["status"] == "inconclusive" for c in checks):
        summary = (
            f"No clear forgetting, but some intervals reach past the {_points(tolerance)} "
            "tolerance; more general questions would settle it."
        )
    else:
        summary = (
            f"No forgetting beyond the {_points(tolerance)} tolerance on any general benchmark."
        )
    return {"tolerance": tolerance, "summary": summary, "checks": checks}


def _forgetting_sentence(
    arm: str, name: str, change: float, lo: float, hi: float, status: str, tol: float, conf: float
) -> str:
    if change < 0:
        moved = f"lost {abs(change) * 100:.1f} points"
    elif change > 0:
        moved = f"gained {change * 100:.1f} points"
    else:
        moved = "kept the same score"
    ci = f"{_pct_label(conf)} CI {lo * 100:.1f} to {hi * 100:.1f}"
    judgement = {
        "forgetting": f"forgetting beyond the {_points(tol)} tolerance",
        "none": f"within the {_points(tol)} tolerance",
        "inconclusive": f"cannot rule out forgetting beyond the {_points(tol)} tolerance",
    }[status]
    return f"{arm} {moved} on {name} ({ci}): {judgement}"


def _headline(
    per_benchmark: dict[str, Any], arms: list[str], forgetting: dict[str, Any], conf: float
) -> list[str]:
    sentences = []
    domain = [name for name, b in per_benchmark.items() if b["kind"] == "domain"]
    for name in domain:
        rows = per_benchmark[name]["arms"]
        base = rows["base"]["acc"]
        for arm in arms[1:]:
            row = rows[arm]
            lo, hi = row["diff_ci"]
            does = {BETTER: "helps", WORSE: "hurts", NO_EVIDENCE: "makes no clear difference"}
            sentences.append(
                f"{_ARM_LABELS.get(arm, arm)} {does[row['verdict']]} on {name}: "
                f"{arm} {row['acc'] * 100:.1f}% vs base {base * 100:.1f}% "
                f"({_signed(row['diff_vs_base'])} points, {_pct_label(conf)} CI "
                f"{_signed(lo)} to {_signed(hi)})."
            )
        best = max(arms, key=lambda a: rows[a]["acc"])
        if len(arms) > 1:
            sentences.append(f"Highest score on {name}: {best} ({rows[best]['acc'] * 100:.1f}%).")
    if not domain:
        sentences.append("No domain benchmark was scored.")
    sentences.append(forgetting["summary"])
    return sentences


def render_markdown(results: dict[str, Any]) -> str:
    """The report as Markdown: headline, one table per benchmark, forgetting, run details.

    Reads only the results dict (as written to ``results.json``); the ``training``, ``cost``,
    ``retrieval``, ``latency`` and ``run`` sections are rendered when present, else skipped.
    """
    conf = results.get("settings", {}).get("confidence", 0.95)
    ci = f"{_pct_label(conf)} CI"
    run = results.get("run") if isinstance(results.get("run"), dict) else {}
    title = "# tunearena report" + (f": {run['name']}" if run.get("name") else "")
    lines = [title, ""]

    lines += ["## Headline", ""]
    lines += [f"- {s}" for s in results.get("headline", [])] + [""]

    lines += ["## Scores", ""]
    for name, bench in results.get("benchmarks", {}).items():
        lines += [f"### {name} ({bench['kind']}, n = {bench['n']})", ""]
        lines += [
            f"| arm | acc | {ci} | acc_norm | diff vs base | {ci} of diff | verdict |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for arm, row in bench["arms"].items():
            lo, hi = row["acc_ci"]
            if row.get("diff_vs_base") is None:
                diff = diff_ci = "—"
            else:
                dlo, dhi = row["diff_ci"]
                diff, diff_ci = _signed(row["diff_vs_base"]), f"{_signed(dlo)} to {_signed(dhi)}"
            lines.append(
                f"| {arm} | {row['acc'] * 100:.1f}% | {lo * 100:.1f} to {hi * 100:.1f} "
                f"| {row['acc_norm'] * 100:.1f}% | {diff} | {diff_ci} | {row['verdict']} |"
            )
        lines.append("")
    lines.append("Differences are in percentage points, paired question by question.\n")

    forgetting = results.get("forgetting")
    if forgetting:
        lines += ["## Forgetting", "", forgetting.get("summary", ""), ""]
        lines += [f"- {c['sentence']}." for c in forgetting.get("checks", [])]
        lines.append("")

    sections = (("training", "Training"), ("cost", "Cost"), ("retrieval", "Retrieval"),
                ("latency", "Evaluation time per arm"), ("run", "Run"))
    for key, title in sections:
        if results.get(key):
            lines += [f"## {title}", "", *_render_value(results[key]), ""]
    return "\n".join(lines).rstrip() + "\n"


def _render_value(value: Any, indent: str = "") -> list[str]:
    """A list of dicts as a table, a dict as (nested) bullets, anything else as one line."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        columns = list(dict.fromkeys(k for row in value for k in row))
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in value]
        return lines
    if isinstance(value, dict):
        lines = []
        for k, v in value.items():
            if isinstance(v, dict) and v:
                lines += [f"{indent}- **{k}**:", *_render_value(v, indent + "  ")]
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                lines += [f"{indent}- **{k}**:", "", *_render_value(v), ""]
            else:
                lines.append(f"{indent}- **{k}**: {_cell(v)}")
        return lines
    return [indent + _cell(value)]


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(_cell(x) for x in v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def _signed(fraction: float) -> str:
    return f"{fraction * 100:+.1f}"


def _points(tolerance: float) -> str:
    return f"{tolerance * 100:g}-point"


def _pct_label(confidence: float) -> str:
    return f"{confidence * 100:g}%"
