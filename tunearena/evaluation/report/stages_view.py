"""The Stages section as the report shows it: candidates, the accuracy after each stage,
training and data per stage, formatted once for both renderers."""

from __future__ import annotations

from typing import Any

from tunearena.evaluation.arm import Arm
from tunearena.evaluation.report import formats as fmt
from tunearena.evaluation.report import numbers
from tunearena.evaluation.report.formats import NONE
from tunearena.evaluation.report.sweep_view import sweeps_view
from tunearena.evaluation.report.table import Table
from tunearena.evaluation.results import (
    Candidate,
    MatrixCell,
    Results,
    StageCost,
    StageRecord,
    StageSummary,
    TaskData,
    paired,
)

Stage = StageSummary | StageRecord

_TEXT_COLUMNS = ("stage", "starts from", "method", "stopped early", "task")
_TRAINING_COLUMNS = ("stage", "starts from", "method", "steps", "stopped early", "train time (s)",
                     "final train loss", "final val loss", "held-out reward accuracy",
                     "held-out reward margin", "device-hours", "USD", "estimated device-hours")
_METHOD_COLUMNS = ("stage", "method", "trainable parameters", "share trained",
                   "peak memory (MB)", "train time (s)", "domain gain (points)",
                   "largest general drop (points)")
_COUNTS = (("read", "read"), ("empty_or_garbled", "empty or garbled"),
           ("exact_duplicates", "exact duplicates"), ("near_duplicates", "near duplicates"),
           ("leaked", "leaked"), ("kept", "kept"), ("train", "train"),
           ("validation", "validation"), ("test", "test"))


def stages_view(results: Results) -> dict[str, Any] | None:
    """``results.stages`` as formatted strings and tables; None without stages. Every
    per-stage value may be missing."""
    stages = results.stages
    if stages is None:
        return None
    order, info, selection = stages.order, stages.stages, stages.selection
    selected = selection.selected if selection else None
    tolerance = results.settings.forgetting_tolerance
    if selection is not None and selection.tolerance is not None:
        tolerance = selection.tolerance
    has_general = any(b.kind == "general" for b in results.benchmarks.values())
    per_stage_cost = results.cost.per_stage if results.cost else {}

    candidates = [
        {"stage": c.stage, "gain": fmt.signed(c.domain_gain),
         "forgetting": fmt.unsigned(c.forgetting) if has_general else "not measured",
         "within": "yes" if c.within_tolerance else "no", "selected": c.stage == selected}
        for c in (selection.candidates if selection else [])
    ]
    base_row = {"stage": "base", "start": NONE, "selected": False,
                "cells": [_matrix_cell(b.arms["base"].score, b.arms["base"].score_ci)
                          for b in results.benchmarks.values()]}
    matrix_rows = [base_row] + [
        {"stage": stage, "start": _starts(info.get(stage)), "selected": stage == selected,
         "cells": [_stage_cell(stages.matrix.get(stage, {}).get(name))
                   for name in results.benchmarks]}
        for stage in order
    ]
    by_stage = {c.stage: c for c in (selection.candidates if selection else [])}
    methods = _drop_empty_columns(_table(
        list(_METHOD_COLUMNS),
        [_method_row(stage, info.get(stage), by_stage.get(stage), has_general)
         for stage in order]))
    training = _drop_empty_columns(_table(
        list(_TRAINING_COLUMNS),
        [_training_row(stage, info.get(stage), per_stage_cost.get(stage)) for stage in order]))
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
        "rule": selection.rule if selection else None,
        "warning": selection.warning if selection else None,
        "tolerance": fmt.points(tolerance),
        "intro": intro,
        "candidates": candidates,
        "candidates_note": "Domain gain: the average change against the base model on the "
        "domain benchmarks. Largest general drop: the most points lost on any general "
        f"benchmark; more than {tolerance * 100:g} counts as forgetting.",
        "benchmarks": [{"name": name, "kind": b.kind} for name, b in results.benchmarks.items()],
        "methods": methods,
        "methods_note": "Each stage's method with what it cost and what it did: the parameters "
        "it trained, the most memory a worker held (GPU memory on GPUs, the process's resident "
        "memory on CPUs), its training time, and its domain gain and largest general drop as "
        "in the table above. A method that trains fewer parameters often gains less and "
        "forgets less; read both columns together.",
        "matrix": matrix_rows,
        "matrix_note": "Each cell: accuracy, then the change in points against the base model "
        "and against the model the stage started from (its start).",
        "bt_note": "The change against the start is backward transfer: how a stage moved a "
        "score its starting model already had; below zero, the stage made the model forget.",
        "training": training,
        "details": [_stage_detail(stage, info.get(stage) or StageRecord()) for stage in order],
        "rag_aware": _rag_aware(results, selected),
        "sweeps": sweeps_view(results),
    }


