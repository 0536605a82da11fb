"""Reading JSONL input files with errors that name the file and line.

Training data, the RAG corpus and the benchmarks all come as JSONL; each package checks its
own fields, and this one reader makes every file fail alike on what they share.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def iter_jsonl(
    path: Path | str, error: type[Exception], what: str
) -> Iterator[tuple[int, str, dict]]:
    """Yield ``(line number, "path:LINE", record)`` for every non-blank line of a JSONL file.

    Raises ``error`` for a missing file (``"{path}: {what} not found"``), a line that is not
    UTF-8 or not JSON, or a line that is not a JSON object, naming the file and line.
    """
    path = Path(path)
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
            yield line_no, where, record
