"""``tunearena run``: check inputs, index, retrieve, measure every prompt against the model's
context, train, evaluate every arm, report.

Each step records itself in the run manifest; with ``resume`` a step whose outputs are
complete (same cache key, artifacts present) is reused instead of run again. The work of each
step lives in the package it concerns; this module lists the steps and runs them.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from rich.console import Console

from tunearena.cluster.config import ClusterConfig
from tunearena.documents.synth import SynthesisSummary
from tunearena.evaluation import arms as scoring
from tunearena.evaluation.arm import Arm
from tunearena.evaluation.arms import ArmScores
from tunearena.evaluation.benchmarks import QAItem
from tunearena.files import write_atomic
from tunearena.launch.config import ExperimentConfig, dump_config
from tunearena.launch.inputs import check_inputs, check_runs_dir
from tunearena.launch.interrupts import enter_ray
from tunearena.launch.keys import (
    code_version,
    index_key,
    prepare_key,
    retrieve_key,
    stage_key,
    synthesis_key,
)
from tunearena.launch.lock import RunLock
from tunearena.launch.manifest import Manifest, read_manifest, refuse_earlier_run
from tunearena.launch.scoring import ArmInputs, RunScoring
from tunearena.launch.sweeping import train_sweep
from tunearena.training.config import Stage
from tunearena.training.stages import load_stage, preparation_lines, prepare_stage, train_stage
from tunearena.training.summary import TrainingSummary

if TYPE_CHECKING:
    from tunearena.training.pool import WorkerPool


def _json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def run_dir_line(run_dir: Path) -> str:
    """The run directory's size, and what of it are the exported models and the index."""
    from tunearena.files import disk_bytes

    total = disk_bytes(run_dir)
    kept = disk_bytes(*(run_dir / d for d in ("models", "index")))
    return f"{total / 1e6:.1f} MB on disk; exported models and index {kept / 1e6:.1f} MB"


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


