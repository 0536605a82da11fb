"""A progress bar on the driver while a stage trains: step / total, loss, tokens/s, ETA.

Rank 0 runs in a Ray worker, so it cannot draw on the driver's terminal. It puts each logged
metrics line into a Ray queue instead; a thread on the driver drains the queue into a
``rich`` progress bar while ``trainer.fit()`` blocks. Without a terminal (tests, CI, a
submitted job) there is no bar and rank 0 prints its plain log lines, as before.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    from ray.util.queue import Queue

POLL_S = 0.5
"""How long the driver's thread waits on the queue before it checks whether to stop."""


class StageProgress:
    """``with StageProgress(name) as progress:`` pass ``progress.queue`` to the train loop
    (None without a terminal: rank 0 then prints), and the bar follows rank 0's log lines
    until the block ends, however it ends."""

    def __init__(self, name: str, console: Console | None = None) -> None:
        self.name = name
        self.console = console or Console()
        self.queue: Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=self.console,
        )

    def __enter__(self) -> StageProgress:
        if not self.console.is_terminal:
            return self
        from ray.util.queue import Queue

        # No CPU: the queue's actor must not take a slot the training workers need.
        self.queue = Queue(actor_options={"num_cpus": 0})
        self._bar.start()
        task = self._bar.add_task(self.name, total=None, metrics="starting workers")
        self._thread = threading.Thread(target=self._follow, args=(task,), daemon=True,
                                        name=f"progress-{self.name}")
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.queue is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._bar.stop()
        self.queue.shutdown()
        self.queue = None

    def _follow(self, task) -> None:
        """Move the bar with each metrics line until told to stop, then take what is left."""
        from ray.util.queue import Empty

        assert self.queue is not None
        latest: dict = {}  # a validation line keeps the last training loss on show
        while True:
            stopping = self._stop.is_set()
            try:
                lines = ([self.queue.get(timeout=POLL_S)] if not stopping
                         else self.queue.get_nowait_batch(self.queue.qsize()))
            except Empty:
                lines = []
            for metrics in lines:
                latest |= metrics
                self._bar.update(task, completed=metrics["step"], total=metrics["total_steps"],
                                 metrics=describe(latest))
            if stopping:
                return


def describe(metrics: dict) -> str:
    """The bar's text for one metrics line: loss, validation loss and tokens/s when logged."""
    parts = []
    if "train_loss" in metrics:
        parts.append(f"loss {metrics['train_loss']:.4g}")
    if "val_loss" in metrics:
        parts.append(f"val {metrics['val_loss']:.4g}")
    if "tokens_per_s" in metrics:
        parts.append(f"{metrics['tokens_per_s']:,.0f} tok/s")
    return "  ".join(parts)
