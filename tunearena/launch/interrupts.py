"""Ctrl-C and SIGTERM end a run the same way: the running step is marked ``interrupted``,
Ray shuts down, no process of the run is left behind, and the exit status says which signal
(130 for SIGINT, 143 for SIGTERM, as a shell reports them).

Both signals raise ``KeyboardInterrupt``: it is the one exception that Ray's blocking calls
(``ray.get`` inside ``trainer.fit()``) let through from a signal handler, and every cleanup
path already unwinds on it. Which signal it was is remembered here, not on the exception,
because Ray re-raises a fresh ``KeyboardInterrupt`` of its own.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from rich.console import Console

    from tunearena.cluster.config import ClusterConfig

HANDLED = (signal.SIGINT, signal.SIGTERM)
REAP_GRACE_S = 5.0
"""How long processes the run left get to exit after SIGTERM before they are killed."""

_received: list[int] = []
_active: list[bool] = []  # non-empty inside signals_interrupt()


def _handler(signum: int, frame) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise ``KeyboardInterrupt`` and are remembered
    (``received_signal``); the previous handlers come back after it."""
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; it is the one signals interrupt
        return
    previous = {s: signal.signal(s, _handler) for s in HANDLED}
    _active.append(True)
    try:
        yield
    finally:
        _active.pop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def reclaim() -> None:
    """Put our handlers back where a library replaced them: ``ray.init`` makes SIGTERM call
    ``sys.exit(15)`` (no step marked, exit 15). A no-op outside ``signals_interrupt``."""
    if _active and threading.current_thread() is threading.main_thread():
        for s in HANDLED:
            signal.signal(s, _handler)


def received_signal() -> int | None:
    """The first signal that interrupted the current ``signals_interrupt`` block, or None (a
    plain ``KeyboardInterrupt``, or none of our blocks active)."""
    return _received[0] if _received and _active else None


def signal_name() -> str:
    """``SIGINT`` or ``SIGTERM``: what interrupted the run (SIGINT when no handler saw it)."""
    return signal.Signals(received_signal() or signal.SIGINT).name


def exit_status() -> int:
    """The shell's status for death by the signal: 128 + its number."""
    return 128 + (received_signal() or signal.SIGINT)


def descendants() -> set[psutil.Process]:
    """Every living process below this one."""
    try:
        return set(psutil.Process().children(recursive=True))
    except psutil.Error:
        return set()


def reap(before: set[psutil.Process]) -> list[str]:
    """End the processes below this one that were not there ``before`` (what Ray started for
    this run and did not take down on shutdown): SIGTERM, a grace period, then SIGKILL.
    Returns a description of each one found."""
    left = [p for p in descendants() - before if p.is_running()]
    found = []
    for proc in left:
        with suppress(psutil.Error):
            found.append(f"{proc.pid} ({proc.name()})")
            proc.terminate()
    _, alive = psutil.wait_procs(left, timeout=REAP_GRACE_S)
    for proc in alive:
        with suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=REAP_GRACE_S)
    return found


def enter_ray(stack: ExitStack, cfg: ClusterConfig, console: Console,
              say: Callable[[str], None] = print, dashboard: bool = False) -> None:
    """Start or join Ray (``ray_session``) until ``stack`` unwinds; ``say`` gets the line
    naming a joined cluster. A Ray this process starts is its own to clean up: after
    ``ray.shutdown`` (the stack unwinds in reverse) any process it started here and left
    running is ended, and ``console`` names them. Our signal handlers are put back, since
    ``ray.init`` takes SIGTERM for itself."""
    import ray

    from tunearena.cluster.ray_cluster import ray_session

    if not ray.is_initialized():
        before = descendants()

        def end_leftovers() -> None:
            if left := reap(before):
                console.print(f"[dim]ended {len(left)} process(es) Ray left running: "
                              f"{', '.join(left)}[/dim]")

        stack.callback(end_leftovers)
    stack.enter_context(ray_session(cfg, say, dashboard))
    reclaim()
