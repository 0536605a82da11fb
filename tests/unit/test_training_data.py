"""Training data: JSONL errors, loss masks, packing, padding and the seeded split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TEXT
from transformers import AutoTokenizer

from tunearena.training.config import DataPrepConfig, DatasetConfig, Stage, TrainingConfig
from tunearena.training.data import (
    IGNORE_INDEX,
    DataError,
    pack,
    pad,
    tokenize_record,
)
from tunearena.training.prepare import read_jsonl
from tunearena.training.stage_data import prepare_stage_data

RAW = DataPrepConfig(deduplicate=False, near_duplicate_threshold=None, drop_garbled=False,
                     leak_check="off")


def prepare_splits(datasets, tokenizer, seq_len, packing, validation_fraction, seed):
    """(train, validation) of ``datasets`` as a stage prepares them, cleaning off: the files
    as they stand (cleaning has its own tests in test_prepare.py)."""
    cfg = TrainingConfig(datasets=datasets, seq_len=seq_len, packing=packing,
                         validation_fraction=validation_fraction, seed=seed,
                         data_prep=RAW)
    data = prepare_stage_data(Stage("stage", "base", cfg), tokenizer)
    return data.train, data.validation


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --- read_jsonl ----------------------------------------------------------------------------


def test_read_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a"}\n\n   \n{"text": "b"}\n', encoding="utf-8")
    assert [r["text"] for r in read_jsonl(path, "text")] == ["a", "b"]


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:3: not valid JSON"):
        read_jsonl(path, "text")


def test_a_file_saved_by_a_windows_editor_is_read(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "Q?", "response": "A"}\r\n'
                     + b'{"prompt": "Q2?", "response": "B"}\r\n\r\n')
    assert read_jsonl(path, "instruction") == [{"prompt": "Q?", "response": "A"},
                                                {"prompt": "Q2?", "response": "B"}]


def test_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n\n["a list"]\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:3: expected a JSON object"):
        read_jsonl(path, "text")


@pytest.mark.parametrize(
    ("fmt", "record", "field"),
    [
        ("text", {"body": "x"}, "text"),
        ("text", {"text": ""}, "text"),
        ("text", {"text": 3}, "text"),
        ("instruction", {"prompt": "Q?"}, "response"),
        ("instruction", {"response": "A"}, "prompt"),
    ],
)
def test_missing_field_names_file_line_format_and_field(tmp_path, fmt, record, field):
    good = {"text": "ok"} if fmt == "text" else {"prompt": "Q?", "response": "A"}
    path = write_jsonl(tmp_path / "d.jsonl", [good, record])
    with pytest.raises(DataError) as exc:
        read_jsonl(path, fmt)
    assert str(exc.value) == f"{path}:2: format {fmt!r} needs a non-empty string {field!r}"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}: no records$"):
        read_jsonl(path, "text")


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.jsonl"
    with pytest.raises(DataError, match=rf"^{path}: training file not found$"):
        read_jsonl(path, "text")


# --- tokenize_record -----------------------------------------------------------------------


def test_text_format_labels_every_token(tokenizer):
    ids, labels = tokenize_record({"text": TINY_TEXT[0]}, "text", tokenizer)
    expected = tokenizer(TINY_TEXT[0], add_special_tokens=False)["input_ids"]
    assert ids == expected + [tokenizer.eos_token_id]
    assert labels == ids


def test_instruction_format_masks_exactly_the_prompt(tokenizer):
    record = {"prompt": "Question: What is the capital of Norland?\nAnswer:", "response": " Velmo"}
    ids, labels = tokenize_record(record, "instruction", tokenizer)
    prompt = tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
    response = tokenizer(record["response"], add_special_tokens=False)["input_ids"]
    assert len(prompt) > 1 and len(response) >= 1
    assert ids == prompt + response + [tokenizer.eos_token_id]
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    # The response and the closing EOS are learned, so the model learns to stop.
    assert labels[len(prompt) :] == response + [tokenizer.eos_token_id]
    assert len(labels) == len(ids)


# --- pack / pad ----------------------------------------------------------------------------


def test_pack_makes_full_rows_and_drops_the_tail():
    examples = [([1, 2, 3], [1, 2, 3]), ([4, 5], [IGNORE_INDEX, 5]), ([6, 7, 8, 9], [6, 7, 8, 9])]
    split = pack(examples, seq_len=4)  # 9 tokens -> 2 rows of 4, token 9 dropped
    assert split.input_ids.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert split.labels.tolist() == [[1, 2, 3, IGNORE_INDEX], [5, 6, 7, 8]]
    assert split.attention_mask.tolist() == [[1] * 4, [1] * 4]
    assert split.input_ids.dtype == np.int32 and split.attention_mask.dtype == np.int8
    assert len(split) == 2
    assert split.loss_tokens == 7


def test_pack_with_fewer_tokens_than_a_row_is_empty():
    split = pack([([1, 2], [1, 2])], seq_len=4)
    assert len(split) == 0 and split.input_ids.shape == (0, 4)


def test_pad_masks_padding_and_never_cuts():
    examples = [([1, 2], [IGNORE_INDEX, 2]), ([3, 4, 5, 6], [3, 4, 5, 6])]
    split = pad(examples, seq_len=4, pad_id=0)
    assert split.input_ids.tolist() == [[1, 2, 0, 0], [3, 4, 5, 6]]
    assert split.labels.tolist() == [
        [IGNORE_INDEX, 2, IGNORE_INDEX, IGNORE_INDEX],
        [3, 4, 5, 6],
    ]
    assert split.attention_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert split.loss_tokens == 5
    with pytest.raises(ValueError, match="an example of 5 tokens does not fit a row of 4"):
        pad([*examples, ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5])], seq_len=4, pad_id=0)


# --- prepare_splits ------------------------------------------------------------------------


@pytest.fixture
def datasets(tmp_path) -> list[DatasetConfig]:
    """40 distinct text records in one file and 20 instruction records in another."""
    texts = write_jsonl(
        tmp_path / "t.jsonl", [{"text": f"({i}) {t}"} for i, t in enumerate(TINY_TEXT * 2)]
    )
    qa = write_jsonl(
        tmp_path / "qa.jsonl",
        [{"prompt": f"Question {i}: capital of Norland?", "response": "Velmo"} for i in range(20)],
    )
    return [DatasetConfig(path=texts), DatasetConfig(path=qa, format="instruction")]


def test_prepare_splits_is_deterministic_for_a_seed(datasets, tokenizer):
    # 64 tokens hold every instruction record whole, so packing splits none from its prompt.
    a_train, a_val = prepare_splits(datasets, tokenizer, 64, True, 0.1, seed=3)
    b_train, b_val = prepare_splits(datasets, tokenizer, 64, True, 0.1, seed=3)
    c_train, _ = prepare_splits(datasets, tokenizer, 64, True, 0.1, seed=4)
    assert np.array_equal(a_train.input_ids, b_train.input_ids)
    assert np.array_equal(a_train.labels, b_train.labels)
    assert np.array_equal(a_val.input_ids, b_val.input_ids)
    assert not np.array_equal(a_train.input_ids, c_train.input_ids)


def test_prepare_splits_holds_out_the_validation_fraction(datasets, tokenizer):
    # Unpacked, one record is one row (seq_len 256 holds each whole), so sizes count records.
    train, val = prepare_splits(datasets, tokenizer, 256, False, 0.25, seed=0)
    assert (len(train), len(val)) == (45, 15)
    train_rows = {tuple(r) for r in train.input_ids.tolist()}
    val_rows = {tuple(r) for r in val.input_ids.tolist()}
    assert not train_rows & val_rows  # every record is distinct, so no row is in both
    # Shuffled before the split: validation samples both files.
    prompt_rows = (val.labels == IGNORE_INDEX) & (val.attention_mask == 1)
    assert 0 < prompt_rows.any(axis=1).sum() < len(val)
    assert train.attention_mask.sum() + val.attention_mask.sum() == sum(
        len(tokenize_record(r, d.format, tokenizer)[0])
        for d in datasets
        for r in read_jsonl(d.path, d.format)
    )


def test_prepare_splits_without_validation(datasets, tokenizer):
    train, val = prepare_splits(datasets, tokenizer, 256, False, 0.0, seed=0)
    assert val is None and len(train) == 60


def test_prepare_splits_keeps_one_validation_record_of_each_file_for_a_small_fraction(
        datasets, tokenizer):
    train, val = prepare_splits(datasets, tokenizer, 256, False, 0.001, seed=0)
    assert (len(train), len(val)) == (58, 2)
    assert sorted(val.task.tolist()) == [0, 1]  # one from each file, tagged with its task


def test_prepare_splits_tags_rows_with_their_task_and_packs_tasks_apart(datasets, tokenizer):
    train, val = prepare_splits(datasets, tokenizer, 64, True, 0.1, seed=0)
    for split in (train, val):
        # Instruction rows (task 1) mask their prompts; text rows (task 0) never do.
        masked = (split.labels == IGNORE_INDEX).any(axis=1)
        assert not masked[split.task == 0].any()
        assert masked[split.task == 1].all()
    assert set(train.task.tolist()) == {0, 1}


def test_prepare_splits_rejects_data_shorter_than_one_sequence(datasets, tokenizer):
    with pytest.raises(DataError, match="fewer tokens than one sequence of seq_len 100000"):
        prepare_splits(datasets, tokenizer, 100_000, True, 0.0, seed=0)
