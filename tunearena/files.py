"""Files in and out: JSONL inputs read with errors that name the file and line, outputs
written atomically.

Training data, the RAG corpus and the benchmarks all come as JSONL; each package checks its
own fields, and this one reader makes every file fail alike on what they share. It also reads
them as the common tools write them, rather than refusing a formality: UTF-8 with or without
a byte-order mark, UTF-16 with one (what Windows tools call "Unicode"), LF or CRLF line ends,
blank lines anywhere, and a JSON array of objects (a ``.json`` export) in place of one object
a line. Outputs go through a temp name and a rename, so a killed process never leaves half a
file behind.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

MAX_RECORD_BYTES = 8 * 2**20
"""A record (a line, or an item of a JSON array) longer than this is refused, naming its line:
a 52 MB line once trained with 7.7 GB of peak memory and no word said. No sane training
record, document or question is this long; a book is a few MB and is better split by chapter."""

TABLE_SUFFIXES = (".csv", ".tsv", ".xlsx", ".xls", ".ods", ".parquet")
"""Table files: named, with how to turn one into JSONL, rather than parsed as JSON and
refused on line 1."""

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)

# The process's umask, read once (setting it is the only way to read it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def iter_jsonl(
    path: Path | str, error: type[Exception], what: str, unique_key: str | None = None
) -> Iterator[tuple[str, dict]]:
    """Yield ``("path:LINE", record)`` for every record of a JSONL file (or JSON array).

    Raises ``error`` for a missing file (``"{path}: {what} not found"``), a directory or a
    table file given for it, a line that is not UTF-8 (or UTF-16 with a BOM) or not JSON, a
    record that is not a JSON object or is longer than ``MAX_RECORD_BYTES``, and, with
    ``unique_key``, a value of that key seen on an earlier line; each message names the file
    and line. For a JSON array, the line is where the item starts.
    """
    path = Path(path)
    check_input_file(path, error, what)
    first_line_of: dict[str, int] = {}
    for line_no, record in _records(path, error):
        where = f"{path}:{line_no}"
        if not isinstance(record, dict):
            raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
        if unique_key is not None and record.get(unique_key) is not None:
            key = str(record[unique_key])
            if key in first_line_of:
                raise error(
                    f"{where}: duplicate {unique_key} {key!r} "
                    f"(first seen on line {first_line_of[key]})"
                )
            first_line_of[key] = line_no
        yield where, record


def check_input_file(path: Path, error: type[Exception], what: str) -> None:
    """Raise ``error`` unless ``path`` is a file tunearena can read as JSONL."""
    if path.is_dir():
        raise error(f"{path}: is a directory, expected a {what} (JSONL, one object a line)")
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    if path.suffix.lower() in TABLE_SUFFIXES:
        raise error(
            f"{path}: a {path.suffix} table, but a {what} is JSONL (one object a line, its "
            "keys the fields); convert it, e.g. python -c \"import pandas as pd; "
            f"pd.read_{'excel' if path.suffix.lower() in ('.xlsx', '.xls', '.ods') else 'csv'}"
            f"('{path.name}').to_json('{path.stem}.jsonl', orient='records', lines=True, "
            "force_ascii=False)\"")


def _encoding(path: Path, error: type[Exception]) -> str:
    """``utf-16`` for a file that starts with a UTF-16 byte-order mark, else ``utf-8-sig``
    (which drops a UTF-8 BOM, as Windows editors and spreadsheets write one)."""
    with path.open("rb") as f:
        head = f.read(4)
    if head[:2] in _UTF16_BOMS:
        return "utf-16"
    if b"\x00" in head:
        raise error(f"{path}: has NUL bytes in its first line: UTF-16 without a byte-order "
                    "mark, or not a text file; save it as UTF-8")
    return "utf-8-sig"


def _is_array(path: Path, encoding: str) -> bool:
    """Whether the file's first non-blank character opens a JSON array."""
    with path.open(encoding=encoding, errors="replace") as f:
        while chunk := f.read(4096):
            if chunk.strip():
                return chunk.lstrip().startswith("[")
    return False


