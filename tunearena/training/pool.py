"""Warm workers: one Ray Train worker group that runs job after job (a stage's training, the
preflight all-reduce) without starting again.

Starting a worker group costs a stage tens of seconds on a small machine (processes, imports of
torch, DeepSpeed and transformers, the process group) and more on a cluster; the stages of a
run all ask for the same workers, so the run keeps one group and hands it each stage in turn.

The driver posts a job (a function and its config) on a desk, a small actor; every rank takes
the job from the desk, runs it, and rank 0 posts its return value back. Ray Train still owns
the workers: their placement, their process group, and their restart after a failure (up to
``cluster.max_failures`` over the group's life), after which every rank takes the unfinished
job again; a training job resumes from its run's latest checkpoint in storage
(``checkpoint.py``), so a restarted stage continues where it was.

Once training is done the same workers score the arms (``serve_tasks``): each rank takes one
task after another from the desk (an arm, or the probe) and runs it on its own device, so
scoring starts no processes, loads no libraries again and asks for no resources of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from tunearena.cluster.config import ClusterConfig

WAIT_S = 1.0
"""How long one call to the desk waits for a job or a result before the caller looks around
(a driver checks that the group is alive, and its deadline)."""
HEALTH_CHECK_S = "0.5"
"""How often Ray Train's controller asks the ranks how they are, unless
``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` says otherwise. Ray's 2 s is also the wait between the
ranks' return and the group's end: 3 s at the end of every run on 2 cores, 1 to 2 s at this."""


@dataclass(frozen=True)
class Job:
    id: int
    fn: Callable[[dict], Any] | None
    """Run on every rank with ``config``; None closes the group."""
    config: dict


@dataclass(frozen=True)
class Task:
    id: int
    payload: bytes | None
    """``(fn, args)`` pickled by the driver, run as ``fn(*args, device)`` on one rank; None:
    the ranks stop taking tasks. Pickled, so the desk never imports what a task runs."""


@ray.remote(num_cpus=0)
class _Desk:
    """The jobs posted to a worker group, what rank 0 returned of each, and which ranks have
    started (so a group that never answers can be told from one that was never placed).

    An async actor: a rank waiting for a job, or the driver for a result, waits here (up to
    ``wait_s``) instead of asking again and again, which would take CPU from the ranks."""

    def __init__(self) -> None:
        self.jobs: dict[int, Job] = {}
        """The unfinished jobs, by id (a finished job's config, and the data it refers to,
        are let go)."""
        self.results: dict[int, Any] = {}
        self.started: set[int] = set()
        self.posted = 0
        self.changed = asyncio.Event()
        self.tasks: dict[int, Task] = {}
        """Tasks posted and not yet taken, by id."""
        self.taken: dict[int, tuple[int, Task]] = {}
        """Tasks a rank is running: (rank, task) by id."""
        self.finished: list[tuple[int, bool, Any]] = []
        """(id, whether it succeeded, its value or error) not yet collected by the driver."""
        self.tasks_closed = False

    def _change(self) -> None:
        self.changed.set()  # wakes every waiter; later ones wait on a fresh event
        self.changed = asyncio.Event()

    async def _until(self, ready: Callable[[], Any], wait_s: float) -> Any:
        deadline = time.monotonic() + wait_s
        while (found := ready()) is None and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return found

    async def post(self, fn, config: dict) -> int:
        job_id, self.posted = self.posted, self.posted + 1
        self.jobs[job_id] = Job(job_id, fn, config)
        self._change()
        return job_id

    async def next_job(self, rank: int, after: int | None, wait_s: float) -> Job | None:
        """The first unfinished job after job ``after`` (any, for a rank just started)."""
        self.started.add(rank)
        return await self._until(lambda: next(
            (j for j in self.jobs.values() if after is None or j.id > after), None), wait_s)

    async def finish(self, job_id: int, value: Any) -> None:
        self.results[job_id] = value
        self.jobs.pop(job_id, None)
        self._change()

    async def result(self, job_id: int, wait_s: float) -> tuple[bool, Any] | None:
        """(True, rank 0's value) once job ``job_id`` is done; None after ``wait_s``."""
        return await self._until(
            lambda: (True, self.results[job_id]) if job_id in self.results else None, wait_s)

    async def ranks_started(self) -> int:
        return len(self.started)

    async def post_task(self, task: Task) -> None:
        self.tasks[task.id] = task
        self._change()

    async def take_task(self, rank: int, fresh: bool, wait_s: float) -> Task | None:
        """The next task for ``rank`` (one without a payload once the tasks are closed and
        none is left); None after ``wait_s``. ``fresh``: the rank has just started, so a task it
        held was lost with its process (the group restarted): it goes back in the queue."""
        if fresh:
            for task_id, (holder, task) in list(self.taken.items()):
                if holder == rank:
                    del self.taken[task_id]
                    self.tasks[task_id] = task

        def first() -> Task | None:
            if self.tasks:
                return self.tasks[min(self.tasks)]
            return Task(-1, None) if self.tasks_closed else None

        task = await self._until(first, wait_s)
        if task is not None and task.payload is not None:
            del self.tasks[task.id]
            self.taken[task.id] = (rank, task)
        return task

    async def finish_task(self, task_id: int, ok: bool, value: Any) -> None:
        if self.taken.pop(task_id, None) is not None:
            self.finished.append((task_id, ok, value))
            self._change()

    async def finished_tasks(self, wait_s: float) -> list[tuple[int, bool, Any]]:
        """The tasks finished since the last call (waiting up to ``wait_s`` for one)."""
        found = await self._until(lambda: self.finished or None, wait_s)
        self.finished = []
        return found or []

    async def open_tasks(self) -> None:
        self.tasks_closed = False

    async def close_tasks(self) -> None:
        self.tasks_closed = True
        self._change()


def serve(config: dict) -> None:
    """Each rank's loop: take the next job, run it, (rank 0) post its value; until closed."""
    import ray.train

    desk = config["desk"]
    rank = ray.train.get_context().get_world_rank()
    done: int | None = None
    while True:
        job = ray.get(desk.next_job.remote(rank, done, WAIT_S))
        if job is None:
            continue
        if job.fn is None:
            return
        value = job.fn(job.config)
        if rank == 0:
            ray.get(desk.finish.remote(job.id, value))
        done = job.id
        _release_memory()


def serve_tasks(config: dict) -> None:
    """Each rank's loop while the group scores: take a task, run it on this rank's device,
    post its value (or its error); until the driver closes the tasks. A job of the group
    (``WorkerPool.start_tasks``)."""
    import pickle

    import ray.train
    import ray.train.torch

    desk = config["desk"]
    rank = ray.train.get_context().get_world_rank()
    device = str(ray.train.torch.get_device())  # "cpu", or this rank's "cuda:N"
    fresh = True
    while True:
        task = ray.get(desk.take_task.remote(rank, fresh, WAIT_S))
        fresh = False
        if task is None:
            continue
        if task.payload is None:
            return
        try:
            with _one_process():
                fn, args = ray.cloudpickle.loads(task.payload)
                ok, value = True, fn(*args, device)
            del fn, args
        except Exception as err:  # noqa: BLE001 (the driver's to report, with the task's)
            ok, value = False, err
            try:
                pickle.dumps(err)
            except Exception:  # noqa: BLE001 (an error that cannot travel: its text does)
                value = RuntimeError(f"{type(err).__name__}: {err}")
        ray.get(desk.finish_task.remote(task.id, ok, value))
        del task, value  # what the task held goes before the next
        _release_memory()


DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
"""What Ray Train sets for a rank's process group, which a task's libraries must not see:
lm-eval returns results only where ``LOCAL_RANK`` is 0, so rank 1 would score nothing."""


@contextlib.contextmanager
def _one_process():
    """A task is one process's work: the rank's distributed variables are hidden while it
    runs, and put back for the group's next job."""
    import os

    saved = {k: os.environ.pop(k) for k in DISTRIBUTED_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _release_memory() -> None:
    """What a finished job held (its engine, optimizer, activations) goes before the next."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PoolTimeout(TimeoutError):
    """The worker group did not answer a job in time; ``started`` ranks had begun."""

    def __init__(self, message: str, started: int):
        super().__init__(message)
        self.started = started


class WorkerPool:
    """A worker group of ``cluster.num_workers`` Ray Train workers that runs jobs one after
    another (``run``), started on the first job; a context manager that closes it. Ray must
    be initialised. ``storage`` holds Ray Train's own small record of the group, removed
    when the group closes."""

    def __init__(self, cluster: ClusterConfig, storage: str, use_gpu: bool):
        self.cluster, self.storage, self.use_gpu = cluster, storage, use_gpu
        self.name = f"tunearena-workers-{uuid.uuid4().hex[:12]}"
        self._desk: Any = None
        self._trainer: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._aborted = False
        self._tasks_job = self._task_ids = 0

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def fits(self, cluster: ClusterConfig, storage: str, use_gpu: bool) -> bool:
        """Whether this group is the one a stage with these settings asks for."""
        return (cluster, storage, use_gpu) == (self.cluster, self.storage, self.use_gpu)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start(self) -> None:
        from ray.train import FailureConfig, LoggingConfig, RunConfig

        from tunearena.cluster.interruptible import InterruptibleTorchTrainer
        from tunearena.cluster.ray_cluster import scaling_config, worker_env
        from tunearena.cluster.storage import resolve_storage

        # Read by the controller from the driver's environment as fit() starts it.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_S)
        self._desk = _Desk.remote()  # type: ignore[attr-defined]
        self._trainer = InterruptibleTorchTrainer(
            serve,
            train_loop_config={"desk": self._desk},
            scaling_config=scaling_config(self.cluster, self.use_gpu),
            # Ray Train V2's RunConfig; type checkers see the V1 class that `ray.train` swaps out.
            run_config=RunConfig(  # type: ignore[call-arg]
                name=self.name,
                storage_path=resolve_storage(self.storage),
                failure_config=FailureConfig(max_failures=self.cluster.max_failures),
                worker_runtime_env={"env_vars": worker_env(self.cluster)},
                # Ray Train's INFO lines repeat every reported metric; our rank 0 logs progress.
                logging_config=LoggingConfig(log_level="WARNING"),
            ),
        )
        self._error, self._aborted = None, False
        self._thread = threading.Thread(target=self._fit, name=self.name, daemon=True)
        self._thread.start()

    def _fit(self) -> None:
        assert self._trainer is not None
        try:
            result = self._trainer.fit()
            if result.error is not None:
                self._error = result.error
        except BaseException as err:  # noqa: BLE001 (handed to the driver's thread)
            self._error = err

    def run(self, fn: Callable[[dict], Any], config: dict, timeout_s: float | None = None) -> Any:
        """Run ``fn(config)`` on every rank, starting the group if it is not running; rank 0's
        return value. A group that failed past ``max_failures`` raises Ray Train's error;
        ``PoolTimeout`` past ``timeout_s``. Ctrl-C (``KeyboardInterrupt``) stops the group."""
        return self.wait(self.start(fn, config), timeout_s)

    def start(self, fn: Callable[[dict], Any], config: dict) -> int:
        """Post ``fn(config)`` for every rank, starting the group if it is not running; the
        job's id, for ``wait``."""
        if not self.alive:
            self._start()
        assert self._desk is not None
        return ray.get(self._desk.post.remote(fn, config))

    def wait(self, job_id: int, timeout_s: float | None = None) -> Any:
        """Rank 0's return value of job ``job_id``, as ``run`` says."""
        assert self._desk is not None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                found = ray.get(self._desk.result.remote(job_id, WAIT_S))
                if found is not None:
                    return found[1]
                if not self.alive:
                    raise self._error or RuntimeError("the worker group ended before its job did")
                if deadline is not None and time.monotonic() > deadline:
                    started = ray.get(self._desk.ranks_started.remote())
                    self.close(wait_s=0)
                    raise PoolTimeout(f"no answer from the workers in {timeout_s:.0f} s",
                                      started)
        except KeyboardInterrupt:
            self._abort()
            raise

    @property
    def slots(self) -> int:
        """How many tasks the group runs at once: one per rank."""
        return self.cluster.num_workers

    def start_tasks(self) -> None:
        """Let every rank take tasks (``serve_tasks``) until ``close_tasks``."""
        if not self.alive:
            self._start()
        ray.get(self._desk.open_tasks.remote())
        self._tasks_job = self.start(serve_tasks, {"desk": self._desk})

    def post_task(self, fn: Callable, args: tuple) -> int:
        """Queue ``fn(*args, device)`` for the next free rank; the task's id."""
        self._task_ids += 1
        payload = ray.cloudpickle.dumps((fn, args))
        ray.get(self._desk.post_task.remote(Task(self._task_ids, payload)))
        return self._task_ids

    def finished_tasks(self) -> list[tuple[int, bool, Any]]:
        """(id, whether it succeeded, its value or error) of the tasks finished since the last
        call, waiting a little for one. Raises the group's error if it failed past
        ``max_failures``; Ctrl-C stops the group."""
        try:
            found = ray.get(self._desk.finished_tasks.remote(WAIT_S))
        except KeyboardInterrupt:
            self._abort()
            raise
        if not found and not self.alive:
            raise self._error or RuntimeError("the worker group ended while it scored")
        return found

    def close_tasks(self, wait: bool = True) -> None:
        """Stop the ranks taking tasks, once they finish those they hold (``wait``: until
        they have)."""
        if self.alive:
            ray.get(self._desk.close_tasks.remote())
            if wait:
                self.wait(self._tasks_job)

    def close(self, wait_s: float = 30) -> None:
        """Let the workers finish and exit (or stop them after ``wait_s``; at once after an
        interrupt); remove Ray Train's record of the group."""
        if self._thread is None:
            return
        if self.alive and not self._aborted:
            self._desk.post.remote(None, {})
            self._thread.join(timeout=wait_s)
        if self.alive:
            self._abort()
            self._thread.join(timeout=5)  # Ray's shutdown ends whatever is still going
        self._thread = self._trainer = self._desk = None
        from tunearena.cluster.storage import remove_run_dir, resolve_storage

        remove_run_dir(resolve_storage(self.storage), self.name)

    def _abort(self) -> None:
        self._aborted = True
        controller = getattr(self._trainer, "_controller", None)
        if controller is not None:
            # Not waited for: the controller stops the workers, then exits itself.
            controller.abort.remote()
