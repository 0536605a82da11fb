"""Files in and out: JSONL inputs read with errors that name the file and line, outputs
written atomically.

Training data, the RAG corpus and the benchmarks all come as JSONL; each package checks its
own fields, and this one reader makes every file fail alike on what they share. Outputs go
through a temp name and a rename, so a killed process never leaves half a file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# The process's umask, read once (setting it is the only way to read it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def iter_jsonl(
    path: Path | str, error: type[Exception], what: str, unique_key: str | None = None
) -> Iterator[tuple[str, dict]]:
    """Yield ``("path:LINE", record)`` for every non-blank line of a JSONL file.

    Raises ``error`` for a missing file (``"{path}: {what} not found"``), a line that is not
    UTF-8 or not JSON, a line that is not a JSON object, and, with ``unique_key``, a value of
    that key seen on an earlier line; each message names the file and line.
    """
    path = Path(path)
    first_line_of: dict[str, int] = {}
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    # Bytes decoded line by line, so an encoding error can name its line too.
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            where = f"{path}:{line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{where}: not valid UTF-8: {e}") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{where}: not valid JSON: {e.msg}") from None
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
