"""Per-question scores -> results dict (the source of truth) -> verdict -> Markdown report.

Every number is a fraction in [0, 1] in the results dict; "points" in sentences and
tables are percentage points (a fraction x 100), printed with one decimal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.stats import mean_ci, paired_diff_ci
from tunearena.files import write_atomic

BETTER, WORSE, NO_EVIDENCE = "better than base", "worse than base", "no evidence of a difference"

_ARM_LABELS = {"base+rag": "RAG", "ft": "Fine-tuning", "ft+rag": "Fine-tuning plus RAG"}
_OWN_KEYS = ("settings", "arms", "benchmarks", "forgetting", "headline", "decision", "samples")


def summarise(
    samples: dict[str, dict[str, list[dict]]],
    benchmarks: list[BenchmarkConfig],
    eval_cfg: EvaluationConfig,
    report_cfg: ReportConfig,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Turn ``samples[arm][benchmark]`` (lists from ``score_model``) into the results dict.

    Keys: ``settings``, ``arms``, ``benchmarks`` (per benchmark: kind, n, per arm
    acc / CI / acc_norm / paired diff vs base / verdict, and ``pairs``: for every two
    non-base arms, ``"A - B": {diff, ci, verdict}`` paired question by question, A the later
    arm in ``arms``), ``forgetting`` (each non-base arm on each general benchmark),
    ``headline`` (plain sentences), ``decision`` (see ``decide``), ``samples`` (kept as
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
        pairs: dict[str, Any] = {}
        others = arms[1:]
        for i, b in enumerate(others):
            for a in others[i + 1 :]:
                diff, dlo, dhi = paired_diff_ci(scores[a]["acc"], scores[b]["acc"], conf, n_boot)
                pairs[f"{a} - {b}"] = {
                    "diff": diff,
                    "ci": [dlo, dhi],
                    "verdict": _verdict(dlo, dhi, f"better than {b}", f"worse than {b}"),
                }
        per_benchmark[bench.name] = {
            "kind": bench.kind,
            "n": len(base_acc),
            "arms": rows,
            "pairs": pairs,
        }

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
    }
    results["decision"] = decide(results)
    results["samples"] = samples
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


def _verdict(lo: float, hi: float, better: str = BETTER, worse: str = WORSE) -> str:
    if lo > 0:
        return better
    if hi < 0:
        return worse
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


VERDICTS = ("fine-tune", "RAG", "both", "neither")

RULE_IN_FULL = (
    "An arm helps when, on every domain benchmark, the confidence interval of its "
    "question-by-question difference against the base model lies above zero.",
    "Fine-tuning is acceptable when no forgetting check of a fine-tuned arm (ft, ft+rag) finds "
    "a drop on a general benchmark beyond the forgetting tolerance.",
    "both: ft+rag helps, the intervals of ft+rag minus base+rag and of ft+rag minus ft lie "
    "above zero on every domain benchmark, and fine-tuning is acceptable.",
    "fine-tune: ft helps, fine-tuning is acceptable, and the interval of ft minus base+rag "
    "lies below zero on no domain benchmark.",
    "RAG: base+rag helps, and neither rule above applies.",
    "neither: no rule above applies.",
)
"""The decision rule, checked in this order; the first clause that holds gives the verdict."""

_SENTENCES = {
    "both": "Use both: fine-tune the model and give it retrieved passages (RAG).",
    "fine-tune": "Fine-tune the model: it beats the base model, and RAG is not shown to do better.",
    "RAG": "Use retrieval (RAG) with the base model: it beats the base model, and fine-tuning "
    "is not shown to be worth it.",
    "neither": "Neither: no option is shown to be worth it on these questions; keep the base "
    "model, or score more questions to settle it.",
}

_Comparison = tuple[str, str]  # (a, b): the interval of a minus b, paired question by question


def decide(results: dict[str, Any]) -> dict[str, Any]:
    """The recommendation the results support: fine-tune, RAG, both, or neither.

    The rule (``RULE_IN_FULL``), checked in this order, the first clause that holds wins:

    - an arm *helps* when, on every domain benchmark, the confidence interval of its paired
      difference against base lies above zero;
    - fine-tuning is *acceptable* when no forgetting check of a fine-tuned arm (ft, ft+rag)
      has status ``forgetting`` (its whole interval past ``report.forgetting_tolerance``);
    - **both**: ft+rag helps, the intervals of ft+rag - base+rag and ft+rag - ft lie above
      zero on every domain benchmark, and fine-tuning is acceptable;
    - **fine-tune**: ft helps, fine-tuning is acceptable, and the interval of ft - base+rag
      lies below zero on no domain benchmark (an unscored base+rag cannot block it);
    - **RAG**: base+rag helps;
    - **neither**: otherwise (also when no domain benchmark was scored).

    Reads only the results dict (``settings``, ``arms``, ``benchmarks`` with their ``pairs``,
    ``forgetting``). Returns ``verdict`` (one of ``VERDICTS``), ``sentence`` (the
    recommendation in plain words), ``rule`` (the clause that produced it, and why the
    earlier clauses did not), ``confidence`` (which intervals decided it, and which of them
    span zero), ``rule_in_full``, and ``evidence`` (every interval the rule read, each with
    ``comparison``, ``benchmark``, ``diff``, ``ci``, ``position`` and ``decisive``).
    """
    settings = results.get("settings", {})
    forgetting = results.get("forgetting", {})
    conf = settings.get("confidence", 0.95)
    tol = settings.get("forgetting_tolerance", forgetting.get("tolerance", 0.0))
    benchmarks = results.get("benchmarks", {})
    arms = results.get("arms", [])
    domain = [name for name, b in benchmarks.items() if b["kind"] == "domain"]
    seen: dict[tuple[str, str, str], tuple[float, float, float]] = {}

    def interval(a: str, b: str, name: str) -> tuple[float, float, float] | None:
        bench = benchmarks[name]
        if b == "base":
            row = bench["arms"].get(a)
            if row is None or row.get("diff_ci") is None:
                return None
            value = (row["diff_vs_base"], *row["diff_ci"])
        else:
            pair = bench.get("pairs", {}).get(f"{a} - {b}")
            if pair is None:
                return None
            value = (pair["diff"], *pair["ci"])
        seen[(a, b, name)] = value
        return value

    def beats(a: str, b: str) -> tuple[bool, str, list[_Comparison]]:
        """Whether a - b lies above zero on every domain benchmark."""
        missing = [arm for arm in (a, b) if arm not in arms]
        if missing:
            return False, f"{missing[0]} was not scored", []
        values = [interval(a, b, name) for name in domain]
        ok = bool(values) and all(v is not None and v[1] > 0 for v in values)
        return ok, f"{a} is not shown to beat {b}", [(a, b)]

    def not_worse(a: str, b: str) -> tuple[bool, str, list[_Comparison]]:
        """Whether a - b lies below zero on no domain benchmark (trivially, b unscored)."""
        if a not in arms or b not in arms:
            return True, "", []
        values = [interval(a, b, name) for name in domain]
        ok = not any(v is not None and v[2] < 0 for v in values)
        return ok, f"{a} is worse than {b}", [(a, b)]

    ft_checks = [c for c in forgetting.get("checks", []) if c["arm"].startswith("ft")]
    forgot = [f"{c['arm']} on {c['benchmark']}" for c in ft_checks if c["status"] == "forgetting"]
    acceptable = (
        not forgot,
        f"fine-tuning forgets beyond the {_points(tol)} tolerance ({', '.join(forgot)})",
        [],
    )
    # Every condition is evaluated (no short cut), so the evidence lists every interval.
    conditions = {
        "both": [
            beats("ft+rag", "base"),
            beats("ft+rag", "base+rag"),
            beats("ft+rag", "ft"),
            acceptable,
        ],
        "fine-tune": [beats("ft", "base"), acceptable, not_worse("ft", "base+rag")],
        "RAG": [beats("base+rag", "base")],
    }
    failures = {
        name: next(((reason, comps) for ok, reason, comps in conds if not ok), None)
        for name, conds in conditions.items()
    }

    if forgot:
        kept = acceptable[1]
    elif any(c["status"] == "inconclusive" for c in ft_checks):
        kept = (
            f"no general benchmark shows forgetting beyond the {_points(tol)} tolerance "
            "(though some intervals reach past it)"
        )
    elif ft_checks:
        kept = f"no general benchmark shows forgetting beyond the {_points(tol)} tolerance"
    else:
        kept = "forgetting was not measured, so it cannot block fine-tuning"

    def why_not(*names: str) -> str:
        reasons = dict.fromkeys(failures[n][0] for n in names if failures[n] is not None)
        return "; ".join(reasons)

    if not domain:
        verdict = "neither"
        rule = "neither: no domain benchmark was scored, so no arm can be shown to help."
        decisive: list[_Comparison] = []
    elif failures["both"] is None:
        verdict = "both"
        rule = (
            "both: ft+rag beats base, base+rag and ft on every domain benchmark (each "
            f"interval lies above zero), and {kept}."
        )
        decisive = [c for _, _, comps in conditions["both"] for c in comps]
    elif failures["fine-tune"] is None:
        verdict = "fine-tune"
        rule = (
            "fine-tune: ft beats base on every domain benchmark (the interval lies above zero), "
            f"is not shown to be worse than base+rag, and {kept}; both does not hold "
            f"({why_not('both')})."
        )
        decisive = [c for _, _, comps in conditions["fine-tune"] for c in comps]
    elif failures["RAG"] is None:
        verdict = "RAG"
        rule = (
            "RAG: base+rag beats base on every domain benchmark (the interval lies above zero), "
            f"and fine-tuning does not win ({why_not('fine-tune', 'both')})."
        )
        decisive = [("base+rag", "base"), *failures["fine-tune"][1], *failures["both"][1]]
    else:
        verdict = "neither"
        rule = f"neither: {why_not('RAG', 'fine-tune', 'both')}."
        decisive = [c for n in ("RAG", "fine-tune", "both") for c in failures[n][1]]

    decisive = list(dict.fromkeys(decisive))
    evidence = [
        {
            "comparison": f"{a} - {b}",
            "benchmark": name,
            "diff": diff,
            "ci": [lo, hi],
            "position": "above zero" if lo > 0 else "below zero" if hi < 0 else "spans zero",
            "decisive": (a, b) in decisive,
        }
        for (a, b, name), (diff, lo, hi) in seen.items()
    ]
    # The intervals that decided it first, in the order the rule names them.
    rank = {f"{a} - {b}": i for i, (a, b) in enumerate(decisive)}
    evidence.sort(key=lambda e: rank.get(e["comparison"], len(rank)))
    return {
        "verdict": verdict,
        "sentence": _SENTENCES[verdict],
        "rule": rule,
        "confidence": _confidence(evidence, ft_checks, domain, benchmarks, conf, tol),
        "rule_in_full": list(RULE_IN_FULL),
        "evidence": evidence,
    }


def _confidence(
    evidence: list[dict],
    ft_checks: list[dict],
    domain: list[str],
    benchmarks: dict[str, Any],
    conf: float,
    tol: float,
) -> str:
    """Which intervals decided the verdict, which of them span zero, and what forgetting
    could not settle, in plain sentences."""
    if not domain:
        return "No domain benchmark was scored, so there is no evidence either way."
    pct = _pct_label(conf)

    def said(e: dict) -> str:
        lo, hi = e["ci"]
        return (
            f"{e['comparison']} on {e['benchmark']} ({_signed(e['diff'])} points, "
            f"CI {_signed(lo)} to {_signed(hi)})"
        )

    decisive = [e for e in evidence if e["decisive"]]
    n = sum(benchmarks[name]["n"] for name in domain)
    parts = [f"Based on {n} domain question{'s' if n != 1 else ''}, at {pct} confidence."]
    if decisive:
        parts.append("Decided by: " + "; ".join(said(e) for e in decisive) + ".")
    spanning = [e for e in decisive if e["position"] == "spans zero"]
    if spanning and len(spanning) == len(decisive) > 1:
        parts.append("All of them span zero: no evidence of a difference.")
    elif spanning:
        parts.append(
            "Spanning zero (no evidence of a difference): "
            + "; ".join(said(e) for e in spanning)
            + "."
        )
    elif decisive:
        parts.append("None of these intervals spans zero.")
    unsure = [c for c in ft_checks if c["status"] == "inconclusive"]
    if not ft_checks:
        parts.append("Forgetting was not measured for a fine-tuned arm.")
    elif unsure:
        parts.append(
            f"Forgetting beyond the {_points(tol)} tolerance cannot be ruled out for "
            + ", ".join(f"{c['arm']} on {c['benchmark']}" for c in unsure)
            + "."
        )
    return " ".join(parts)


class ResultsError(ValueError):
    """A run's results.json is missing or is not a results dict."""


