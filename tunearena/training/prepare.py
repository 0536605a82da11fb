"""Training files read, cleaned and split before tokenisation: drop what would teach the wrong
thing, count it.

Each record is checked for its format's fields as it is read (``read_jsonl``); then each
training file goes through four steps, each counted in the report:

1. **Empty or garbled records** are dropped: a blank field, or text that is mostly replacement
   and control characters or has almost no letters (a decoding accident, a binary blob), which
   spends compute and teaches the model noise.
2. **Exact duplicates** (equal after case folding and whitespace collapsing) are dropped, the
   first occurrence kept.
3. **Near-duplicates**: a record whose word 5-gram Jaccard similarity to an earlier kept record
   reaches the threshold is dropped. Repeated text is memorised rather than learned, and a
   near-copy on each side of the train/validation split makes the validation loss optimistic.
   MinHash LSH finds the candidates in near-linear time; each is confirmed with the exact
   Jaccard, so nothing below the threshold is ever dropped.
4. **Benchmark leaks**: a record that contains a benchmark question (``leak_ngram``
   consecutive words of it, or all of a shorter one) would let a fine-tuned arm score by
   recall, and the comparison with the base model and RAG would be dishonest. Such records are
   dropped, reported, or left alone, as ``leak_check`` says.

What is left is split, seeded, into train, validation and test, and written as JSONL.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tunearena import textsim
from tunearena.files import iter_jsonl, write_atomic
from tunearena.training.config import DataPrepConfig, DatasetConfig
from tunearena.training.formats import DataError, get_format

logger = logging.getLogger(__name__)

MAX_BAD_CHAR_FRACTION = 0.05
"""A record with more than this share of U+FFFD or control characters (other than tab, newline
and carriage return) is garbled: real text has next to none; mis-decoded or binary data has
many."""
MIN_LETTER_FRACTION = 0.2
"""A record with fewer letters than this share of its non-space characters is garbled. Prose,
code and tables of figures with labels sit well above it; hex dumps and runs of digits or
symbols below."""
MIN_CHARS_FOR_LETTER_CHECK = 20
"""Non-space characters a record needs before its letter share is judged: a short answer such
as ``" 1,250"`` is legitimate."""

_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")

COUNT_KEYS = ("empty_or_garbled", "exact_duplicates", "near_duplicates")
DROP_REASONS = {
    "empty_or_garbled": "empty or garbled (a blank field, or mostly not letters)",
    "exact_duplicates": "exact duplicates",
    "near_duplicates": "near-duplicates",
    "leaked": "holding a benchmark question (leak_check: drop)",
}
"""Why each cleaning step drops a record, in the words an error gives."""
LEAK_EXAMPLES = 5


def read_jsonl(path: Path, fmt: str, allow_empty: bool = False) -> list[dict]:
    """The records of a JSONL file in format ``fmt``, each checked for its fields.

    With ``allow_empty``, a field that is present but an empty string passes (the caller
    drops and counts such records); a missing field or a wrong type is still an error.
    """
    problem = get_format(fmt).problem
    records = []
    for where, record in iter_jsonl(path, DataError, "training file"):
        wrong = problem(record, allow_empty)
        if wrong:
            raise DataError(f"{where}: {wrong}")
        records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def record_text(record: dict, fmt: str) -> str:
    """The text a record trains on: its text, prompt and response, or its messages' contents.

    Parts are joined by newlines so that words never fuse across a boundary.
    """
    return "\n".join(get_format(fmt).texts(record))


def _is_empty_or_garbled(record: dict, fmt: str) -> bool:
    """A blank field, or text that fails the bad-character or letter-share limits above."""
    fields = get_format(fmt).texts(record)
    if any(not f.strip() for f in fields):
        return True
    text = "\n".join(fields)
    if len(_BAD_CHARS.findall(text)) > MAX_BAD_CHAR_FRACTION * len(text):
        return True
    non_space = sum(map(len, text.split()))
    letters = sum(map(str.isalpha, text))
    return non_space >= MIN_CHARS_FOR_LETTER_CHECK and letters < MIN_LETTER_FRACTION * non_space


def _kept_indices(
    records: list[dict], fmt: str, cfg: DataPrepConfig, seed: int
) -> tuple[list[int], dict[str, int]]:
    """``clean_records`` as indices into ``records``, so callers can map back to lines."""
    kept = list(range(len(records)))
    counts = dict.fromkeys(COUNT_KEYS, 0)
    if cfg.drop_garbled:
        kept = [i for i in kept if not _is_empty_or_garbled(records[i], fmt)]
        counts["empty_or_garbled"] = len(records) - len(kept)
    if cfg.deduplicate:
        seen: set[str] = set()
        unique = []
        for i in kept:
            key = " ".join(record_text(records[i], fmt).casefold().split())
            if key not in seen:
                seen.add(key)
                unique.append(i)
        counts["exact_duplicates"] = len(kept) - len(unique)
        kept = unique
    if cfg.near_duplicate_threshold is not None:
        texts = [record_text(records[i], fmt) for i in kept]
        near = textsim.near_duplicates(texts, cfg.near_duplicate_threshold, seed)
        counts["near_duplicates"] = len(near)
        kept = [i for n, i in enumerate(kept) if n not in near]
    return kept, counts


def clean_records(
    records: list[dict], fmt: str, cfg: DataPrepConfig, seed: int
) -> tuple[list[dict], dict[str, int]]:
    """The records that survive cleaning, in their order, and how many each step dropped.

    Steps, in order: empty or garbled (``cfg.drop_garbled``), exact duplicates after case and
    whitespace normalisation (``cfg.deduplicate``), near-duplicates by word 5-gram Jaccard
    (``cfg.near_duplicate_threshold``); the first of any duplicates is kept. ``seed`` seeds
    the MinHash permutations. Counts: ``empty_or_garbled``, ``exact_duplicates``,
    ``near_duplicates``.
    """
    kept, counts = _kept_indices(records, fmt, cfg, seed)
    return [records[i] for i in kept], counts


def find_leaks(
    records: list[dict], fmt: str, questions: dict[str, list[str]], n: int
) -> list[dict]:
    """The records that contain a benchmark question: ``{"index", "benchmark", "question"}``
    for each, naming the match that starts earliest in the record (the longest, on a tie).

    A record's text is its fields joined (``record_text``); the match is
    ``textsim.find_leaks``'s: case-folded words, any ``n`` consecutive words of a question,
    or all of a shorter one.
    """
    return textsim.find_leaks((record_text(r, fmt) for r in records), questions, n)


def _split_size(n_records: int, fraction: float) -> int:
    """``fraction`` of the records, at least one when asked for and there are two or more."""
    size = int(n_records * fraction)
    return 1 if fraction > 0 and size == 0 and n_records > 1 else size


def split_records(
    records: list[dict], validation_fraction: float, test_fraction: float, seed: int
) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, validation, test) after a seeded shuffle; raises ``DataError`` if no record
    would be left to train on."""
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    n_test = _split_size(len(shuffled), test_fraction)
    n_val = _split_size(len(shuffled), validation_fraction)
    if n_test + n_val >= len(shuffled):
        raise DataError(
            f"{len(shuffled)} records leave none to train on after {n_test} test and {n_val} "
            "validation records; add records or lower test_fraction / validation_fraction"
        )
    return shuffled[n_test + n_val :], shuffled[n_test : n_test + n_val], shuffled[:n_test]