def _rag_aware(results: Results, selected: str | None) -> list[dict[str, Any]]:
    """Each stage trained with retrieved passages (``rag_context``): what its prompts held,
    in a sentence, and a table of its ``ft@<stage>+rag`` against plain ``ft+rag`` per
    benchmark, paired question by question."""
    out = []
    ci = f"{fmt.pct_label(results.settings.confidence)} CI"
    for stage, context in results.rag_aware_stages.items():
        arm = str(Arm("ft", stage, "rag"))
        plain = "ft+rag" + (f" (= ft@{selected}+rag)" if selected else "")
        sentence = (f"Stage {stage} is RAG-aware fine-tuning (RAFT): its training prompts held "
                    f"{context.mean_passages:g} passages retrieved from the run's index, the "
                    f"gold document's in {fmt.percent(context.gold_rate)} of its "
                    f"{context.records:,} prompts (p_gold {context.p_gold:g}).")
        rows = []
        if stage == selected:
            sentence += " It is the stage ft is, so ft+rag is its model with retrieval."
        elif arm not in results.arms or "ft+rag" not in results.arms:
            sentence += f" {arm} and ft+rag were not both scored, so the two are not compared."
        else:
            sentence += (f" Its model with retrieval ({arm}) against plain fine-tuning with "
                         f"retrieval, {plain}, paired question by question:")
            for name, bench in results.benchmarks.items():
                diff = paired(bench.pairs, arm, "ft+rag")
                if diff is None:
                    continue
                d, lo, hi = diff
                few = numbers.few_units(bench.n, bench.n_clusters)
                rows.append([name, bench.kind, fmt.percent(bench.arms[arm].score),
                             fmt.percent(bench.arms["ft+rag"].score), fmt.signed(d),
                             fmt.signed_ci((lo, hi)),
                             numbers.verdict(lo, hi, "better than ft+rag", "worse than ft+rag",
                                             few[0] if few else None)])
        table = Table(["benchmark", "kind", arm, "ft+rag", "difference (points)", ci, "verdict"],
                      rows, numeric=[False, False, True, True, True, True, False])
        out.append({"stage": stage, "arm": arm, "sentence": sentence, "table": table})
    return out


def _starts(record: Stage | None) -> str:
    return (record.start_from if record else None) or NONE


def _training_row(stage: str, s: Stage | None, cost: StageCost | None) -> list[str]:
    s = s or StageRecord()
    method = s.method or NONE
    if s.lora_init:
        method += f" (adapter from {s.lora_init})"
    if s.kind and s.kind != "sft":
        method += f", {s.kind}"
    if "stopped_early_at" not in s.model_fields_set:
        stopped = NONE
    else:
        stopped = "no" if s.stopped_early_at is None else f"at step {s.stopped_early_at}"
    return [
        stage,
        _starts(s),
        method,
        _steps(s.steps, s.planned_steps),
        stopped,
        fmt.number(s.train_s, ".1f"),
        fmt.number(s.final_train_loss, ".3f"),
        fmt.number(s.final_val_loss, ".3f"),
        fmt.percent(s.reward_accuracy),
        fmt.number(s.reward_margin, "+.3f"),
        fmt.number(cost.device_hours if cost else None, ".3g"),
        fmt.number(cost.usd if cost else None, ".2f"),
        fmt.number(s.estimate.device_hours if s.estimate else None, ".3g"),
    ]


