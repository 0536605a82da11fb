"""Cache keys are pure functions of the config: each changes with what its step reads, and
only with that, so ``--resume`` redoes exactly the steps whose inputs changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tunearena.launch.config import load_config
from tunearena.launch.keys import (
    code_version,
    digest,
    prepare_key,
    retrieve_key,
    scoring_key,
    stage_key,
)

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def keys(*overrides: str) -> dict[str, str]:
    cfg = load_config(DEMO, list(overrides))
    stages = cfg.resolved_stages()
    out = {f"prepare:{s.name}": prepare_key(cfg, s) for s in stages}
    out |= {f"train:{s.name}": stage_key(cfg, s, stages) for s in stages}
    out |= {"retrieve": retrieve_key(cfg), "score": scoring_key(cfg, Path("models/qa"))}
    return out


def changed(*overrides: str) -> set[str]:
    before, after = keys(), keys(*overrides)
    return {k for k in before if before[k] != after[k]}


def test_digest_is_the_recorded_formula_and_ignores_key_order():
    # Manifests written before keep their keys: the same hash of the same sorted JSON.
    data = {"b": [1, 2.5, None], "a": {"y": "z", "x": True}}
    assert digest(data) == hashlib.sha256(
        json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    assert digest(data) == digest(dict(reversed(data.items())))
    assert len(digest([])) == 16 and digest([1]) != digest([2])


def test_keys_are_pure():
    assert keys() == keys()


def test_a_stage_key_follows_its_own_settings_and_its_ancestors_only():
    # qa and qa_replay both start from docs: changing docs retrains all three.
    assert changed("stages.0.epochs=3") == {"train:docs", "train:qa", "train:qa_replay", "score"}
    # qa_replay sits beside qa: changing it retrains it alone; nothing is prepared again.
    assert changed("stages.2.lr=0.01") == {"train:qa_replay", "score"}


def test_prepared_data_follows_the_benchmarks_it_is_leak_checked_against():
    moved = changed("evaluation.benchmarks.0.name=renamed")
    assert {"prepare:docs", "prepare:qa", "prepare:qa_replay", "retrieve"} <= moved
    # A stage's model depends on its prepared data, so every stage retrains too.
    assert {"train:docs", "train:qa", "train:qa_replay"} <= moved


def test_statistics_and_arms_rescore_nothing():
    assert changed("evaluation.bootstrap_samples=123", "evaluation.confidence=0.9",
                   "evaluation.forgetting_tolerance=0.5") == set()
    assert changed("rag.top_k=3") == {"retrieve", "score"}


def test_scoring_key_names_the_scored_model():
    cfg = load_config(DEMO)
    assert scoring_key(cfg, Path("models/qa")) != scoring_key(cfg, Path("models/docs"))


def test_code_version_starts_with_the_package_version():
    import tunearena

    assert code_version().startswith(tunearena.__version__)


RAFT = """
model: {base: some-org/some-model}
rag: {corpus: docs.jsonl, top_k: 2}
evaluation:
  arms: [base, ft+rag]
  benchmarks: [{name: qa, path: qa.jsonl, kind: domain}]
stages:
  - name: qa
    datasets: [{path: qa.jsonl, format: instruction}]
  - name: qa_raft
    start_from: base
    datasets: [{path: qa.jsonl, format: instruction}]
    rag_context: {p_gold: 0.8}
  - name: after
    start_from: qa_raft
    datasets: [{path: more.jsonl, format: instruction}]
    replay: {fraction: 0.2}
"""


def test_a_rag_aware_stage_is_prepared_again_when_its_context_or_index_changes(tmp_path):
    path = tmp_path / "raft.yaml"
    path.write_text(RAFT)

    def raft_keys(*overrides: str) -> dict[str, str]:
        cfg = load_config(path, list(overrides))
        stages = cfg.resolved_stages()
        return ({f"prepare:{s.name}": prepare_key(cfg, s) for s in stages}
                | {f"train:{s.name}": stage_key(cfg, s, stages) for s in stages})

    before = raft_keys()
    assert raft_keys() == before  # unchanged: --resume reuses every step

    def moved(*overrides: str) -> set[str]:
        after = raft_keys(*overrides)
        return {k for k in before if before[k] != after[k]}

    # The stage itself and the one after it, which starts from it and replays its records.
    raft = {"prepare:qa_raft", "train:qa_raft", "train:after"}
    assert moved("stages.1.rag_context.p_gold=0.5") == raft
    assert moved("stages.1.rag_context.seed=3") == raft
    # A new index (how many passages, how documents are chunked) rewrites the prompts; the
    # plain stage reads no passage and is kept.
    assert moved("rag.top_k=3") == raft
    assert moved("rag.chunk_tokens=64") == raft
