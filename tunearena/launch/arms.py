"""Score arms side by side: one Ray task per arm, one GPU each when the cluster has GPUs.

Once their models exist the arms are independent, so they run in parallel. Each task scores
its model on every benchmark through lm-eval, then answers a few questions one at a time for
latency. Results come back to the driver as each arm finishes, so an arm that fails loses
none of the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Scoring:
    """What every arm is scored with: the same tasks, scorer settings and device kind."""

    task_dir: str
    batch_size: int
    limit: int | None = None
    extra_task_paths: tuple[str, ...] = ()
    include_defaults: bool = False


@dataclass(frozen=True)
class ArmJob:
    """One arm: its model, its lm-eval task per benchmark, the questions it times."""

    arm: str
    model_dir: str
    tasks: dict[str, str]
    timed: dict[str, list[dict]] = field(default_factory=dict)
    """Per benchmark, questions (``{"prompt", "choices"?}``) answered one at a time."""


class ArmFailed(RuntimeError):
    """One or more arms failed; the others' results were kept."""


def score_arm(job: ArmJob, scoring: Scoring, device: str) -> dict[str, Any]:
    """Score ``job``'s model: ``{"samples": {benchmark: rows}, "score_s", "answer_ms"}``."""
    import time

    from tunearena.evaluation.harness import load_model, score_model
    from tunearena.evaluation.latency import time_answers

    t0 = time.perf_counter()
    model, tokenizer = load_model(Path(job.model_dir), device)
    scores = score_model(
        Path(job.model_dir), Path(scoring.task_dir), list(job.tasks.values()),
        scoring.batch_size, scoring.limit, device,
        extra_task_paths=[Path(p) for p in scoring.extra_task_paths],
        include_defaults=scoring.include_defaults, loaded=(model, tokenizer),
    )
    score_s = time.perf_counter() - t0
    answer_ms = {name: time_answers(model, tokenizer, questions, device)
                 for name, questions in job.timed.items() if questions}
    return {"samples": {name: scores[task] for name, task in job.tasks.items()},
            "score_s": score_s, "answer_ms": answer_ms}


def run_arms(
    jobs: list[ArmJob],
    scoring: Scoring,
    use_gpu: bool,
    cpus_per_arm: int,
    on_done: Callable[[ArmJob, dict[str, Any]], None],
    on_error: Callable[[ArmJob, BaseException], None],
) -> None:
    """Run ``score_arm`` for every job as a Ray task (Ray must be initialised) and hand each
    result to ``on_done`` as it arrives, each failure to ``on_error``; then raise
    ``ArmFailed`` naming the arms that failed, if any did."""
    import ray

    if not jobs:
        return
    # A task asking for more CPUs than any node has would wait forever.
    cpus = max(1, min(cpus_per_arm, int(ray.cluster_resources().get("CPU", 1))))
    remote = ray.remote(score_arm).options(num_cpus=cpus, num_gpus=1 if use_gpu else 0,
                                           max_retries=0)
    device = "cuda" if use_gpu else "cpu"
    pending = {remote.remote(job, scoring, device): job for job in jobs}
    failed: list[tuple[str, BaseException]] = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(e.cause, BaseException) else e
            failed.append((job.arm, cause))
            on_error(job, cause)
            continue
        on_done(job, result)
    if failed:
        arm, first = failed[0]
        raise ArmFailed(
            f"{len(failed)} arm(s) failed ({', '.join(a for a, _ in failed)}); "
            f"{arm}: {type(first).__name__}: {first}"
        ) from first
