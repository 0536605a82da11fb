"""Per-question scores -> results dict (the source of truth) -> verdict -> Markdown report.

Every number is a fraction in [0, 1] in the results dict; "points" in sentences and
tables are percentage points (a fraction x 100), printed with one decimal.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tunearena.errors import UserError
from tunearena.evaluation.arm import split_arm
from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.stats import mean_ci, paired_diff_ci, ratio_ci
from tunearena.files import write_atomic

BETTER, WORSE, NO_EVIDENCE = "better than base", "worse than base", "no evidence of a difference"

_ARM_LABELS = {"base+rag": "RAG", "base+fewshot": "Few-shot prompting", "ft": "Fine-tuning",
               "ft+rag": "Fine-tuning plus RAG"}
_OWN_KEYS = ("settings", "arms", "benchmarks", "language_modelling", "forgetting", "headline",
             "decision", "samples")


def summarise(
    samples: dict[str, dict[str, list[dict]]],
    benchmarks: list[BenchmarkConfig],
    eval_cfg: EvaluationConfig,
    report_cfg: ReportConfig,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Turn ``samples[arm][benchmark]`` (lists from ``score_model``) into the results dict.

    Keys: ``settings``, ``arms``, ``benchmarks`` (per benchmark: kind, ``track``,
    ``metrics`` (what ``acc`` and ``acc_norm`` hold: see ``metric_keys``), n, per arm
    acc / CI / acc_norm / paired diff vs base / verdict, and ``pairs``: for every two
    non-base arms, ``"A - B": {diff, ci, verdict}`` paired question by question, A the later
    arm in ``arms``; ``clustered_by`` is ``"doc_id"`` and ``n_clusters`` the number of
    source documents when questions share one (see ``_clusters``), else both None),
    ``forgetting`` (each non-base arm on each general benchmark),
    ``headline`` (plain sentences), ``decision`` (see ``decide``), ``samples`` (kept as
    given), then the keys of ``extra`` (e.g. ``training``, ``retrieval``, ``run``).

    With sequential stages, ``extra["stages"]`` holds ``order``, ``selection`` (from
    ``select_stage``) and ``stages`` (per stage: ``start_from``, training and data summary);
    the results' copy gains ``matrix`` (see ``_stage_matrix``). The ``ft`` arm must then
    hold exactly the selected stage's samples (``ft+rag`` those of ``ft@<selected>+rag``,
    when scored); ``pairs`` then leave out ``ft@<selected>``, which would repeat ``ft``'s.
    """
    extra = extra or {}
    clash = sorted(set(extra) & set(_OWN_KEYS))
    if clash:
        raise ValueError(f"extra must not override the report's own keys: {clash}")
    unknown = sorted(set(samples) - set(eval_cfg.arms))
    if unknown:
        raise ValueError(f"samples hold arms that are not configured: {unknown}")
    if samples and "base" not in samples:
        raise ValueError("samples have no 'base' arm; every difference is taken against it")
    arms = [a for a in eval_cfg.arms if a in samples]
    conf, n_boot = eval_cfg.confidence, eval_cfg.bootstrap_samples
    tolerance = eval_cfg.forgetting_tolerance
    stages = extra.get("stages") if isinstance(extra.get("stages"), dict) else None
    selected = _selected_stage(stages)
    repeats: set[str] = set()  # ft@<selected> arms whose every pair would repeat ft's
    if selected is not None:
        for ft, stage_arm in (("ft", f"ft@{selected}"), ("ft+rag", f"ft@{selected}+rag")):
            if ft in samples and stage_arm in samples:
                if samples[ft] != samples[stage_arm]:
                    raise ValueError(
                        f"arm {ft!r} must hold exactly the samples of {stage_arm!r}, "
                        "the selected stage's model"
                    )
                repeats.add(stage_arm)

    per_benchmark: dict[str, Any] = {}
    all_scores: dict[str, dict[str, dict[str, list[int]]]] = {}
    all_clusters: dict[str, list[str | None] | None] = {}
    language: dict[str, Any] = {}
    for bench in benchmarks:
        if samples and "loglikelihood" in (samples["base"].get(bench.name) or [{}])[0]:
            language[bench.name] = _bits_per_byte(samples, arms, bench, conf, n_boot)
            continue
        scores = all_scores[bench.name] = _aligned_scores(samples, arms, bench.name)
        clusters = all_clusters[bench.name] = _clusters(samples["base"][bench.name])
        base_acc = scores["base"]["acc"]
        rows: dict[str, Any] = {}
        for arm in arms:
            acc, lo, hi = mean_ci(scores[arm]["acc"], conf, n_boot, clusters=clusters)
            row: dict[str, Any] = {
                "acc": acc,
                "acc_ci": [lo, hi],
                "acc_norm": _mean(scores[arm]["acc_norm"]),
                "diff_vs_base": None,
                "diff_ci": None,
                "verdict": "reference",
            }
            if arm != "base":
                diff, dlo, dhi = paired_diff_ci(
                    scores[arm]["acc"], base_acc, conf, n_boot, clusters=clusters
                )
                row.update(diff_vs_base=diff, diff_ci=[dlo, dhi], verdict=_verdict(dlo, dhi))
            rows[arm] = row
        pairs: dict[str, Any] = {}
        others = [a for a in arms[1:] if a not in repeats]
        for i, b in enumerate(others):
            for a in others[i + 1 :]:
                diff, dlo, dhi = paired_diff_ci(
                    scores[a]["acc"], scores[b]["acc"], conf, n_boot, clusters=clusters
                )
                pairs[f"{a} - {b}"] = {
                    "diff": diff,
                    "ci": [dlo, dhi],
                    "verdict": _verdict(dlo, dhi, f"better than {b}", f"worse than {b}"),
                }
        primary, secondary = metric_keys(samples["base"][bench.name])
        per_benchmark[bench.name] = {
            "kind": bench.kind,
            "track": "generative" if primary == "exact_match" else "multiple_choice",
            "metrics": [primary, secondary],
            "n": len(base_acc),
            "clustered_by": None if clusters is None else "doc_id",
            "n_clusters": None if clusters is None else _n_clusters(clusters),
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
        "language_modelling": language,
        "forgetting": forgetting,
        "headline": _headline(per_benchmark, arms, forgetting, conf, stages)
        + _language_headline(language, conf),
    }
    results["decision"] = decide(results)
    results["samples"] = samples
    results.update(extra)
    if stages is not None:
        matrix = _stage_matrix(per_benchmark, all_scores, all_clusters, stages, conf, n_boot)
        results["stages"] = {**stages, "matrix": matrix}  # a copy: the caller's dict is kept
    return results


