"""Per-question samples -> the numbers of results.json: per-arm scores with CIs, paired
differences against base and between arms, bits per byte, forgetting checks, the stage matrix.
"""

from __future__ import annotations

import math
from typing import Any

from tunearena.evaluation.arm import Arm
from tunearena.evaluation.config import BenchmarkConfig
from tunearena.evaluation.report.formats import points
from tunearena.evaluation.results import (
    PRIMARY_METRIC,
    BitsRow,
    ChoiceBenchmark,
    ChoiceRow,
    ForgettingCheck,
    GenerativeBenchmark,
    GenerativeRow,
    LanguageBenchmark,
    MatrixCell,
    Pair,
    Results,
    Stages,
    StatWarning,
)
from tunearena.evaluation.stats import mean_ci, paired_diff_ci, ratio_ci

BETTER, WORSE, NO_EVIDENCE = "better than base", "worse than base", "no evidence of a difference"

MIN_CLUSTERS = 10
"""Below this many independent units (source documents, or questions when none shares a
document) a bootstrap interval is too unstable to trust: it resamples so few values that its
ends move with every draw and understate the uncertainty."""
_UNTRUSTED = " (too few {unit} to trust)"

Samples = dict[str, dict[str, list[dict]]]
"""``samples[arm][benchmark]``: the per-question rows of ``score_model``."""


def sample_track(rows: list[dict]) -> str | None:
    """The scoring track of a benchmark's per-question rows: ``language_modelling`` (a
    log-likelihood per document), ``generative`` (exact match and token F1),
    ``multiple_choice`` (accuracy and its length-normalised variant), or None (an lm-eval
    task's own metrics, which the report does not score). lm-eval registry tasks define their
    own track, so the rows are where it is written down."""
    if "loglikelihood" in rows[0]:
        return "language_modelling"
    if "exact_match" in rows[0]:
        return "generative"
    return "multiple_choice" if "acc" in rows[0] else None


def primary_score(rows: list[dict]) -> float:
    """A benchmark's primary score over its rows: accuracy, exact match when generative, or
    bits per byte (a ratio of sums, lm-eval's definition) for language modelling."""
    track = sample_track(rows)
    if track == "language_modelling":
        return -sum(r["loglikelihood"] for r in rows) / math.log(2) / sum(r["bytes"] for r in rows)
    return sum(r[_primary_key(track, rows)] for r in rows) / len(rows)


def _primary_key(track: str | None, rows: list[dict]) -> str:
    if track not in PRIMARY_METRIC:
        raise ValueError(f"rows hold no score the report knows (acc, exact_match or "
                         f"loglikelihood): {sorted(rows[0])}")
    return PRIMARY_METRIC[track]


def verdict(lo: float, hi: float, better: str = BETTER, worse: str = WORSE,
            untrusted: str | None = None) -> str:
    """``better`` when the interval lies above zero, ``worse`` below, else no evidence. With
    ``untrusted`` (``documents`` or ``questions``: a benchmark with too few of them), a
    claimed difference says ``(too few documents to trust)`` after it."""
    if lo > 0:
        return better + (_UNTRUSTED.format(unit=untrusted) if untrusted else "")
    if hi < 0:
        return worse + (_UNTRUSTED.format(unit=untrusted) if untrusted else "")
    return NO_EVIDENCE


def plain_verdict(says: str) -> str:
    """A verdict without its ``(too few ... to trust)`` qualifier."""
    return says.split(" (too few ", 1)[0]


def is_untrusted(says: str) -> bool:
    """Whether a verdict claims a difference on too few documents (or questions) to trust."""
    return plain_verdict(says) != says


