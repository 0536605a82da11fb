"""Score arms side by side: one Ray task per arm, one GPU each when the cluster has GPUs.

Every arm reads the same task files (written once here, with each context the arms use), so
arms differ only in weights and context. Once their models exist the arms are independent,
so they run in parallel. Each task scores its model on every benchmark through lm-eval, then
answers a few questions one at a time for latency. Results come back to the driver as each
arm finishes, so an arm that fails loses none of the others.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tunearena.cluster.config import ClusterConfig
from tunearena.cluster.failures import root_cause
from tunearena.errors import UserError
from tunearena.evaluation.arm import Arm
from tunearena.evaluation.benchmarks import QAItem
from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig
from tunearena.evaluation.report.numbers import primary_score, sample_track
from tunearena.evaluation.results import PRIMARY_METRIC
from tunearena.evaluation.tasks import task_rows
from tunearena.remote_code import trust_remote_code

if TYPE_CHECKING:
    from tunearena.training.pool import WorkerPool


@dataclass(frozen=True)
class Scoring:
    """What every arm is scored with: the same tasks, prompt rendering, scorer settings and
    device kind."""

    task_dir: str
    batch_size: int
    limit: int | None = None
    extra_task_paths: tuple[str, ...] = ()
    include_defaults: bool = False
    chat_template: bool = False
    """Prompts go through the model's chat template (``model.chat_template`` resolved)."""

    @classmethod
    def of(cls, evaluation: EvaluationConfig, task_dir: Path,
           chat_template: bool = False) -> Scoring:
        """The scoring an evaluation config asks for, over the tasks in ``task_dir``."""
        return cls(
            task_dir=str(task_dir), batch_size=evaluation.batch_size, limit=evaluation.limit,
            extra_task_paths=tuple(str(b.task_dir) for b in evaluation.benchmarks
                                   if b.task_dir is not None),
            include_defaults=any(b.lm_eval_task and b.task_dir is None
                                 for b in evaluation.benchmarks),
            chat_template=chat_template)


@dataclass(frozen=True)
class ArmJob:
    """One arm: its model, its lm-eval task per benchmark, the questions it times."""

    arm: Arm
    model_dir: str
    tasks: dict[str, str]
    timed: dict[str, list[dict]] = field(default_factory=dict)
    """Per benchmark, questions (``{"prompt", "choices"?}``) answered one at a time."""


class ArmFailed(UserError, RuntimeError):
    """One or more arms failed; the others' results were kept. The message names each failed
    arm, the benchmark it was scoring where the error says which, the cause and what to
    check."""


def arm_failure(failed: list[tuple[ArmJob, BaseException]]) -> ArmFailed:
    """One message for the arms that failed, the first one's cause in full."""
    from tunearena.cluster.failures import first_line, hint, logs_hint

    job, cause = failed[0]
    text = str(cause)
    named = [b for b, task in job.tasks.items() if task in text]
    where = (f"benchmark {', '.join(named)}" if named
             else f"benchmarks {', '.join(job.tasks)}" if len(job.tasks) > 1
             else f"benchmark {', '.join(job.tasks)}")
    fix = hint(cause, job.model_dir, "lower evaluation.batch_size, or give each arm a GPU", text)
    return ArmFailed(
        f"{len(failed)} arm(s) failed ({', '.join(str(j.arm) for j, _ in failed)}); the other "
        f"arms' scores are kept. {job.arm} on {where} (model {job.model_dir}): "
        f"{type(cause).__name__}: {first_line(cause)}" + (f". {fix}" if fix else "")
        + f". {logs_hint()}")


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
        chat_template=scoring.chat_template,
    )
    score_s = time.perf_counter() - t0
    answer_ms = {name: time_answers(model, tokenizer, questions, device,
                                    chat_template=scoring.chat_template)
                 for name, questions in job.timed.items() if questions}
    return {"samples": {name: scores[task] for name, task in job.tasks.items()},
            "score_s": score_s, "answer_ms": answer_ms}