def _selected_stage(stages: dict[str, Any] | None) -> str | None:
    selection = (stages or {}).get("selection")
    return selection.get("selected") if isinstance(selection, dict) else None


def _stage_order(stages: dict[str, Any]) -> list[str]:
    return list(stages.get("order") or stages.get("stages") or [])


def _start_arm(start_from: str | None) -> str | None:
    """The arm of the model a stage started from: ``base`` or ``ft@<stage>``; None when the
    stage record does not say."""
    if not start_from or start_from == "base" or start_from.startswith("ft@"):
        return start_from
    return f"ft@{start_from}"


def _stage_matrix(
    per_benchmark: dict[str, Any],
    scores: dict[str, dict[str, dict[str, list[int]]]],
    clusters: dict[str, list[str | None] | None],
    stages: dict[str, Any],
    conf: float,
    n_boot: int,
) -> dict[str, dict[str, Any]]:
    """``matrix[stage][benchmark]``: the ``ft@<stage>`` arm's ``acc``, ``acc_ci``,
    ``diff_vs_base`` and ``diff_ci`` (as in its benchmark row), and ``change_vs_start`` with
    ``change_ci``: the paired difference against the model the stage started from (base or
    ``ft@<start>``), i.e. how much the stage moved that score; None where that arm was not
    scored. A cell is None when the stage's own arm was not scored."""
    info = _as_dict(stages.get("stages"))
    matrix: dict[str, dict[str, Any]] = {}
    for stage in _stage_order(stages):
        arm = f"ft@{stage}"
        start = _start_arm(_as_dict(info.get(stage)).get("start_from"))
        cells: dict[str, Any] = {}
        for name, bench in per_benchmark.items():
            row = bench["arms"].get(arm)
            if row is None:
                cells[name] = None
                continue
            cell = {k: row[k] for k in ("acc", "acc_ci", "diff_vs_base", "diff_ci")}
            cell.update(change_vs_start=None, change_ci=None)
            if start is not None and start in bench["arms"]:
                a, b = scores[name][arm]["acc"], scores[name][start]["acc"]
                change, lo, hi = paired_diff_ci(a, b, conf, n_boot, clusters=clusters[name])
                cell.update(change_vs_start=change, change_ci=[lo, hi])
            cells[name] = cell
        matrix[stage] = cells
    return matrix


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
        primary, secondary = metric_keys(rows)
        out[arm] = {"acc": [r[primary] for r in rows], "acc_norm": [r[secondary] for r in rows]}
    return out


