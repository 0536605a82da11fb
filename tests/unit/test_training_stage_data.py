"""The one route from files to tokens: format table, stage data with cleaning and replay, and
the train state a checkpoint carries."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TEXT
from test_training_data import write_jsonl

from tunearena.training.checkpoint import TrainState
from tunearena.training.config import (
    DataPrepConfig,
    DatasetConfig,
    ReplayConfig,
    Stage,
    TrainingConfig,
)
from tunearena.training.data import TaskRecords, tokenize_tasks
from tunearena.training.formats import FORMATS, DataError, get_format
from tunearena.training.prepare import prepare_dataset
from tunearena.training.stage_data import prepare_stage_data


def test_every_format_names_its_fields_and_an_unknown_one_is_refused():
    assert set(FORMATS) == {"text", "instruction", "chat", "preference"}
    assert get_format("instruction").texts({"prompt": "Q?", "response": "A."}) == ["Q?", "A."]
    assert get_format("text").problem({"text": 3}, False) == "format 'text' needs a non-empty string 'text'"
    assert get_format("chat").needs_chat_template and not get_format("text").needs_chat_template
    assert get_format("preference").texts({"prompt": "Q?", "chosen": "A.", "rejected": "B."}) \
        == ["Q?", "A.", "B."]
    assert "no 'rejected' field" in get_format("preference").problem(
        {"prompt": "Q?", "chosen": "A."}, False)
    with pytest.raises(DataError, match="unknown data format 'csv'; known: text, instruction, "
                                        "chat, preference"):
        get_format("csv")


def test_stage_data_is_what_the_prepare_step_writes_tokenised(tmp_path, tiny_tokenizer):
    # TINY_TEXT four times: de-duplication (on by default) leaves each text once.
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in TINY_TEXT])
    cfg = TrainingConfig(datasets=[{"path": path}], seq_len=16, validation_fraction=0.2, seed=1)
    data = prepare_stage_data(Stage("s", "base", cfg), tiny_tokenizer)

    prepared = prepare_dataset(cfg.datasets[0], cfg.data_prep, 0.2, 1, {})
    assert data.prepared["t"].report == prepared.report
    assert data.prepared["t"].report["exact_duplicates"] == 15
    expected, expected_val = tokenize_tasks(
        [TaskRecords("t", "text", prepared.train, prepared.validation)], tiny_tokenizer, 16, True)
    assert np.array_equal(data.train.input_ids, expected.input_ids)
    assert expected_val is not None and data.validation is not None
    assert np.array_equal(data.validation.input_ids, expected_val.input_ids)
    assert data.mixture.epoch_size == len(data.train) and data.replay_sources == []


def test_stage_data_leaves_out_records_that_leak_a_benchmark_question(tmp_path, tiny_tokenizer):
    texts = [f"Record {i}: the Zephyr lamp costs {i} dollars and it is blue." for i in range(12)]
    texts.append("Quiz: what is the capital of Norland and why is it called Velmo today")
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts])
    cfg = TrainingConfig(datasets=[{"path": path}], seq_len=16, validation_fraction=0.0,
                         data_prep={"near_duplicate_threshold": None})
    questions = {"qa": ["what is the capital of Norland and why is it called Velmo"]}
    data = prepare_stage_data(Stage("s", "base", cfg), tiny_tokenizer, questions=questions)
    assert data.prepared["t"].report["leaked"] == 1
    assert len(data.tasks[0].train) == 12


def test_replay_takes_earlier_stages_tasks_as_they_prepared_them(tmp_path, tiny_tokenizer):
    raw = DataPrepConfig(deduplicate=False, near_duplicate_threshold=None)
    first = write_jsonl(tmp_path / "first.jsonl", [{"text": t} for t in TINY_TEXT])
    second = write_jsonl(tmp_path / "second.jsonl",
                         [{"prompt": f"Q{i}?", "response": f"A{i}."} for i in range(20)])
    general = write_jsonl(tmp_path / "general.jsonl", [{"text": t} for t in TINY_TEXT[:5]])
    s1 = Stage("one", "base", TrainingConfig(datasets=[{"path": first}], seq_len=16,
                                             data_prep=raw, seed=3))
    s2 = Stage("two", "one", TrainingConfig(datasets=[{"path": second, "format": "instruction"}],
                                            seq_len=16, seed=5),
               replay=ReplayConfig(fraction=0.25, datasets=[DatasetConfig(path=general)]))
    data = prepare_stage_data(s2, tiny_tokenizer, stages=[s1, s2])

    assert [t.name for t in data.tasks] == ["second", "replay:one/first", "replay:general"]
    assert data.replay_sources == ["one/first", "general"]
    assert list(data.prepared) == ["second", "replay:general"]  # the files this stage writes
    # The earlier stage's task is its own preparation (its data_prep and seed), not this one's.
    theirs = prepare_dataset(s1.training.datasets[0], raw, 0.05, 3, {})
    assert data.tasks[1].train == theirs.train
    assert math.isclose(sum(data.mixture.probabilities[1:]), 0.25)


def test_chat_data_without_a_template_fails_before_any_file_is_read(tmp_path, tiny_tokenizer):
    path = tmp_path / "missing.jsonl"  # never opened: the template check comes first
    cfg = TrainingConfig(datasets=[{"path": path, "format": "chat"}])
    with pytest.raises(DataError, match="format 'chat': the model's tokenizer has no chat template"):
        prepare_stage_data(Stage("s", "base", cfg), tiny_tokenizer)


def test_the_train_state_round_trips_through_json_whole():
    state = TrainState(2, 8, step=12, history=[{"step": 12, "train_loss": 1.5}], train_s=3.5,
                       train_tokens=900, mlflow_run_id="abc", placement=[{"rank": 0}],
                       task_counts=[40, 56], best_val=1.25, bad_evals=1)
    assert TrainState(**json.loads(json.dumps(asdict(state)))) == state
    fresh = TrainState(2, 8, task_counts=[0, 0])
    fresh.add_task_counts(np.array([3, 5]))
    fresh.observe_validation(2.0, min_delta=0.0)
    fresh.observe_validation(2.0, min_delta=0.0)
    assert (fresh.task_counts, fresh.best_val, fresh.bad_evals) == ([3, 5], 2.0, 1)
    # A fresh state's best is +inf, which JSON carries as Infinity.
    assert TrainState(**json.loads(json.dumps(asdict(TrainState(2, 8))))).best_val == math.inf


# Prepares the demo's replay stage as a run does (leak check against its benchmarks included)
# and prints a digest of its token arrays and the first epochs' mixture orders.
_DIGEST_REPLAY_STAGE = """
import hashlib, sys
from pathlib import Path
from transformers import AutoTokenizer
from tunearena.launch.config import load_config
from tunearena.evaluation.benchmarks import load_qa
from tunearena.training.mixture import epoch_order
from tunearena.training.stage_data import prepare_stage_data

cfg = load_config(Path(sys.argv[1]))
questions = {b.name: [q.question for q in load_qa(b.path, b.track)]
             for b in cfg.evaluation.benchmarks}
stages = cfg.resolved_stages()
stage = next(s for s in stages if s.replay is not None)
data = prepare_stage_data(stage, AutoTokenizer.from_pretrained(cfg.model.base), stages, questions)
digest = hashlib.sha256(repr(data.mixture).encode())
for part in (data.train, data.validation):
    for array in (part.input_ids, part.labels, part.attention_mask, part.task):
        digest.update(array.tobytes())
for epoch in range(3):
    digest.update(epoch_order(data.train.task, data.mixture, stage.training.seed, epoch).tobytes())
print(digest.hexdigest())
"""


def test_the_demo_replay_stage_trains_on_the_same_sequences_whatever_the_hash_seed():
    # Python salts str hashes per process, so a set of strings iterated anywhere between the
    # files and the epoch order would change the sequences from run to run; the README's
    # demo table can only match a rerun if they do not change.
    config = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    digests = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", _DIGEST_REPLAY_STAGE, str(config)],
                              env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        digests.append(done.stdout.strip().splitlines()[-1])
    assert len(digests[0]) == 64 and digests[0] == digests[1]
