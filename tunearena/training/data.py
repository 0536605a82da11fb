"""Training data: JSONL records -> token ids and loss masks -> fixed-length sequences.

Tokenisation runs once on the driver, before any worker is started, so a broken record fails
the run in seconds with its file and line, and the workers only index numpy arrays.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunearena.files import iter_jsonl
from tunearena.training.config import DatasetConfig

IGNORE_INDEX = -100
"""Label value that the causal-LM loss skips (prompt tokens, padding)."""

REQUIRED_FIELDS = {"text": ("text",), "instruction": ("prompt", "response")}


class DataError(ValueError):
    """A training file that cannot be used; the message names the file and line."""


def read_jsonl(path: Path, fmt: str) -> list[dict]:
    """The records of a JSONL file in format ``fmt``, each checked for its fields."""
    records = []
    for where, record in iter_jsonl(path, DataError, "training file"):
        for key in REQUIRED_FIELDS[fmt]:
            if not isinstance(record.get(key), str) or not record[key]:
                raise DataError(f"{where}: format {fmt!r} needs a non-empty string {key!r}")
        records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def tokenize_record(record: dict, fmt: str, tokenizer) -> tuple[list[int], list[int]]:
    """(input ids, labels) for one record; every record ends with EOS."""
    eos = [tokenizer.eos_token_id]
    if fmt == "text":
        ids = tokenizer(record["text"], add_special_tokens=False)["input_ids"] + eos
        return ids, list(ids)
    prompt = tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
    response = tokenizer(record["response"], add_special_tokens=False)["input_ids"] + eos
    # Loss on the response only: the model is not taught to write the questions.
    return prompt + response, [IGNORE_INDEX] * len(prompt) + response


@dataclass
class TokenizedSplit:
    """Fixed-length sequences ready for a causal LM (labels are shifted by the model)."""

    input_ids: np.ndarray  # int32 [n, seq_len]
    labels: np.ndarray  # int32 [n, seq_len], IGNORE_INDEX where no loss
    attention_mask: np.ndarray  # int8 [n, seq_len]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def loss_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def pack(examples: Sequence[tuple[list[int], list[int]]], seq_len: int) -> TokenizedSplit:
    """Concatenate examples into full ``seq_len`` rows; the ragged tail is dropped."""
    ids = np.fromiter((t for ex in examples for t in ex[0]), dtype=np.int32)
    labels = np.fromiter((t for ex in examples for t in ex[1]), dtype=np.int32)
    n = len(ids) // seq_len
    ids, labels = ids[: n * seq_len].reshape(n, seq_len), labels[: n * seq_len].reshape(n, seq_len)
    return TokenizedSplit(ids, labels, np.ones_like(ids, dtype=np.int8))


def pad(examples: Sequence[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> TokenizedSplit:
    """One example a row, truncated to ``seq_len`` and right-padded (no loss on padding)."""
    n = len(examples)
    ids = np.full((n, seq_len), pad_id, dtype=np.int32)
    labels = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int32)
    mask = np.zeros((n, seq_len), dtype=np.int8)
    for i, (x, y) in enumerate(examples):
        k = min(len(x), seq_len)
        ids[i, :k], labels[i, :k], mask[i, :k] = x[:k], y[:k], 1
    return TokenizedSplit(ids, labels, mask)


def prepare_splits(
    datasets: Sequence[DatasetConfig],
    tokenizer,
    seq_len: int,
    packing: bool,
    validation_fraction: float,
    seed: int,
) -> tuple[TokenizedSplit, TokenizedSplit | None]:
    """Read, tokenise and split every dataset; returns (train, validation or None)."""
    examples = []
    for ds in datasets:
        examples += [tokenize_record(r, ds.format, tokenizer) for r in read_jsonl(ds.path, ds.format)]
    # Shuffle records before the split so validation is a sample of every file.
    random.Random(seed).shuffle(examples)
    n_val = int(len(examples) * validation_fraction)
    if validation_fraction > 0 and n_val == 0 and len(examples) > 1:
        n_val = 1
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def build(part):
        return pack(part, seq_len) if packing else pad(part, seq_len, pad_id)

    train = build(examples[n_val:])
    if len(train) == 0:
        raise DataError(
            f"the training data holds fewer tokens than one sequence of seq_len {seq_len}"
        )
    val = build(examples[:n_val]) if n_val else None
    return train, (val if val is not None and len(val) else None)
