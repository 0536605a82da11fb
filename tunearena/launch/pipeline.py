"""``tunearena run``: check inputs, train, index, retrieve, evaluate every arm, report.

Each step records itself in the run manifest; with ``resume`` a step whose outputs are
complete (same config hash, artifacts present) is reused instead of run again.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

import tunearena
from tunearena.evaluation.benchmarks import QAItem, load_qa
from tunearena.files import write_atomic
from tunearena.launch.config import ExperimentConfig, dump_config
from tunearena.launch.manifest import Manifest


class RunDirExists(RuntimeError):
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


def check_inputs(cfg: ExperimentConfig) -> dict[str, list[QAItem]]:
    """Read every input file once, before any cluster resource is claimed.

    A broken benchmark found after an hour of training would waste the hour; here it fails in
    seconds, naming the file and line. Returns the benchmarks' questions.
    """
    from tunearena.training.data import read_jsonl
    from tunearena.training.trainer import check_model_dir

    check_model_dir(cfg.model.base)
    if cfg.training.enabled:
        from tunearena.training.tracking import check_trackers_available

        for ds in cfg.training.datasets:
            read_jsonl(ds.path, ds.format)
        check_trackers_available(cfg.training.tracking)
    if cfg.rag.enabled and cfg.rag.corpus is not None:
        from tunearena.rag.corpus import load_documents

        load_documents(cfg.rag.corpus)
    return {b.name: load_qa(b.path) for b in cfg.evaluation.benchmarks}


def _json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _retrieval_effect(samples: dict) -> dict[str, dict]:
    """Per benchmark, the questions base answered right and base+rag wrong (retrieval hurt),
    and the reverse; empty unless both arms were scored."""
    if "base" not in samples or "base+rag" not in samples:
        return {}
    effect: dict[str, dict] = {}
    for name, base_rows in samples["base"].items():
        rag = {r["id"]: r["acc"] for r in samples["base+rag"].get(name, [])}
        hurt = [r["id"] for r in base_rows if r["acc"] and rag.get(r["id"]) == 0]
        helped = [r["id"] for r in base_rows if not r["acc"] and rag.get(r["id"]) == 1]
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
        self.manifest: Manifest | None = None

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
        self.benchmarks = check_inputs(cfg)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.run_dir / "config.yaml", dump_config(cfg))
        self.manifest = Manifest.open(
            self.run_dir, cfg.section_hash(*ExperimentConfig.model_fields), code_version()
        )
        arms = cfg.evaluation.arms
        rag_arms = [a for a in arms if a.endswith("+rag")]

        training = {}
        if cfg.training.enabled:
            training = self._step("train", cfg.section_hash("model", "training", "cluster"),
                                  self.train)
        retrieval: dict[str, Any] = {}
        if rag_arms:
            rag_hash = cfg.section_hash("rag")
            index = self._step("index", rag_hash, self.build_index)
            retrieval = self._step("retrieve", cfg.section_hash("rag", "evaluation"),
                                   self.retrieve)
            retrieval = {"index": index, **retrieval}
        samples, latency = {}, {}
        if cfg.evaluation.enabled:
            eval_hash = cfg.section_hash("model", "training", "cluster", "rag", "evaluation")
            tasks = self.write_tasks(with_rag=bool(rag_arms))
            for arm in arms:
                out = self._step(f"evaluate:{arm}", eval_hash,
                                 lambda arm=arm: self.evaluate(arm, tasks))
                samples[arm] = _read_json(self.run_dir / "eval" / f"{arm}.json")
                latency[arm] = out
        report_path = self.run_dir / "report.html"
        self._step("report", cfg.section_hash(*ExperimentConfig.model_fields),
                   lambda: self.report(samples, training, retrieval, latency))
        self.console.print(f"\nreport: [bold]{report_path}[/bold]")
        self.console.print(f"results: {self.run_dir / 'results.json'}")
        return report_path

    # -- steps ----------------------------------------------------------------------------

    def train(self) -> tuple[dict, dict]:
        from tunearena.cluster.ray_cluster import ray_session
        from tunearena.training import checkpoint
        from tunearena.training.trainer import prepare_data, run_stage

        cfg = self.cfg
        data = prepare_data(cfg.model.base, cfg.training)  # tokenise before claiming workers
        storage = cfg.cluster.storage_path or str(self.run_dir / "ray")
        # Named by the training config: --resume continues this stage's checkpoints only
        # while the stage is the same one.
        ray_name = f"{cfg.name}-ft-{cfg.section_hash('model', 'training', 'cluster')[:8]}"
        if not self.resume:
            checkpoint.clear(storage, ray_name)  # a fresh attempt never restores an old one
        out = self.run_dir / "models" / "ft"
        with ray_session(cfg.cluster):
            self.preflight(storage, len(data[0]))
            summary = run_stage(ray_name, cfg.model.base, self.training_config(), cfg.cluster,
                                out, storage, data=data)
        if summary.get("resumed_from_step"):
            self.console.print(f"resumed training from step {summary['resumed_from_step']}")
        return {"model": self._rel(out)}, summary

    def preflight(self, storage: str, n_train_sequences: int) -> None:
        """Check the run fits the cluster before training claims its workers.

        The cheap checks (batch arithmetic, resources, memory) go first; storage seen from
        every node and an all-reduce across the placed workers follow only when those pass.
        """
        from transformers import AutoConfig

        from tunearena.cluster.preflight import (
            PreflightError,
            check_collective,
            check_resources,
            check_storage,
            format_checks,
        )
        from tunearena.cluster.ray_cluster import resolve_use_gpu
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
        check_method(cfg.training, use_gpu)
        shape = AutoConfig.from_pretrained(cfg.model.base)
        total, trainable = parameter_counts(
            cfg.model.base, cfg.training.lora if cfg.training.method != "full" else None)
        estimate = estimate_memory_per_gpu(
            cfg.training, cluster.num_workers, uses_bf16(cfg.training, use_gpu), total, trainable,
            shape.hidden_size, shape.num_hidden_layers, shape.vocab_size)
        device_memory = gpu_memory_bytes() if use_gpu else None
        checks = [
            check_batch(cfg.training, cluster.num_workers, n_train_sequences),
            check_resources(cluster, use_gpu),
            check_memory(estimate,
                         int(device_memory * min(1.0, cluster.gpus_per_worker)) if device_memory else None,
                         "GPU" if use_gpu else "CPU"),
        ]
        if all(c.ok for c in checks):
            checks += [check_storage(storage), check_collective(cluster, use_gpu, storage)]
        self.console.print(format_checks(checks), highlight=False, markup=False, soft_wrap=True)
        if not all(c.ok for c in checks):
            raise PreflightError(checks)

    def training_config(self):
        """The training section with tracker locations made absolute (the workers' working
        directory is not ours): relative ones live in the run directory."""
        tracking = self.cfg.training.tracking
        updates: dict[str, Any] = {}
        if tracking.tensorboard_dir is not None and not tracking.tensorboard_dir.is_absolute():
            updates["tensorboard_dir"] = self.run_dir / tracking.tensorboard_dir
        uri = tracking.mlflow_tracking_uri
        if uri is not None and uri.startswith("file:") and not uri.startswith("file:/"):
            updates["mlflow_tracking_uri"] = f"file:{self.run_dir / uri[len('file:'):]}"
        return self.cfg.training.model_copy(
            update={"tracking": tracking.model_copy(update=updates)}
        )

    def build_index(self) -> tuple[dict, dict]:
        from tunearena.rag.index import build_index

        out = self.run_dir / "index"
        summary = build_index(self.cfg.rag, out)
        self.console.print(
            f"indexed {summary['n_chunks']} chunks of {summary['n_documents']} documents "
            f"({summary['index_factory']}, dim {summary['dim']})"
        )
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
            path = self.run_dir / "retrieval" / f"{name}.json"
            _json(path, {
                it.id: {"passages": [h.text for h in hs], "doc_ids": [h.doc_id for h in hs],
                        "scores": [h.score for h in hs]}
                for it, hs in zip(items, hits, strict=True)
            })
            artifacts[name] = self._rel(path)
            stats: dict[str, Any] = {"k": k, "search_ms_per_question": 1000 * search_s / len(items)}
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

    def write_tasks(self, with_rag: bool) -> dict[str, dict[bool, str]]:
        """Write each benchmark's lm-eval task once, and its RAG variant: every arm reads the
        same files, so arms differ only in weights and context. Returns name -> {rag: task}."""
        from tunearena.evaluation.tasks import write_mc_task

        task_dir = self.run_dir / "tasks"
        tasks: dict[str, dict[bool, str]] = {}
        for name, items in self.benchmarks.items():
            tasks[name] = {False: write_mc_task(task_dir, name, items)}
            if with_rag:
                retrieved = _read_json(self.run_dir / "retrieval" / f"{name}.json")
                passages = {qid: r["passages"] for qid, r in retrieved.items()}
                tasks[name][True] = write_mc_task(task_dir, name, items, passages)
        return tasks

    def evaluate(self, arm: str, all_tasks: dict[str, dict[bool, str]]) -> tuple[dict, dict]:
        from tunearena.evaluation.harness import score_model

        cfg = self.cfg
        model_dir = self.run_dir / "models" / "ft" if arm.startswith("ft") else Path(cfg.model.base)
        tasks = {name: variants[arm.endswith("+rag")] for name, variants in all_tasks.items()}
        t0 = time.perf_counter()
        scores = score_model(model_dir, self.run_dir / "tasks", list(tasks.values()), cfg.evaluation.batch_size,
                             cfg.evaluation.limit)
        score_s = time.perf_counter() - t0
        per_bench = {name: scores[task] for name, task in tasks.items()}
        n = sum(len(v) for v in per_bench.values())
        summary = "  ".join(
            f"{name} {sum(s['acc'] for s in v) / len(v):.1%}" for name, v in per_bench.items()
        )
        self.console.print(f"{arm}: {summary}")
        path = self.run_dir / "eval" / f"{arm}.json"
        _json(path, per_bench)
        return {"scores": self._rel(path)}, {"score_s": score_s, "ms_per_question": 1000 * score_s / n,
                                             "model": str(model_dir)}

    def report(self, samples: dict, training: dict, retrieval: dict, latency: dict) -> tuple[dict, dict]:
        from tunearena.evaluation.report import summarise, write_reports

        cfg = self.cfg
        extra: dict[str, Any] = {
            "run": {
                "name": cfg.name, "run_dir": str(self.run_dir), "base_model": cfg.model.base,
                "config_hash": self.manifest.data["config_hash"] if self.manifest else None,
                "code_version": code_version(), "python": platform.python_version(),
                "seed": cfg.seed,
            },
            "latency": latency,
        }
        if training:
            workers = training.get("world_size", cfg.cluster.num_workers)
            device_hours = training["train_s"] * workers / 3600
            step_s = sorted(training.get("step_time_s") or [0.0])
            extra["training"] = {k: v for k, v in training.items() if k != "step_time_s"} | {
                "median_step_s": step_s[len(step_s) // 2],
                "p90_step_s": step_s[min(len(step_s) - 1, int(0.9 * len(step_s)))],
            }
            extra["cost"] = {
                "device": "GPU" if training.get("use_gpu") else "CPU worker",
                "device_hours": device_hours,
                "usd": device_hours * cfg.report.gpu_hour_cost_usd,
                "usd_per_device_hour": cfg.report.gpu_hour_cost_usd,
            }
        if retrieval:
            effect = _retrieval_effect(samples)
            extra["retrieval"] = {key: value | effect.get(key, {}) if isinstance(value, dict)
                                  else value for key, value in retrieval.items()}
        results = summarise(samples, cfg.evaluation.benchmarks, cfg.evaluation, cfg.report, extra)
        _json(self.run_dir / "results.json", results)
        write_reports(self.run_dir, results)
        self.console.print(f"[bold]verdict: {results['decision']['verdict']}[/bold] — "
                           f"{results['decision']['sentence']}")
        for line in results["headline"]:
            self.console.print(f"• {line}")
        return {"results": "results.json", "report": "report.md", "html": "report.html"}, {}