class RayTasks:
    """Where arms run without warm workers: a Ray task each, on the arms' resources (one GPU
    each on a GPU cluster, else ``cpus_per_arm`` CPUs). Ray must be initialised."""

    def __init__(self, use_gpu: bool, cpus_per_arm: int):
        import ray

        self.device = "cuda" if use_gpu else "cpu"
        resources = ray.cluster_resources()
        # A task asking for more CPUs than any node has would wait forever.
        cpus = max(1, min(cpus_per_arm, int(resources.get("CPU", 1))))
        self.options = {"num_cpus": cpus, "num_gpus": 1 if use_gpu else 0, "max_retries": 0}
        self.slots = max(1, int(resources.get("GPU", 0)) if use_gpu
                         else int(resources.get("CPU", 1)) // cpus)

    def post(self, fn: Callable, args: tuple) -> Any:
        import ray

        return ray.remote(fn).options(**self.options).remote(*args, self.device)

    def finished(self, posted: list) -> list[tuple[Any, bool, Any]]:
        import ray

        ready, _ = ray.wait(posted, num_returns=1)
        try:
            return [(ready[0], True, ray.get(ready[0]))]
        except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError,
                ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError) as e:
            return [(ready[0], False, root_cause(e))]

    def close(self, wait: bool = True) -> None:
        pass


class PoolTasks:
    """Where arms run once a run has trained: on its warm worker group
    (``training.pool.serve_tasks``), a task at a time per rank, on the rank's device."""

    def __init__(self, pool: WorkerPool):
        self.pool, self.slots = pool, pool.slots
        pool.start_tasks()
        self.closed = False

    def post(self, fn: Callable, args: tuple) -> Any:
        return self.pool.post_task(fn, args)

    def finished(self, posted: list) -> list[tuple[Any, bool, Any]]:
        return self.pool.finished_tasks()

    def close(self, wait: bool = True) -> None:
        if not self.closed:
            self.closed = True
            self.pool.close_tasks(wait)


class ArmTasks:
    """Arms, and the probe, each queued when the driver can start it, run by ``runner``
    (``RayTasks`` or ``PoolTasks``); ``wait`` hands each result (or failure) to its callback
    as it arrives, and a callback may queue more.

    No more tasks are started than the runner can run at once, so a task queued later but
    marked ``first`` (one that other arms wait for) starts before the others queued: Ray's
    own queue would start them in the order they came."""

    def __init__(self, scoring: Scoring, runner: RayTasks | PoolTasks):
        self.scoring, self.runner = scoring, runner
        self.queue: list[tuple[bool, Callable, tuple, Callable, Callable]] = []
        self.pending: dict[Any, tuple[Callable[[Any], None],
                                      Callable[[BaseException], None]]] = {}

    def call(self, fn: Callable, args: tuple, on_done: Callable[[Any], None],
             on_error: Callable[[BaseException], None], first: bool = False) -> None:
        """Queue ``fn(*args, device)`` as a task (``device``: where it runs, ``cuda``,
        ``cuda:N`` or ``cpu``); ``first``: ahead of the tasks queued without it."""
        self.queue.append((first, fn, args, on_done, on_error))
        self._start()

    def score(self, job: ArmJob, on_done: Callable[[ArmJob, dict[str, Any]], None],
              on_error: Callable[[ArmJob, BaseException], None], first: bool = False) -> None:
        """Queue ``score_arm`` on ``job``."""
        self.call(score_arm, (job, self.scoring),
                  lambda result: on_done(job, result), lambda error: on_error(job, error), first)

    def _start(self) -> None:
        while self.queue and len(self.pending) < self.runner.slots:
            entry = next((e for e in self.queue if e[0]), self.queue[0])
            self.queue.remove(entry)
            _, fn, args, on_done, on_error = entry
            self.pending[self.runner.post(fn, args)] = (on_done, on_error)

    def wait(self, after: Callable[[], None] = lambda: None) -> None:
        """Until no task is queued or in flight, calling ``after`` once each result or
        failure is handled (it may queue more tasks)."""
        while self.pending:
            for key, ok, value in self.runner.finished(list(self.pending)):
                on_done, on_error = self.pending.pop(key)
                if ok:
                    on_done(value)
                else:
                    on_error(value)
                after()
                self._start()
        self.runner.close()


