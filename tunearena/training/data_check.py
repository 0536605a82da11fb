"""A stage's training files checked as the prepare step will read them, cheaply, before any
cluster resource is claimed.

``tunearena check`` and the start of every run read each training file, clean it and count
what is left, split it, and measure its records against ``seq_len``: a file whose records
are all empty, or all leaked benchmark questions, or too long to train on whole, fails in
seconds, naming the file, rather than after the retrieval steps or inside the workers. The
prepare step's own functions do the work, so the check and the run count alike; two parts are
left to the prepare step, which redoes every part and remains the last word:

- **Near-duplicates** are not looked for: they keep the first of each group, so they never
  empty a file, and MinHash over a large file is the costliest step.
- **Only records that could be too long are tokenised**: a tokenizer spends at most one
  token on each UTF-8 byte (four for a character at most), so a record whose characters,
  times four, plus ``TEMPLATE_ALLOWANCE`` fit in ``seq_len`` cannot be longer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from tunearena.training.config import DatasetConfig, Stage, TrainingConfig
from tunearena.training.formats import require_chat_template, uses_chat_template
from tunearena.training.lengths import check_long_records, counts_long, fit_to_seq_len
from tunearena.training.prepare import PreparedData, prepare_dataset, record_text

TEMPLATE_ALLOWANCE = 64
"""Tokens a record may gain from its format beyond its own text: EOS, a chat template's role
headers and end-of-turn tokens."""


def check_stage_files(stage: Stage, questions: Mapping[str, list[str]]) -> list[PreparedData]:
    """Each of ``stage``'s files (its own and its replay datasets) read, cleaned (all but
    near-duplicates), leak-checked against the benchmark ``questions`` and split, as the
    prepare step will. Raises ``DataError`` naming the file when a record is broken, when no
    record is left after cleaning (with how many were read and why they were dropped), or
    when none is left to train on after the split."""
    t = stage.training
    prep = t.data_prep.model_copy(update={"near_duplicate_threshold": None})
    replayed = stage.replay.datasets if stage.replay is not None else []
    asked = dict(questions)

    def prepared(ds: DatasetConfig) -> PreparedData:
        return prepare_dataset(ds, prep, t.validation_fraction, t.seed, asked)

    return [prepared(ds) for ds in [*t.datasets, *replayed]]


def could_exceed(record: dict, fmt: str, seq_len: int) -> bool:
    """Whether ``record`` may be longer than ``seq_len`` tokens (see the module's note)."""
    return 4 * len(record_text(record, fmt)) + TEMPLATE_ALLOWANCE > seq_len


def check_record_lengths(prepared: list[PreparedData], training: TrainingConfig, tokenizer:
                         Callable[[], object], chat_template: bool, context: int | None,
                         where: str) -> None:
    """Stop, as the prepare step would, on records longer than ``training.seq_len``: with
    ``long_records: error``, one ``LongRecordsError`` naming every such file and its longest
    record; with ``drop``, only when no training record would be left. ``tokenizer`` is
    called (to load the base model's) only when some record could be too long."""
    seq_len = training.seq_len
    suspects = []
    for data in prepared:
        if not counts_long(data.format, training.packing):
            continue
        train, validation = ([r for r in split if could_exceed(r, data.format, seq_len)]
                             for split in (data.train, data.validation))
        # With drop, a file fails only when every record is over; one that cannot be is fine.
        if training.long_records == "drop" and len(train) < len(data.train):
            continue
        if train or validation:
            suspects.append(replace(data, train=train, validation=validation))
    if not suspects:
        return
    tok = tokenizer()
    for data in suspects:
        if uses_chat_template(data.format, chat_template):
            require_chat_template(tok, f"{data.report['path']}: format {data.format!r}")
    measured = [fit_to_seq_len(data, tok, training, chat_template) for data in suspects]
    check_long_records(measured, training, context, where)
