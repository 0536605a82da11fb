"""What lies under Ray's failure wrappers, in a user's words: the root cause, its first line,
what to check, and where the full output of the failed processes is.

Ray wraps a worker's or a task's exception (a failed health check around a dead actor, a task
error around the exception, a Ray Train error raised from another) and prints them with frames
and log excerpts. Training stages and evaluation arms both turn their failures into one
message with these helpers.
"""

from __future__ import annotations

import os


def root_cause(error: BaseException) -> BaseException:
    """The exception behind Ray's wrappers: a failed health check's actor error, a task
    error's cause, a Ray Train error raised ``from`` another."""
    from ray.exceptions import RayTaskError
    from ray.train.v2._internal.exceptions import RayTrainError

    for _ in range(10):  # wrappers nest a few deep at most; never loop on a cycle
        inner = getattr(error, "health_check_failure", None)
        if inner is None and isinstance(error, RayTaskError):
            inner = error.cause
        if inner is None and isinstance(error, RayTrainError):
            inner = error.__cause__
        if not isinstance(inner, BaseException):
            break
        error = inner
    return error


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's text (Ray appends frames and log excerpts)."""
    text = str(error).strip()
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "(no message)")


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it was raised from or while handling."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def hint(error: BaseException, model_dir: str, memory_fix: str, text: str = "") -> str:
    """What to check for a cause a user can fix (``memory_fix`` says how to need less
    memory); empty when ``error`` is not one of those. ``text`` is the failure's full text
    (a worker's traceback), where the error's own chain did not survive the trip."""
    import torch
    from ray.exceptions import OutOfMemoryError, RayActorError

    if "SafetensorError" in text or any(type(e).__name__ == "SafetensorError"
                                        for e in _chain(error)):
        return (f"A weights file of {model_dir} is truncated or corrupt: check its "
                f"*.safetensors files (their sizes and hashes against the source)")
    if isinstance(error, torch.OutOfMemoryError):
        return f"The workers ran out of GPU memory: {memory_fix}"
    if isinstance(error, OutOfMemoryError | MemoryError):
        return f"A node ran out of memory: {memory_fix}"
    if isinstance(error, RayActorError):
        return ("The worker process died (killed by the system, often for memory, or its node "
                "left the cluster): look for an out-of-memory kill in the node's logs")
    if isinstance(error, FileNotFoundError | PermissionError | IsADirectoryError):
        where = getattr(error, "filename", None) or "the model dir, data and storage_path"
        return f"Check {where}: it must exist and be readable on every node"
    return ""


def logs_hint() -> str:
    """Where the failed processes' full output is: this machine's Ray session logs when the
    driver runs on a node, and the dashboard's Logs tab on any cluster."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    session = node.get_session_dir_path() if node is not None else None
    if session is None or not os.path.isdir(session):
        return "The full output is in the Ray dashboard's Logs tab"
    return (f"The full output: {session}/logs/worker-*.err and {session}/logs/train/ "
            f"(on each node), or the Ray dashboard's Logs tab")
