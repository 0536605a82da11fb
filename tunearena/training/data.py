"""Tokenisation: prepared records -> token ids and loss masks -> fixed-length sequences.

Tokenisation runs once on the driver, before any worker is started, so a broken record fails
the run in seconds, and the workers only index numpy arrays. How each format is rendered and
masked is its row in ``formats.FORMATS``; reading, cleaning and splitting files is
``prepare``'s job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tunearena.training.formats import (
    IGNORE_INDEX,
    DataError,
    TokenizedPair,
    Tokens,
    preference_tokens,
    require_chat_template,
    tokenize_chat,
    tokenize_record,
    uses_chat_template,
)
from tunearena.training.lengths import LongRecordsError, counts_long

if TYPE_CHECKING:
    from tunearena.cluster.preflight import Check


@dataclass
class TokenizedSplit:
    """Fixed-length sequences ready for a causal LM (labels are shifted by the model)."""

    input_ids: np.ndarray  # int32 [n, seq_len]
    labels: np.ndarray  # int32 [n, seq_len], IGNORE_INDEX where no loss
    attention_mask: np.ndarray  # int8 [n, seq_len]
    task: np.ndarray | None = None  # int16 [n]: index into the task names; None: one task

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def loss_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def pack(examples: Sequence[Tokens], seq_len: int) -> TokenizedSplit:
    """Concatenate examples into full ``seq_len`` rows; the ragged tail is dropped."""
    ids = np.fromiter((t for ex in examples for t in ex[0]), dtype=np.int32)
    labels = np.fromiter((t for ex in examples for t in ex[1]), dtype=np.int32)
    n = len(ids) // seq_len
    ids, labels = ids[: n * seq_len].reshape(n, seq_len), labels[: n * seq_len].reshape(n, seq_len)
    return TokenizedSplit(ids, labels, np.ones_like(ids, dtype=np.int8))


def pad(examples: Sequence[Tokens], seq_len: int, pad_id: int) -> TokenizedSplit:
    """One example a row, right-padded to ``seq_len`` (no loss on padding). A longer example
    is a ``ValueError``: it is never cut (``tokenize_tasks`` names the task first)."""
    longest = max((len(x) for x, _ in examples), default=0)
    if longest > seq_len:
        raise ValueError(f"an example of {longest} tokens does not fit a row of {seq_len}")
    n = len(examples)
    ids = np.full((n, seq_len), pad_id, dtype=np.int32)
    labels = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int32)
    mask = np.zeros((n, seq_len), dtype=np.int8)
    for i, (x, y) in enumerate(examples):
        k = min(len(x), seq_len)
        ids[i, :k], labels[i, :k], mask[i, :k] = x[:k], y[:k], 1
    return TokenizedSplit(ids, labels, mask)


def pad_pairs(pairs: Sequence[TokenizedPair], seq_len: int, pad_id: int) -> TokenizedSplit:
    """One preference pair a row of ``2 * seq_len``: the chosen sequence padded to
    ``seq_len``, then the rejected one, so a pair is sampled, sliced and moved as one row
    (``preference.split_pair_rows`` takes it apart on the worker)."""
    chosen = pad([p.chosen for p in pairs], seq_len, pad_id)
    rejected = pad([p.rejected for p in pairs], seq_len, pad_id)
    return TokenizedSplit(*(np.concatenate([a, b], axis=1) for a, b in (
        (chosen.input_ids, rejected.input_ids), (chosen.labels, rejected.labels),
        (chosen.attention_mask, rejected.attention_mask))))


@dataclass
class TaskRecords:
    """One task's records, split, before tokenisation."""

    name: str
    format: str
    train: list[dict]
    validation: list[dict]


def concatenate(parts: Sequence[TokenizedSplit]) -> TokenizedSplit:
    """Stack tasks' splits into one, each row tagged with its task's position in ``parts``."""
    return TokenizedSplit(
        np.concatenate([p.input_ids for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.attention_mask for p in parts]),
        np.concatenate([np.full(len(p), i, dtype=np.int16) for i, p in enumerate(parts)]),
    )