class Scores:
    """One benchmark's per-question scores on every arm, checked to be the same questions,
    and the bootstrap settings every interval of it is drawn with."""

    def __init__(self, samples: Samples, arms: list[str], name: str, conf: float, n_boot: int):
        self.name, self.conf, self.n_boot = name, conf, n_boot
        track = sample_track(samples["base"][name])
        primary = _primary_key(track, samples["base"][name])
        self.track = track
        secondary = {"acc": "acc_norm", "exact_match": "f1"}[primary]
        base_ids: list[str] | None = None
        self.primary: dict[str, list[float]] = {}
        self.secondary: dict[str, list[float | None]] = {}
        for arm in arms:
            rows = samples[arm].get(name)
            if rows is None:
                raise ValueError(f"arm {arm!r} has no scores for benchmark {name!r}")
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
            self.primary[arm] = [r[primary] for r in rows]
            self.secondary[arm] = [r[secondary] for r in rows]
        self.clusters = _clusters(samples["base"][name])

    def interval(self, arm: str) -> tuple[float, float, float]:
        return mean_ci(self.primary[arm], self.conf, self.n_boot, clusters=self.clusters)

    def diff(self, a: str, b: str) -> tuple[float, float, float]:
        """``a - b``, paired question by question, with its interval."""
        return paired_diff_ci(self.primary[a], self.primary[b], self.conf, self.n_boot,
                              clusters=self.clusters)


def score_benchmark(
    scores: Scores, bench: BenchmarkConfig, arms: list[str], pair_arms: list[str],
    tolerance: float, same_questions_as: str | None = None,
) -> ChoiceBenchmark | GenerativeBenchmark:
    """The benchmark's row per arm (score, CI, secondary score, paired difference vs base)
    and its ``pairs``: every two of ``pair_arms``, A the later one. ``warnings`` (see
    ``StatWarning``) say when too few documents back its intervals (its verdicts then say
    so) and which arms' intervals against base are too wide to decide at ``tolerance``."""
    clusters = scores.clusters
    n = len(scores.primary["base"])
    n_clusters = None if clusters is None else _n_clusters(clusters)
    few = few_units(n, n_clusters)
    untrusted = few[0] if few else None
    rows: dict[str, Any] = {}
    for arm in arms:
        value, lo, hi = scores.interval(arm)
        diff, diff_ci, says = None, None, "reference"
        if arm != "base":
            diff, dlo, dhi = scores.diff(arm, "base")
            diff_ci, says = (dlo, dhi), verdict(dlo, dhi, untrusted=untrusted)
        secondary = _mean(scores.secondary[arm])
        common = {"diff_vs_base": diff, "diff_ci": diff_ci, "verdict": says}
        if scores.track == "generative":
            rows[arm] = GenerativeRow(exact_match=value, exact_match_ci=(lo, hi), f1=secondary,
                                      **common)
        else:
            rows[arm] = ChoiceRow(acc=value, acc_ci=(lo, hi), acc_norm=secondary, **common)
    pairs = {}
    for i, b in enumerate(pair_arms):
        for a in pair_arms[i + 1:]:
            diff, dlo, dhi = scores.diff(a, b)
            pairs[f"{a} - {b}"] = Pair(diff=diff, ci=(dlo, dhi), verdict=verdict(
                dlo, dhi, f"better than {b}", f"worse than {b}", untrusted))
    fields = {
        "kind": bench.kind,
        "track": scores.track,
        "metrics": ("exact_match", "f1") if scores.track == "generative" else ("acc", "acc_norm"),
        "n": n,
        "clustered_by": None if clusters is None else "doc_id",
        "n_clusters": n_clusters,
        "arms": rows,
        "pairs": pairs,
        "warnings": statistics_warnings(n, n_clusters, rows, tolerance),
        "same_questions_as": same_questions_as,
    }
    if scores.track == "generative":
        return GenerativeBenchmark(**fields)
    return ChoiceBenchmark(**fields)


