"""The real-text example end to end on a real pretrained model, shrunk for two CPU cores: the
packaged SmolLM2 GGUF converted, LoRA stages on Debian changelog entries, retrieval over them,
and the base, RAG, fine-tuned and fine-tuned + RAG arms scored through the chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunearena.launch.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # about 7 minutes

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "changelogs.yaml"
ARMS = ["base", "base+rag", "ft@docs", "ft@qa", "ft", "ft+rag"]
SHRINK = [
    "cluster.num_workers=1", "cluster.cpus_per_worker=2",
    "training.seq_len=256", "training.micro_batch_size=2", "training.warmup_steps=0",
    "stages.0.max_steps=3", "stages.1.max_steps=3",
    "evaluation.arms=[base, base+rag, ft, ft+rag]", "evaluation.limit=6",
    "evaluation.latency_questions=0", "evaluation.batch_size=8",
    "evaluation.bootstrap_samples=200",
]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    runs = tmp_path_factory.mktemp("runs")
    args = ["run", str(CONFIG), "--set", f"runs_dir={runs}"]
    for override in SHRINK:
        args += ["--set", override]
    assert main(args) == 0
    return json.loads((runs / "changelogs" / "results.json").read_text())


def test_every_arm_is_scored_on_the_real_model(results):
    assert results["arms"] == ARMS
    for name in ("changelog_facts", "changelog_answers", "mmlu_sample"):
        bench = results["benchmarks"][name]
        assert bench["n"] == 6
        assert set(bench["arms"]) == set(ARMS)
        for arm in ARMS:
            assert len(results["samples"][arm][name]) == 6


def test_the_gguf_provenance_and_the_prompt_format_are_recorded(results):
    source = results["run"]["base_model_source"]
    assert source["source"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert len(source["sha256"]) == 64
    assert results["run"]["prompt_format"] == "chat_template"


def test_every_stage_passed_the_probe(results):
    probe = results["probe"]
    assert set(probe["changes"]) == {"docs", "qa"}
    assert all(change > probe["tolerance"] for change in probe["changes"].values())


def test_no_prompt_was_cut_and_retrieval_reached_the_rag_arms(results):
    lengths = results["prompt_lengths"]
    assert lengths["max_length"] == 8192 and lengths["dropped"] == {}
    assert results["retrieval"]["changelog_facts"]["k"] == 3
