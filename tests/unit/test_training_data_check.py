"""The input check's pass over training files: counted after cleaning, and measured against
``seq_len`` where a record could be too long, as the prepare step will."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tunearena.training.config import DatasetConfig, TrainingConfig, resolve_stages
from tunearena.training.data_check import (
    check_record_lengths,
    check_stage_files,
    could_exceed,
)
from tunearena.training.formats import DataError, tokenize_record
from tunearena.training.lengths import LongRecordsError


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def stage_of(path: Path, fmt: str = "instruction", **training):
    cfg = TrainingConfig(datasets=[DatasetConfig(path=path, format=fmt)], **training)
    return resolve_stages(cfg, [])[0]


QA = [{"prompt": f"Question: what is item {i}?\nAnswer:", "response": f" item {i}"}
      for i in range(10)]


def test_a_file_cleaning_empties_is_refused_with_its_counts(tmp_path):
    path = write_jsonl(tmp_path / "dups.jsonl", [{"prompt": "", "response": "a"}] * 3)
    with pytest.raises(DataError, match=r"dups.jsonl: no record is left after cleaning: 3 read, "
                                        r"3 dropped as empty or garbled"):
        check_stage_files(stage_of(path), {})


def test_leaks_are_counted_against_the_benchmark_questions(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", QA[:2])
    asked = {"mine": [QA[0]["prompt"], QA[1]["prompt"]]}
    with pytest.raises(DataError, match="2 dropped as holding a benchmark question"):
        check_stage_files(stage_of(path), asked)
    (prepared,) = check_stage_files(stage_of(path, data_prep={"leak_check": "warn"}), asked)
    assert prepared.report["leaked"] == 2 and prepared.report["kept"] == 2


def test_could_exceed_never_misses_a_record_that_is_over(tiny_tokenizer):
    """The cheap pre-filter by characters: every record it lets through is within seq_len."""
    rng = random.Random(0)
    alphabet = "abc é二😀 \n?"  # one to four UTF-8 bytes a character
    for _ in range(200):
        record = {"prompt": "".join(rng.choices(alphabet, k=rng.randint(0, 40))),
                  "response": "".join(rng.choices(alphabet, k=rng.randint(1, 40)))}
        tokens = len(tokenize_record(record, "instruction", tiny_tokenizer)[0])
        for seq_len in (16, 64, 128, 256):
            assert tokens <= seq_len or could_exceed(record, "instruction", seq_len)


def test_long_records_are_named_and_only_suspects_are_tokenised(tmp_path, tiny_tokenizer):
    long = {"prompt": "Question: tell all.\nAnswer:", "response": " lamp" * 400}
    path = write_jsonl(tmp_path / "qa.jsonl", [*QA, long])
    stage = stage_of(path, seq_len=256, validation_fraction=0.0)  # QA: under 64 characters
    prepared = check_stage_files(stage, {})
    loads = []

    def tokenizer():
        loads.append(1)
        return tiny_tokenizer

    with pytest.raises(LongRecordsError, match=r"qa.jsonl: 1 record\(s\), the longest \d+ tokens"):
        check_record_lengths(prepared, stage.training, tokenizer, False, 512, "stage ft")
    assert loads == [1]
    # Short records only: nothing could be over, so no tokenizer is even loaded.
    short = write_jsonl(tmp_path / "short.jsonl", QA)
    check_record_lengths(check_stage_files(stage_of(short), {}), stage.training,
                         tokenizer, False, 512, "stage ft")
    assert loads == [1]


def test_with_drop_only_a_file_with_nothing_left_fails(tmp_path, tiny_tokenizer):
    long = [{"prompt": f"Question {i}: tell all.\nAnswer:", "response": f" lamp{i}" * 200}
            for i in range(3)]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [*QA, *long])
    stage = stage_of(mixed, seq_len=64, long_records="drop", validation_fraction=0.0)
    check_record_lengths(check_stage_files(stage, {}), stage.training, lambda: tiny_tokenizer,
                         False, None, "stage ft")
    all_long = write_jsonl(tmp_path / "long.jsonl", long)
    stage = stage_of(all_long, seq_len=64, long_records="drop", validation_fraction=0.0)
    with pytest.raises(LongRecordsError, match="every training record is longer"):
        check_record_lengths(check_stage_files(stage, {}), stage.training,
                             lambda: tiny_tokenizer, False, None, "stage ft")
