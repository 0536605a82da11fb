"""``tunearena run``: check inputs, train, index, retrieve, evaluate every arm, report.

Each step records itself in the run manifest; with ``resume`` a step whose outputs are
complete (same config hash, artifacts present) is reused instead of run again.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

import tunearena
from tunearena.errors import UserError
from tunearena.evaluation.arm import split_arm
from tunearena.evaluation.benchmarks import QAItem, load_qa
from tunearena.evaluation.report import metric_keys
from tunearena.files import write_atomic
from tunearena.launch.arms import ArmJob
from tunearena.launch.config import ExperimentConfig, dump_config
from tunearena.launch.manifest import Manifest
from tunearena.training.config import Stage, TrainingConfig


class RunDirExists(UserError, RuntimeError):
    """Refusing to overwrite an earlier run's results."""


def code_version() -> str:
    """The package version, plus the git commit when run from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{tunearena.__version__}+{commit}"
    except (OSError, subprocess.SubprocessError):
        return tunearena.__version__


def check_inputs(cfg: ExperimentConfig) -> tuple[dict[str, list[QAItem]], list]:
    """Read every input file once, before any cluster resource is claimed.

    A broken benchmark found after an hour of training would waste the hour; here it fails in
    seconds, naming the file and line. Named lm-eval tasks are resolved and their data loaded,
    so one that is unknown or unreachable is named now too. Returns the QA benchmarks'
    questions and the few-shot examples (empty unless a ``+fewshot`` arm is scored).
    """
    from tunearena.training.data import read_jsonl
    from tunearena.training.trainer import check_model_dir

    check_model_dir(cfg.model.base)
    for stage in cfg.resolved_stages():
        from tunearena.training.tracking import check_trackers_available

        replayed = stage.replay.datasets if stage.replay else []
        for ds in [*stage.training.datasets, *replayed]:
            read_jsonl(ds.path, ds.format, allow_empty=True)
            if ds.validation_path is not None:
                read_jsonl(ds.validation_path, ds.format, allow_empty=True)
        check_trackers_available(stage.training.tracking)
    if cfg.rag.enabled and cfg.rag.corpus is not None:
        from tunearena.rag.corpus import load_documents

        load_documents(cfg.rag.corpus)
    questions = {b.name: load_qa(b.path, b.track) for b in cfg.evaluation.benchmarks
                 if b.path is not None}
    external = [b for b in cfg.evaluation.benchmarks if b.lm_eval_task is not None]
    if external and cfg.evaluation.enabled:
        from tunearena.evaluation.harness import check_lm_eval_task

        for b in external:
            check_lm_eval_task(b.lm_eval_task, [b.task_dir] if b.task_dir else [],
                               include_defaults=b.task_dir is None)
    examples: list = []
    if any(a.endswith("+fewshot") for a in cfg.evaluation.arms) and cfg.evaluation.enabled:
        from tunearena.evaluation.fewshot import draw_examples, load_pool

        fewshot = cfg.evaluation.fewshot
        assert fewshot.path is not None  # the config refuses +fewshot arms without it
        asked = {q.question for items in questions.values() for q in items}
        examples = draw_examples(load_pool(fewshot.path), fewshot.k, cfg.seed, asked)
    return questions, examples


def _json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _primary_mean(rows: list[dict]) -> float:
    """A benchmark's primary score: accuracy, exact match when generative, or bits per byte
    for language modelling."""
    if "loglikelihood" in rows[0]:
        return -sum(r["loglikelihood"] for r in rows) / math.log(2) / sum(r["bytes"] for r in rows)
    key = metric_keys(rows)[0]
    return sum(r[key] for r in rows) / len(rows)


def _stop_ids(model_dir: str) -> set[int]:
    """The token ids generation stops on, from the model's ``generation_config.json``."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's EOS alone
        return set()
    return set(eos) if isinstance(eos, list) else set() if eos is None else {eos}


def _is_accuracy(rows: list[dict]) -> bool:
    return "acc" in rows[0] or "exact_match" in rows[0]


def _retrieval_effect(samples: dict) -> dict[str, dict]:
    """Per benchmark, the questions base answered right and base+rag wrong (retrieval hurt),
    and the reverse; empty unless both arms were scored."""
    if "base" not in samples or "base+rag" not in samples:
        return {}
    effect: dict[str, dict] = {}
    for name, base_rows in samples["base"].items():
        if not _is_accuracy(base_rows):
            continue
        key = metric_keys(base_rows)[0]
        rag = {r["id"]: r[key] for r in samples["base+rag"].get(name, [])}
        hurt = [r["id"] for r in base_rows if r[key] and rag.get(r["id"]) == 0]
        helped = [r["id"] for r in base_rows if not r[key] and rag.get(r["id"]) == 1]
        effect[name] = {"hurt_questions": len(hurt), "helped_questions": len(helped),
                        "hurt_ids": hurt[:20]}
    return effect