class ArmEvaluation:
    """Arms scored with ``scoring`` (``ArmTasks``), with their progress and scores on
    ``console``: ``score`` an arm's job, or ``call`` a task on the same resources (the probe),
    whenever it is ready; ``wait`` until none is queued or in flight; ``failed`` holds the
    arms that failed. The tasks run on ``pool``, the run's warm workers, while it is alive,
    else as Ray tasks. ``ensure_ray`` is called before the first task is queued. A context
    manager (the progress display)."""

    def __init__(self, scoring: Scoring, cluster: ClusterConfig, console: Console,
                 ensure_ray: Callable[[], None] = lambda: None, pool: WorkerPool | None = None):
        self.scoring, self.pool = scoring, pool
        self.cluster, self.console, self.ensure_ray = cluster, console, ensure_ray
        self.tasks: ArmTasks | None = None
        self.progress = ArmProgress(console)
        self.failed: list[tuple[ArmJob, BaseException]] = []

    def __enter__(self) -> ArmEvaluation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
        if self.tasks is not None:  # stopped early: the workers finish what they hold
            self.tasks.runner.close(wait=False)

    def _tasks(self) -> ArmTasks:
        if self.tasks is None:
            from tunearena.cluster.ray_cluster import resolve_use_gpu

            self.ensure_ray()
            use_gpu = resolve_use_gpu(self.cluster)
            each = "one GPU each" if use_gpu else f"{self.cluster.cpus_per_worker} CPU(s) each"
            if self.pool is not None and self.pool.alive:
                runner: RayTasks | PoolTasks = PoolTasks(self.pool)
                self.console.print(f"arms on the {self.pool.slots} training worker(s), {each}")
            else:
                runner = RayTasks(use_gpu, self.cluster.cpus_per_worker)
                self.console.print(f"arms as Ray tasks, {each}")
            self.tasks = ArmTasks(self.scoring, runner)
            self.progress.start()
        return self.tasks

    def call(self, fn: Callable, args: tuple, on_done: Callable[[Any], None],
             on_error: Callable[[BaseException], None], first: bool = False) -> None:
        """Queue ``fn(*args, device)`` as a task (``ArmTasks.call``)."""
        self._tasks().call(fn, args, on_done, on_error, first)

    def score(self, job: ArmJob, on_done: Callable[[ArmJob, dict[str, Any]], None],
              on_error: Callable[[ArmJob, BaseException], None], first: bool = False) -> None:
        """Queue ``job``'s scoring (``ArmTasks.score``): its scores go to the console and
        ``on_done``, a failure to ``failed`` and ``on_error``."""
        from rich.markup import escape

        def done(job: ArmJob, result: dict[str, Any]) -> None:
            on_done(job, result)
            self.progress.finish(job.arm, f"done in {result['score_s']:.1f} s")
            self.console.print(f"[green]✓ evaluate:{job.arm}[/green] in "
                               f"{result['score_s']:.1f} s: {scores_line(result['samples'])}")

        def failed(job: ArmJob, error: BaseException) -> None:
            self.failed.append((job, error))
            on_error(job, error)
            self.progress.finish(job.arm, "[red]failed[/red]")
            self.console.print(f"[bold red]✗ evaluate:{job.arm}: {escape(str(error))}[/bold red]")

        tasks = self._tasks()
        self.progress.add(job.arm)
        tasks.score(job, done, failed, first)

    def wait(self, after: Callable[[], None] = lambda: None) -> None:
        """Until no task is in flight (``ArmTasks.wait``)."""
        if self.tasks is not None:
            self.tasks.wait(after)


@dataclass
class ArmScores:
    """What scoring the arms gives: per arm (by name) its per-question samples and its
    latency record, and the stage selection when stages were chosen between."""

    samples: dict[str, dict] = field(default_factory=dict)
    latency: dict[str, dict] = field(default_factory=dict)
    selection: dict | None = None
    probe: dict | None = None
    """The probe's record (prompts, tolerance, each stage's change) when stages were
    probed."""

    def add(self, arm: Arm, samples: dict, latency: dict) -> None:
        self.samples[str(arm)], self.latency[str(arm)] = samples, latency