def _bits_per_byte(samples: dict[str, dict[str, list[dict]]], arms: list[str],
                   bench: BenchmarkConfig, conf: float, n_boot: int) -> dict[str, Any]:
    """A language-modelling benchmark (lm-eval ``loglikelihood_rolling``): per arm, bits per
    byte over all its documents (lm-eval's definition, a ratio of sums) with a bootstrap CI
    over documents, and the paired change against base; fewer bits are better."""
    base_rows = samples["base"][bench.name]
    ids, n_bytes = [r["id"] for r in base_rows], [r["bytes"] for r in base_rows]
    bits = {}
    for arm in arms:
        rows = samples[arm].get(bench.name)
        if rows is None or [r["id"] for r in rows] != ids:
            raise ValueError(f"benchmark {bench.name!r}: arm {arm!r} scored other documents "
                             "than base")
        bits[arm] = [-r["loglikelihood"] / math.log(2) for r in rows]
    out: dict[str, Any] = {}
    for arm in arms:
        value, lo, hi = ratio_ci(bits[arm], n_bytes, conf, n_boot)
        row: dict[str, Any] = {"bits_per_byte": value, "ci": [lo, hi], "diff_vs_base": None,
                               "diff_ci": None, "verdict": "reference"}
        if arm != "base":
            diff, dlo, dhi = ratio_ci([a - b for a, b in zip(bits[arm], bits["base"], strict=True)],
                                      n_bytes, conf, n_boot)
            # More bits per byte is worse: the interval's sign is read the other way round.
            row.update(diff_vs_base=diff, diff_ci=[dlo, dhi], verdict=_verdict(-dhi, -dlo))
        out[arm] = row
    return {"kind": bench.kind, "metric": "bits_per_byte", "n": len(ids), "bytes": sum(n_bytes),
            "arms": out}


def _language_headline(language: dict[str, Any], conf: float) -> list[str]:
    sentences = []
    for name, bench in language.items():
        rows = bench["arms"]
        if "ft" not in rows:
            continue
        ft, lo, hi = rows["ft"], *rows["ft"]["diff_ci"]
        sentences.append(
            f"Language modelling on {name}: ft {ft['bits_per_byte']:.3f} bits per byte vs base "
            f"{rows['base']['bits_per_byte']:.3f} ({ft['diff_vs_base']:+.3f}, "
            f"{_pct_label(conf)} CI {lo:+.3f} to {hi:+.3f}; fewer is better): {ft['verdict']}."
        )
    return sentences


METRIC_LABELS = {"acc": "accuracy", "acc_norm": "acc_norm", "exact_match": "exact match",
                 "f1": "token F1"}


def metric_keys(rows: list[dict]) -> tuple[str, str]:
    """The (primary, secondary) score of a benchmark's per-question rows: accuracy and
    length-normalised accuracy for multiple choice, exact match and token F1 for generative
    answers. The results keep both under ``acc`` and ``acc_norm`` and name them in the
    benchmark's ``metrics``."""
    return ("exact_match", "f1") if "exact_match" in rows[0] else ("acc", "acc_norm")