def tokenize_tasks(tasks: Sequence[TaskRecords], tokenizer, seq_len: int, packing: bool,
                   chat_template: bool = False,
                   ) -> tuple[TokenizedSplit, TokenizedSplit | None]:
    """Tokenise each task and pack (or pad) it on its own, so every row belongs to one task;
    returns (train, validation or None), rows tagged with the task's index in ``tasks``.
    ``chat_template``: the run's prompts go through it (see ``tokenize_record``)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def build(records: list[dict], fmt: str, task: str) -> TokenizedSplit:
        pairs = ([preference_tokens(r, tokenizer, chat_template) for r in records]
                 if fmt == "preference" else [])
        examples = ([p.longer for p in pairs] if pairs else
                    [tokenize_record(r, fmt, tokenizer, chat_template) for r in records])
        long = [len(x) for x, _ in examples if len(x) > seq_len] if counts_long(fmt, packing) else []
        if long:
            # The prepare step counted (or dropped) these against this seq_len; a replayed
            # earlier stage's records, or seq_len changed on --resume, meet it only here.
            raise LongRecordsError(
                f"task {task}: {len(long)} record(s) longer than seq_len {seq_len} (the longest "
                f"{max(long)} tokens) would be {'split by packing' if packing else 'cut'}; raise "
                "training.seq_len, shorten those records, or set training.long_records: drop "
                "(and rerun the stage's prepare step, without --resume)")
        if fmt == "preference":
            return pad_pairs(pairs, seq_len, pad_id)
        return pack(examples, seq_len) if packing else pad(examples, seq_len, pad_id)

    trains, vals = [], []
    for task in tasks:
        if uses_chat_template(task.format, chat_template):
            require_chat_template(tokenizer, f"task {task.name}: format {task.format!r}")
        train = build(task.train, task.format, task.name)
        if len(train) == 0:
            raise DataError(f"task {task.name}: its training records hold fewer tokens than one "
                            f"sequence of seq_len {seq_len}")
        trains.append(train)
        vals.append(build(task.validation, task.format, task.name))
    val = concatenate(vals)
    return concatenate(trains), (val if len(val) else None)


def check_tokenizer(tokenizer, formats: set[str], stop_ids: set[int],
                    chat_template: bool = False) -> Check:
    """The chat-template and EOS round trip, before a stage trains on ``formats`` (rendered
    through the chat template where ``chat_template`` says the run's prompts are).

    Text and instruction records end with the tokenizer's EOS, so it must exist, encode to
    its one id and decode back; chat records end each assistant turn as the chat template
    closes it, so the template must exist and a rendered reply must end with a token that
    generation stops on (``stop_ids``: the model's ``generation_config.eos_token_id`` and the
    tokenizer's EOS). A model trained to end on a token generation never stops on would talk
    on past its answer.
    """
    from tunearena.cluster.preflight import Check

    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    if eos is None or eos_id is None:
        return Check("tokenizer", False, "the tokenizer has no EOS token, so records cannot end",
                     "set eos_token in the model directory's tokenizer_config.json")
    encoded = tokenizer(eos, add_special_tokens=False)["input_ids"]
    if encoded != [eos_id] or tokenizer.decode([eos_id]) != eos:
        return Check("tokenizer", False,
                     f"EOS {eos!r} does not round-trip: it encodes to {encoded}, not [{eos_id}]",
                     "register the EOS as a special token of the tokenizer")
    details = [f"EOS {eos!r} (id {eos_id}) round-trips"]
    if any(uses_chat_template(f, chat_template) for f in formats):
        if getattr(tokenizer, "chat_template", None) is None:
            return Check("tokenizer", False, "records are rendered through a chat template, "
                         "but the tokenizer has no chat template",
                         "add a chat_template to tokenizer_config.json, or use format "
                         "'instruction' with model.chat_template false")
        probe = [{"role": "user", "content": "Ping?"}, {"role": "assistant", "content": "Pong."}]
        try:
            ids, labels = tokenize_chat(probe, tokenizer)
        except DataError as e:
            return Check("tokenizer", False, str(e), "use a prefix-consistent chat template")
        trained = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
        stops = stop_ids | {eos_id}
        # The end-of-turn token, perhaps followed by the template's newline.
        if not trained or not set(trained[-2:]) & stops:
            last = tokenizer.decode(trained[-2:]) if trained else "nothing"
            return Check("tokenizer", False,
                         f"the chat template ends a reply with {last!r}, which generation does "
                         f"not stop on (stop ids {sorted(stops)})",
                         "add the template's end-of-turn token to generation_config.json's "
                         "eos_token_id")
        details.append("a chat reply ends on a stop token")
    return Check("tokenizer", True, "; ".join(details))