def write_arm_tasks(benchmarks: Sequence[BenchmarkConfig], questions: dict[str, list[QAItem]],
                    contexts: set[str], task_dir: Path,
                    passages: dict[str, dict[str, list[str]]] | None = None,
                    examples: Sequence[tuple[str, str]] = (),
                    retrieved_docs: dict[str, dict[str, str | None]] | None = None,
                    ) -> dict[str, dict[str, str]]:
    """Write each QA benchmark's lm-eval task once, and its variant with the retrieved
    ``passages`` (benchmark -> question id -> passages; ``retrieved_docs`` the same way gives
    the document of each first passage, which the variant's rows keep) and with few-shot
    ``examples`` when ``contexts`` ask for them. Returns, per benchmark, the task of each
    context (``""``, ``"rag"``, ``"fewshot"``); a named lm-eval task is the same in every
    context."""
    from tunearena.evaluation.tasks import write_generative_task, write_mc_task

    tasks: dict[str, dict[str, str]] = {}
    for bench in benchmarks:
        if bench.lm_eval_task is not None:
            tasks[bench.name] = dict.fromkeys(contexts | {""}, bench.lm_eval_task)
            continue
        items = questions[bench.name]
        write = write_generative_task if bench.track == "generative" else write_mc_task
        variants = {"": write(task_dir, bench.name, items)}
        if passages is not None and "rag" in contexts:
            variants["rag"] = write(task_dir, bench.name, items, passages[bench.name],
                                    retrieved_docs=(retrieved_docs or {}).get(bench.name))
        if "fewshot" in contexts:
            variants["fewshot"] = write(task_dir, bench.name, items, examples=list(examples))
        tasks[bench.name] = variants
    return tasks


def prompt_tokens(tokenizer_dir: str, task_dir: Path, tasks: dict[str, dict[str, str]],
                  benchmarks: Sequence[str], chat_template: bool = False,
                  ) -> dict[str, dict[str, float]]:
    """Per QA benchmark and context, the mean prompt length in the tokenizer's tokens, as
    the model reads it (through the chat template when ``chat_template``)."""
    from transformers import AutoTokenizer

    from tunearena.evaluation.prompt import model_input

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=trust_remote_code())

    def length(prompt: str) -> int:
        text, _ = model_input(prompt, tokenizer, chat_template)
        return len(tokenizer(text, add_special_tokens=not chat_template)["input_ids"])

    return {name: {context: statistics.fmean(length(row["prompt"])
                                             for row in task_rows(task_dir, task))
                   for context, task in tasks[name].items()}
            for name in benchmarks}


def arm_job(arm: Arm, model_dir: Path, tasks: dict[str, dict[str, str]], task_dir: Path,
            timed_benchmarks: Sequence[str], timed_questions: int) -> ArmJob:
    """An arm's job: its context's task of every benchmark, and the first
    ``timed_questions`` prompts of each of ``timed_benchmarks`` to answer one at a time."""
    timed = {name: [{"prompt": r["prompt"], "choices": r.get("choices")}
                    for r in task_rows(task_dir, variants[arm.context])][:timed_questions]
             for name, variants in tasks.items() if name in timed_benchmarks}
    return ArmJob(arm, str(model_dir), {n: v[arm.context] for n, v in tasks.items()}, timed)


def arm_latency(job: ArmJob, result: dict[str, Any], retrieval_ms: dict[str, list[float]],
                tokens: dict[str, dict[str, float]]) -> dict[str, Any]:
    """An arm's timing: scoring wall time, then one-question latency p50/p95 (with the
    single-question search times ``retrieval_ms`` added for a RAG arm) and its prompt length
    (``tokens``, from ``prompt_tokens``) against the plain prompt's."""
    from tunearena.evaluation.latency import percentiles

    context = job.arm.context
    n = sum(len(rows) for rows in result["samples"].values())
    out: dict[str, Any] = {"model": job.model_dir, "score_s": result["score_s"],
                           "ms_per_question_scored": 1000 * result["score_s"] / n}
    answer = [ms for times in result["answer_ms"].values() for ms in times]
    if answer:
        out["questions_timed"] = len(answer)
        total = answer
        if context == "rag":
            search = [ms for name, times in result["answer_ms"].items()
                      for ms in retrieval_ms.get(name, [])[:len(times)]]
            if len(search) == len(answer):
                out["retrieval_p50_ms"] = percentiles(search)["p50"]
                total = [a + b for a, b in zip(answer, search, strict=True)]
        out |= {f"latency_{k}_ms": v for k, v in percentiles(total).items()}
    pairs = [(v.get(context), v.get("")) for v in tokens.values()]
    if pairs and all(t is not None for t, _ in pairs):
        out["prompt_tokens"] = statistics.fmean(t for t, _ in pairs)  # type: ignore[misc]
        if context:
            out["prompt_tokens_added"] = statistics.fmean(
                t - p for t, p in pairs)  # type: ignore[operator]
    return out