class Pipeline:
    """The steps of one run, sharing its config, run directory, manifest and console."""

    def __init__(self, cfg: ExperimentConfig, console: Console, resume: bool = False):
        self.cfg = cfg
        self.console = console
        self.resume = resume
        self.run_dir = (cfg.runs_dir / cfg.name).resolve()
        self.benchmarks: dict[str, list[QAItem]] = {}
        self.examples: list[tuple[str, str]] = []
        self.prompt_tokens: dict[str, dict[str, float]] = {}  # benchmark -> context -> mean
        self.manifest: Manifest | None = None
        self._ray_started = self._preflown = False

    # -- bookkeeping --------------------------------------------------------------------

    def _step(self, name: str, step_hash: str, fn: Callable[[], tuple[dict, dict]]) -> dict:
        """Run ``fn`` (returning artifacts, outputs) as manifest step ``name``, or reuse it."""
        assert self.manifest is not None
        if self.resume and self.manifest.is_done(name, step_hash):
            self.manifest.mark_reused(name)
            self.console.print(f"[dim]= {name}: reused from the previous attempt[/dim]")
            return self.manifest.outputs(name)
        self.console.rule(f"[bold]{name}")
        self.manifest.start(name, step_hash)
        t0 = time.perf_counter()
        try:
            artifacts, outputs = fn()
        except BaseException as e:
            self.manifest.fail(name, f"{type(e).__name__}: {e}")
            raise
        duration = time.perf_counter() - t0
        self.manifest.finish(name, artifacts, outputs, duration)
        self.console.print(f"[green]✓ {name}[/green] in {duration:.1f} s")
        return outputs

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.run_dir))

    # -- the run ------------------------------------------------------------------------

    def run(self) -> Path:
        """Run every step; returns the path of the HTML report (report.md lies beside it)."""
        cfg = self.cfg
        if (self.run_dir / "manifest.json").exists() and not self.resume:
            raise RunDirExists(
                f"{self.run_dir} already holds a run; pass --resume to continue it, or choose "
                f"another name (--set name=...) to keep both"
            )
        self.console.print(f"checking inputs for run [bold]{cfg.name}[/bold]")
        self.benchmarks, self.examples = check_inputs(cfg)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.run_dir / "config.yaml", dump_config(cfg))
        self.manifest = Manifest.open(
            self.run_dir, cfg.section_hash(*ExperimentConfig.model_fields), code_version()
        )
        arms = cfg.evaluation.arms
        rag_arms = [a for a in arms if split_arm(a)[1] == "rag"]
        stages = cfg.resolved_stages()

        trained: dict[str, dict] = {}
        samples: dict[str, dict] = {}
        latency: dict[str, dict] = {}
        selection = None
        retrieval: dict[str, Any] = {}
        # One Ray session, started when a step first needs it, serves training and scoring.
        with ExitStack() as cluster:
            if stages:
                # A run without stages has one, named ft; its steps keep their plain names.
                def step(kind: str, stage: Stage) -> str:
                    return f"{kind}:{stage.name}" if cfg.stages else kind

                prepared = {stage.name: self._step(step("prepare", stage),
                                                   self._prepare_hash(stage),
                                                   lambda stage=stage: self.prepare(stage))
                            for stage in stages}
                for stage in stages:
                    trained[stage.name] = self._step(
                        step("train", stage), self._stage_hash(stage, stages),
                        lambda stage=stage: self.train(stage, stages, prepared, cluster))
            if rag_arms:
                rag_hash = cfg.section_hash("rag")
                index = self._step("index", rag_hash, lambda: self.build_index(cluster))
                # Retrieval reads the questions, not how they are scored or summarised.
                questions = json.dumps([cfg.rag.model_dump(mode="json"), [
                    b.model_dump(mode="json") for b in cfg.evaluation.benchmarks],
                    cfg.evaluation.latency_questions], sort_keys=True)
                retrieval = self._step("retrieve",
                                       hashlib.sha256(questions.encode()).hexdigest()[:16],
                                       self.retrieve)
                retrieval = {"index": index, **retrieval}
            if cfg.evaluation.enabled:
                tasks = self.write_tasks(with_rag=bool(rag_arms))
                # Every arm whose model exists now is scored side by side; the selected
                # stage is known only once every stage is scored, so "ft" arms go last.
                first = [a for a in arms if split_arm(a)[0] != "ft"]
                self.evaluate_arms(first, tasks, samples, latency, cluster)
                selected = stages[-1].name if stages else None
                if cfg.stages:
                    selection = self.select(samples, stages)
                    selected = selection["selected"]
                later = []
                for arm in [a for a in arms if split_arm(a)[0] == "ft"]:
                    same = arm.replace("ft", f"ft@{selected}", 1)
                    if same in samples:
                        # The same model as its stage's arm: its scores, not a second scoring.
                        samples[arm], latency[arm] = samples[same], latency[same]
                    else:
                        later.append(arm)
                self.evaluate_arms(later, tasks, samples, latency, cluster, selected)
        report_path = self.run_dir / "report.html"
        self._step("report", cfg.section_hash(*ExperimentConfig.model_fields),
                   lambda: self.report(samples, trained, stages, selection, retrieval, latency))
        self.console.print(f"\nreport: [bold]{report_path}[/bold]")
        self.console.print(f"results: {self.run_dir / 'results.json'}")
        return report_path

    def _scoring_hash(self, model_dir: Path) -> str:
        """What an arm's scores depend on: everything that made its model and its prompts,
        and the model it scores (which stage ``ft`` is); not the statistics settings."""
        dumped = self.cfg.model_dump(mode="json")
        evaluation = {k: v for k, v in dumped["evaluation"].items() if k not in (
            "arms", "bootstrap_samples", "confidence", "forgetting_tolerance")}
        blob = json.dumps({**{s: dumped[s] for s in ("model", "training", "stages", "cluster",
                                                     "rag")},
                           "evaluation": evaluation, "model_dir": str(model_dir)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def model_dir(self, stage: str) -> Path:
        """Where a stage's exported (merged) model lives."""
        return self.run_dir / "models" / stage

    def _prepare_hash(self, stage: Stage) -> str:
        """What a stage's prepared data depends on: its files, their cleaning and split, and
        the benchmark questions they are checked against."""
        t = stage.training
        blob = json.dumps({
            "datasets": [d.model_dump(mode="json") for d in t.datasets],
            "replay": [d.model_dump(mode="json") for d in (stage.replay.datasets
                                                           if stage.replay else [])],
            "data_prep": t.data_prep.model_dump(mode="json"),
            "split": [t.validation_fraction, t.seed],
            "benchmarks": [b.model_dump(mode="json") for b in self.cfg.evaluation.benchmarks],
        }, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _stage_hash(self, stage: Stage, stages: list[Stage]) -> str:
        """What a stage's model depends on: its own settings, its prepared data and that of
        the stages it replays, the cluster, and (through its predecessor's hash) every stage
        before it; not the stages after it or beside it."""
        from tunearena.training.config import ancestors

        parent = next((s for s in stages if s.name == stage.start_from), None)
        sources = []
        if stage.replay is not None:
            sources = (ancestors(stages, stage.name) if stage.replay.stages == "earlier"
                       else stage.replay.stages)
        by_name = {s.name: s for s in stages}
        blob = json.dumps({
            "model": self.cfg.model.model_dump(mode="json"),
            "cluster": self.cfg.cluster.model_dump(mode="json"),
            "training": stage.training.model_dump(mode="json"),
            "lora_init": stage.lora_init,
            "replay": stage.replay.model_dump(mode="json") if stage.replay else None,
            "data": [self._prepare_hash(by_name[n]) for n in [stage.name, *sources]],
            "parent": self._stage_hash(parent, stages) if parent else None,
        }, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def select(self, samples: dict, stages: list[Stage]) -> dict:
        """Choose the stage the ``ft`` arms use: the largest domain gain within the
        forgetting tolerance; a loud warning when every stage forgets beyond it."""
        from tunearena.evaluation.selection import select_stage

        def acc(arm: str) -> dict[str, float]:
            # Bits per byte is no accuracy: it is reported, not chosen by.
            return {b: _primary_mean(rows) for b, rows in samples[arm].items()
                    if _is_accuracy(rows)}

        scored = acc("base")
        kinds = {b.name: b.kind for b in self.cfg.evaluation.benchmarks if b.name in scored}
        if "domain" not in kinds.values():
            last = stages[-1].name
            return {"selected": last, "tolerance": self.cfg.evaluation.forgetting_tolerance,
                    "rule": f"the last stage, {last}: no domain benchmark to choose by",
                    "candidates": [], "warning": None}
        selection = select_stage({s.name: acc(f"ft@{s.name}") for s in stages}, acc("base"),
                                 kinds, self.cfg.evaluation.forgetting_tolerance)
        self.console.print(escape(selection["rule"]))  # "ft is stage <name>: <why>"
        if selection.get("warning"):
            self.console.print(f"[bold red]WARNING: {escape(selection['warning'])}[/bold red]")
        return selection

    # -- steps ----------------------------------------------------------------------------

    def prepare(self, stage: Stage) -> tuple[dict, dict]:
        """Clean, de-duplicate, leak-check and split a stage's files (and replayed ones) into
        ``data/<stage>/``; returns the counts per task."""
        from tunearena.training.prepare import prepare_dataset, write_prepared

        questions = {name: [q.question for q in items] for name, items in self.benchmarks.items()}
        t = stage.training
        replayed = stage.replay.datasets if stage.replay else []
        artifacts, reports = {}, {}
        for ds, sub in [(d, "") for d in t.datasets] + [(d, "replay") for d in replayed]:
            prepared = prepare_dataset(ds, t.data_prep, t.validation_fraction, t.seed, questions)
            files = write_prepared(prepared, self.run_dir / "data" / stage.name / sub)
            task = f"replay:{ds.task}" if sub else ds.task
            reports[task] = prepared.report
            artifacts.update({f"{task} {split}": self._rel(Path(f)) for split, f in files.items()})
            self._print_prep(stage.name, task, prepared.report)
        return artifacts, reports

    def _print_prep(self, stage: str, task: str, r: dict) -> None:
        dropped = {k: r[k] for k in ("empty_or_garbled", "exact_duplicates", "near_duplicates",
                                     "leaked") if r.get(k)}
        self.console.print(
            f"{stage}/{task}: {r['read']} records, kept {r['kept']} (train {r['train']}, "
            f"validation {r['validation']}, test {r['test']})"
            + ("; dropped " + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in dropped.items())
               if dropped else ""), highlight=False)
        if r.get("leaked"):
            verb = "dropped" if r.get("leak_action") == "drop" else "KEPT"
            self.console.print(f"[bold yellow]{stage}/{task}: {r['leaked']} records contain "
                               f"benchmark questions ({verb})[/bold yellow]")

    def _stage_tasks(self, stage: Stage, stages: list[Stage]) -> tuple[list, float]:
        """The stage's tasks as prepared records: its own, then replayed ones; and the
        replay fraction."""
        from tunearena.files import iter_jsonl
        from tunearena.training.config import ancestors
        from tunearena.training.data import TaskRecords

        def read(stage_name: str, sub: str, task: str, split: str) -> list[dict]:
            path = self.run_dir / "data" / stage_name / sub / f"{task}.{split}.jsonl"
            return [r for _, r in iter_jsonl(path, ValueError, "prepared data")]

        def records(stage_name: str, sub: str, ds) -> TaskRecords:
            return TaskRecords(ds.task, ds.format, read(stage_name, sub, ds.task, "train"),
                               read(stage_name, sub, ds.task, "validation"))

        tasks = [records(stage.name, "", ds) for ds in stage.training.datasets]
        if stage.replay is None:
            return tasks, 0.0
        by_name = {s.name: s for s in stages}
        sources = (ancestors(stages, stage.name) if stage.replay.stages == "earlier"
                   else stage.replay.stages)
        for source in sources:
            own = [records(source, "", ds) for ds in by_name[source].training.datasets]
            # An earlier stage's tasks keep their own format; each is replayed as one task.
            tasks += [TaskRecords(f"replay:{source}/{t.name}", t.format, t.train, t.validation)
                      for t in own]
        tasks += [TaskRecords(f"replay:{ds.task}", ds.format,
                              read(stage.name, "replay", ds.task, "train"),
                              read(stage.name, "replay", ds.task, "validation"))
                  for ds in stage.replay.datasets]
        return tasks, stage.replay.fraction

    def stage_origin(self, stage: Stage, stages: list[Stage]) -> tuple[str, Path | None]:
        """(model dir the stage loads, adapter it continues or None)."""
        if stage.start_from == "base":
            return self.cfg.model.base, None
        parent = next(s for s in stages if s.name == stage.start_from)
        if stage.lora_init == "continue" and stage.training.method != "full":
            from tunearena.training.export import ADAPTER_DIR

            base, _ = self.stage_origin(parent, stages)
            return base, self.model_dir(parent.name) / ADAPTER_DIR
        return str(self.model_dir(parent.name)), None

    def train(self, stage: Stage, stages: list[Stage], prepared: dict,
              cluster: ExitStack) -> tuple[dict, dict]:
        from transformers import AutoTokenizer

        from tunearena.training import checkpoint
        from tunearena.training.data import tokenize_tasks
        from tunearena.training.trainer import run_stage, stage_mixture

        cfg = self.cfg
        model_dir, init_adapter = self.stage_origin(stage, stages)
        training = self.training_config(stage.training)
        # Tokenised here, before any worker is claimed, so a bad record fails in seconds.
        tasks, replay_fraction = self._stage_tasks(stage, stages)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        data = tokenize_tasks(tasks, tokenizer, training.seq_len, training.packing)
        mixture = stage_mixture(training, data[0], [t.name for t in tasks], replay_fraction)
        storage = cfg.cluster.storage_path or str(self.run_dir / "ray")
        # Named by the stage's inputs: --resume continues this stage's checkpoints only while
        # the stage is the same one.
        ray_name = f"{cfg.name}-{stage.name}-{self._stage_hash(stage, stages)[:8]}"
        if not self.resume:
            checkpoint.clear(storage, ray_name)  # a fresh attempt never restores an old one
        out = self.model_dir(stage.name)
        self._ensure_ray(cluster)
        self.preflight(training, storage, mixture.epoch_size, first=not self._preflown,
                       tokenizer=tokenizer)
        self._preflown = True
        summary = run_stage(ray_name, model_dir, training, cfg.cluster, out, storage, data=data,
                            mixture=mixture, init_adapter=init_adapter)
        if summary.get("resumed_from_step"):
            self.console.print(f"resumed training from step {summary['resumed_from_step']}")
        summary |= {"start_from": stage.start_from, "lora_init": stage.lora_init
                    if stage.training.method != "full" else None,
                    "replay": {"fraction": stage.replay.fraction,
                               "sources": [t.name.removeprefix("replay:") for t in tasks
                                           if t.name.startswith("replay:")]}
                    if stage.replay else None,
                    "data": prepared.get(stage.name, {})}
        return {"model": self._rel(out)}, summary

    def preflight(self, training: TrainingConfig, storage: str, n_train_sequences: int,
                  first: bool = True, tokenizer: Any = None) -> None:
        """Check a stage fits the cluster before training claims its workers: print every
        check (``preflight_checks``) and raise ``PreflightError`` when one failed."""
        from tunearena.cluster.preflight import PreflightError, format_checks

        checks = self.preflight_checks(training, storage, n_train_sequences, first, tokenizer)
        self.console.print(format_checks(checks), highlight=False, markup=False, soft_wrap=True)
        if not all(c.ok for c in checks):
            raise PreflightError(checks)

    def preflight_checks(self, training: TrainingConfig, storage: str, n_train_sequences: int,
                         first: bool = True, tokenizer: Any = None) -> list:
        """The preflight checks of one stage, each a pass or a fail with its fix.

        The cheap checks (batch arithmetic, resources, memory, and with ``tokenizer`` the EOS
        and chat-template round trip) go first; storage seen from every node and an
        all-reduce across the placed workers follow only when those pass, and only before
        the first stage (the cluster does not change between stages).
        """
        from transformers import AutoConfig

        from tunearena.cluster.preflight import check_collective, check_resources, check_storage
        from tunearena.cluster.ray_cluster import resolve_use_gpu
        from tunearena.training.data import check_tokenizer
        from tunearena.training.memory import (
            check_batch,
            check_memory,
            estimate_memory_per_gpu,
            gpu_memory_bytes,
            parameter_counts,
        )
        from tunearena.training.trainer import check_method, uses_bf16

        cfg, cluster = self.cfg, self.cfg.cluster
        use_gpu = resolve_use_gpu(cluster)
        check_method(training, use_gpu)
        shape = AutoConfig.from_pretrained(cfg.model.base)
        total, trainable = parameter_counts(
            cfg.model.base, training.lora if training.method != "full" else None)
        estimate = estimate_memory_per_gpu(
            training, cluster.num_workers, uses_bf16(training, use_gpu), total, trainable,
            shape.hidden_size, shape.num_hidden_layers, shape.vocab_size)
        device_memory = gpu_memory_bytes() if use_gpu else None
        checks = [
            check_batch(training, cluster.num_workers, n_train_sequences),
            check_resources(cluster, use_gpu),
            check_memory(estimate,
                         int(device_memory * min(1.0, cluster.gpus_per_worker)) if device_memory else None,
                         "GPU" if use_gpu else "CPU"),
        ]
        if tokenizer is not None:
            checks.append(check_tokenizer(tokenizer, {d.format for d in training.datasets},
                                          _stop_ids(cfg.model.base)))
        if all(c.ok for c in checks) and first:
            checks += [check_storage(storage), check_collective(cluster, use_gpu, storage)]
        return checks

    def training_config(self, training: TrainingConfig) -> TrainingConfig:
        """A stage's training config with tracker locations made absolute (the workers'
        working directory is not ours): relative ones live in the run directory."""
        tracking = training.tracking
        updates: dict[str, Any] = {}
        if tracking.tensorboard_dir is not None and not tracking.tensorboard_dir.is_absolute():
            updates["tensorboard_dir"] = self.run_dir / tracking.tensorboard_dir
        uri = tracking.mlflow_tracking_uri
        if uri is not None and uri.startswith("file:") and not uri.startswith("file:/"):
            updates["mlflow_tracking_uri"] = f"file:{self.run_dir / uri[len('file:'):]}"
        return training.model_copy(update={"tracking": tracking.model_copy(update=updates)})

    def build_index(self, cluster: ExitStack) -> tuple[dict, dict]:
        from tunearena.rag.index import build_index

        cfg = self.cfg
        # A large corpus is embedded as a Ray Data job: on a cluster, join it first, so the
        # job spreads over its nodes rather than over a Ray started on this machine alone.
        if cfg.rag.embed_with_ray_data == "always" or (
                cfg.rag.embed_with_ray_data == "auto" and cfg.cluster.address != "local"):
            self._ensure_ray(cluster)
        out = self.run_dir / "index"
        summary = build_index(cfg.rag, out)
        self.console.print(
            f"indexed {summary['n_chunks']} chunks of {summary['n_documents']} documents "
            f"({summary['index_factory']}, dim {summary['dim']}), embedded "
            + ("as a Ray Data job" if summary.get("embedded_with") == "ray_data"
               else "in process")
            + (f" at {summary['embed_texts_per_s']:.0f} texts/s"
               if summary.get("embed_texts_per_s") else ""))
        return {"index": self._rel(out)}, summary

    def retrieve(self) -> tuple[dict, dict]:
        """Retrieve once per question; every RAG arm reads the same passages.

        The search goes to the sweep's largest k once; the top ``rag.top_k`` become the
        passages, and the gold document's recall is reported for every k of the sweep.
        """
        from tunearena.rag.index import RagIndex, gold_recall_curve

        k = self.cfg.rag.top_k
        sweep = sorted({1, 2, 3, 5, 10, k})
        index = RagIndex.load(self.run_dir / "index")
        artifacts, outputs = {}, {}
        for name, items in self.benchmarks.items():
            t0 = time.perf_counter()
            found = index.search([it.question for it in items], max(sweep))
            search_s = time.perf_counter() - t0
            hits = [h[:k] for h in found]
            # What a user waits for: one question embedded and searched alone.
            search_ms = []
            for it in items[:self.cfg.evaluation.latency_questions]:
                t0 = time.perf_counter()
                index.search([it.question], k)
                search_ms.append(1000 * (time.perf_counter() - t0))
            path = self.run_dir / "retrieval" / f"{name}.json"
            _json(path, {
                it.id: {"passages": [h.text for h in hs], "doc_ids": [h.doc_id for h in hs],
                        "scores": [h.score for h in hs]}
                for it, hs in zip(items, hits, strict=True)
            })
            artifacts[name] = self._rel(path)
            stats: dict[str, Any] = {"k": k, "search_ms_per_question": 1000 * search_s / len(items),
                                     "search_ms": search_ms}
            gold = [it.doc_id for it in items]
            if all(g is not None for g in gold):
                curve = gold_recall_curve(found, gold, sweep)
                stats["recall_at_k"] = curve[k]
                stats["recall_curve"] = {str(kk): r for kk, r in curve.items()}
                self.console.print(f"{name}: gold passage in the top {k} for "
                                   f"{stats['recall_at_k']:.1%} of questions ("
                                   + ", ".join(f"top {kk} {r:.0%}" for kk, r in curve.items())
                                   + ")")
            outputs[name] = stats
        return artifacts, outputs

    def write_tasks(self, with_rag: bool) -> dict[str, dict[str, str]]:
        """Write each QA benchmark's lm-eval task once, and its variant with retrieved
        passages and with few-shot examples when arms use them: every arm reads the same
        files, so arms differ only in weights and context. Returns, per benchmark, the task
        of each context (``""``, ``"rag"``, ``"fewshot"``); a named lm-eval task is the same
        in every context. Also counts the prompts' tokens (``self.prompt_tokens``)."""
        from transformers import AutoTokenizer

        from tunearena.evaluation.tasks import write_generative_task, write_mc_task

        contexts = {split_arm(a)[1] for a in self.cfg.evaluation.arms} | {""}
        task_dir = self.run_dir / "tasks"
        tokenizer = AutoTokenizer.from_pretrained(self.cfg.model.base)
        tasks: dict[str, dict[str, str]] = {}
        self.prompt_tokens = {}
        for bench in self.cfg.evaluation.benchmarks:
            if bench.lm_eval_task is not None:
                tasks[bench.name] = dict.fromkeys(contexts, bench.lm_eval_task)
                continue
            items = self.benchmarks[bench.name]
            write = write_generative_task if bench.track == "generative" else write_mc_task
            variants = {"": write(task_dir, bench.name, items)}
            if with_rag and "rag" in contexts:
                retrieved = _read_json(self.run_dir / "retrieval" / f"{bench.name}.json")
                passages = {qid: r["passages"] for qid, r in retrieved.items()}
                variants["rag"] = write(task_dir, bench.name, items, passages)
            if "fewshot" in contexts:
                variants["fewshot"] = write(task_dir, bench.name, items, examples=self.examples)
            tasks[bench.name] = variants
            self.prompt_tokens[bench.name] = {
                context: statistics.fmean(len(tokenizer(row["prompt"])["input_ids"])
                                          for row in self._task_rows(task))
                for context, task in variants.items()}
        return tasks

    def _task_rows(self, task: str) -> list[dict]:
        from tunearena.files import iter_jsonl

        path = self.run_dir / "tasks" / f"{task}.jsonl"
        return [row for _, row in iter_jsonl(path, ValueError, "task file")]

    def _ensure_ray(self, cluster: ExitStack) -> None:
        from tunearena.cluster.ray_cluster import ray_session

        if not self._ray_started:
            cluster.enter_context(ray_session(self.cfg.cluster))
            self._ray_started = True

    def evaluate_arms(self, arms: list[str], tasks: dict[str, dict[str, str]], samples: dict,
                      latency: dict, cluster: ExitStack, selected: str | None = None) -> None:
        """Score ``arms`` side by side, one Ray task each (one GPU each on a GPU cluster);
        an arm done in an earlier attempt is reused. Fills ``samples`` and ``latency``."""
        from tunearena.cluster.ray_cluster import resolve_use_gpu
        from tunearena.launch.arms import Scoring, run_arms

        assert self.manifest is not None
        cfg, manifest = self.cfg, self.manifest
        jobs = []
        for arm in arms:
            model, context = split_arm(arm)
            model_dir = (Path(cfg.model.base) if model == "base"
                         else self.model_dir(selected if model == "ft" else model[3:]))
            step, step_hash = f"evaluate:{arm}", self._scoring_hash(model_dir)
            if self.resume and manifest.is_done(step, step_hash):
                manifest.mark_reused(step)
                self.console.print(f"[dim]= {step}: reused from the previous attempt[/dim]")
                samples[arm] = _read_json(self.run_dir / "eval" / f"{arm}.json")
                latency[arm] = manifest.outputs(step)
                continue
            timed = {name: [{"prompt": r["prompt"], "choices": r.get("choices")}
                            for r in self._task_rows(variants[context])
                            ][:cfg.evaluation.latency_questions]
                     for name, variants in tasks.items() if name in self.benchmarks}
            job = ArmJob(arm, str(model_dir), {n: v[context] for n, v in tasks.items()}, timed)
            jobs.append((job, step_hash))
        if not jobs:
            return
        self._ensure_ray(cluster)
        use_gpu = resolve_use_gpu(cfg.cluster)
        self.console.rule(f"[bold]evaluate: {', '.join(j.arm for j, _ in jobs)}")
        self.console.print(f"{len(jobs)} arm(s) as Ray tasks, "
                           + ("one GPU each" if use_gpu else
                              f"{cfg.cluster.cpus_per_worker} CPU(s) each"))
        for job, step_hash in jobs:
            manifest.start(f"evaluate:{job.arm}", step_hash)
        retrieval_ms = self._retrieval_ms()

        def done(job: ArmJob, result: dict) -> None:
            path = self.run_dir / "eval" / f"{job.arm}.json"
            _json(path, result["samples"])
            outputs = self._arm_latency(job, result, retrieval_ms)
            manifest.finish(f"evaluate:{job.arm}", {"scores": self._rel(path)}, outputs,
                            result["score_s"])
            samples[job.arm], latency[job.arm] = result["samples"], outputs
            summary = "  ".join(f"{name} {_primary_mean(rows):.1%}" if _is_accuracy(rows)
                                else f"{name} {_primary_mean(rows):.3f} bits/byte"
                                for name, rows in result["samples"].items())
            self.console.print(f"[green]✓ evaluate:{job.arm}[/green] in "
                               f"{result['score_s']:.1f} s: {summary}")

        def failed(job: ArmJob, error: BaseException) -> None:
            manifest.fail(f"evaluate:{job.arm}", f"{type(error).__name__}: {error}")
            self.console.print(f"[bold red]✗ evaluate:{job.arm}: {escape(str(error))}[/bold red]")

        scoring = Scoring(
            task_dir=str(self.run_dir / "tasks"), batch_size=cfg.evaluation.batch_size,
            limit=cfg.evaluation.limit,
            extra_task_paths=tuple(str(b.task_dir) for b in cfg.evaluation.benchmarks
                                   if b.task_dir is not None),
            include_defaults=any(b.lm_eval_task and b.task_dir is None
                                 for b in cfg.evaluation.benchmarks))
        run_arms([j for j, _ in jobs], scoring, use_gpu, cfg.cluster.cpus_per_worker,
                 done, failed)

    def _retrieval_ms(self) -> dict[str, list[float]]:
        """Per benchmark, the single-question search times the retrieve step measured."""
        if self.manifest is None or "retrieve" not in self.manifest.data.get("steps", {}):
            return {}
        return {name: out.get("search_ms", []) for name, out in
                self.manifest.outputs("retrieve").items() if isinstance(out, dict)}

    def _arm_latency(self, job: ArmJob, result: dict, retrieval_ms: dict) -> dict[str, Any]:
        """An arm's timing: scoring wall time, then one-question latency p50/p95 (retrieval
        included for a RAG arm) and its prompt length against the plain prompt's."""
        from tunearena.evaluation.latency import percentiles

        context = split_arm(job.arm)[1]
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
        tokens = [(v.get(context), v.get("")) for v in self.prompt_tokens.values()]
        if tokens and all(t is not None for t, _ in tokens):
            out["prompt_tokens"] = statistics.fmean(t for t, _ in tokens)
            if context:
                out["prompt_tokens_added"] = statistics.fmean(t - p for t, p in tokens)
        return out

    def report(self, samples: dict, trained: dict[str, dict], stages: list[Stage],
               selection: dict | None, retrieval: dict, latency: dict) -> tuple[dict, dict]:
        from tunearena.evaluation.report import summarise, write_reports

        cfg = self.cfg
        extra: dict[str, Any] = {
            "run": {
                "name": cfg.name, "run_dir": str(self.run_dir), "base_model": cfg.model.base,
                "config_hash": self.manifest.data["config_hash"] if self.manifest else None,
                "code_version": code_version(), "python": platform.python_version(),
                "seed": cfg.seed,
            },
            # In the order of the arms, not of their finishing.
            "latency": {arm: latency[arm] for arm in cfg.evaluation.arms if arm in latency},
        }
        if trained:
            # "training" is the model the ft arms use: the selected stage, or the only one.
            chosen = selection["selected"] if selection else stages[-1].name
            training = trained[chosen]
            step_s = sorted(training.get("step_time_s") or [0.0])
            extra["training"] = {k: v for k, v in training.items()
                                 if k not in ("step_time_s", "data")} | {
                "stage": chosen,
                "median_step_s": step_s[len(step_s) // 2],
                "p90_step_s": step_s[min(len(step_s) - 1, int(0.9 * len(step_s)))],
            }
            rate = cfg.report.gpu_hour_cost_usd
            hours = {name: t["train_s"] * t.get("world_size", cfg.cluster.num_workers) / 3600
                     for name, t in trained.items()}
            extra["cost"] = {
                "device": "GPU" if training.get("use_gpu") else "CPU worker",
                "device_hours": sum(hours.values()),
                "usd": sum(hours.values()) * rate,
                "usd_per_device_hour": rate,
            }
            if cfg.stages:
                extra["cost"]["per_stage"] = {name: {"device_hours": h, "usd": h * rate}
                                              for name, h in hours.items()}
                keep = ("start_from", "method", "lora_init", "steps", "planned_steps",
                        "stopped_early_at", "train_s", "final_train_loss", "final_val_loss",
                        "val_loss_by_task", "mix", "replay", "data", "history", "export_check")
                extra["stages"] = {
                    "order": [s.name for s in stages],
                    "selection": selection,
                    "stages": {name: {k: t.get(k) for k in keep} for name, t in trained.items()},
                }
        if retrieval:
            effect = _retrieval_effect(samples)
            # The single-question search times went into each RAG arm's latency.
            extra["retrieval"] = {
                key: {k: v for k, v in value.items() if k != "search_ms"} | effect.get(key, {})
                if isinstance(value, dict) else value for key, value in retrieval.items()}
        # Without evaluation there are no scores: the results hold training and retrieval only.
        benchmarks = cfg.evaluation.benchmarks if cfg.evaluation.enabled else []
        samples = {arm: samples[arm] for arm in cfg.evaluation.arms if arm in samples}
        results = summarise(samples, benchmarks, cfg.evaluation, cfg.report, extra)
        _json(self.run_dir / "results.json", results)
        write_reports(self.run_dir, results)
        if cfg.evaluation.enabled:
            self.console.print(f"[bold]verdict: {results['decision']['verdict']}[/bold] — "
                               f"{results['decision']['sentence']}")
            for line in results["headline"]:
                self.console.print(f"• {line}")
        else:
            self.console.print("evaluation is disabled: no arm was scored, so there is no "
                               "verdict to give")
        return {"results": "results.json", "report": "report.md", "html": "report.html"}, {}