def _method_row(stage: str, s: Stage | None, candidate: Candidate | None,
                has_general: bool) -> list[str]:
    """One stage's method, its trainable parameters and memory, time, gain and forgetting."""
    s = s or StageRecord()
    share = (_share(s.trainable_parameters / s.parameters)
             if s.trainable_parameters is not None and s.parameters else NONE)
    memory = s.peak_gpu_memory_mb or (max(s.peak_rss_mb) if s.peak_rss_mb else None)
    forgetting = (fmt.unsigned(candidate.forgetting) if has_general else "not measured") \
        if candidate else NONE
    return [stage, s.method or NONE, fmt.number(s.trainable_parameters), share,
            fmt.number(memory, ",.0f"), fmt.number(s.train_s, ".1f"),
            fmt.signed(candidate.domain_gain) if candidate else NONE, forgetting]


def _share(fraction: float) -> str:
    """A share of the parameters to two significant digits: ``100%``, ``6.8%``, ``0.023%``."""
    pct = 100 * fraction
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.1f}%" if pct >= 1 else f"{pct:.2g}%"


def _empty_cell() -> dict[str, Any]:
    return {"acc": "not scored", "vs_base": None, "vs_start": None, "base_tone": "neutral",
            "start_tone": "neutral", "title": ""}


def _matrix_cell(score: float, ci: tuple[float, float]) -> dict[str, Any]:
    return {"acc": fmt.percent(score), "vs_base": None, "vs_start": None, "base_tone": "neutral",
            "start_tone": "neutral", "title": f"accuracy CI {fmt.percent_ci(ci)}"}


def _stage_cell(cell: MatrixCell | None) -> dict[str, Any]:
    if cell is None:
        return _empty_cell()
    out = _matrix_cell(cell.acc, cell.acc_ci)
    for change, ci, short, tone_key in (
        (cell.diff_vs_base, cell.diff_ci, "vs_base", "base_tone"),
        (cell.change_vs_start, cell.change_ci, "vs_start", "start_tone"),
    ):
        if change is None:
            continue
        out[short] = fmt.signed(change)
        if ci is not None:
            clo, chi = ci
            out[tone_key] = "good" if clo > 0 else "bad" if chi < 0 else "neutral"
            out["title"] += f"; {short.replace('_', ' ')}: CI {fmt.signed_ci(ci)}"
    return out


def _stage_detail(stage: str, info: Stage) -> dict[str, Any]:
    mix = info.mix
    target, realised = (mix.target, mix.realised) if mix else ({}, {})
    sequences, val = (mix.sequences if mix else {}), info.val_loss_by_task or {}
    data = info.data or {}
    tasks = list(dict.fromkeys([*target, *realised, *sequences, *val, *data]))
    replay = info.replay
    if replay is not None:
        text = f"{replay.fraction * 100:g}% of sequences replayed"
        replay_text = text + (f" from {', '.join(replay.sources)}" if replay.sources else "")
    else:
        replay_text = "none"
    mixture = _table(
        ["task", "target share", "realised share", "sequences", "final val loss"],
        [[t, fmt.percent(target.get(t)), fmt.percent(realised.get(t)), fmt.number(sequences.get(t)),
          fmt.number(val.get(t), ".3f")]
         for t in tasks if t in target or t in realised or t in sequences or t in val])
    prep = _table(["task", *(label for _, label in _COUNTS)],
                  [[t, *(_leaked(d) if key == "leaked" else fmt.number(getattr(d, key))
                         for key, _ in _COUNTS)] for t, d in data.items()])
    return {"stage": stage, "replay": replay_text, "tasks": mixture, "data": prep}


def _table(columns: list[str], rows: list[list[str]]) -> Table:
    numeric = [i > 0 and c not in _TEXT_COLUMNS for i, c in enumerate(columns)]
    return Table(columns, rows, numeric=numeric)


def _leaked(d: TaskData) -> str:
    """The leaked count, with the benchmarks it came from when known."""
    text = fmt.number(d.leaked)
    if any(d.leaked_by_benchmark.values()):
        text += " (" + ", ".join(f"{k}: {v}" for k, v in d.leaked_by_benchmark.items() if v) + ")"
    return text


def _drop_empty_columns(table: Table) -> Table:
    keep = [i for i in range(len(table.columns))
            if i == 0 or any(row[i] != NONE for row in table.rows)]
    return table.keep_columns(keep)


def _steps(steps: int | None, planned: int | None) -> str:
    """``60 of 80`` when a stage ran fewer steps than planned (it stopped early)."""
    if planned is not None and steps is not None and planned != steps:
        return f"{steps:,} of {planned:,}"
    return fmt.number(steps)