def few_units(n: int, n_clusters: int | None) -> tuple[str, int] | None:
    """``("documents", k)`` when the questions come from ``k < MIN_CLUSTERS`` source
    documents, ``("questions", n)`` when no document is shared and ``n < MIN_CLUSTERS``;
    None when there are enough independent units for a bootstrap interval."""
    unit, k = ("documents", n_clusters) if n_clusters is not None else ("questions", n)
    return (unit, k) if k < MIN_CLUSTERS else None


def statistics_warnings(n: int, n_clusters: int | None, rows: dict[str, Any],
                        tolerance: float) -> list[StatWarning]:
    """What a reader must know before trusting a benchmark's intervals (``StatWarning``).

    Too wide to decide: an interval against base that reaches below ``-tolerance`` and above
    ``+tolerance`` holds a gain worth having and a loss worth avoiding alike, so no reading
    of it (better, worse, or the same within the tolerance) is supported."""
    out = []
    few = few_units(n, n_clusters)
    if few is not None:
        unit, k = few
        source = (f"The {n} questions come from {k} document{'s' if k != 1 else ''}"
                  if unit == "documents" else f"There are only {n} questions")
        out.append(StatWarning(kind="few_documents", message=(
            f"{source}: an interval over fewer than {MIN_CLUSTERS} {unit} cannot be trusted, "
            f"so a difference it shows is marked \"too few {unit} to trust\".")))
    # With no tolerance, an interval is only too wide when it spans zero: "no evidence" says it.
    wide = [arm for arm, row in rows.items() if tolerance > 0 and row.diff_ci is not None
            and row.diff_ci[0] < -tolerance and row.diff_ci[1] > tolerance]
    if wide:
        out.append(StatWarning(kind="wide_interval", arms=wide, message=(
            f"The interval against base of {', '.join(wide)} reaches past the "
            f"{points(tolerance)} tolerance on both sides: these questions cannot tell a gain "
            "of that size from a loss of it; more questions would.")))
    return out


