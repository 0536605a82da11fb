"""QA file loading: good files parse, every bad file names the file and line."""

from __future__ import annotations

import json

import pytest

from tunearena.evaluation.benchmarks import BenchmarkError, QAItem, load_qa

GOOD = {"id": "q1", "question": "Capital of Norland?", "choices": ["Velmo", "Tarrow"], "answer": 0}


def _write(tmp_path, lines: list[str]):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_qa_parses_items_in_order(tmp_path):
    second = {**GOOD, "id": 7, "answer": 1, "doc_id": "doc-3"}
    path = _write(tmp_path, [json.dumps(GOOD), "", json.dumps(second)])
    assert load_qa(path) == [
        QAItem("q1", "Capital of Norland?", ["Velmo", "Tarrow"], 0, None),
        QAItem("7", "Capital of Norland?", ["Velmo", "Tarrow"], 1, "doc-3"),
    ]


def test_missing_file(tmp_path):
    with pytest.raises(BenchmarkError, match=r"nope\.jsonl: QA file not found"):
        load_qa(tmp_path / "nope.jsonl")


def test_empty_file(tmp_path):
    with pytest.raises(BenchmarkError, match=r"qa\.jsonl: no questions"):
        load_qa(_write(tmp_path, ["", "  "]))


@pytest.mark.parametrize(
    ("bad_line", "match"),
    [
        ('{"id": "q2", "question": ', r"qa\.jsonl:2: not valid JSON"),
        ("[1, 2]", r"qa\.jsonl:2: expected a JSON object"),
        (
            json.dumps({"id": "q2", "question": "x"}),
            r"qa\.jsonl:2: missing field\(s\) choices, answer",
        ),
        (
            json.dumps({**GOOD, "id": "q2", "answer": 2}),
            r"qa\.jsonl:2: answer 2 out of range for 2",
        ),
        (json.dumps({**GOOD, "id": "q2", "answer": -1}), r"qa\.jsonl:2: answer -1 out of range"),
        (
            json.dumps({**GOOD, "id": "q2", "answer": True}),
            r"qa\.jsonl:2: 'answer' must be an integer",
        ),
        (
            json.dumps({**GOOD, "id": "q2", "choices": ["only"]}),
            r"qa\.jsonl:2: needs at least 2 choices",
        ),
        (
            json.dumps({**GOOD, "id": "q2", "choices": "ab"}),
            r"qa\.jsonl:2: 'choices' must be a list",
        ),
        (json.dumps({**GOOD, "id": "q2", "question": " "}), r"qa\.jsonl:2: 'question' must be"),
        (json.dumps(GOOD), r"qa\.jsonl:2: duplicate id 'q1' \(first seen on line 1\)"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, bad_line, match):
    path = _write(tmp_path, [json.dumps(GOOD), bad_line])
    with pytest.raises(BenchmarkError, match=match):
        load_qa(path)


def test_benchmark_error_is_a_value_error():
    assert issubclass(BenchmarkError, ValueError)
