"""``tunearena run`` measures every RAG prompt before training: retrieval runs first (it reads
no trained model), and prompts over the model's context stop the run before any stage is
prepared or trained, naming the benchmark. Real FAISS and the packaged embedder; no Ray is
started, since the run stops before anything needs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import with_context
from rich.console import Console

from tunearena.evaluation.context import PromptOverflowError
from tunearena.launch.config import load_config
from tunearena.launch.pipeline import Pipeline


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_rag_prompts_over_the_context_stop_the_run_before_training(tmp_path, tiny_model_dir):
    model = with_context(tiny_model_dir, tmp_path / "model", 128)
    docs = [{"id": f"d{i}", "text": f"Product {i} of Lumora is made in Tarrow. " * 12}
            for i in range(4)]
    questions = [{"id": f"q{i}", "question": f"Where is product {i} made?",
                  "choices": ["Tarrow", "Velmo"], "answer": 0, "doc_id": f"d{i}"}
                 for i in range(4)]
    qa = [{"prompt": f"Where is product {i} made?\nAnswer:", "response": " Tarrow"}
          for i in range(8)]
    config = {
        "name": "overflow", "runs_dir": str(tmp_path / "runs"), "model": {"base": str(model)},
        "training": {"datasets": [{"path": str(write_jsonl(tmp_path / "qa.jsonl", qa)),
                                   "format": "instruction"}], "seq_len": 64, "max_steps": 1},
        "rag": {"corpus": str(write_jsonl(tmp_path / "docs.jsonl", docs)),
                "chunk_tokens": 64, "chunk_overlap_tokens": 8, "top_k": 2},
        "evaluation": {"benchmarks": [{"name": "products", "kind": "domain", "path": str(
            write_jsonl(tmp_path / "test.jsonl", questions))}],
            "arms": ["base", "base+rag", "ft", "ft+rag"], "latency_questions": 0},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(PromptOverflowError,
                       match=r"benchmark products: 4 of 4 questions have a prompt longer than "
                             r"the model's 128-token context \(4 with base\+rag/ft\+rag"):
        Pipeline(load_config(path), Console(quiet=True)).run()
    steps = json.loads((tmp_path / "runs" / "overflow" / "manifest.json").read_text())["steps"]
    assert {name: s["status"] for name, s in steps.items()} == {"index": "done",
                                                                 "retrieve": "done"}