@dataclass
class PreparedData:
    """One task's cleaned splits and the report of what cleaning did."""

    task: str
    format: str
    train: list[dict]
    validation: list[dict]
    test: list[dict]
    report: dict


def _line_numbers(path: Path) -> list[int]:
    """The 1-based line of each record in a training file, as ``read_jsonl`` read them (it
    skips blank lines, and a JSON array's items may share a line or span several)."""
    return [int(where.rsplit(":", 1)[1]) for where, _ in iter_jsonl(path, DataError, "file")]


def _clean_file(
    path: Path, fmt: str, cfg: DataPrepConfig, seed: int, questions: dict[str, list[str]]
) -> tuple[list[dict], dict]:
    """A file's records after cleaning and the leak check, and its counts for the report."""
    records = read_jsonl(path, fmt, allow_empty=True)
    cleaned, counts = _kept_indices(records, fmt, cfg, seed)
    leaks = []
    if cfg.leak_check != "off":
        leaks = find_leaks([records[i] for i in cleaned], fmt, questions, cfg.leak_ngram)
    leaking = {leak["index"] for leak in leaks} if cfg.leak_check == "drop" else set()
    kept = [i for n, i in enumerate(cleaned) if n not in leaking]
    if not kept:
        dropped = {**counts, "leaked": len(leaking)}
        raise DataError(f"{path}: no record is left after cleaning: {len(records)} read, "
                        + ", ".join(f"{n} dropped as {DROP_REASONS[step]}"
                                    for step, n in dropped.items() if n)
                        + "; give the file records to train on, or turn that cleaning off "
                        "(training.data_prep: drop_garbled, deduplicate, leak_check)")
    lines = _line_numbers(path)
    report = {
        "path": str(path),
        "read": len(records),
        **counts,
        "leaked": len(leaks),
        "leaked_by_benchmark": dict(Counter(leak["benchmark"] for leak in leaks)),
        "leak_examples": [
            {"line": lines[cleaned[leak["index"]]], "benchmark": leak["benchmark"],
             "question": leak["question"]}
            for leak in leaks[:LEAK_EXAMPLES]
        ],
        "kept": len(kept),
    }
    if leaks and cfg.leak_check == "warn":
        logger.warning("%s: %d records contain a benchmark question and are kept "
                       "(leak_check: warn): %s", path, len(leaks), report["leaked_by_benchmark"])
    return [records[i] for i in kept], report