def is_accuracy(rows: list[dict]) -> bool:
    """Whether a benchmark's rows score right or wrong (not bits per byte)."""
    return sample_track(rows) in PRIMARY_METRIC


def scores_line(samples: dict[str, list[dict]]) -> str:
    """An arm's primary score per benchmark, for the console."""
    return "  ".join(f"{name} {primary_score(rows):.1%}" if is_accuracy(rows)
                     else f"{name} {primary_score(rows):.3f} bits/byte"
                     for name, rows in samples.items())


def choose_stage(samples: dict[str, dict], stages: list[str],
                 benchmarks: Sequence[BenchmarkConfig], tolerance: float,
                 **wording: str) -> dict[str, Any]:
    """Choose the stage the ``ft`` arms use from the scored ``ft@<stage>`` arms: the largest
    domain gain within the forgetting tolerance (``select_stage``, its sentences worded by
    ``wording``); the last stage when no domain benchmark was scored."""
    from tunearena.evaluation.selection import select_stage

    def acc(arm: str) -> dict[str, float]:
        # Bits per byte is no accuracy: it is reported, not chosen by.
        return {b: primary_score(rows) for b, rows in samples[arm].items() if is_accuracy(rows)}

    scored = acc("base")
    kinds: dict[str, str] = {b.name: b.kind for b in benchmarks if b.name in scored}
    if "domain" not in kinds.values():
        return {"selected": stages[-1], "tolerance": tolerance,
                "rule": f"the last stage, {stages[-1]}: no domain benchmark to choose by",
                "candidates": [], "warning": None}
    return select_stage({s: acc(str(Arm("ft", s))) for s in stages}, scored, kinds, tolerance,
                        **wording)


def retrieval_effect(samples: dict[str, dict]) -> dict[str, dict]:
    """Per benchmark, the questions base answered right and base+rag wrong (retrieval hurt),
    and the reverse; empty unless both arms were scored."""
    if "base" not in samples or "base+rag" not in samples:
        return {}
    effect: dict[str, dict] = {}
    for name, base_rows in samples["base"].items():
        if not is_accuracy(base_rows):
            continue
        key = PRIMARY_METRIC[sample_track(base_rows)]  # type: ignore[index]
        rag = {r["id"]: r[key] for r in samples["base+rag"].get(name, [])}
        hurt = [r["id"] for r in base_rows if r[key] and rag.get(r["id"]) == 0]
        helped = [r["id"] for r in base_rows if not r[key] and rag.get(r["id"]) == 1]
        effect[name] = {"hurt_questions": len(hurt), "helped_questions": len(helped),
                        "hurt_ids": hurt[:20]}
    return effect


class ArmProgress:
    """The driver's view of arms being scored: one line per arm (running, then done or
    failed, with its time) under an overall bar, an arm added as it starts."""

    def __init__(self, console: Console):
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
            console=console, transient=False)
        self.overall = self.progress.add_task("all arms", total=0, status="")
        self.lines: dict[Arm, Any] = {}
        self.started = False

    def start(self) -> None:
        self.progress.start()
        self.started = True

    def stop(self) -> None:
        if self.started:
            self.progress.stop()

    def add(self, arm: Arm) -> None:
        self.lines[arm] = self.progress.add_task(f"  {arm}", total=1, status="running")
        self.progress.update(self.overall, total=len(self.lines))

    def finish(self, arm: Arm, status: str) -> None:
        """Mark ``arm`` finished with ``status`` (e.g. ``done in 12.3 s``)."""
        line = self.lines[arm]
        self.progress.update(line, completed=1, status=status)
        self.progress.stop_task(line)
        self.progress.advance(self.overall)
