"""Keep third-party noise off the console: known, harmless lines only, each silenced at its source.

Every filter here names one message (or one logger) that a user reads as a failure although
nothing failed; everything else a library logs, warns or prints still reaches the console.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Callable

# The ``worker_process_setup_hook`` that ``ray_session`` gives every worker process.
WORKER_SETUP_HOOK = "tunearena.cluster.quiet.quiet_worker"

# Ray Train's TrainController starts a PreemptionWatcher actor whose constructor arguments sit
# in the object store; Ray's core worker logs that at ERROR level in C++ (core_worker.cc) for
# every stage, with nothing for the user to do. C++ log levels cannot single out one message,
# so the driver drops this line from the worker output it prints.
_WORKER_NOISE = re.compile(
    r"core_worker\.cc:\d+: Actor with class name: 'PreemptionWatcher' and ID: '\w+' has "
    r"constructor arguments in the object store and max_restarts > 0")


class _DropMessage(logging.Filter):
    """Drops records whose message starts with ``prefix`` while ``when()`` holds."""

    def __init__(self, prefix: str, when: Callable[[], bool] = lambda: True) -> None:
        super().__init__()
        self.prefix = prefix
        self.when = when

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.getMessage().startswith(self.prefix) and self.when())


def _no_gpu_assigned() -> bool:
    import ray

    return not ray.get_gpu_ids()


def quiet_worker() -> None:
    """Run in every Ray worker process at start-up (``worker_process_setup_hook``)."""
    # Ray Train's placement-group cleaner asks the state API whether its controller lives. It
    # finds its cluster by scanning the machine's processes, which fails with a traceback
    # where a second Ray runs on the machine: name this worker's own cluster.
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    # Without Ray's dashboard there is no state API, so the cleaner warns once a second that
    # it cannot query the controller, for the whole run; the cleaner's only job (removing a
    # dead controller's placement group) is done by the job's end as well.
    logging.getLogger(
        "ray.train.v2._internal.execution.controller.placement_group_cleaner"
    ).setLevel(logging.ERROR)
    # Ray Train logs every reported result at INFO, once per rank and report, under a logger
    # named by its file's path; tunearena's own log lines say the same once.
    with contextlib.suppress(ImportError):
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
    # DeepSpeed guesses its accelerator at import and warns when it falls back to the CPU. On
    # a worker Ray gave no GPU that is the plan, not a failure; a worker holding a GPU that
    # DeepSpeed cannot see still warns. (DeepSpeed resets its logger's level on import, not
    # its filters.)
    logging.getLogger("DeepSpeed").addFilter(
        _DropMessage("Setting accelerator to CPU.", when=_no_gpu_assigned))
    # DeepSpeed's ZeRO calls torch's old collective names, which warn at every stage. The
    # collectives themselves are unchanged; DeepSpeed, not tunearena, has to move.
    for old in ("all_gather_into_tensor", "reduce_scatter_tensor"):
        warnings.filterwarnings(
            "ignore", message=rf"`torch\.distributed\.{old}` is deprecated",
            category=FutureWarning)


def quiet_driver() -> None:
    """Before starting a local Ray instance: drop the driver's known noise.

    Ray warns once per new local instance that token authentication is on; the instance is
    tunearena's own and lives as long as the run.
    """
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)


def drop_worker_noise() -> None:
    """After ``ray.init(log_to_driver=True)``: drop known noise lines from the worker output
    the driver prints (``_WORKER_NOISE``). Every other line passes unchanged.

    Ray offers no public filter on this stream; with a Ray whose internals moved, the noise
    shows again and nothing else changes.
    """
    with contextlib.suppress(ImportError, AttributeError):
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        with dispatcher._lock:
            dispatcher.handlers = [
                (name, _filtered(handle) if name == "ray_print_logs" else handle)
                for name, handle in dispatcher.handlers]


def _filtered(handle: Callable[[dict], None]) -> Callable[[dict], None]:
    def handle_without_noise(data: dict) -> None:
        lines = [line for line in data.get("lines", []) if not _WORKER_NOISE.search(line)]
        if lines or not data.get("lines"):
            handle(data | {"lines": lines})

    return handle_without_noise