def _records(path: Path, error: type[Exception]) -> Iterator[tuple[int, object]]:
    """``(line, value)`` for each record, read as ``iter_jsonl`` says."""
    encoding = _encoding(path, error)
    if _is_array(path, encoding):
        yield from _array_items(path, encoding, error)
        return
    with path.open("rb") as f:
        lines = _utf8_lines(f, path, error) if encoding != "utf-16" else _utf16_lines(f, path, error)
        for line_no, line in lines:
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{line_no}: not valid JSON: {e.msg}") from None


def _too_long(where: str, size: int, error: type[Exception]) -> Exception:
    return error(
        f"{where}: a record of {size / 2**20:.1f} MiB, over the {MAX_RECORD_BYTES // 2**20} MiB "
        "a record may hold (reading it would take gigabytes of memory); split it into several "
        "records, e.g. one per chapter or section")


def _utf8_lines(f: IO[bytes], path: Path, error: type[Exception]) -> Iterator[tuple[int, str]]:
    # Bytes decoded line by line, so an encoding error can name its line too; the length is
    # measured before anything is decoded or parsed.
    for line_no, raw in enumerate(f, start=1):
        if len(raw) > MAX_RECORD_BYTES:
            raise _too_long(f"{path}:{line_no}", len(raw), error)
        if line_no == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            yield line_no, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{path}:{line_no}: not valid UTF-8: {e}; save the file as "
                        "UTF-8") from None


def _utf16_lines(f: IO[bytes], path: Path, error: type[Exception]) -> Iterator[tuple[int, str]]:
    text = io.TextIOWrapper(f, encoding="utf-16", newline="")
    line_no = 0
    try:
        for line_no, line in enumerate(text, start=1):
            if 2 * len(line) > MAX_RECORD_BYTES:
                raise _too_long(f"{path}:{line_no}", 2 * len(line), error)
            yield line_no, line
    except UnicodeDecodeError as e:
        raise error(f"{path}:{line_no + 1}: not valid UTF-16: {e}; save the file as "
                    "UTF-8") from None


def _array_items(path: Path, encoding: str, error: type[Exception]
                 ) -> Iterator[tuple[int, object]]:
    """The items of a file holding one JSON array, each with the line it starts on."""
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise error(f"{path}: not valid {encoding.removesuffix('-sig').upper()}: {e}; save "
                    "the file as UTF-8") from None
    decoder = json.JSONDecoder()
    pos, line_no = text.index("[") + 1, 1 + text.count("\n", 0, text.index("["))

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    while True:
        start = skip(pos)
        line_no += text.count("\n", pos, start)
        if text.startswith("]", start):
            break
        try:
            item, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError as e:
            raise error(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
        if end - start > MAX_RECORD_BYTES:
            raise _too_long(f"{path}:{line_no}", end - start, error)
        yield line_no, item
        line_no += text.count("\n", start, end)
        pos = skip(end)
        line_no += text.count("\n", end, pos)
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("]", pos):
            at = 1 + text.count("\n", 0, pos)
            raise error(f"{path}:{at}: not valid JSON: expected ',' or ']' in the array")
    if text[start + 1:].strip():
        raise error(f"{path}: not valid JSON: text after the array's closing ']'")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same directory and a rename.

    The temp file's name is unique (``mkstemp``), so two writers of one file never write into
    each other's half-written temp; the last rename wins, and every reader sees a whole file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would create it; mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def disk_bytes(*paths: Path) -> int:
    """Bytes of the files under ``paths``, each file once however many hard links name it
    (a stage's model is linked from its export, not copied)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in paths:
        for dirpath, _, names in os.walk(root):
            for name in names:
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
    return total


def link_tree(src: Path, dst: Path) -> None:
    """``dst`` as a tree of hard links to ``src``'s files (the same bytes, on disk once);
    copies where the two are on different file systems. For trees nothing edits in place
    afterwards (files beside them are replaced, ``write_atomic``)."""
    import shutil

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy)
