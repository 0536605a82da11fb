"""Write QA items as local lm-eval multiple-choice tasks (a YAML beside a JSONL)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tunearena.evaluation.benchmarks import QAItem
from tunearena.evaluation.prompt import ANSWER_DELIMITER, format_prompt
from tunearena.files import write_atomic

RAG_SUFFIX = "__rag"
"""Appended to a benchmark's task name when its prompts carry retrieved passages."""


def write_mc_task(
    task_dir: Path,
    name: str,
    items: list[QAItem],
    passages: dict[str, list[str]] | None = None,
) -> str:
    """Write ``<task>.yaml`` and ``<task>.jsonl`` under ``task_dir``; return the task name.

    The prompt is precomputed with ``format_prompt`` into each JSONL row, so the task is
    the same for every arm and the only thing that varies is ``passages`` (question id ->
    retrieved passages). With passages the task is named ``name + "__rag"``, so one task
    dir holds both variants of a benchmark side by side.
    """
    if not items:
        raise ValueError(f"task {name!r}: no items to write")
    if passages is not None:
        missing = [item.id for item in items if item.id not in passages]
        if missing:
            raise ValueError(
                f"task {name!r}: no passages for {len(missing)} question(s), e.g. {missing[:3]}"
            )
    task_name = name if passages is None else name + RAG_SUFFIX
    task_dir = Path(task_dir).resolve()
    task_dir.mkdir(parents=True, exist_ok=True)
    data_path = task_dir / f"{task_name}.jsonl"

    rows = [
        {
            "id": item.id,
            "prompt": format_prompt(item.question, passages[item.id] if passages else ()),
            "choices": item.choices,
            "answer": item.answer,
            # The question's source document; named apart from lm-eval's own doc_id (a row
            # index) so neither shadows the other.
            "source_doc": item.doc_id,
        }
        for item in items
    ]
    write_atomic(data_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    spec = {
        "task": task_name,
        # The HF "json" builder reads the local file; no hub access. The path is absolute
        # because lm-eval resolves data_files against the working directory, not the YAML.
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_path)}},
        "test_split": "test",
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
    write_atomic(task_dir / f"{task_name}.yaml", yaml.safe_dump(spec, sort_keys=False))
    return task_name

