"""Training data: JSONL records -> token ids and loss masks -> fixed-length sequences.

Tokenisation runs once on the driver, before any worker is started, so a broken record fails
the run in seconds with its file and line, and the workers only index numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tunearena.errors import UserError
from tunearena.files import iter_jsonl
from tunearena.training.config import DatasetConfig

if TYPE_CHECKING:
    from tunearena.cluster.preflight import Check

IGNORE_INDEX = -100
"""Label value that the causal-LM loss skips (prompt tokens, padding)."""

REQUIRED_FIELDS = {"text": ("text",), "instruction": ("prompt", "response")}

CHAT_ROLES = ("system", "user", "assistant")


class DataError(UserError, ValueError):
    """A training file that cannot be used; the message names the file and line."""


def read_jsonl(path: Path, fmt: str, allow_empty: bool = False) -> list[dict]:
    """The records of a JSONL file in format ``fmt``, each checked for its fields.

    With ``allow_empty``, a field that is present but an empty string passes (the caller
    drops and counts such records); a missing field or a wrong type is still an error.
    """
    records = []
    for where, record in iter_jsonl(path, DataError, "training file"):
        if fmt == "chat":
            problem = _chat_problem(record, allow_empty)
            if problem:
                raise DataError(f"{where}: {problem}")
        for key in REQUIRED_FIELDS.get(fmt, ()):
            if not isinstance(record.get(key), str) or not (record[key] or allow_empty):
                raise DataError(f"{where}: format {fmt!r} needs a non-empty string {key!r}")
        records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _chat_problem(record: dict, allow_empty: bool = False) -> str | None:
    """What is wrong with a ``chat`` record's messages (numbered from 1), or None."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return "format 'chat' needs a non-empty list 'messages'"
    for n, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            return f"message {n} is not an object with 'role' and 'content'"
        if message.get("role") not in CHAT_ROLES:
            return (
                f"message {n} has role {message.get('role')!r}; "
                f"expected one of {', '.join(CHAT_ROLES)}"
            )
        if not isinstance(message.get("content"), str) or not (message["content"] or allow_empty):
            return f"message {n} needs a non-empty string 'content'"
    # An opening reply has no prompt to render before it, so its tokens cannot be located.
    if messages[0]["role"] == "assistant":
        return "message 1 has role 'assistant'; a conversation opens with a system or user message"
    if not any(m["role"] == "assistant" for m in messages):
        return "no message has role 'assistant', so the record teaches nothing"
    return None


def require_chat_template(tokenizer, where: str = "format 'chat'") -> None:
    """Raise ``DataError`` if the tokenizer cannot render conversations."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(
            f"{where}: the model's tokenizer has no chat template to render conversations with; "
            "use format 'instruction', or add a 'chat_template' to the model directory's "
            "tokenizer_config.json (or a chat_template.jinja file beside it)"
        )


def _tokenize_chat(messages: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """(input ids, labels) for a conversation rendered by the tokenizer's chat template.

    Loss falls on each assistant turn: its content and the template's tokens that close it,
    so the model learns to stop; never on system or user turns or on the generation prompt
    that opens a reply (``<|im_start|>assistant`` and its newline, say). A turn's tokens are
    the difference between the conversation before it, rendered with the generation prompt,
    and the conversation through it; both must be token prefixes of the whole conversation,
    or ``DataError`` is raised rather than a turn mislabelled.
    """
    require_chat_template(tokenizer)

    def render(conversation: list[dict], add_generation_prompt: bool = False) -> list[int]:
        text = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        # The template writes its own BOS, if it has one; special tokens added here would
        # put a second in front.
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    # No EOS is appended, unlike text and instruction records: the template closes each turn
    # with its own end-of-turn token, the one generation stops on, and an extra EOS would
    # teach a sequence the model never sees when it is served through the same template.
    ids = render(messages)
    labels = [IGNORE_INDEX] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(messages[:i], add_generation_prompt=True)
        through = render(messages[: i + 1])
        if through[: len(prompt)] != prompt or ids[: len(through)] != through:
            raise DataError(
                f"the chat template is not prefix-consistent at message {i + 1}: the tokens of "
                "the conversation before an assistant turn (with the generation prompt) are not "
                "a prefix of the tokens through it and of the whole, so the turn cannot be "
                "labelled; use a template that renders earlier turns unchanged, or format "
                "'instruction'"
            )
        labels[len(prompt) : len(through)] = through[len(prompt) :]
    return ids, labels


def tokenize_record(record: dict, fmt: str, tokenizer) -> tuple[list[int], list[int]]:
    """(input ids, labels) for one record; ``text`` and ``instruction`` records end with EOS,
    ``chat`` records as the chat template ends them (see ``_tokenize_chat``)."""
    if fmt == "chat":
        return _tokenize_chat(record["messages"], tokenizer)
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
    task: np.ndarray | None = None  # int16 [n]: index into the task names; None: one task

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
                   ) -> tuple[TokenizedSplit, TokenizedSplit | None]:
    """Tokenise each task and pack (or pad) it on its own, so every row belongs to one task;
    returns (train, validation or None), rows tagged with the task's index in ``tasks``."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def build(records: list[dict], fmt: str) -> TokenizedSplit:
        examples = [tokenize_record(r, fmt, tokenizer) for r in records]
        return pack(examples, seq_len) if packing else pad(examples, seq_len, pad_id)

    trains, vals = [], []
    for task in tasks:
        if task.format == "chat":
            require_chat_template(tokenizer, f"task {task.name}: format 'chat'")
        train = build(task.train, task.format)
        if len(train) == 0:
            raise DataError(f"task {task.name}: its training records hold fewer tokens than one "
                            f"sequence of seq_len {seq_len}")
        trains.append(train)
        vals.append(build(task.validation, task.format))
    val = concatenate(vals)
    return concatenate(trains), (val if len(val) else None)


def prepare_splits(
    datasets: Sequence[DatasetConfig],
    tokenizer,
    seq_len: int,
    packing: bool,
    validation_fraction: float,
    seed: int,
) -> tuple[TokenizedSplit, TokenizedSplit | None]:
    """Read, split and tokenise every dataset as it stands (no cleaning): each file is one
    task, shuffled (seeded) and split on its own. Returns (train, validation or None)."""
    from tunearena.training.prepare import split_records

    tasks = []
    for ds in datasets:
        if ds.format == "chat":
            require_chat_template(tokenizer, f"{ds.path}: format 'chat'")
        records = read_jsonl(ds.path, ds.format)
        if ds.validation_path is not None:
            train, _, _ = split_records(records, 0.0, 0.0, seed)
            val = read_jsonl(ds.validation_path, ds.format)
        else:
            train, val, _ = split_records(records, validation_fraction, 0.0, seed)
        tasks.append(TaskRecords(ds.task, ds.format, train, val))
    return tokenize_tasks(tasks, tokenizer, seq_len, packing)


def check_tokenizer(tokenizer, formats: set[str], stop_ids: set[int]) -> Check:
    """The chat-template and EOS round trip, before a stage trains on ``formats``.

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
    if "chat" in formats:
        if getattr(tokenizer, "chat_template", None) is None:
            return Check("tokenizer", False, "a dataset has format 'chat' but the tokenizer "
                         "has no chat template",
                         "add a chat_template to tokenizer_config.json, or use format "
                         "'instruction'")
        probe = [{"role": "user", "content": "Ping?"}, {"role": "assistant", "content": "Pong."}]
        try:
            ids, labels = _tokenize_chat(probe, tokenizer)
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
