"""The generative track without a model: scoring, QA rows with gold aliases, the task files."""

from __future__ import annotations

import json

import pytest
import yaml

from tunearena.evaluation.benchmarks import BenchmarkError, QAItem, load_qa
from tunearena.evaluation.generative import (
    answer_text,
    exact_match,
    normalize_answer,
    process_results,
    token_f1,
)
from tunearena.evaluation.prompt import format_prompt
from tunearena.evaluation.tasks import (
    FEWSHOT_SUFFIX,
    MAX_ANSWER_TOKENS,
    RAG_SUFFIX,
    write_generative_task,
    write_mc_task,
)

# --- scoring -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an  apple,  a pear ", "apple pear"),
        ("Theatre at the another", "theatre at another"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("Velmo\n\tcity", "velmo city"),
        ("", ""),
    ],
)
def test_normalize_answer(text, normalised):
    assert normalize_answer(text) == normalised


@pytest.mark.parametrize(
    ("prediction", "golds", "em", "f1"),
    [
        ("the Eiffel Tower", ["Eiffel tower"], 1, 1.0),
        ("in Paris France", ["Paris"], 0, 0.5),  # P = 1/3, R = 1
        ("Paris", ["Paris, France"], 0, 2 / 3),  # P = 1, R = 1/2
        ("blue blue", ["blue"], 0, 2 / 3),  # tokens count as a bag: P = 1/2, R = 1
        ("Denver Broncos", ["Carolina Panthers"], 0, 0.0),
        ("Velmo", ["Tarrow", "velmo."], 1, 1.0),  # the best alias counts
        ("the", ["a"], 1, 1.0),  # both empty after normalisation
        ("the", ["Velmo"], 0, 0.0),  # one empty
        ("Velmo", "Velmo", 1, 1.0),  # a bare string is one alias
    ],
)
def test_exact_match_and_token_f1(prediction, golds, em, f1):
    assert exact_match(prediction, golds) == em
    assert token_f1(prediction, golds) == pytest.approx(f1)


def test_no_gold_is_an_error():
    with pytest.raises(ValueError, match="no gold answers"):
        exact_match("x", [])
    with pytest.raises(ValueError, match="no gold answers"):
        token_f1("x", [])


def test_process_results_reads_the_first_line_of_the_response():
    doc = {"id": "q0", "prompt": "...", "answers": ["Ana Ruiz", "Ruiz"], "source_doc": None}
    assert answer_text("  Ana Ruiz\nQuestion: next") == "Ana Ruiz"
    assert process_results(doc, [" Ana Ruiz\nQuestion: x"]) == {"exact_match": 1, "f1": 1.0}
    assert process_results(doc, [" Ana Ruiz of Tarrow"]) == {"exact_match": 0, "f1": 2 * 0.5 / 1.5}
    assert process_results(doc, [""]) == {"exact_match": 0, "f1": 0.0}


# --- QA rows with gold aliases ------------------------------------------------------------


def _write(tmp_path, rows: list) -> str:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_load_generative_rows(tmp_path):
    path = _write(
        tmp_path,
        [
            {"id": "a", "question": "Capital of Norland?", "answers": ["Velmo", "Velmo city"]},
            {"id": "b", "question": "Lamp colour?", "choices": ["red", "blue"], "answer": 1,
             "doc_id": 4},
            {"id": "c", "question": "Kettle?", "answers": ["Orbit"], "choices": ["x", "y"],
             "answer": 0},
        ],
    )  # fmt: skip
    items = load_qa(path, track="generative")
    assert items == [
        QAItem("a", "Capital of Norland?", answers=("Velmo", "Velmo city")),
        QAItem("b", "Lamp colour?", ["red", "blue"], 1, "4"),
        QAItem("c", "Kettle?", ["x", "y"], 0, answers=("Orbit",)),
    ]
    assert [item.gold_answers for item in items] == [("Velmo", "Velmo city"), ("blue",), ("Orbit",)]


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"id": "q2", "question": "x"}, r"qa\.jsonl:2: missing field\(s\) choices, answer \(or answers"),
        ({"id": "q2", "question": "x", "answers": []}, r"qa\.jsonl:2: 'answers' must be a non-empty list"),
        ({"id": "q2", "question": "x", "answers": ["ok", " "]}, r"qa\.jsonl:2: 'answers' must be"),
        ({"id": "q2", "question": "x", "answers": "Velmo"}, r"qa\.jsonl:2: 'answers' must be"),
        ({"id": "q2", "question": "", "answers": ["a"]}, r"qa\.jsonl:2: 'question' must be"),
        ({"id": "q2", "question": "x", "answers": ["a"], "choices": ["a", "b"]},
         r"qa\.jsonl:2: 'choices' and 'answer' go together"),
        ({"id": "q2", "question": "x", "answers": ["a"], "choices": ["a", "b"], "answer": 5},
         r"qa\.jsonl:2: answer 5 out of range"),
        ({"id": "q1", "question": "x", "answers": ["a"]}, r"qa\.jsonl:2: duplicate id 'q1'"),
    ],
)  # fmt: skip
def test_bad_generative_row_names_file_and_line(tmp_path, row, match):
    path = _write(tmp_path, [{"id": "q1", "question": "Q?", "answers": ["A"]}, row])
    with pytest.raises(BenchmarkError, match=match):
        load_qa(path, track="generative")


def test_multiple_choice_track_still_needs_choices(tmp_path):
    path = _write(tmp_path, [{"id": "q1", "question": "Q?", "answers": ["A"]}])
    with pytest.raises(BenchmarkError, match=r"qa\.jsonl:1: missing field\(s\) choices, answer$"):
        load_qa(path)
    with pytest.raises(ValueError, match="unknown track 'free_text'"):
        load_qa(path, track="free_text")


