"""The run's scoring: each arm recorded in the manifest and ``eval/<arm>.json`` as it
finishes (or reused from an earlier attempt), the probe beside the base's arms, every arm
started as soon as its model may be scored (``evaluation/order.py``).

What an arm is scored with, and where it runs, is ``evaluation/arms.py``'s; this module keeps
the run's records of it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from tunearena.evaluation import arms as scoring
from tunearena.evaluation.arm import Arm
from tunearena.evaluation.arms import ArmScores
from tunearena.evaluation.order import ScoreOrder
from tunearena.files import write_atomic
from tunearena.launch.config import ExperimentConfig
from tunearena.launch.keys import scoring_key
from tunearena.launch.manifest import Manifest

if TYPE_CHECKING:
    from tunearena.training.pool import WorkerPool


@dataclass(frozen=True)
class ArmInputs:
    """What every arm of one scoring reads: each benchmark's task per context, the mean
    prompt length per benchmark and context, and the retrieval times of the RAG arms."""

    tasks: dict[str, dict[str, str]]
    tokens: dict[str, dict[str, float]]
    search_ms: dict[str, list[float]]


class RunScoring:
    """Scoring within one run: ``reused(step, key)`` says whether a manifest step is reused
    from an earlier attempt; ``early`` holds arms scored before the evaluation step (the base,
    while a sweep chose a trial)."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, manifest: Manifest,
                 console: Console, reused: Callable[[str, str], bool], early: ArmScores,
                 chat_template: bool):
        self.cfg, self.run_dir, self.manifest, self.console = cfg, run_dir, manifest, console
        self.reused, self.early = reused, early
        self.scoring = scoring.Scoring.of(cfg.evaluation, run_dir / "tasks", chat_template)

    def evaluate(self, arms: list[Arm], stages: list[str], inputs: ArmInputs,
                 ensure_ray: Callable[[], None], pool: WorkerPool | None) -> ArmScores:
        """Score ``arms`` (on ``pool``, the workers that trained, while it is up, else as Ray
        tasks), each as soon as its model may be scored (``ScoreOrder``): the base's arms
        beside the probe, the stages' arms once it passes, the plain ft arms once their
        stage is chosen. When an arm fails, or the probe refuses a stage, the arms in flight
        still finish and are kept."""
        cfg = self.cfg
        probing = bool(cfg.evaluation.probe and stages and any(a.model == "ft" for a in arms))
        order = ScoreOrder(arms, stages, bool(cfg.stages), cfg.evaluation, self.console,
                           probed=probing)
        refused: list[BaseException] = []
        self.console.rule(f"[bold]evaluate: {', '.join(str(a) for a in arms)}")
        with scoring.ArmEvaluation(self.scoring, cfg.cluster, self.console, ensure_ray,
                                   pool) as evaluation:
            if probing:
                order.scores.probe = self.start_probe(stages, inputs.tasks, evaluation, order,
                                                      refused)

            def start_ready() -> None:
                while ready := order.ready():
                    for arm, stage in ready:
                        self.start_arm(evaluation, arm, arm.model_dir(
                            cfg.model.base, self.run_dir / "models", stage), inputs, order.add,
                            first=order.first(arm))

            start_ready()
            evaluation.wait(after=start_ready)
        if refused:
            raise refused[0]
        if evaluation.failed:
            raise scoring.arm_failure(evaluation.failed) from None
        return order.result()

    def score_arms(self, arm_dirs: dict[Arm, Path], inputs: ArmInputs,
                   ensure_ray: Callable[[], None], timed: bool = True) -> ArmScores:
        """Score each arm's model side by side as Ray tasks (``start_arm``: a sweep's trials
        and the base, while the stage's trials hold the cluster); raises ``ArmFailed`` once
        the others are done if any failed."""
        scores = ArmScores()
        self.console.rule(f"[bold]evaluate: {', '.join(str(a) for a in arm_dirs)}")
        with scoring.ArmEvaluation(self.scoring, self.cfg.cluster, self.console,
                                   ensure_ray) as evaluation:
            for arm, model_dir in arm_dirs.items():
                self.start_arm(evaluation, arm, model_dir, inputs, scores.add, timed)
            evaluation.wait()
        if evaluation.failed:
            raise scoring.arm_failure(evaluation.failed) from None
        return scores

    def start_arm(self, evaluation: scoring.ArmEvaluation, arm: Arm, model_dir: Path,
                  inputs: ArmInputs, then: Callable[[Arm, dict, dict], None],
                  timed: bool = True, first: bool = False) -> None:
        """Score ``arm`` on ``model_dir`` with ``evaluation`` (``first``: ahead of the arms
        queued without it), recorded in the manifest and ``eval/<arm>.json``; ``then`` gets
        its samples and latency record. An arm done in an earlier attempt, or scored while a
        sweep chose its trial, is reused at once. ``timed``: time
        ``evaluation.latency_questions`` answers one at a time too."""
        if str(arm) in self.early.samples:
            then(arm, self.early.samples[str(arm)], self.early.latency[str(arm)])
            return
        step, key = f"evaluate:{arm}", scoring_key(self.cfg, model_dir)
        if self.reused(step, key):
            path = self.run_dir / "eval" / f"{arm}.json"
            then(arm, json.loads(path.read_text(encoding="utf-8")), self.manifest.outputs(step))
            return
        job = scoring.arm_job(arm, model_dir, inputs.tasks, self.run_dir / "tasks",
                              list(inputs.tasks),
                              self.cfg.evaluation.latency_questions if timed else 0)
        self.manifest.start(step, key)

        def done(job: scoring.ArmJob, result: dict) -> None:
            path = self.run_dir / "eval" / f"{job.arm}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(result["samples"], indent=1) + "\n")
            outputs = scoring.arm_latency(job, result, inputs.search_ms, inputs.tokens)
            self.manifest.finish(step, {"scores": str(path.relative_to(self.run_dir))},
                                 outputs, result["score_s"])
            then(job.arm, result["samples"], outputs)

        def failed(job: scoring.ArmJob, error: BaseException) -> None:
            self.manifest.fail(step, f"{type(error).__name__}: {error}")

        evaluation.score(job, done, failed, first)

    def start_probe(self, stages: list[str], tasks: dict[str, dict[str, str]],
                    evaluation: scoring.ArmEvaluation, order: ScoreOrder,
                    refused: list[BaseException]) -> dict | None:
        """Start the probe (a stage whose model answers exactly like the base is refused)
        as a task beside the arms; once it passes, ``order`` lets the stages' arms go, and
        a refusal goes into ``refused``. Returns the record of a probe passed in an earlier
        attempt (None while this one runs: it is added to the scores when it passes)."""
        from tunearena.evaluation.probe import (
            PROBE_TOLERANCE,
            ProbeError,
            check_probe,
            probe_prompts,
            probe_stages,
        )

        key = scoring_key(self.cfg, self.run_dir / "models")
        if self.reused("probe", key):
            order.pass_probe()
            return self.manifest.outputs("probe")
        task_dir = self.run_dir / "tasks"
        own = [variants[""] for variants in tasks.values()
               if (task_dir / f"{variants['']}.jsonl").is_file()]
        prompts = probe_prompts([scoring.task_rows(task_dir, task) for task in own])
        stage_dirs = {s: str(self.run_dir / "models" / s) for s in stages}
        self.manifest.start("probe", key)
        t0 = time.perf_counter()

        def done(changes: dict[str, float]) -> None:
            try:
                check_probe(changes, stage_dirs)
            except ProbeError as err:
                failed(err)
                return
            result = {"prompts": len(prompts), "tolerance": PROBE_TOLERANCE, "changes": changes}
            self.manifest.finish("probe", {}, result, time.perf_counter() - t0)
            self.console.print(f"[green]✓ probe[/green] in {time.perf_counter() - t0:.1f} s: "
                               "every stage differs from the base on the probe prompts "
                               f"(smallest largest change {min(changes.values()):.3g})")
            order.scores.probe = result
            order.pass_probe()

        def failed(error: BaseException) -> None:
            self.manifest.fail("probe", f"{type(error).__name__}: {error}")
            refused.append(error)

        evaluation.call(probe_stages, (self.cfg.model.base, stage_dirs, prompts), done, failed,
                        first=True)
        return None