def question_groups(results: Results, names: list[str]) -> list[tuple[int, list[str]]]:
    """The questions of benchmarks ``names``, each counted once: per group of benchmarks that
    score the same question file (``same_questions_as``), its distinct questions (their ids
    in base's samples, or the largest ``n`` when samples are not kept) and its benchmarks."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(results.benchmarks[name].same_questions_as or name, []).append(name)
    kept = results.samples.get("base", {})
    out = []
    for members in groups.values():
        if all(m in kept for m in members):
            distinct = len({r["id"] for m in members for r in kept[m]})
        else:
            distinct = max(results.benchmarks[m].n for m in members)
        out.append((distinct, members))
    return out


def bits_per_byte(samples: Samples, arms: list[str], bench: BenchmarkConfig, conf: float,
                  n_boot: int) -> LanguageBenchmark:
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
    # Each document is its own unit here: too few of them, and no change is trusted.
    untrusted = "documents" if len(ids) < MIN_CLUSTERS else None
    out = {}
    for arm in arms:
        value, lo, hi = ratio_ci(bits[arm], n_bytes, conf, n_boot)
        diff, diff_ci, says = None, None, "reference"
        if arm != "base":
            diff, dlo, dhi = ratio_ci([a - b for a, b in zip(bits[arm], bits["base"], strict=True)],
                                      n_bytes, conf, n_boot)
            # More bits per byte is worse: the interval's sign is read the other way round.
            diff_ci, says = (dlo, dhi), verdict(-dhi, -dlo, untrusted=untrusted)
        out[arm] = BitsRow(bits_per_byte=value, ci=(lo, hi), diff_vs_base=diff, diff_ci=diff_ci,
                           verdict=says)
    warnings = []
    if untrusted:
        warnings.append(StatWarning(kind="few_documents", message=(
            f"There are only {len(ids)} documents: an interval over fewer than {MIN_CLUSTERS} "
            "documents cannot be trusted, so a change it shows is marked \"too few documents "
            "to trust\".")))
    return LanguageBenchmark(kind=bench.kind, metric="bits_per_byte", n=len(ids),
                             bytes=sum(n_bytes), arms=out, warnings=warnings)


def forgetting_status(lo: float, hi: float, tolerance: float) -> str:
    """Forgetting is claimed only when the whole interval lies past the tolerance, and ruled
    out only when none of it does; otherwise the data cannot tell."""
    if hi < -tolerance:
        return "forgetting"
    if lo >= -tolerance:
        return "none"
    return "inconclusive"


def forgetting_checks(
    benchmarks: dict[str, ChoiceBenchmark | GenerativeBenchmark], arms: list[str],
    tolerance: float, sentence: Any,
) -> list[ForgettingCheck]:
    """Each non-base arm on each general benchmark; ``sentence(arm, name, change, lo, hi,
    status)`` words a check."""
    checks = []
    for arm in arms[1:]:
        for name, bench in benchmarks.items():
            if bench.kind != "general":
                continue
            row = bench.arms[arm]
            assert row.diff_vs_base is not None and row.diff_ci is not None  # not base
            change, (lo, hi) = row.diff_vs_base, row.diff_ci
            status = forgetting_status(lo, hi, tolerance)
            said = sentence(arm, name, change, lo, hi, status)
            few = few_units(bench.n, bench.n_clusters)
            if few is not None and status != "inconclusive":
                said += _UNTRUSTED.format(unit=few[0])
            checks.append(ForgettingCheck(
                arm=arm, benchmark=name, change=change, ci=(lo, hi), status=status,
                sentence=said))
    return checks


def start_arm(start_from: str | None) -> str | None:
    """The arm of the model a stage started from: ``base`` or ``ft@<stage>``; None when the
    stage record does not say."""
    if not start_from or start_from == "base" or start_from.startswith("ft@"):
        return start_from
    return str(Arm("ft", start_from))


def stage_matrix(
    benchmarks: dict[str, ChoiceBenchmark | GenerativeBenchmark],
    scores: dict[str, Scores],
    stages: Stages,
) -> dict[str, dict[str, MatrixCell | None]]:
    """``matrix[stage][benchmark]``: the ``ft@<stage>`` arm's score, CI and difference vs
    base (as in its benchmark row), and ``change_vs_start`` with ``change_ci``: the paired
    difference against the model the stage started from (base or ``ft@<start>``), i.e. how
    much the stage moved that score; None where that arm was not scored. A cell is None
    when the stage's own arm was not scored."""
    matrix: dict[str, dict[str, MatrixCell | None]] = {}
    for stage in stages.order:
        arm = str(Arm("ft", stage))
        record = stages.stages.get(stage)
        start = start_arm(record.start_from if record else None)
        cells: dict[str, MatrixCell | None] = {}
        for name, bench in benchmarks.items():
            row = bench.arms.get(arm)
            if row is None:
                cells[name] = None
                continue
            cell = MatrixCell(acc=row.score, acc_ci=row.score_ci, diff_vs_base=row.diff_vs_base,
                              diff_ci=row.diff_ci, change_vs_start=None, change_ci=None)
            if start is not None and start in bench.arms:
                change, lo, hi = scores[name].diff(arm, start)
                cell.change_vs_start, cell.change_ci = change, (lo, hi)
            cells[name] = cell
        matrix[stage] = cells
    return matrix


def _clusters(rows: list[dict]) -> list[str | None] | None:
    """Each question's ``doc_id`` (None: a cluster of its own) when some source document has
    several questions, else None: their outcomes are correlated, so the bootstrap resamples
    documents. The arms score the same questions (``Scores``), so base's rows do."""
    clusters = [r.get("doc_id") for r in rows]
    return clusters if _n_clusters(clusters) < len(clusters) else None


def _n_clusters(clusters: list[str | None]) -> int:
    named = {c for c in clusters if c is not None}
    return len(named) + sum(c is None for c in clusters)


def _mean(values: list[float | None]) -> float | None:
    if any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None) / len(values)