def prepare_dataset(
    ds: DatasetConfig,
    cfg: DataPrepConfig,
    validation_fraction: float,
    seed: int,
    questions: dict[str, list[str]],
) -> PreparedData:
    """Read, clean, leak-check and split one training file.

    ``questions`` maps each benchmark's name to its question texts. With
    ``ds.validation_path``, validation is that file, cleaned and leak-checked the same way
    (its counts under the report's ``validation_file``), and only the test split comes from
    ``ds.path``; else ``validation_fraction`` and ``ds.test_fraction`` of ``ds.path`` are held
    out. Raises ``DataError`` naming the file when no record survives or none is left to train on.
    """
    records, report = _clean_file(ds.path, ds.format, cfg, seed, questions)
    held_out = validation_fraction if ds.validation_path is None else 0.0
    try:
        train, validation, test = split_records(records, held_out, ds.test_fraction, seed)
    except DataError as e:
        raise DataError(f"{ds.path}: {e}") from None
    validation_report = None
    if ds.validation_path is not None:
        validation, validation_report = _clean_file(
            ds.validation_path, ds.format, cfg, seed, questions
        )
    report = {
        "task": ds.task,
        "format": ds.format,
        **report,
        "train": len(train),
        "validation": len(validation),
        "test": len(test),
        "validation_source": "split" if ds.validation_path is None else str(ds.validation_path),
        "validation_file": validation_report,
        "leak_action": cfg.leak_check,
    }
    return PreparedData(ds.task, ds.format, train, validation, test, report)


def write_prepared(prepared: PreparedData, out_dir: Path) -> dict[str, str]:
    """Write ``<out_dir>/<task>.{train,validation,test}.jsonl`` atomically (an empty split as
    an empty file); returns each split's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, records in (
        ("train", prepared.train),
        ("validation", prepared.validation),
        ("test", prepared.test),
    ):
        path = out_dir / f"{prepared.task}.{split}.jsonl"
        write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        paths[split] = str(path)
    return paths
