"""Per-question samples and the run's other sections -> the typed ``Results``."""

from __future__ import annotations

from typing import Any

from tunearena.evaluation.arm import Arm
from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.report import costs, numbers, sentences
from tunearena.evaluation.report.data import known_without_document
from tunearena.evaluation.report.numbers import Samples, Scores
from tunearena.evaluation.report.summary import summary_bullets
from tunearena.evaluation.report.verdict import decide
from tunearena.evaluation.results import Forgetting, Results, parse_results

_OWN_KEYS = ("schema_version", "settings", "arms", "benchmarks", "language_modelling",
             "forgetting", "headline", "decision", "samples", "cost_of_pass")


def summarise(
    samples: Samples,
    benchmarks: list[BenchmarkConfig],
    eval_cfg: EvaluationConfig,
    report_cfg: ReportConfig,
    extra: dict[str, Any] | None = None,
) -> Results:
    """Turn ``samples[arm][benchmark]`` (lists from ``score_model``) into the results.

    Per benchmark: a row per arm (score, CI, secondary score, paired difference vs base and
    its verdict) and ``pairs``: for every two non-base arms, ``"A - B"`` paired question by
    question, A the later arm in ``arms``. CIs resample source documents (``clustered_by``)
    when questions share one; ``warnings`` say when an interval should not be trusted or
    cannot decide (``numbers.statistics_warnings``), and ``same_questions_as`` names an
    earlier benchmark on the same question file. ``forgetting`` checks each non-base arm on
    each general benchmark; ``headline`` and ``decision`` (see ``decide``) say what it means;
    ``samples`` are kept as given. ``extra`` (a JSON-able dict: ``run``, ``latency``,
    ``training``, ``cost``, ``stages``, ``retrieval``, ``data``) is validated into the results;
    ``cost_of_pass`` (``costs.cost_of_pass``, at ``report_cfg``'s prices) is derived from
    them when any arm was timed. ``data`` (what synthesis made of the documents) gains
    ``known_without_document``: the base arm's right answers on its ``benchmarks``.

    With sequential stages, ``extra["stages"]`` holds ``order``, ``selection`` (from
    ``select_stage``) and ``stages`` (per stage: ``start_from``, training and data summary);
    the results gain its ``matrix`` (see ``numbers.stage_matrix``). The ``ft`` arm must then
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
    given = parse_results({"settings": {"confidence": conf, "bootstrap_samples": n_boot,
                                        "forgetting_tolerance": tolerance,
                                        "limit": eval_cfg.limit},
                           "arms": arms, "benchmarks": {}, **extra}, "extra")
    repeats = _repeats(samples, given.selected_stage)
    shared = _same_questions(benchmarks)

    per_benchmark, language, scores = {}, {}, {}
    for bench in benchmarks:
        if samples and numbers.sample_track(samples["base"][bench.name]) == "language_modelling":
            language[bench.name] = numbers.bits_per_byte(samples, arms, bench, conf, n_boot)
            continue
        scores[bench.name] = Scores(samples, arms, bench.name, conf, n_boot)
        per_benchmark[bench.name] = numbers.score_benchmark(
            scores[bench.name], bench, arms, [a for a in arms[1:] if a not in repeats],
            tolerance, shared.get(bench.name))
    results = given.model_copy()
    results.benchmarks, results.language_modelling = per_benchmark, language
    results.forgetting = _forgetting(results, arms, tolerance, conf)
    results.headline = sentences.headline(
        per_benchmark, arms, results.forgetting.summary, conf, given.stages
    ) + sentences.language_headline(language, conf)
    results.samples = samples
    if given.data is not None:
        results.data = known_without_document(given.data, samples)
    decision = decide(results)
    results.decision = decision
    if (priced := costs.cost_of_pass(results, report_cfg)) is not None:
        results.cost_of_pass = priced
    results.decision = decision.model_copy(
        update={"summary": summary_bullets(results, decision)})
    if given.stages is not None:
        matrix = numbers.stage_matrix(per_benchmark, scores, given.stages)
        results.stages = given.stages.model_copy(update={"matrix": matrix})
    return results


def _same_questions(benchmarks: list[BenchmarkConfig]) -> dict[str, str]:
    """Per benchmark that scores the same questions as an earlier one (the same file or the
    same lm-eval task, on another track), that earlier benchmark's name."""
    first: dict[str, str] = {}
    shared = {}
    for bench in benchmarks:
        source = (str(bench.path.resolve()) if bench.path is not None
                  else f"{bench.task_dir}:{bench.lm_eval_task}")
        if source in first:
            shared[bench.name] = first[source]
        else:
            first[source] = bench.name
    return shared


def _repeats(samples: Samples, selected: str | None) -> set[str]:
    """The ``ft@<selected>`` arms whose every pair would repeat ``ft``'s; checks that ``ft``
    holds exactly their samples."""
    repeats: set[str] = set()
    if selected is None:
        return repeats
    for ft in ("ft", "ft+rag"):
        stage_arm = str(Arm.parse(ft).at_stage(selected))
        if ft in samples and stage_arm in samples:
            if samples[ft] != samples[stage_arm]:
                raise ValueError(f"arm {ft!r} must hold exactly the samples of {stage_arm!r}, "
                                 "the selected stage's model")
            repeats.add(stage_arm)
    return repeats


def _forgetting(results: Results, arms: list[str], tolerance: float, conf: float) -> Forgetting:
    def sentence(arm: str, name: str, change: float, lo: float, hi: float, status: str) -> str:
        return sentences.forgetting_sentence(arm, name, change, lo, hi, status, tolerance, conf)

    checks = numbers.forgetting_checks(results.benchmarks, arms, tolerance, sentence)
    n_general = sum(b.kind == "general" for b in results.benchmarks.values())
    summary = sentences.forgetting_summary(checks, n_general, len(arms), tolerance)
    return Forgetting(tolerance=tolerance, summary=summary, checks=checks)

