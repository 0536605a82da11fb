"""The task writer's files: what lm-eval will read, without running lm-eval."""

from __future__ import annotations

import json

import pytest
import yaml

from tunearena.evaluation.benchmarks import QAItem
from tunearena.evaluation.prompt import ANSWER_DELIMITER, format_prompt
from tunearena.evaluation.tasks import FEWSHOT_SUFFIX, write_generative_task, write_mc_task

ITEMS = [
    QAItem("a", "Capital of Norland?", ["Velmo", "Tarrow"], 0),
    QAItem("b", "Colour of the Zephyr lamp?", ["red", "blue", "green"], 1),
]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_plain_and_rag_tasks_differ_only_in_context(tmp_path):
    passages = {"a": ["The capital of Norland is Velmo."], "b": []}
    plain = write_mc_task(tmp_path, "facts", ITEMS, None)
    rag = write_mc_task(tmp_path, "facts", ITEMS, passages)
    assert (plain, rag) == ("facts", "facts__rag")

    plain_rows, rag_rows = _rows(tmp_path / "facts.jsonl"), _rows(tmp_path / "facts__rag.jsonl")
    assert [r["prompt"] for r in plain_rows] == [format_prompt(i.question) for i in ITEMS]
    assert rag_rows[0]["prompt"] == format_prompt(ITEMS[0].question, passages["a"])
    assert rag_rows[1]["prompt"] == plain_rows[1]["prompt"]  # no passages: same prompt
    for p, r in zip(plain_rows, rag_rows, strict=True):
        assert {k: v for k, v in p.items() if k != "prompt"} == {
            k: v for k, v in r.items() if k != "prompt"
        }
    assert plain_rows[1] == {
        "id": "b",
        "prompt": format_prompt(ITEMS[1].question),
        "choices": ["red", "blue", "green"],
        "answer": 1,
        "source_doc": None,
    }


def test_rag_rows_name_the_document_of_their_first_passage(tmp_path):
    passages = {"a": ["The capital of Norland is Velmo.", "Tarrow is a port."], "b": []}
    write_mc_task(tmp_path, "facts", ITEMS, passages, retrieved_docs={"a": "norland", "b": None})
    write_generative_task(tmp_path, "open", ITEMS, passages, retrieved_docs={"a": "norland"})
    for task in ("facts__rag", "open__rag"):
        assert [r["retrieved_doc"] for r in _rows(tmp_path / f"{task}.jsonl")] == ["norland", None]
    # Without them, rows carry no such key (the plain task never has one).
    write_mc_task(tmp_path, "facts", ITEMS, passages)
    assert all("retrieved_doc" not in r for r in _rows(tmp_path / "facts__rag.jsonl"))


def test_yaml_is_a_local_multiple_choice_task(tmp_path):
    name = write_mc_task(tmp_path / "tasks", "facts", ITEMS, None)
    spec = yaml.safe_load((tmp_path / "tasks" / f"{name}.yaml").read_text())
    assert spec["task"] == "facts"
    assert spec["output_type"] == "multiple_choice"
    assert spec["dataset_path"] == "json"
    data_file = spec["dataset_kwargs"]["data_files"]["test"]
    assert data_file == str((tmp_path / "tasks" / "facts.jsonl").resolve())
    assert spec["test_split"] == "test"
    assert spec["target_delimiter"] == ANSWER_DELIMITER
    assert {m["metric"]: m["higher_is_better"] for m in spec["metric_list"]} == {
        "acc": True,
        "acc_norm": True,
    }


def test_missing_passages_and_empty_items_are_errors(tmp_path):
    with pytest.raises(ValueError, match="no passages for 1 question"):
        write_mc_task(tmp_path, "facts", ITEMS, {"a": ["x"]})
    with pytest.raises(ValueError, match="no items"):
        write_mc_task(tmp_path, "facts", [], None)


def test_fewshot_task_puts_the_examples_before_every_question(tmp_path):
    examples = [("Who designed the Orbit kettle?", "Ana Ruiz"), ("Where is Lumora?", "Tarrow")]
    name = write_mc_task(tmp_path, "facts", ITEMS, examples=examples)
    assert name == "facts" + FEWSHOT_SUFFIX == "facts__fewshot"
    rows = _rows(tmp_path / f"{name}.jsonl")
    assert [r["prompt"] for r in rows] == [
        format_prompt(i.question, examples=examples) for i in ITEMS
    ]
    assert rows[0]["prompt"].startswith(
        "Question: Who designed the Orbit kettle?\nAnswer: Ana Ruiz\n\n"
    )
    assert yaml.safe_load((tmp_path / f"{name}.yaml").read_text())["task"] == name
    # The plain task is untouched by the variant beside it.
    plain = write_mc_task(tmp_path, "facts", ITEMS)
    assert [r["prompt"] for r in _rows(tmp_path / f"{plain}.jsonl")] == [
        format_prompt(i.question) for i in ITEMS
    ]