def _clusters(rows: list[dict]) -> list[str | None] | None:
    """Each question's ``doc_id`` (None: a cluster of its own) when some source document has
    several questions, else None: their outcomes are correlated, so the bootstrap resamples
    documents. The arms score the same questions (``_aligned_scores``), so base's rows do."""
    clusters = [r.get("doc_id") for r in rows]
    return clusters if _n_clusters(clusters) < len(clusters) else None


def _n_clusters(clusters: list[str | None]) -> int:
    named = {c for c in clusters if c is not None}
    return len(named) + sum(c is None for c in clusters)


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
    per_benchmark: dict[str, Any],
    arms: list[str],
    forgetting: dict[str, Any],
    conf: float,
    stages: dict[str, Any] | None = None,
) -> list[str]:
    sentences = []
    # Each stage's own arm is in the Stages section; the headline keeps to the options.
    main = [a for a in arms if not a.startswith("ft@")]
    if stages is not None:
        order, selected = _stage_order(stages), _selected_stage(stages)
        sentence = f"Fine-tuning ran in {len(order)} stage{'s' if len(order) != 1 else ''}"
        sentence += f" ({', then '.join(order)})" if order else ""
        sentence += f"; ft is the model after stage {selected}." if selected else "."
        sentences.append(sentence)
    domain = [name for name, b in per_benchmark.items() if b["kind"] == "domain"]
    for name in domain:
        rows = per_benchmark[name]["arms"]
        base = rows["base"]["acc"]
        for arm in main[1:]:
            row = rows[arm]
            lo, hi = row["diff_ci"]
            does = {BETTER: "helps", WORSE: "hurts", NO_EVIDENCE: "makes no clear difference"}
            sentences.append(
                f"{_ARM_LABELS.get(arm, arm)} {does[row['verdict']]} on {name}: "
                f"{arm} {row['acc'] * 100:.1f}% vs base {base * 100:.1f}% "
                f"({_signed(row['diff_vs_base'])} points, {_pct_label(conf)} CI "
                f"{_signed(lo)} to {_signed(hi)})."
            )
        pair = per_benchmark[name]["pairs"].get("ft - base+fewshot")
        if pair is not None:
            # The first question a team asks: would prompting alone have done?
            lo, hi = pair["ci"]
            outcome = {"better than base+fewshot": "fine-tuning does better",
                       "worse than base+fewshot": "prompting alone does better"}.get(
                pair["verdict"], "there is no evidence of a difference")
            sentences.append(
                f"Fine-tuning against few-shot prompting on {name}: {outcome} "
                f"(ft minus base+fewshot {_signed(pair['diff'])} points, {_pct_label(conf)} CI "
                f"{_signed(lo)} to {_signed(hi)})."
            )
        best = max(main + [a for a in arms if a not in main], key=lambda a: rows[a]["acc"])
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
      has status ``forgetting`` (its whole interval past ``evaluation.forgetting_tolerance``);
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

    # Only the chosen fine-tuned model counts; a stage not chosen cannot block fine-tuning.
    ft_checks = [c for c in forgetting.get("checks", []) if c["arm"] in ("ft", "ft+rag")]
    forgot = [f"{c['arm']} on {c['benchmark']}" for c in ft_checks if c["status"] == "forgetting"]
    acceptable: tuple[bool, str, list[_Comparison]] = (
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
        reasons = dict.fromkeys(f[0] for f in (failures[n] for n in names) if f is not None)
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
        decisive = [c for n in ("RAG", "fine-tune", "both") for c in (failures[n] or ("", []))[1]]

    decisive = list(dict.fromkeys(decisive))
    evidence: list[dict[str, Any]] = [
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


class ResultsError(UserError, ValueError):
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


def latency_sentence(latency: Any) -> str | None:
    """One question's answer time at the median per arm, and the prompt tokens retrieval
    and examples add; None when no arm was timed."""
    if not isinstance(latency, dict):
        return None
    timed = {arm: row for arm, row in latency.items()
             if isinstance(row, dict) and "latency_p50_ms" in row}
    if not timed:
        return None
    parts = [f"{arm} {row['latency_p50_ms']:.0f} ms (p95 {row['latency_p95_ms']:.0f})"
             for arm, row in timed.items()]
    sentence = ("Answering one question, at the median: " + ", ".join(parts)
                + "; retrieval's search is included for RAG arms.")
    added = {split_arm(arm)[1]: row["prompt_tokens_added"] for arm, row in latency.items()
             if isinstance(row, dict) and row.get("prompt_tokens_added") is not None}
    said = {"rag": "retrieved passages add", "fewshot": "few-shot examples add"}
    extras = [f"{said[c]} {n:.0f} prompt tokens per question" for c, n in added.items()
              if c in said]
    if extras:
        sentence += " " + "; ".join(extras).capitalize() + "."
    return sentence


def render_markdown(results: dict[str, Any]) -> str:
    """The report as Markdown: headline, one table per benchmark, forgetting, run details.

    Reads only the results dict (as written to ``results.json``); the ``training``, ``cost``,
    ``retrieval``, ``latency`` and ``run`` sections are rendered when present, else skipped.
    """
    conf = results.get("settings", {}).get("confidence", 0.95)
    ci = f"{_pct_label(conf)} CI"
    run = _as_dict(results.get("run"))
    title = "# tunearena report" + (f": {run['name']}" if run.get("name") else "")
    lines = [title, ""]

    decision = results.get("decision")
    if decision:
        lines += [f"## Verdict: {decision['verdict']}", "", f"**{decision['sentence']}**", ""]
        lines += [f"- **Rule**: {decision['rule']}", f"- **Confidence**: {decision['confidence']}"]
        lines.append("")

    stages = _stages_view(results)
    if stages and stages["warning"]:
        lines += [f"**Warning:** {stages['warning']}", ""]

    lines += ["## Headline", ""]
    lines += [f"- {s}" for s in results.get("headline", [])] + [""]

    lines += ["## Scores", ""]
    for name, bench in results.get("benchmarks", {}).items():
        lines += [f"### {name} ({bench['kind']}, n = {bench['n']})", ""]
        if bench.get("clustered_by"):
            lines += [
                f"CIs resample the {bench['n_clusters']} source documents, not single "
                "questions, because questions on one document are correlated.",
                "",
            ]
        primary, secondary = bench.get("metrics", ["acc", "acc_norm"])
        lines += [
            f"| arm | {primary} | {ci} | {secondary} | diff vs base | {ci} of diff | verdict |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for arm, row in bench["arms"].items():
            lo, hi = row["acc_ci"]
            label = _arm_label(arm, stages["selected"] if stages else None)
            if row.get("diff_vs_base") is None:
                diff = diff_ci = "—"
            else:
                dlo, dhi = row["diff_ci"]
                diff, diff_ci = _signed(row["diff_vs_base"]), f"{_signed(dlo)} to {_signed(dhi)}"
            lines.append(
                f"| {label} | {row['acc'] * 100:.1f}% | {lo * 100:.1f} to {hi * 100:.1f} "
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
    if stages:
        lines += _stages_markdown(stages)

    forgetting = results.get("forgetting")
    if forgetting:
        lines += ["## Forgetting", "", forgetting.get("summary", ""), ""]
        lines += [f"- {c['sentence']}." for c in forgetting.get("checks", [])]
        lines.append("")
    for name, bench in (results.get("language_modelling") or {}).items():
        lines += [f"### {name}: bits per byte ({bench['kind']}, {bench['n']} documents; "
                  "fewer is better)", "",
                  f"| arm | bits per byte | {ci} | change vs base | {ci} of change | verdict |",
                  "|---|---:|---:|---:|---:|---|"]
        for arm, row in bench["arms"].items():
            change = ("—", "—") if row["diff_vs_base"] is None else (
                f"{row['diff_vs_base']:+.4f}", "{:+.4f} to {:+.4f}".format(*row["diff_ci"]))
            lines.append(f"| {arm} | {row['bits_per_byte']:.4f} | "
                         "{:.4f} to {:.4f}".format(*row["ci"])
                         + f" | {change[0]} | {change[1]} | {row['verdict']} |")
        lines.append("")

    sections = (
        ("training", "Training"),
        ("cost", "Cost"),
        ("retrieval", "Retrieval"),
        ("latency", "Latency and evaluation time per arm"),
        ("run", "Run"),
    )
    for key, title in sections:
        if results.get(key):
            lines += [f"## {title}", ""]
            if key == "latency" and latency_sentence(results[key]):
                lines += [str(latency_sentence(results[key])), ""]
            lines += [*_render_value(results[key]), ""]
    return "\n".join(lines).rstrip() + "\n"


def _stages_markdown(view: dict[str, Any]) -> list[str]:
    lines = ["## Stages", "", view["intro"], ""]
    if view["rule"]:
        lines += [f"- **How ft was chosen**: {view['rule']}", ""]
    if view["candidates"]:
        lines += [
            f"| stage | domain gain (points) | largest general drop (points) "
            f"| within the {view['tolerance']} tolerance |",
            "|---|---:|---:|---|",
        ]
        for c in view["candidates"]:
            stage = f"**{c['stage']}** (ft)" if c["selected"] else c["stage"]
            lines.append(f"| {stage} | {c['gain']} | {c['forgetting']} | {c['within']} |")
        lines += ["", view["candidates_note"], ""]
    lines += ["### Accuracy after each stage", "", view["matrix_note"], "", view["bt_note"], ""]
    names = [f"{b['name']} ({b['kind']})" for b in view["benchmarks"]]
    lines += [
        "| stage | starts from | " + " | ".join(names) + " |",
        "|---|---|" + "---:|" * len(names),
    ]
    for row in view["matrix"]:
        cells = []
        for c in row["cells"]:
            changes = [f"{c[k]} {k.replace('_', ' ')}" for k in ("vs_base", "vs_start") if c[k]]
            cells.append(c["acc"] + (f" ({', '.join(changes)})" if changes else ""))
        stage = f"**{row['stage']}** (ft)" if row["selected"] else row["stage"]
        lines.append(f"| {stage} | {row['start']} | " + " | ".join(cells) + " |")
    lines.append("")
    if view["training"]["rows"]:
        lines += ["### Training per stage", "", *_markdown_table(view["training"]), ""]
    for detail in view["details"]:
        lines += [f"### Stage {detail['stage']}: data", "", f"Replay: {detail['replay']}.", ""]
        for table in (detail["tasks"], detail["data"]):
            if table["rows"]:
                lines += [*_markdown_table(table), ""]
    return lines


_TEXT_COLUMNS = ("stage", "starts from", "method", "stopped early", "task")


def _markdown_table(table: dict[str, Any]) -> list[str]:
    columns = table["columns"]
    rule = "".join("---|" if c in _TEXT_COLUMNS else "---:|" for c in columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + rule]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table["rows"]]
    return lines


def _arm_label(arm: str, selected: str | None) -> str:
    """``ft`` and ``ft+rag`` name the stage they are when stages ran."""
    if selected and arm in ("ft", "ft+rag"):
        return f"{arm} (= ft@{selected}{arm[2:]})"
    return arm


# -- the stages section, formatted once for Markdown and HTML ------------------------------


_NO = "—"


def _stages_view(results: dict[str, Any]) -> dict[str, Any] | None:
    """``results["stages"]`` as pre-formatted strings for both renderers; None without
    stages. Every per-stage key may be missing or null."""
    stages = results.get("stages")
    if not isinstance(stages, dict):
        return None
    order = _stage_order(stages)
    info = {s: _as_dict(v) for s, v in _as_dict(stages.get("stages")).items()}
    selection = _as_dict(stages.get("selection"))
    selected = selection.get("selected")
    matrix = _as_dict(stages.get("matrix"))
    benchmarks = results.get("benchmarks", {})
    has_general = any(b["kind"] == "general" for b in benchmarks.values())
    tolerance = selection.get("tolerance")
    if not isinstance(tolerance, int | float):
        tolerance = results.get("settings", {}).get("forgetting_tolerance", 0.0)
    per_stage_cost = _as_dict(_as_dict(results.get("cost")).get("per_stage"))

    def starts(stage: str) -> str:
        return info.get(stage, {}).get("start_from") or _NO

    candidates = [
        {
            "stage": c["stage"],
            "gain": _signed(c["domain_gain"]),
            "forgetting": f"{c['forgetting'] * 100:.1f}" if has_general else "not measured",
            "within": "yes" if c["within_tolerance"] else "no",
            "selected": c["stage"] == selected,
        }
        for c in selection.get("candidates") or []
    ]
    matrix_rows = [
        {
            "stage": "base",
            "start": _NO,
            "selected": False,
            "cells": [_matrix_cell(b["arms"]["base"], reference=True) for b in benchmarks.values()],
        }
    ]
    for stage in order:
        cells = _as_dict(matrix.get(stage))
        matrix_rows.append(
            {
                "stage": stage,
                "start": starts(stage),
                "selected": stage == selected,
                "cells": [_matrix_cell(cells.get(name)) for name in benchmarks],
            }
        )

    training_rows = []
    for stage in order:
        s, cost = info.get(stage, {}), _as_dict(per_stage_cost.get(stage))
        method = s.get("method") or _NO
        if s.get("lora_init"):
            method += f" (LoRA from {s['lora_init']})"
        if "stopped_early_at" not in s:
            stopped = _NO
        else:
            at = s["stopped_early_at"]
            stopped = "no" if at is None else f"at step {at}"
        training_rows.append(
            [
                stage,
                starts(stage),
                method,
                _steps(s.get("steps"), s.get("planned_steps")),
                stopped,
                _num(s.get("train_s"), ".1f"),
                _num(s.get("final_train_loss"), ".3f"),
                _num(s.get("final_val_loss"), ".3f"),
                _num(cost.get("device_hours"), ".3g"),
                _num(cost.get("usd"), ".2f"),
            ]
        )
    training = _drop_empty_columns(
        {
            "columns": [
                "stage",
                "starts from",
                "method",
                "steps",
                "stopped early",
                "train time (s)",
                "final train loss",
                "final val loss",
                "device-hours",
                "USD",
            ],
            "rows": training_rows,
        }
    )
    n = len(order)
    intro = (
        f"Fine-tuning ran in {n} stage{'s' if n != 1 else ''}, each starting from the model "
        'named under "starts from". Every stage\'s model was scored on every benchmark.'
    )
    if selected:
        intro += f" ft is stage {selected}: its scores are the ft rows above."
    return {
        "order": order,
        "selected": selected,
        "rule": selection.get("rule"),
        "warning": selection.get("warning"),
        "tolerance": _points(tolerance),
        "intro": intro,
        "candidates": candidates,
        "candidates_note": "Domain gain: the average change against the base model on the "
        "domain benchmarks. Largest general drop: the most points lost on any general "
        f"benchmark; more than {tolerance * 100:g} counts as forgetting.",
        "benchmarks": [{"name": name, "kind": b["kind"]} for name, b in benchmarks.items()],
        "matrix": matrix_rows,
        "matrix_note": "Each cell: accuracy, then the change in points against the base model "
        "and against the model the stage started from (its start).",
        "bt_note": "The change against the start is backward transfer: how a stage moved a "
        "score its starting model already had; below zero, the stage made the model forget.",
        "training": training,
        "details": [_stage_detail(stage, info.get(stage, {})) for stage in order],
    }


def _matrix_cell(cell: dict[str, Any] | None, reference: bool = False) -> dict[str, Any]:
    if not cell:
        return {
            "acc": "not scored",
            "vs_base": None,
            "vs_start": None,
            "base_tone": "neutral",
            "start_tone": "neutral",
            "title": "",
        }
    lo, hi = cell["acc_ci"]
    title = f"accuracy CI {lo * 100:.1f} to {hi * 100:.1f}"
    out = {
        "acc": f"{cell['acc'] * 100:.1f}%",
        "vs_base": None,
        "vs_start": None,
        "base_tone": "neutral",
        "start_tone": "neutral",
    }
    for key, ci_key, short, tone in (
        ("diff_vs_base", "diff_ci", "vs_base", "base_tone"),
        ("change_vs_start", "change_ci", "vs_start", "start_tone"),
    ):
        if reference or cell.get(key) is None:
            continue
        out[short] = _signed(cell[key])
        if cell.get(ci_key):
            clo, chi = cell[ci_key]
            out[tone] = "good" if clo > 0 else "bad" if chi < 0 else "neutral"
            title += f"; {short.replace('_', ' ')}: CI {_signed(clo)} to {_signed(chi)}"
    out["title"] = title
    return out


def _stage_detail(stage: str, info: dict[str, Any]) -> dict[str, Any]:
    mix = _as_dict(info.get("mix"))
    target, realised = _as_dict(mix.get("target")), _as_dict(mix.get("realised"))
    sequences, val = _as_dict(mix.get("sequences")), _as_dict(info.get("val_loss_by_task"))
    data = _as_dict(info.get("data"))
    tasks = list(dict.fromkeys([*target, *realised, *sequences, *val, *data]))
    replay = info.get("replay")
    if isinstance(replay, dict) and replay.get("fraction") is not None:
        sources = replay.get("sources") or []
        text = f"{replay['fraction'] * 100:g}% of sequences replayed"
        replay_text = text + (f" from {', '.join(map(str, sources))}" if sources else "")
    else:
        replay_text = "none"
    mixture = {
        "columns": ["task", "target share", "realised share", "sequences", "final val loss"],
        "rows": [
            [
                t,
                _pct(target.get(t)),
                _pct(realised.get(t)),
                _num(sequences.get(t)),
                _num(val.get(t), ".3f"),
            ]
            for t in tasks
            if t in target or t in realised or t in sequences or t in val
        ],
    }
    counts = [
        ("read", "read"),
        ("empty_or_garbled", "empty or garbled"),
        ("exact_duplicates", "exact duplicates"),
        ("near_duplicates", "near duplicates"),
        ("leaked", "leaked"),
        ("kept", "kept"),
        ("train", "train"),
        ("validation", "validation"),
        ("test", "test"),
    ]
    prep = {
        "columns": ["task", *(label for _, label in counts)],
        "rows": [
            [t, *(_leaked(d) if key == "leaked" else _num(d.get(key)) for key, _ in counts)]
            for t, d in ((t, _as_dict(v)) for t, v in data.items())
        ],
    }
    return {"stage": stage, "replay": replay_text, "tasks": mixture, "data": prep}


def _leaked(d: dict[str, Any]) -> str:
    """The leaked count, with the benchmarks it came from when known."""
    text = _num(d.get("leaked"))
    by = d.get("leaked_by_benchmark")
    if isinstance(by, dict) and any(by.values()):
        text += " (" + ", ".join(f"{k}: {v}" for k, v in by.items() if v) + ")"
    return text


def _drop_empty_columns(table: dict[str, Any]) -> dict[str, Any]:
    keep = [
        i
        for i in range(len(table["columns"]))
        if i == 0 or any(row[i] != _NO for row in table["rows"])
    ]
    return {
        "columns": [table["columns"][i] for i in keep],
        "rows": [[row[i] for i in keep] for row in table["rows"]],
    }


def _as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a dict, else an empty one: results.json sections may be null."""
    return value if isinstance(value, dict) else {}


def _num(v: Any, spec: str = ",") -> str:
    if v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return _NO if v is None else str(v)
    return format(v, spec)


def _steps(steps: Any, planned: Any) -> str:
    """``60 of 80`` when a stage ran fewer steps than planned (it stopped early)."""
    if isinstance(planned, int) and isinstance(steps, int) and planned != steps:
        return f"{steps:,} of {planned:,}"
    return _num(steps)


def _pct(v: Any) -> str:
    return f"{v * 100:.1f}%" if isinstance(v, int | float) else _NO


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
