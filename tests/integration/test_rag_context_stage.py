"""The pipeline's prepare step for the methods demo's RAG-aware stage (``qa_raft``): its questions are
rewritten with passages from the run's index (built from the demo's documents, embedded with
the packaged MiniLM, searched with real FAISS), and the prepared records, the counts the
step reports and a later stage's replay all hold those prompts. No Ray, no training."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import pytest
from rich.console import Console
from transformers import AutoTokenizer

from tunearena.evaluation.results import RagContext, TaskData
from tunearena.launch.config import load_config
from tunearena.launch.pipeline import Pipeline
from tunearena.rag.index import build_index
from tunearena.training.config import ReplayConfig
from tunearena.training.stages import stage_tasks

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo_methods.yaml"  # the demo whose qa_raft stage is RAG-aware
DOMAIN = REPO / "examples" / "demo_world" / "domain"
P_GOLD = 0.8


def passages(prompt: str) -> list[str]:
    return [line.removeprefix("Context: ") for line in prompt.split("\n")
            if line.startswith("Context: ")]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The demo config with its run directory in a temporary folder, its index built, and
    the qa_raft stage prepared by the pipeline; returns (pipeline, stages, artifacts,
    reports, console text)."""
    runs = tmp_path_factory.mktemp("runs")
    cfg = load_config(DEMO, [f"runs_dir={runs}", "model.chat_template=false"])
    stages = cfg.resolved_stages()
    (raft,) = [s for s in stages if s.rag_context is not None]
    assert raft.name == "qa_raft" and raft.rag_context.p_gold == P_GOLD
    out = io.StringIO()
    pipeline = Pipeline(cfg, Console(file=out, width=400))
    build_index(cfg.rag, pipeline.run_dir / "index")
    questions = {"lumora_products": [json.loads(line)["question"]
                                     for line in (DOMAIN / "qa_test.jsonl").open()]}
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.base)
    artifacts, reports = pipeline.prepare(raft, questions, tokenizer)
    return pipeline, stages, artifacts, reports, out.getvalue()


def test_the_stage_is_prepared_from_prompts_with_retrieved_passages(prepared):
    pipeline, _, artifacts, reports, console = prepared
    run_dir = pipeline.run_dir
    rewritten = run_dir / "data" / "qa_raft-qa_train.rag.jsonl"
    assert artifacts["qa_train rag_context"] == "data/qa_raft-qa_train.rag.jsonl"
    records = [json.loads(line) for line in rewritten.open()]
    source = [json.loads(line) for line in (DOMAIN / "qa_train.jsonl").open()]
    assert [r["response"] for r in records] == [r["response"] for r in source]
    # The gold document of a question is the product its question names; a chunk opens with
    # its document's title, so a prompt holds the gold passage when a passage opens with it.
    titles = [json.loads(line)["title"] for line in (DOMAIN / "documents.jsonl").open()]

    def holds_gold(record: dict) -> bool:
        question = record["prompt"].split("Question: ")[-1]
        (title,) = [t for t in titles if t in question]
        return any(p.startswith(f"{title}:") for p in passages(record["prompt"]))

    record = reports["qa_train"]["rag_context"]
    assert record["p_gold"] == P_GOLD and record["records"] == len(records) == 360
    assert record["with_gold"] == sum(map(holds_gold, records))
    assert record["gold_rate"] == record["with_gold"] / 360
    assert abs(record["gold_rate"] - P_GOLD) <= 4 * math.sqrt(P_GOLD * (1 - P_GOLD) / 360)
    # rag.top_k is 2 in the demo: the gold passage (or one more distractor) and one other.
    assert record["mean_passages"] == 2
    assert {len(passages(r["prompt"])) for r in records} == {2}
    assert record["inferred_gold"] == 360  # the demo's questions carry no doc_id
    assert record["validation_file"] is None
    # The record results.json keeps, as the report reads it.
    assert TaskData.model_validate(reports["qa_train"]).rag_context == RagContext(**record)
    assert (f"qa_raft/qa_train: rag_context put the gold passage in "
            f"{record['gold_rate']:.1%} of 360 prompts (p_gold 0.8), 2 passages each") in console
    # The prepared splits, validation included, are the rewritten records.
    report = reports["qa_train"]
    assert report["path"] == str(rewritten) and report["task"] == "qa_train"
    prompts = {r["prompt"] for r in records}
    for split in ("train", "validation"):
        path = run_dir / artifacts[f"qa_train {split}"]
        kept = [json.loads(line) for line in path.open()]
        assert kept and all(r["prompt"] in prompts for r in kept)
    assert report["train"] + report["validation"] == report["kept"]


def test_a_later_stage_replays_the_rewritten_records(prepared):
    pipeline, stages, _, _, _ = prepared
    raft = next(s for s in stages if s.name == "qa_raft")
    later = dataclasses.replace(raft, name="later", start_from="qa_raft", rag_context=None,
                                replay=ReplayConfig(fraction=0.3, stages=["qa_raft"]))
    # The later stage's own files, prepared as a plain stage's are: the bare questions.
    own = pipeline.run_dir / "data" / "later"
    own.mkdir()
    for split in ("train", "validation"):
        (own / f"qa_train.{split}.jsonl").write_text(
            (DOMAIN / "qa_train.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    tasks, fraction = stage_tasks(later, [*stages, later], pipeline.run_dir / "data")
    by_name = {t.name: t for t in tasks}
    assert fraction == 0.3 and set(by_name) == {"qa_train", "replay:qa_raft/qa_train"}
    assert not any(passages(r["prompt"]) for r in by_name["qa_train"].train)
    replayed = by_name["replay:qa_raft/qa_train"]
    assert replayed.train and all(len(passages(r["prompt"])) == 2 for r in replayed.train)