def load_results(path: Path) -> dict[str, Any]:
    """Read a run's ``results.json``; ``ResultsError`` (naming the path) if it is missing,
    not JSON, or not a JSON object."""
    if not path.is_file():
        raise ResultsError(f"{path}: results not found (a finished `tunearena run` writes it)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(results, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(results).__name__}")
    return results


def write_reports(run_dir: Path, results: dict[str, Any]) -> list[Path]:
    """Write ``report.md`` and ``report.html`` for ``results`` into ``run_dir``, atomically;
    returns their paths."""
    from tunearena.evaluation.html import render_html  # html builds on this module

    paths = [run_dir / "report.md", run_dir / "report.html"]
    for path, text in zip(paths, (render_markdown(results), render_html(results)), strict=True):
        write_atomic(path, text)
    return paths


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

    decision = results.get("decision")
    if decision:
        lines += [f"## Verdict: {decision['verdict']}", "", f"**{decision['sentence']}**", ""]
        lines += [f"- **Rule**: {decision['rule']}", f"- **Confidence**: {decision['confidence']}"]
        lines.append("")

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
        if bench.get("pairs"):
            lines += [f"| between arms | diff | {ci} of diff | verdict |", "|---|---:|---:|---|"]
            for comparison, pair in bench["pairs"].items():
                lo, hi = pair["ci"]
                lines.append(
                    f"| {comparison} | {_signed(pair['diff'])} | {_signed(lo)} to {_signed(hi)} "
                    f"| {pair['verdict']} |"
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
