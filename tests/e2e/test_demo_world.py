"""The demo world is reproducible: data files from the seed, the base model bit for bit."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORLD = REPO / "examples" / "demo_world"


def test_generator_rewrites_the_committed_data_exactly(tmp_path):
    subprocess.run([sys.executable, str(WORLD / "generate.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for rel in ("domain/documents.jsonl", "domain/docs_train.jsonl", "domain/qa_train.jsonl",
                "domain/qa_test.jsonl", "general/world_facts.jsonl"):
        assert filecmp.cmp(tmp_path / rel, WORLD / rel, shallow=False), rel


def test_test_questions_are_phrased_unlike_any_training_question():
    train = {json.loads(line)["prompt"] for line in (WORLD / "domain/qa_train.jsonl").open()}
    for line in (WORLD / "domain/qa_test.jsonl").open():
        question = json.loads(line)["question"]
        assert not any(question in prompt for prompt in train), question


@pytest.fixture(scope="module")
def build_base():
    """The rebuild script as a module (it lives beside the data, not in the package)."""
    sys.path.insert(0, str(WORLD))
    try:
        import build_base

        return build_base
    finally:
        sys.path.remove(str(WORLD))


def test_committed_base_model_matches_its_build_record(build_base):
    record = json.loads((WORLD / "base_model" / "build.json").read_text())
    assert build_base.weights_sha256(WORLD / "base_model") == record["weights_sha256"]
    assert record["arch"] == build_base.ARCH and record["pretrain"] == build_base.PRETRAIN


@pytest.mark.slow
@pytest.mark.heavy
def test_shrunk_rebuild_is_bit_for_bit_reproducible(tmp_path, build_base):
    """The rebuild command keeps working, and twice from one seed gives identical weights."""
    build = build_base.build
    kwargs = dict(seed=0, reading_examples=300, fact_repeats=1, epochs=1.0, max_steps=3,
                  num_workers=2)
    first = build(tmp_path / "a", **kwargs)
    second = build(tmp_path / "b", **kwargs)
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["steps"] == 3
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert model.config.num_hidden_layers == 4 and len(tokenizer) == model.config.vocab_size
