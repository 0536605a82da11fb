"""Ray's failures of a stage or an arm become one message: stage or arm, ranks or benchmark,
the underlying error and what to check. Built from Ray Train V2's own exception classes, as
``trainer.fit()`` raises them."""

from __future__ import annotations

from ray.exceptions import ActorDiedError
from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError
from safetensors import SafetensorError

from tunearena.errors import UserError
from tunearena.evaluation.arm import Arm
from tunearena.evaluation.arms import ArmFailed, ArmJob, arm_failure
from tunearena.training.checkpoint import ResumeError
from tunearena.training.failures import StageFailed, stage_failure

HEADER = "Error while deserializing header: invalid header length"


def test_the_same_error_on_every_rank_is_said_once_with_the_fix():
    err = WorkerGroupError("Traceback ...\nsafetensors_rust.SafetensorError: ...",
                           {0: SafetensorError(HEADER), 1: SafetensorError(HEADER)})
    failure = stage_failure("domain", err, "/models/base")
    message = str(failure)
    assert isinstance(failure, StageFailed) and isinstance(failure, UserError)
    assert message.startswith("stage domain failed on the cluster; worker ranks 0, 1: "
                              f"SafetensorError: {HEADER}. A weights file of /models/base is "
                              "truncated or corrupt")
    assert "\n" not in message and "Traceback" not in message
    assert "Logs tab" in message


def test_a_dead_worker_behind_a_health_check_is_named_with_its_rank():
    died = ActorDiedError()
    err = WorkerGroupError("...", {1: WorkerHealthCheckFailedError("health check failed", died),
                                   0: FileNotFoundError(2, "No such file", "/data/x.jsonl")})
    message = str(stage_failure("s", err, "m"))
    assert "worker rank 0: FileNotFoundError" in message
    assert "Check /data/x.jsonl: it must exist and be readable on every node" in message
    assert "worker rank 1: ActorDiedError" in message and "out-of-memory kill" in message


def test_a_user_error_raised_in_a_worker_keeps_its_words():
    resume = ResumeError("checkpoint /ckpt/step_4: rng_rank1.pt is missing")
    message = str(stage_failure("s", WorkerGroupError("...", {1: resume}), "m"))
    assert message == "stage s (worker rank 1): checkpoint /ckpt/step_4: rng_rank1.pt is missing"


def test_a_controller_failure_names_its_cause_and_storage():
    err = ControllerError(PermissionError(13, "Permission denied", "/shared/ray/run"))
    message = str(stage_failure("s", err, "m"))
    assert message.startswith("stage s failed: Ray Train's controller stopped the run with "
                              "PermissionError: [Errno 13] Permission denied: '/shared/ray/run'. "
                              "Check /shared/ray/run")


def test_a_failed_arm_names_the_arm_the_benchmark_and_the_cause():
    job = ArmJob(Arm.parse("base+rag"), "/run/models/base", {"dom": "tunearena_dom",
                                                             "gen": "tunearena_gen"})
    good = ArmJob(Arm.parse("ft"), "/run/models/ft", {"dom": "tunearena_dom"})
    cause = KeyError("task tunearena_gen not found")
    failure = arm_failure([(job, cause), (good, MemoryError())])
    message = str(failure)
    assert isinstance(failure, ArmFailed) and isinstance(failure, UserError)
    assert message.startswith("2 arm(s) failed (base+rag, ft); the other arms' scores are kept. "
                              "base+rag on benchmark gen (model /run/models/base): KeyError")
