"""Write QA items as local lm-eval tasks (a YAML beside a JSONL): multiple choice, scored
by log-likelihood, or generative, a greedy answer scored by exact match and token F1."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from tunearena.evaluation.benchmarks import QAItem
from tunearena.evaluation.prompt import ANSWER_DELIMITER, format_prompt
from tunearena.files import iter_jsonl, write_atomic

RAG_SUFFIX = "__rag"
"""Appended to a benchmark's task name when its prompts carry retrieved passages."""
FEWSHOT_SUFFIX = "__fewshot"
"""Appended to a benchmark's task name when its prompts start with solved examples."""
MAX_ANSWER_TOKENS = 32
"""A generated answer stops at the first newline or after this many tokens."""

# lm-eval resolves `!function module.fn` to `module.py` beside the YAML, so the generative
# tasks' scorer is reached through this one-line shim written into the task dir.
_SHIM_MODULE = "tunearena_generative"
_SHIM_TEXT = '''"""Written by tunearena: lets the task YAMLs here name the generative scorer."""

from tunearena.evaluation.generative import process_results  # noqa: F401
'''


def write_mc_task(
    task_dir: Path,
    name: str,
    items: list[QAItem],
    passages: dict[str, list[str]] | None = None,
    examples: Sequence[tuple[str, str]] = (),
    retrieved_docs: Mapping[str, str | None] | None = None,
) -> str:
    """Write ``<task>.yaml`` and ``<task>.jsonl`` under ``task_dir``; return the task name.

    The prompt is precomputed with ``format_prompt`` into each JSONL row, so the task is
    the same for every arm and the only thing that varies is the context: ``passages``
    (question id -> retrieved passages) or ``examples`` (solved ``(question, answer)``
    pairs put before every question). With passages the task is named ``name + "__rag"``,
    with examples ``name + "__fewshot"``, so one task dir holds every variant of a
    benchmark side by side; passages and examples together are a ``ValueError``.
    ``retrieved_docs`` (question id -> the document of its first passage) goes with
    ``passages``: each row keeps it as ``retrieved_doc``, so a scored question names what it
    read.
    """
    task_name = _task_name(name, items, passages, examples)
    no_choices = [item.id for item in items if item.answer is None]
    if no_choices:
        raise ValueError(
            f"task {name!r}: {len(no_choices)} question(s) have no choices to score as "
            f"multiple choice, e.g. {no_choices[:3]}"
        )
    rows = [
        {
            "id": item.id,
            "prompt": prompt,
            "choices": item.choices,
            "answer": item.answer,
            # The question's source document; named apart from lm-eval's own doc_id (a row
            # index) so neither shadows the other.
            "source_doc": item.doc_id,
            **_retrieved(item, retrieved_docs),
        }
        for item, prompt in zip(items, _prompts(items, passages, examples), strict=True)
    ]
    spec = {
        **_data_spec(task_dir, task_name, rows),
        "output_type": "multiple_choice",
        # Field names, not Jinja: lm-eval returns doc[field] verbatim when it names a feature.
        "doc_to_text": "prompt",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "target_delimiter": ANSWER_DELIMITER,
        "num_fewshot": 0,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }
    yaml_path = Path(task_dir).resolve() / f"{task_name}.yaml"
    write_atomic(yaml_path, yaml.safe_dump(spec, sort_keys=False))
    return task_name


def write_generative_task(
    task_dir: Path,
    name: str,
    items: list[QAItem],
    passages: dict[str, list[str]] | None = None,
    examples: Sequence[tuple[str, str]] = (),
    retrieved_docs: Mapping[str, str | None] | None = None,
) -> str:
    """Write a generative task (YAML, JSONL and the scorer's shim); return the task name.

    Same prompts, suffixes, ``retrieved_docs`` and errors as ``write_mc_task``. The model answers greedily
    after the prompt until the first newline (at most ``MAX_ANSWER_TOKENS`` tokens); each
    answer is scored against the item's ``gold_answers`` by ``exact_match`` and ``f1``
    (``tunearena.evaluation.generative``).
    """
    task_name = _task_name(name, items, passages, examples)
    no_gold = [item.id for item in items if not item.answers and item.answer is None]
    if no_gold:
        raise ValueError(
            f"task {name!r}: {len(no_gold)} question(s) have no gold answer, e.g. {no_gold[:3]}"
        )
    rows = [
        {
            "id": item.id,
            "prompt": prompt,
            "answers": list(item.gold_answers),
            "source_doc": item.doc_id,
            **_retrieved(item, retrieved_docs),
        }
        for item, prompt in zip(items, _prompts(items, passages, examples), strict=True)
    ]
    spec = {
        **_data_spec(task_dir, task_name, rows),
        "output_type": "generate_until",
        "doc_to_text": "prompt",
        "doc_to_target": "answers",
        "num_fewshot": 0,
        "generation_kwargs": {
            "until": ["\n"],
            "do_sample": False,
            "max_gen_toks": MAX_ANSWER_TOKENS,
        },
        "metric_list": [
            {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True},
            {"metric": "f1", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }
    task_dir = Path(task_dir).resolve()
    write_atomic(task_dir / f"{_SHIM_MODULE}.py", _SHIM_TEXT)
    # safe_dump has no way to emit a tag on a plain string, so the hook's line is appended
    # as text; a top-level key at the end of a block mapping is valid YAML.
    text = yaml.safe_dump(spec, sort_keys=False)
    text += f"process_results: !function {_SHIM_MODULE}.process_results\n"
    write_atomic(task_dir / f"{task_name}.yaml", text)
    return task_name


def _task_name(
    name: str,
    items: list[QAItem],
    passages: dict[str, list[str]] | None,
    examples: Sequence[tuple[str, str]],
) -> str:
    if not items:
        raise ValueError(f"task {name!r}: no items to write")
    if passages is not None and examples:
        raise ValueError(f"task {name!r}: give passages (RAG) or examples (few-shot), not both")
    if passages is not None:
        missing = [item.id for item in items if item.id not in passages]
        if missing:
            raise ValueError(
                f"task {name!r}: no passages for {len(missing)} question(s), e.g. {missing[:3]}"
            )
        return name + RAG_SUFFIX
    return name + FEWSHOT_SUFFIX if examples else name


def _retrieved(item: QAItem, retrieved_docs: Mapping[str, str | None] | None) -> dict:
    return {} if retrieved_docs is None else {"retrieved_doc": retrieved_docs.get(item.id)}


def _prompts(
    items: list[QAItem],
    passages: dict[str, list[str]] | None,
    examples: Sequence[tuple[str, str]],
) -> list[str]:
    return [
        format_prompt(item.question, passages[item.id] if passages else (), examples)
        for item in items
    ]


def _data_spec(task_dir: Path, task_name: str, rows: list[dict]) -> dict:
    """Write the rows as ``<task>.jsonl`` and return the YAML keys that read it."""
    task_dir = Path(task_dir).resolve()
    task_dir.mkdir(parents=True, exist_ok=True)
    data_path = task_dir / f"{task_name}.jsonl"
    write_atomic(data_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {
        "task": task_name,
        # The HF "json" builder reads the local file; no hub access. The path is absolute
        # because lm-eval resolves data_files against the working directory, not the YAML.
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_path)}},
        "test_split": "test",
    }


def task_rows(task_dir: Path, task: str) -> list[dict]:
    """The rows of a task written here (``write_mc_task`` or ``write_generative_task``)."""
    return [row for _, row in iter_jsonl(task_dir / f"{task}.jsonl", ValueError, "task file")]
