"""Training records longer than seq_len, and seq_len longer than the model's context, are
counted and refused before any training, never cut silently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import with_context
from test_training_data import write_jsonl

from tunearena.launch.config import load_config
from tunearena.launch.inputs import check_inputs
from tunearena.training.config import DataPrepConfig, Stage, TrainingConfig
from tunearena.training.data import IGNORE_INDEX, TaskRecords, tokenize_tasks
from tunearena.training.lengths import (
    LongRecordsError,
    SeqLenError,
    check_seq_len,
    model_context,
    token_lengths,
)
from tunearena.training.stage_data import prepare_stage_data
from tunearena.training.stages import prepare_stage

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
RAW = DataPrepConfig(deduplicate=False, near_duplicate_threshold=None, drop_garbled=False,
                     leak_check="off")
LONG_RESPONSE = "Velmo is the capital of Norland and the Zephyr lamp costs 40 dollars. " * 3


@pytest.fixture
def qa_file(tmp_path) -> Path:
    """Ten short instruction records and two whose response is long."""
    rows = [{"prompt": f"Question {i}: capital of Norland?\nAnswer:", "response": " Velmo"}
            for i in range(10)]
    rows += [{"prompt": f"Question {i}: tell me everything?\nAnswer:",
              "response": f" {i} {LONG_RESPONSE}"} for i in (10, 11)]
    return write_jsonl(tmp_path / "qa.jsonl", rows)


def stage(path: Path, **training) -> Stage:
    cfg = TrainingConfig(datasets=[{"path": path, "format": "instruction"}], seq_len=64,
                         validation_fraction=0.0, data_prep=RAW, **training)
    return Stage("qa", "base", cfg)


def test_long_instruction_records_stop_the_prepare_step_naming_the_file(
        tmp_path, qa_file, tiny_tokenizer):
    longest = max(token_lengths(
        [json.loads(line) for line in qa_file.read_text().splitlines()], "instruction",
        tiny_tokenizer))
    assert longest > 64
    # Packed, they would be split, their responses apart from their prompts.
    with pytest.raises(LongRecordsError) as e:
        prepare_stage(stage(qa_file), {}, tmp_path / "data", tiny_tokenizer, 256)
    message = str(e.value)
    assert (f"stage qa: records longer than training.seq_len 64 tokens would be split, their "
            f"responses apart from their prompts (packing): {qa_file}: 2 record(s), the longest "
            f"{longest} tokens. Raise training.seq_len (the model's context is 256)") in message
    assert "training.long_records: drop" in message
    assert not (tmp_path / "data").exists()  # nothing written: the run stops there
    # Padded, they would be cut; the preflight's route counts them the same way.
    with pytest.raises(LongRecordsError, match=rf"would be cut: {qa_file}: 2 record\(s\)"):
        prepare_stage_data(stage(qa_file, packing=False), tiny_tokenizer)


def test_the_drop_policy_leaves_long_records_out_and_counts_them(
        tmp_path, qa_file, tiny_tokenizer):
    files, reports = prepare_stage(stage(qa_file, long_records="drop"), {}, tmp_path / "data",
                                   tiny_tokenizer)
    report = reports["qa"]
    assert (report["over_seq_len"], report["dropped_over_seq_len"], report["train"]) == (2, 2, 10)
    kept = [json.loads(line) for line in files["qa train"].read_text().splitlines()]
    assert len(kept) == 10 and not any(LONG_RESPONSE in r["response"] for r in kept)
    # The preflight's route drops the same ones; every trained row holds a whole record.
    data = prepare_stage_data(stage(qa_file, long_records="drop", packing=False),
                              tiny_tokenizer)
    assert data.prepared["qa"].report["dropped_over_seq_len"] == 2 and len(data.train) == 10
    assert (data.train.labels != IGNORE_INDEX).any(axis=1).all()


def test_plain_text_is_split_by_packing_and_not_counted(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": f"{i} {LONG_RESPONSE}"} for i in range(4)])
    cfg = TrainingConfig(datasets=[{"path": path}], seq_len=16, validation_fraction=0.0,
                         data_prep=RAW)
    data = prepare_stage_data(Stage("t", "base", cfg), tiny_tokenizer)
    assert "over_seq_len" not in data.prepared["t"].report and len(data.train) > 4
    # Padded, plain text would be cut: refused too.
    with pytest.raises(LongRecordsError, match="would be cut"):
        prepare_stage_data(Stage("t", "base", cfg.model_copy(update={"packing": False})),
                           tiny_tokenizer)


def test_tokenising_refuses_a_long_record_that_reached_it(tiny_tokenizer):
    # A replayed earlier stage's records, or a seq_len changed on --resume, meet it here.
    records = [{"prompt": "Q?", "response": LONG_RESPONSE}]
    with pytest.raises(LongRecordsError, match=r"task old: 1 record\(s\) longer than seq_len 32"):
        tokenize_tasks([TaskRecords("old", "instruction", records, [])], tiny_tokenizer, 32, True)
    train, _ = tokenize_tasks([TaskRecords("old", "instruction", records, [])], tiny_tokenizer,
                              512, False)
    assert np.all(train.attention_mask.sum(axis=1) == token_lengths(
        records, "instruction", tiny_tokenizer))


def test_seq_len_longer_than_the_models_context_is_refused(tmp_path, tiny_model_dir):
    small = with_context(tiny_model_dir, tmp_path / "small", 64)
    assert model_context(str(small)) == 64
    check_seq_len(TrainingConfig(seq_len=64), str(small), "stage ft")
    with pytest.raises(SeqLenError, match=r"stage ft: training.seq_len 128 is longer than the "
                                          r"model's context of 64 tokens"):
        check_seq_len(TrainingConfig(seq_len=128), str(small), "stage ft")
    # The input check refuses it before anything starts (the demo's stages ask for 256).
    with pytest.raises(SeqLenError, match="stage docs: training.seq_len 256"):
        check_inputs(load_config(DEMO, [f"model.base={small}"]))


def test_the_demo_training_data_fits_its_seq_len(tmp_path):
    from transformers import AutoTokenizer

    cfg = load_config(DEMO)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.base)
    for s in cfg.resolved_stages():
        check_seq_len(s.training, cfg.model.base, s.name)
        _, reports = prepare_stage(s, {}, tmp_path / "data", tokenizer)
        counted = {task: r["over_seq_len"] for task, r in reports.items() if "over_seq_len" in r}
        assert all(n == 0 for n in counted.values()), counted
        assert counted or s.name == "docs"  # the QA stages' instruction records are counted
