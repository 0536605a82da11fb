"""Cache keys: what each step's output depends on, as a short hash of the config.

A step whose key is unchanged (and whose artifacts exist) is reused by ``--resume``; each key
names exactly the settings that step reads, so changing a statistics setting rescores nothing
and changing a later stage retrains none before it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import tunearena
from tunearena.documents.config import OUTPUTS
from tunearena.launch.config import ExperimentConfig
from tunearena.training.config import Stage, ancestors


def digest(data: Any) -> str:
    """A 16-hex-digit hash of JSON-able ``data`` (keys sorted, so dict order is irrelevant)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


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


def synthesized_digest(cfg: ExperimentConfig) -> str | None:
    """A hash of the files synthesis wrote, when the config has it: the steps that read them
    are keyed by their contents, so a synthesis run again over changed documents is not
    followed by a step reused from the old files. ``None`` without synthesis."""
    if cfg.synthesis is None:
        return None
    digest_of = hashlib.sha256()
    for name in OUTPUTS:
        path = cfg.synthesis_dir / name
        digest_of.update(name.encode() + (path.read_bytes() if path.is_file() else b"-"))
    return digest_of.hexdigest()[:16]


def index_key(cfg: ExperimentConfig) -> str:
    """The index reads the rag section and its corpus (by content, when synthesis wrote it)."""
    if cfg.synthesis is None:
        return cfg.section_hash("rag")
    return digest([cfg.section_hash("rag"), synthesized_digest(cfg)])


# Settings added after runs were made, at the value that leaves every output as it was: a
# key leaves them out at that value, so an older run directory still resumes.
_QUIET_DEFAULTS = {"long_records": "error", "long_prompts": "error"}


def _without_quiet_defaults(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items()
            if k not in _QUIET_DEFAULTS or v != _QUIET_DEFAULTS[k]}


def prepare_key(cfg: ExperimentConfig, stage: Stage) -> str:
    """What a stage's prepared data depends on: its files, their cleaning and split, and the
    benchmark questions they are checked against; with ``long_records: drop``, also what
    decides which records are too long (seq_len, packing, the tokenizer's model); with
    ``rag_context``, its settings and the index the passages come from."""
    t = stage.training
    key: dict[str, Any] = {
        "datasets": [d.model_dump(mode="json") for d in t.datasets],
        "replay": [d.model_dump(mode="json") for d in (stage.replay.datasets
                                                       if stage.replay else [])],
        "data_prep": t.data_prep.model_dump(mode="json"),
        "split": [t.validation_fraction, t.seed],
        "benchmarks": [b.model_dump(mode="json") for b in cfg.evaluation.benchmarks],
    }
    if t.long_records == "drop":
        key["long_records"] = [t.seq_len, t.packing, cfg.model.base]
    if cfg.synthesis is not None:
        key["synthesized"] = synthesized_digest(cfg)
    if stage.rag_context is not None:
        # Its prompts are rewritten with passages of the run's index (rag.top_k of them
        # unless distractors says): a new index rewrites them.
        key["rag_context"] = [stage.rag_context.model_dump(mode="json"), index_key(cfg)]
    return digest(key)


def stage_key(cfg: ExperimentConfig, stage: Stage, stages: list[Stage]) -> str:
    """What a stage's model depends on: its own settings, its prepared data and that of the
    stages it replays, the cluster, and (through its predecessor's key) every stage before
    it; not the stages after it or beside it."""
    parent = next((s for s in stages if s.name == stage.start_from), None)
    sources: list[str] = []
    if stage.replay is not None:
        sources = (ancestors(stages, stage.name) if stage.replay.stages == "earlier"
                   else stage.replay.stages)
    by_name = {s.name: s for s in stages}
    return digest({
        "model": cfg.model.model_dump(mode="json"),
        "cluster": cfg.cluster.model_dump(mode="json"),
        "training": _without_quiet_defaults(stage.training.model_dump(mode="json")),
        "lora_init": stage.lora_init,
        "replay": stage.replay.model_dump(mode="json") if stage.replay else None,
        "data": [prepare_key(cfg, by_name[n]) for n in [stage.name, *sources]],
        "parent": stage_key(cfg, parent, stages) if parent else None,
    })


def retrieve_key(cfg: ExperimentConfig) -> str:
    """Retrieval reads the index settings and the questions, not how they are scored."""
    return digest([cfg.rag.model_dump(mode="json"),
                   [b.model_dump(mode="json") for b in cfg.evaluation.benchmarks],
                   cfg.evaluation.latency_questions,
                   *([synthesized_digest(cfg)] if cfg.synthesis is not None else [])])


def scoring_key(cfg: ExperimentConfig, model_dir: Path) -> str:
    """What an arm's scores depend on: everything that made its model and its prompts, and
    the model it scores (which stage ``ft`` is); not the statistics settings."""
    dumped = cfg.model_dump(mode="json")
    dumped["training"] = _without_quiet_defaults(dumped["training"])
    evaluation = {k: v for k, v in _without_quiet_defaults(dumped["evaluation"]).items()
                  if k not in ("arms", "bootstrap_samples", "confidence", "forgetting_tolerance")}
    key = {**{s: dumped[s] for s in ("model", "training", "stages", "cluster", "rag")},
           "evaluation": evaluation, "model_dir": str(model_dir)}
    if cfg.synthesis is not None:
        key["synthesized"] = synthesized_digest(cfg)
    return digest(key)


def synthesis_key(cfg: ExperimentConfig, documents: list) -> str:
    """What synthesis writes depends on: its section and the documents' text."""
    assert cfg.synthesis is not None
    return digest([cfg.synthesis.model_dump(mode="json"), [d.model_dump() for d in documents]])