class _Ray:
    """The run's one Ray session, started when a step first needs it; it serves training and
    scoring. ``checked``: the cluster-wide preflight checks (storage, collective) have passed.
    ``workers()``: the warm worker group that trains stage after stage and then scores the
    arms, started on first use and kept until ``release()`` frees its resources (for a
    sweep's trials) or the session ends."""

    def __init__(self, cfg: ClusterConfig, stack: ExitStack, console: Console, storage: str,
                 dashboard: bool = False):
        self.cfg, self.stack, self.console, self.dashboard = cfg, stack, console, dashboard
        self.storage = storage
        self.started = self.checked = False
        self.pool: WorkerPool | None = None

    def ensure(self) -> None:
        if not self.started:
            # A local Ray starts its dashboard only for a sweep (see ray_session).
            enter_ray(self.stack, self.cfg, self.console, dashboard=self.dashboard)
            self.started = True

    def workers(self) -> WorkerPool:
        from tunearena.cluster.ray_cluster import resolve_use_gpu
        from tunearena.training.pool import WorkerPool

        self.ensure()
        if self.pool is None:
            self.pool = WorkerPool(self.cfg, self.storage, resolve_use_gpu(self.cfg))
            self.stack.callback(self.release)  # before Ray shuts down (entered earlier)
        return self.pool

    def release(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


class Pipeline:
    """The steps of one run, sharing its config, run directory, manifest and console."""

    def __init__(self, cfg: ExperimentConfig, console: Console, resume: bool = False,
                 command: str = "tunearena run", synthesis_only: bool = False):
        self.cfg = cfg
        self.console = console
        self.resume = resume
        self.synthesis_only = synthesis_only  # ``tunearena synth``: stop after synthesis
        self.command = command  # written into the run directory's lock, for whoever finds it
        self.run_dir = (cfg.runs_dir / cfg.name).resolve()
        self.storage = cfg.cluster.storage_path or str(self.run_dir / "ray")
        self.manifest = Manifest(self.run_dir, {"steps": {}})  # opened by run()
        self.early = ArmScores()
        """Arms scored before the evaluation step (the base, while a sweep chose a trial)."""

    def _reused(self, name: str, key: str) -> bool:
        """Whether step ``name`` is resumed from an earlier attempt that ran it with ``key``."""
        if not (self.resume and self.manifest.is_done(name, key)):
            return False
        self.manifest.mark_reused(name)
        self.console.print(f"[dim]= {name}: reused from the previous attempt[/dim]")
        return True

    def _step(self, name: str, key: str, fn: Callable[[], tuple[dict, Any]],
              load: Callable[[dict], Any] = dict) -> Any:
        """Run ``fn`` (returning artifacts, outputs) as manifest step ``name``, or reuse it
        (its stored outputs passed through ``load``)."""
        if self._reused(name, key):
            return load(self.manifest.outputs(name))
        self.console.rule(f"[bold]{name}")
        self.manifest.start(name, key)
        t0 = time.perf_counter()
        with self.manifest.closing_steps():  # failed, or interrupted by Ctrl-C or SIGTERM
            artifacts, outputs = fn()
        duration = time.perf_counter() - t0
        stored = outputs.model_dump(mode="json") if isinstance(outputs, BaseModel) else outputs
        self.manifest.finish(name, artifacts, stored, duration)
        self.console.print(f"[green]✓ {name}[/green] in {duration:.1f} s")
        return outputs

    @property
    def chat_template(self) -> bool:
        """Whether every prompt, in training and evaluation, goes through the base model's
        chat template (``model.chat_template`` as the input check resolved it)."""
        value = self.cfg.model.chat_template
        assert isinstance(value, bool), "check_inputs resolves model.chat_template"
        return value

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.run_dir))

    def run(self) -> Path:
        """Run every step, holding the run directory's lock; returns the path of the HTML
        report (report.md lies beside it). Steps still running when the run stops are marked
        ``interrupted`` (by a signal) or ``failed``."""
        # The lock comes first: a second driver must hear who holds the directory, not what
        # the holder's half-written manifest says. A runs_dir that cannot hold the directory
        # is named as such before the lock tries to make it.
        check_runs_dir(self.cfg.runs_dir, self.cfg.name)
        with RunLock(self.run_dir, self.command) as lock:
            if lock.stale is not None:
                self.console.print(f"[yellow]the previous driver of this run, "
                                   f"{lock.stale.describe()}, died holding it; taking over"
                                   f"[/yellow]", soft_wrap=True)
            if not self.resume:
                refuse_earlier_run(self.run_dir)
            else:
                read_manifest(self.run_dir)  # a broken one is reported before any work
            return self._run()

    def _open(self) -> str:
        """Save the resolved config and open the manifest; returns the config's key."""
        write_atomic(self.run_dir / "config.yaml", dump_config(self.cfg))
        config_key = self.cfg.section_hash(*ExperimentConfig.model_fields)
        self.manifest = Manifest.open(self.run_dir, config_key, code_version())
        return config_key

    def synthesize(self) -> SynthesisSummary:
        """Check the documents and the generator, then write the corpus, questions and
        paraphrases into ``synthesis/`` (documents drafted by an earlier attempt are reused)."""
        from tunearena.documents.config import OUTPUTS
        from tunearena.documents.synth import synthesize
        from tunearena.evaluation.prompt import ANSWER_DELIMITER, format_prompt
        from tunearena.launch.synthesis import check_synthesis

        cfg, synthesis = self.cfg, self.cfg.synthesis
        assert synthesis is not None
        ingested, model_dir = check_synthesis(synthesis, self.console)
        self._open()

        def run(ray: _Ray) -> tuple[dict, SynthesisSummary]:
            ray.ensure()
            summary = synthesize(synthesis, ingested, cfg.synthesis_dir, model_dir,
                                 format_prompt, ANSWER_DELIMITER, self.console.print)
            return {n: self._rel(cfg.synthesis_dir / n) for n in OUTPUTS}, summary

        with ExitStack() as stack, self.manifest.closing_steps():
            ray = _Ray(cfg.cluster, stack, self.console, self.storage)
            return self._step("synthesize", synthesis_key(cfg, ingested.documents),
                              lambda: run(ray), load=SynthesisSummary.model_validate)

    def _run(self) -> Path:
        cfg = self.cfg
        self.console.print(f"checking inputs for run [bold]{cfg.name}[/bold]")
        synthesis = self.synthesize() if cfg.synthesis is not None else None
        if self.synthesis_only:
            return cfg.synthesis_dir
        benchmarks, examples = check_inputs(cfg)
        config_key = self._open()
        arms = [Arm.parse(a) for a in cfg.evaluation.arms]
        stages = cfg.resolved_stages()
        trained: dict[str, TrainingSummary] = {}
        index: dict = {}
        retrieval: dict[str, dict] = {}
        scores = ArmScores()
        scored, lengths = benchmarks, None
        # Steps still running when the block stops are marked before Ray shuts down.
        with ExitStack() as stack, self.manifest.closing_steps():
            ray = _Ray(cfg.cluster, stack, self.console, self.storage,
                       dashboard=any(s.sweep is not None for s in stages))
            # Retrieval reads no trained model, so it runs first: every prompt a RAG arm will
            # score is then known, and measured against the context, before training. A
            # rag_context stage's training prompts are retrieved from the same index.
            rag_arms = any(a.context == "rag" for a in arms)
            if rag_arms or any(s.rag_context is not None for s in stages):
                index = self._step("index", index_key(cfg), lambda: self.index(ray))
            if rag_arms:
                retrieval = self._step("retrieve", retrieve_key(cfg),
                                       lambda: self.retrieve(benchmarks))
            if cfg.evaluation.enabled:
                scored, lengths = self.check_prompts(arms, benchmarks, examples)
            if stages:
                trained = self.train(stages, benchmarks, ray, scored)
            if cfg.evaluation.enabled:
                scores = self.evaluate(arms, stages, scored, examples, retrieval, ray)
        report_path = self.run_dir / "report.html"
        self._step("report", config_key, lambda: self.report(
            scores, trained, stages, index, retrieval, lengths, synthesis))
        self.console.print(f"\nreport: [bold]{report_path}[/bold]")
        self.console.print(f"results: {self.run_dir / 'results.json'}")
        self.console.print(f"run directory: {self.run_dir} ({run_dir_line(self.run_dir)})")
        return report_path

    def train(self, stages: list[Stage], benchmarks: dict[str, list[QAItem]],
              ray: _Ray, scored: dict[str, list[QAItem]] | None = None,
              ) -> dict[str, TrainingSummary]:
        """Prepare every stage's data, then load, check and train the stages in order, each
        into ``models/<stage>``. A swept stage's trials are scored on ``scored`` (the
        questions every arm is scored on), when evaluation is on."""
        from functools import cache

        from transformers import AutoTokenizer

        cfg = self.cfg
        questions = {name: [q.question for q in items] for name, items in benchmarks.items()}
        # Every stage's records are measured with the base's tokenizer, which each stage's
        # model keeps; loaded once, and only when a prepare step runs.
        tokenizer = cache(lambda: AutoTokenizer.from_pretrained(
            cfg.model.base, trust_remote_code=cfg.model.trust_remote_code))

        def step(kind: str, stage: Stage) -> str:
            # A run without stages has one, named ft; its steps keep their plain names.
            return f"{kind}:{stage.name}" if cfg.stages else kind

        def train(stage: Stage, data_report: dict) -> tuple[dict, TrainingSummary]:
            loaded = load_stage(stage, stages, cfg.model.base, self.run_dir, self.chat_template)
            # Named by the stage's inputs: --resume continues this stage's checkpoints only
            # while the stage is the same one; a fresh attempt never restores an old one.
            run_name = f"{cfg.name}-{stage.name}-{stage_key(cfg, stage, stages)[:8]}"
            out = self.run_dir / "models" / stage.name
            if stage.sweep is not None:
                ray.ensure()
                ray.release()  # the trials place their own worker groups
                summary = train_sweep(
                    loaded, stage.sweep, cfg.cluster, run_name, self.storage, out,
                    self.run_dir / "sweeps" / stage.name, data_report, self.console,
                    partial(self.score_trials, stage.name, scored or benchmarks, ray),
                    not self.resume, check_cluster=not ray.checked)
                ray.checked = True
                return {"model": self._rel(out),
                        "trials": self._rel(self.run_dir / "sweeps" / stage.name)}, summary
            summary = train_stage(loaded, cfg.cluster, run_name, self.storage, out, data_report,
                                  self.console, not self.resume, check_cluster=not ray.checked,
                                  pool=ray.workers(),
                                  usd_per_gpu_hour=cfg.report.gpu_hour_cost_usd)
            ray.checked = True
            return {"model": self._rel(out)}, summary

        def prepare(stage: Stage) -> tuple[dict, dict]:
            return self.prepare(stage, questions, tokenizer())

        swept = [s for s in stages if s.sweep is not None]
        if swept:  # more concurrent trials than the cluster places: before any stage trains
            from ray import cluster_resources

            from tunearena.cluster.ray_cluster import resolve_use_gpu
            from tunearena.training.sweep_run import concurrent_trials

            ray.ensure()
            for s in swept:
                assert s.sweep is not None
                concurrent_trials(s.sweep, cfg.cluster, resolve_use_gpu(cfg.cluster),
                                  cluster_resources(), f"stage {s.name}: ")
        prepared = {s.name: self._step(step("prepare", s), prepare_key(cfg, s),
                                       partial(prepare, s)) for s in stages}
        trained = {s.name: self._step(step("train", s), stage_key(cfg, s, stages),
                                      partial(train, s, prepared[s.name]),
                                      load=TrainingSummary.model_validate) for s in stages}
        return trained  # the same workers score the arms

    def prepare(self, stage: Stage, questions: dict[str, list[str]],
                tokenizer: Any) -> tuple[dict, dict]:
        """Prepare a stage's files into ``data/<stage>/`` (``prepare_stage``). A
        ``rag_context`` stage's files are first rewritten with passages from the run's index
        (``data/<stage>-<task>.rag.jsonl``), and those are prepared: its prepared records, and
        a later stage's replay of them, hold the passages. Returns the written files and each
        task's report, with the ``rag_context`` record for such a stage's tasks."""
        from tunearena.training.lengths import model_context
        from tunearena.training.rag_context import (
            load_stage_index,
            rag_context_line,
            rag_context_stage,
        )

        data_dir = self.run_dir / "data"
        contexts: dict[str, dict] = {}
        if stage.rag_context is not None:
            index = load_stage_index(self.run_dir / "index", stage.name)
            stage, contexts = rag_context_stage(stage, index, self.cfg.rag.top_k, data_dir)
            for task, record in contexts.items():
                self.console.print(rag_context_line(stage.name, task, record), highlight=False)
        files, reports = prepare_stage(stage, questions, data_dir, tokenizer,
                                       model_context(self.cfg.model.base), self.chat_template)
        for task, report in reports.items():
            if task in contexts:
                report["rag_context"] = contexts[task]
            for line in preparation_lines(stage.name, task, report):
                self.console.print(line, highlight=False)
        artifacts = {k: self._rel(p) for k, p in files.items()}
        if contexts:  # the stage's datasets are the rewritten files
            artifacts |= {f"{ds.task} rag_context": self._rel(ds.path)
                          for ds in stage.training.datasets}
        return artifacts, reports

    def index(self, ray: _Ray) -> tuple[dict, dict]:
        from tunearena.rag.index import build_index
        from tunearena.rag.retrieve import index_line

        rag = self.cfg.rag
        # A large corpus is embedded as a Ray Data job: on a cluster, join it first, so the
        # job spreads over its nodes rather than over a Ray started on this machine alone.
        if rag.embed_with_ray_data == "always" or (
                rag.embed_with_ray_data == "auto" and self.cfg.cluster.address != "local"):
            ray.ensure()
        out = self.run_dir / "index"
        summary = build_index(rag, out)
        self.console.print(index_line(summary))
        return {"index": self._rel(out)}, summary

    def retrieve(self, benchmarks: dict[str, list[QAItem]]) -> tuple[dict, dict]:
        """Retrieve once per question into ``retrieval/<benchmark>.json``; every RAG arm
        reads the same passages."""
        from tunearena.rag.retrieve import recall_line, retrieve_contexts

        found = retrieve_contexts(self.run_dir / "index", benchmarks, self.cfg.rag.top_k,
                                  self.cfg.evaluation.latency_questions)
        artifacts = {}
        for name, retrieval in found.items():
            path = self.run_dir / "retrieval" / f"{name}.json"
            _json(path, retrieval.contexts)
            artifacts[name] = self._rel(path)
            if line := recall_line(name, retrieval.stats):
                self.console.print(line)
        return artifacts, {name: retrieval.stats for name, retrieval in found.items()}

    def write_tasks(self, arms: list[Arm], benchmarks: dict[str, list[QAItem]],
                    examples: list) -> dict[str, dict[str, str]]:
        """Write the lm-eval tasks of every context the arms use into ``tasks/`` (RAG ones
        with the retrieved passages); returns each benchmark's task per context."""
        passages = top_docs = None
        if any(a.context == "rag" for a in arms):
            found = {name: _load_json(self.run_dir / "retrieval" / f"{name}.json")
                     for name in benchmarks}
            passages = {name: {qid: r["passages"] for qid, r in found[name].items()}
                        for name in benchmarks}
            # Each scored RAG question then names the document of its first passage.
            top_docs = {name: {qid: next(iter(r["doc_ids"]), None)
                               for qid, r in found[name].items()} for name in benchmarks}
        return scoring.write_arm_tasks(self.cfg.evaluation.benchmarks, benchmarks,
                                       {a.context for a in arms}, self.run_dir / "tasks",
                                       passages, examples, top_docs)

    def check_prompts(self, arms: list[Arm], benchmarks: dict[str, list[QAItem]],
                      examples: list) -> tuple[dict[str, list[QAItem]], dict]:
        """Measure every prompt every arm will score against the model's context, before
        training: an overflow stops the run (``PromptOverflowError``), or with
        ``long_prompts: drop`` its questions leave every arm. Returns the questions to score
        and the record ``results.json`` keeps (``prompt_lengths``)."""
        from tunearena.evaluation.context import measure_prompts

        tasks = self.write_tasks(arms, benchmarks, examples)
        kept, record = measure_prompts(self.cfg.model.base, self.cfg.evaluation, benchmarks,
                                       [str(a) for a in arms], self.run_dir / "tasks", tasks,
                                       self.chat_template)
        for name, dropped in record["dropped"].items():
            self.console.print(
                f"[bold yellow]{name}: {dropped['questions']} questions left out of every arm: "
                f"a prompt of theirs ({', '.join(dropped['arms'])}) exceeds the model's "
                f"{record['max_length']}-token context (long_prompts: drop)[/bold yellow]")
        return kept, record

    def evaluate(self, arms: list[Arm], stages: list[Stage], benchmarks: dict[str, list[QAItem]],
                 examples: list, retrieval: dict[str, dict], ray: _Ray) -> ArmScores:
        """Write the tasks every arm reads, then score the arms (``RunScoring.evaluate``: on
        the workers that trained, while they are up) and choose the stage ``ft`` is."""
        tasks = self.write_tasks(arms, benchmarks, examples)
        inputs = ArmInputs(tasks, scoring.prompt_tokens(
            self.cfg.model.base, self.run_dir / "tasks", tasks, list(benchmarks),
            self.chat_template), {name: stats["search_ms"] for name, stats in retrieval.items()})
        return self._scoring().evaluate(arms, [s.name for s in stages], inputs, ray.ensure,
                                        ray.pool)

    def _scoring(self) -> RunScoring:
        return RunScoring(self.cfg, self.run_dir, self.manifest, self.console, self._reused,
                          self.early, self.chat_template)

    def score_trials(self, stage: str, benchmarks: dict[str, list[QAItem]], ray: _Ray,
                     trial_dirs: dict[str, Path]) -> dict | None:
        """Score a sweep's trials (and the base, which the evaluation step then reuses) on
        plain prompts; the selection among them by the rule that chooses between stages, or
        None when evaluation is off."""
        if not self.cfg.evaluation.enabled:
            return None
        from tunearena.launch.sweeping import trial_arm

        base = Arm("base")
        tasks = self.write_tasks([base], benchmarks, [])
        inputs = ArmInputs(tasks, scoring.prompt_tokens(
            self.cfg.model.base, self.run_dir / "tasks", tasks, list(benchmarks),
            self.chat_template), {})
        if str(base) not in self.early.samples:
            early = self._scoring().score_arms({base: Path(self.cfg.model.base)}, inputs,
                                               ray.ensure)
            self.early.add(base, early.samples["base"], early.latency["base"])
        arms = {Arm.parse(trial_arm(stage, t)): d for t, d in trial_dirs.items()}
        trials = self._scoring().score_arms(arms, inputs, ray.ensure, timed=False)
        samples = {"base": self.early.samples["base"]} | {
            f"ft@{t}": trials.samples[str(arm)] for arm, t in zip(arms, trial_dirs, strict=True)}
        selection = scoring.choose_stage(samples, list(trial_dirs), self.cfg.evaluation.benchmarks,
                                         self.cfg.evaluation.forgetting_tolerance,
                                         noun="trial", subject="trial")
        return selection if selection["candidates"] else None

    def report(self, scores: ArmScores, trained: dict[str, TrainingSummary], stages: list[Stage],
               index: dict, retrieval: dict, lengths: dict | None,
               synthesis: SynthesisSummary | None) -> tuple[dict, dict]:
        from tunearena.evaluation.report import summarise, write_reports, write_results
        from tunearena.rag.retrieve import retrieval_results
        from tunearena.training.gguf import conversion_record
        from tunearena.training.stages import training_results

        cfg, selection = self.cfg, scores.selection
        run: dict[str, Any] = {
            "name": cfg.name, "run_dir": str(self.run_dir), "base_model": cfg.model.base,
            "config_hash": self.manifest.data["config_hash"], "seed": cfg.seed,
            "code_version": code_version(), "python": platform.python_version(),
            "prompt_format": "chat_template" if self.chat_template else "plain"}
        # A GGUF base was converted by the input check: say which file, with its hash.
        if (source := conversion_record(cfg.model.base)) is not None:
            run["base_model_source"] = source.model_dump(mode="json")
        extra: dict[str, Any] = {
            "run": run,
            # In the order of the arms, not of their finishing.
            "latency": {arm: scores.latency[arm] for arm in cfg.evaluation.arms
                        if arm in scores.latency},
        }
        if trained:
            # "training" is the model the ft arms use: the selected stage, or the only one.
            extra |= training_results(trained, selection["selected"] if selection
                                      else stages[-1].name, [s.name for s in stages], selection,
                                      cfg.report.gpu_hour_cost_usd, bool(cfg.stages))
        if scores.probe:
            extra["probe"] = scores.probe
        if lengths is not None:
            extra["prompt_lengths"] = lengths
        if synthesis is not None and cfg.synthesis is not None:
            # The benchmarks that score the synthesised test file: the report counts the
            # questions the base answers there without a document.
            test_file = cfg.synthesis_dir / "qa_test.jsonl"
            extra["data"] = {
                **synthesis.model_dump(mode="json"),
                "n_choices": cfg.synthesis.n_choices,
                "benchmarks": [b.name for b in cfg.evaluation.benchmarks
                               if b.path is not None and b.path.resolve() == test_file]}
        if index:
            effect = scoring.retrieval_effect(scores.samples)
            extra["retrieval"] = retrieval_results(index, retrieval, effect)
        # Without evaluation there are no scores: the results hold training and retrieval only.
        benchmarks = cfg.evaluation.benchmarks if cfg.evaluation.enabled else []
        samples = {arm: scores.samples[arm] for arm in cfg.evaluation.arms
                   if arm in scores.samples}
        results = summarise(samples, benchmarks, cfg.evaluation, cfg.report, extra)
        write_results(self.run_dir, results)
        write_reports(self.run_dir, results)
        if cfg.evaluation.enabled:
            self.console.print(f"[bold]verdict: {results.decision.verdict}[/bold] — "
                               f"{results.decision.sentence}")
            for line in results.headline:
                self.console.print(f"• {line}")
        else:
            self.console.print("evaluation is disabled: no arm was scored, so there is no "
                               "verdict to give")
        return {"results": "results.json", "report": "report.md", "html": "report.html"}, {}
