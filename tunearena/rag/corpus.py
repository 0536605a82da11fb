"""The retrieval corpus: a JSONL file, one ``{"id", "text", "title"?}`` object a line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunearena.errors import UserError
from tunearena.files import iter_jsonl


class CorpusError(UserError, ValueError):
    """A corpus file that cannot be used; the message names the file and, where known, the line."""


@dataclass(frozen=True)
class Document:
    """One corpus document. ``id`` is unique within the corpus; ``title`` is optional."""

    id: str
    text: str
    title: str | None = None


def load_documents(path: str | Path) -> list[Document]:
    """Read a JSONL corpus into documents, in file order.

    Blank lines are skipped and keys other than ``id``, ``text`` and ``title`` are ignored.
    Raises ``CorpusError`` naming ``path:LINE`` for a line that is not a JSON object, a
    missing, empty or non-string ``id``/``text``, a non-string ``title``, a duplicate id, and
    for a file with no documents at all.
    """
    docs = [
        Document(
            id=_required_str(record, "id", where),
            text=_required_str(record, "text", where),
            title=_optional_str(record, "title", where),
        )
        for where, record in iter_jsonl(path, CorpusError, "corpus file", unique_key="id")
    ]
    if not docs:
        raise CorpusError(f"{path}: corpus is empty (no documents)")
    return docs


def _required_str(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if value is None:
        raise CorpusError(f"{where}: missing {key!r}")
    if not isinstance(value, str):
        raise CorpusError(f"{where}: {key!r} must be a string (got {value!r})")
    # Whitespace-only text would give a document with no tokens, hence no chunk.
    if not value.strip():
        raise CorpusError(f"{where}: empty {key!r}")
    return value


def _optional_str(record: dict, key: str, where: str) -> str | None:
    value = record.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise CorpusError(f"{where}: {key!r} must be a string (got {value!r})")
    return value
