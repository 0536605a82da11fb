"""Ray Train's failures in the user's words: which stage, which worker ranks, what went wrong
and what to check.

``trainer.fit()`` raises Ray Train V2's ``WorkerGroupError`` (a worker raised, or its process
died) or ``ControllerError`` (the run's controller failed: storage, scheduling). Both print as a
wall of frames in Ray's wording; ``stage_failure`` turns them into one ``StageFailed`` message
where the stage was started. A ``UserError`` a worker raised (a checkpoint that cannot be
resumed) keeps its own message.
"""

from __future__ import annotations

from collections import defaultdict

from ray.train.v2.api.exceptions import TrainingFailedError, WorkerGroupError

from tunearena.cluster.failures import first_line, hint, logs_hint, root_cause
from tunearena.errors import UserError

MEMORY_FIX = ("lower training.micro_batch_size or seq_len, raise training.zero_stage, or turn "
              "on offload (`tunearena preflight` estimates the memory)")


class StageFailed(UserError, RuntimeError):
    """A stage's training failed on the cluster; the message names the stage, the worker
    ranks, the underlying error and what to check."""


def stage_failure(stage: str, err: TrainingFailedError, model_dir: str) -> UserError:
    """The error to raise for ``err``, a failure of stage ``stage``, which loads ``model_dir``."""
    if isinstance(err, WorkerGroupError) and err.worker_failures:
        by_cause: dict[tuple[str, str], list[int]] = defaultdict(list)
        causes: dict[tuple[str, str], BaseException] = {}
        for rank, failure in sorted(err.worker_failures.items()):
            cause = root_cause(failure)
            if isinstance(cause, UserError):  # ours, raised inside the worker: already worded
                return StageFailed(f"stage {stage} (worker rank {rank}): {cause}")
            key = (type(cause).__name__, first_line(cause))
            by_cause[key].append(rank)
            causes[key] = cause
        parts = []
        for (name, text), ranks in by_cause.items():
            fix = hint(causes[name, text], model_dir, MEMORY_FIX, str(err))
            parts.append(f"worker rank{'s' if len(ranks) > 1 else ''} "
                         f"{', '.join(map(str, ranks))}: {name}: {text}"
                         + (f". {fix}" if fix else ""))
        return StageFailed(f"stage {stage} failed on the cluster; " + "; ".join(parts)
                           + f". {logs_hint()}")
    cause = root_cause(getattr(err, "controller_failure", None) or err)
    fix = hint(cause, model_dir, MEMORY_FIX) or (
        "Check that cluster.storage_path is writable from every node and that the cluster has "
        "the workers' resources")
    return StageFailed(f"stage {stage} failed: Ray Train's controller stopped the run with "
                       f"{type(cause).__name__}: {first_line(cause)}. {fix}. {logs_hint()}")