def test_gold_answers_needs_a_gold():
    with pytest.raises(ValueError, match="'q' has neither answers nor a correct choice"):
        _ = QAItem("q", "Q?").gold_answers


# --- prompts with solved examples ---------------------------------------------------------


def test_prompt_with_examples():
    examples = [("Capital of Norland? ", " Velmo"), ("Who designed the Orbit kettle?", "Ana Ruiz")]
    assert format_prompt("Lamp colour?", examples=examples) == (
        "Question: Capital of Norland?\nAnswer: Velmo\n\n"
        "Question: Who designed the Orbit kettle?\nAnswer: Ana Ruiz\n\n"
        "Question: Lamp colour?\nAnswer:"
    )
    assert format_prompt("Q?", ["p"], [("E?", "e")]) == (
        "Question: E?\nAnswer: e\n\nContext: p\nQuestion: Q?\nAnswer:"
    )


def test_prompt_without_examples_is_unchanged():
    # The training data is written with these; they must stay byte for byte.
    assert format_prompt(" Q? ") == "Question: Q?\nAnswer:"
    assert format_prompt("Q?", [" p1 ", "p2"]) == "Context: p1\nContext: p2\nQuestion: Q?\nAnswer:"
    assert format_prompt("Q?", (), ()) == format_prompt("Q?")


# --- the generative task's files -----------------------------------------------------------

ITEMS = [
    QAItem("a", "Capital of Norland?", answers=("Velmo", "Velmo city"), doc_id="doc-1"),
    QAItem("b", "Colour of the Zephyr lamp?", ["red", "blue"], 1),
]
EXAMPLES = [("Who designed the Orbit kettle?", "Ana Ruiz")]


class _TaskLoader(yaml.SafeLoader):
    """Reads lm-eval's ``!function`` tag as the text ``!function <name>``."""


_TaskLoader.add_constructor("!function", lambda loader, node: f"!function {node.value}")


def _spec(path):
    return yaml.load(path.read_text(), Loader=_TaskLoader)  # noqa: S506 (a SafeLoader)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generative_task_files(tmp_path):
    name = write_generative_task(tmp_path / "tasks", "facts", ITEMS)
    assert name == "facts"
    task_dir = (tmp_path / "tasks").resolve()
    spec = _spec(task_dir / "facts.yaml")
    assert spec["task"] == "facts"
    assert spec["output_type"] == "generate_until"
    assert spec["dataset_path"] == "json"
    assert spec["dataset_kwargs"]["data_files"]["test"] == str(task_dir / "facts.jsonl")
    assert spec["doc_to_text"] == "prompt"
    assert spec["generation_kwargs"] == {
        "until": ["\n"],
        "do_sample": False,
        "max_gen_toks": MAX_ANSWER_TOKENS,
    }
    assert spec["process_results"] == "!function tunearena_generative.process_results"
    assert {
        m["metric"]: (m["aggregation"], m["higher_is_better"]) for m in spec["metric_list"]
    } == {
        "exact_match": ("mean", True),
        "f1": ("mean", True),
    }
    # The shim beside the YAML hands lm-eval our scorer.
    shim = (task_dir / "tunearena_generative.py").read_text()
    assert "from tunearena.evaluation.generative import process_results" in shim
    assert _rows(task_dir / "facts.jsonl") == [
        {"id": "a", "prompt": format_prompt(ITEMS[0].question), "answers": ["Velmo", "Velmo city"],
         "source_doc": "doc-1"},
        {"id": "b", "prompt": format_prompt(ITEMS[1].question), "answers": ["blue"],
         "source_doc": None},
    ]  # fmt: skip


def test_generative_task_variants(tmp_path):
    passages = {"a": ["The capital of Norland is Velmo."], "b": []}
    rag = write_generative_task(tmp_path, "facts", ITEMS, passages)
    fewshot = write_generative_task(tmp_path, "facts", ITEMS, examples=EXAMPLES)
    assert (rag, fewshot) == ("facts" + RAG_SUFFIX, "facts" + FEWSHOT_SUFFIX)
    assert [r["prompt"] for r in _rows(tmp_path / f"{rag}.jsonl")] == [
        format_prompt(ITEMS[0].question, passages["a"]),
        format_prompt(ITEMS[1].question),
    ]
    assert [r["prompt"] for r in _rows(tmp_path / f"{fewshot}.jsonl")] == [
        format_prompt(i.question, examples=EXAMPLES) for i in ITEMS
    ]
    assert _spec(tmp_path / f"{fewshot}.yaml")["task"] == fewshot


@pytest.mark.parametrize("write", [write_mc_task, write_generative_task])
def test_passages_and_examples_are_exclusive(tmp_path, write):
    items = [QAItem("b", "Q?", ["red", "blue"], 1)]
    with pytest.raises(ValueError, match="passages .* or examples .*, not both"):
        write(tmp_path, "facts", items, {"b": []}, examples=EXAMPLES)
    assert not list(tmp_path.iterdir())  # nothing written


def test_items_without_the_needed_gold_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"task 'facts': 1 question\(s\) have no choices"):
        write_mc_task(tmp_path, "facts", ITEMS)
    with pytest.raises(ValueError, match=r"task 'facts': 1 question\(s\) have no gold answer"):
        write_generative_task(tmp_path, "facts", [QAItem("x", "Q?")])
    with pytest.raises(ValueError, match="no items"):
        write_generative_task(tmp_path, "facts", [])
