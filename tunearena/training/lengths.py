"""Training records against ``seq_len`` and ``seq_len`` against the model's context, counted
before any training starts.

A record longer than ``seq_len`` cannot be trained on whole: a padded row would cut it, and
packing would split an instruction or chat record so that its response lands in another row
than its prompt. Plain ``text`` records are split by packing by design and are not counted.
Such records are counted per file when the prepare step runs (for every stage, before the
first one trains) and stop the run naming the file, unless ``training.long_records: drop``
leaves them out, counted in the data report. Nothing is ever cut silently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from tunearena.errors import UserError
from tunearena.remote_code import trust_remote_code
from tunearena.training.formats import DataError, tokenize_record

if TYPE_CHECKING:
    from tunearena.training.config import TrainingConfig
    from tunearena.training.prepare import PreparedData

CONTEXT_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")
"""Config attributes holding a model's context in tokens, in the order lm-eval reads them."""


class SeqLenError(UserError, ValueError):
    """``training.seq_len`` is longer than the model's context."""


class LongRecordsError(DataError):
    """Training records longer than ``seq_len``, with ``long_records: error``."""


def model_context(model_dir: str) -> int | None:
    """The model's context in tokens from its config (the text model's, for a composite
    config), or None when the config states none or cannot be read (a hub id offline: the
    model's own loading names that problem)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code())
    except (OSError, ValueError):  # no such dir or id, or a config without a model type
        return None
    config = getattr(config, "text_config", None) or config
    for attr in CONTEXT_ATTRS:
        if (value := getattr(config, attr, None)) is not None:
            return int(value)
    return None


def check_seq_len(training: TrainingConfig, model_dir: str, where: str) -> None:
    """Refuse a ``seq_len`` (of stage ``where``) beyond what the model's positions reach."""
    context = model_context(model_dir)
    if context is not None and training.seq_len > context:
        raise SeqLenError(
            f"{where}: training.seq_len {training.seq_len} is longer than the model's context "
            f"of {context} tokens (max_position_embeddings of {model_dir}); set seq_len to at "
            f"most {context}")


def counts_long(fmt: str, packing: bool) -> bool:
    """Whether a record of format ``fmt`` longer than ``seq_len`` would be cut or split
    apart: every record when padded, all but plain text when packed."""
    return not packing or fmt != "text"


def token_lengths(records: Sequence[dict], fmt: str, tokenizer,
                  chat_template: bool = False) -> list[int]:
    """Each record's length in tokens, as training tokenises it (EOS or end of turn
    included; through the chat template when the run's prompts go through it)."""
    # Records past the model's limit are measured here on purpose, to be named; transformers'
    # warning that such a sequence would break the model only alarms.
    quiet = logging.getLogger("transformers.tokenization_utils_base")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return [len(tokenize_record(r, fmt, tokenizer, chat_template)[0]) for r in records]
    finally:
        quiet.setLevel(level)


def fit_to_seq_len(prepared: PreparedData, tokenizer, training: TrainingConfig,
                   chat_template: bool = False) -> PreparedData:
    """``prepared`` with its training and validation records measured against ``seq_len``:
    the report gains ``over_seq_len`` (records longer) and ``longest_tokens``; with
    ``long_records: drop`` those records are left out, counted as ``dropped_over_seq_len``.
    Records of a format packing splits by design are returned as they are."""
    if not counts_long(prepared.format, training.packing):
        return prepared
    seq_len = training.seq_len
    lengths = {split: token_lengths(getattr(prepared, split), prepared.format, tokenizer,
                                    chat_template)
               for split in ("train", "validation")}
    over = sum(n > seq_len for split in lengths.values() for n in split)
    report = {**prepared.report, "over_seq_len": over,
              "longest_tokens": max((n for s in lengths.values() for n in s), default=0)}
    if not over or training.long_records != "drop":
        return replace(prepared, report=report)
    kept = {split: [r for r, n in zip(getattr(prepared, split), lengths[split], strict=True)
                    if n <= seq_len] for split in lengths}
    if not kept["train"]:
        raise LongRecordsError(f"{report.get('path')}: every training record is longer than "
                               f"training.seq_len {seq_len}; raise seq_len")
    report |= {"dropped_over_seq_len": over, "train": len(kept["train"]),
               "validation": len(kept["validation"])}
    return replace(prepared, train=kept["train"], validation=kept["validation"], report=report)


def check_long_records(prepared: Sequence[PreparedData], training: TrainingConfig,
                       context: int | None, where: str) -> None:
    """Stop with one error naming every file of stage ``where`` that holds records longer
    than ``seq_len`` (as ``fit_to_seq_len`` counted them), unless they were dropped."""
    if training.long_records == "drop":
        return
    long = [p.report for p in prepared if p.report.get("over_seq_len")]
    if not long:
        return
    # A preference pair is never packed: each reply is padded to seq_len on its own.
    how = ("cut" if not training.packing or training.kind != "sft"
           else "split, their responses apart from their prompts (packing)")
    files = "; ".join(f"{Path(r['path'])}: {r['over_seq_len']} record(s), the longest "
                      f"{r['longest_tokens']} tokens" for r in long)
    room = f" (the model's context is {context})" if context else ""
    raise LongRecordsError(
        f"{where}: records longer than training.seq_len {training.seq_len} tokens would be "
        f"{how}: {files}. Raise training.seq_len{room}, shorten or split those records, or "
        "set training.long_records: drop to leave them out (counted in the data report)")
