"""Ingestion: a folder, a glob or a JSONL corpus becomes a list of documents.

Each file's text is extracted by a library made for its type: Markdown is parsed with
markdown-it-py and its syntax dropped, HTML goes through trafilatura (main text, with the
navigation, header, footer and scripts left out), a PDF's text layer is read with pypdf, and
a ``.jsonl`` file is read as the corpus format ``{"id", "text", "title"?}``. Whitespace is
normalised (runs of spaces collapsed, paragraphs separated by one blank line). A file that
gives no text is listed with the reason, never silently dropped; an empty result is an error.
"""

from __future__ import annotations

import codecs
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pypdf
import trafilatura
import yaml
from markdown_it import MarkdownIt
from pydantic import BaseModel

from tunearena.documents.records import Document, DocumentsError, Skipped
from tunearena.files import iter_jsonl, write_atomic

NO_TEXT_LAYER = "no text layer (a scanned PDF?): run OCR, e.g. ocrmypdf, and ingest its output"

TITLE_LINE_CHARS = 100
"""A first line at most this long is taken for the title of a text file or a PDF without one."""


class Ingested(BaseModel):
    """What ingestion made of a source: the documents, and the files it could not read."""

    documents: list[Document]
    skipped: list[Skipped]
    files_seen: int
    """How many files the source named, hidden ones aside."""


class _Skip(Exception):
    """A file that gives no document; the message is the reason shown to the user."""


@dataclass
class _Extracted:
    """A document before ids are made unique."""

    id: str
    """The id it gets when no other document wants it."""
    long_id: str
    """The id it gets when another document wants the same one."""
    title: str
    text: str
    source: str


def ingest(source: str, base_dir: Path) -> Ingested:
    """Read the documents of ``source``: a folder (walked recursively), a glob (``**``
    allowed) or one file, relative paths resolved against ``base_dir``.

    Files are read in the order of their paths; hidden files and folders are left out. A
    document's id is its path relative to the folder (or the glob's fixed leading folders)
    without the suffix, or with it where two files would share the id; a JSONL record keeps
    its own id. Files that give no text, and later copies of a text already read, are listed
    in ``skipped`` with the reason. Raises ``DocumentsError`` when the source does not exist,
    a glob matches no file, or no document is left.
    """
    root, files, where = _files(source, Path(base_dir))
    extracted: list[_Extracted] = []
    skipped: list[Skipped] = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            extracted.extend(_read(path, rel))
        except _Skip as e:
            skipped.append(Skipped(path=rel, reason=str(e)))
    documents, duplicates = _unique(extracted)
    skipped.extend(duplicates)
    if not documents:
        raise DocumentsError(_nothing_read(where, len(files), skipped))
    return Ingested(documents=documents, skipped=skipped, files_seen=len(files))


def write_documents(documents: list[Document], path: Path) -> None:
    """Write ``documents`` as a corpus JSONL file (``id``, ``title``, ``text``, ``source``
    a line), atomically; ``rag.corpus`` and ``ingest`` both read it back."""
    write_atomic(Path(path), "".join(doc.model_dump_json() + "\n" for doc in documents))


# --- Which files --------------------------------------------------------------------------


def _files(source: str, base_dir: Path) -> tuple[Path, list[Path], str]:
    """The folder ids are relative to, the files in path order, and the source as resolved."""
    path = base_dir / Path(source).expanduser()
    # A name that exists is taken as it is, so a folder named "notes [old]" is no glob.
    if not path.exists() and any(ch in source for ch in "*?["):
        return _glob(path, source)
    if path.is_dir():
        files = _walk(path)
        if not files:
            raise DocumentsError(
                f"{source}: no files in {path} (hidden files and folders are left out); put "
                "the documents there (.md, .txt, .html, .pdf or .jsonl) or point at another "
                "folder")
        return path, files, str(path)
    if path.is_file():
        return path.parent, [path], str(path)
    raise DocumentsError(f"{source}: not found (looked for {path}); give a folder of "
                         "documents, a glob such as docs/**/*.md, or a .jsonl corpus file")


def _glob(pattern: Path, source: str) -> tuple[Path, list[Path], str]:
    """The files a glob matches; their ids are relative to the glob's leading folders that
    hold no wildcard (``docs`` for ``docs/**/*.md``)."""
    parts = pattern.parts
    fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
    root = Path(*parts[:fixed])
    files = sorted(
        (p for p in root.glob("/".join(parts[fixed:]))
         if p.is_file() and not _hidden(p.relative_to(root))),
        key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DocumentsError(f"{source}: the glob matches no file (looked for {pattern}, "
                             "hidden files left out); ** matches folders at any depth, e.g. "
                             "docs/**/*.md")
    return root, files, str(pattern)


def _walk(folder: Path) -> list[Path]:
    """Every file under ``folder`` that is not hidden nor in a hidden folder, in path order.
    Symlinked folders are not followed, so a link to a parent cannot loop."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files.extend(Path(dirpath, name) for name in filenames if not name.startswith("."))
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


# --- One file -------------------------------------------------------------------------------


def _read(path: Path, rel: str) -> list[_Extracted]:
    """The documents of one file; raises ``_Skip`` with the reason when it gives none."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl(path, rel)
    reader = _READERS.get(suffix)
    if reader is None:
        kind = f"type {suffix}" if suffix else "type (no suffix)"
        raise _Skip(f"unsupported {kind} (tunearena reads .md, .txt, .html, .pdf, .jsonl)")
    try:
        title, text = reader(path)
    except OSError as e:
        raise _Skip(f"cannot be read: {e.strerror or e}") from None
    text = _normalise(text)
    if not text:
        raise _Skip("no text")
    stem = rel.removesuffix(path.suffix)
    return [_Extracted(id=stem, long_id=rel, title=_normalise(title) or path.stem, text=text,
                       source=rel)]


def _jsonl(path: Path, rel: str) -> list[_Extracted]:
    """Each record of a corpus JSONL file; a record that breaks the format skips the file,
    since the rest of the file may be wrong in the same way."""
    out = []
    try:
        for where, record in iter_jsonl(path, DocumentsError, "corpus file", unique_key="id"):
            doc_id, text = _field(record, "id", where), _field(record, "text", where)
            title, source = record.get("title") or "", record.get("source") or ""
            if not isinstance(title, str) or not isinstance(source, str):
                raise DocumentsError(f"{where}: 'title' and 'source' must be strings")
            line = where.rsplit(":", 1)[1]
            out.append(_Extracted(id=doc_id, long_id=f"{rel}#{doc_id}", title=title,
                                  text=_normalise(text), source=source or f"{rel}:{line}"))
    except DocumentsError as e:
        raise _Skip(str(e)) from None
    if not out:
        raise _Skip("no text (no records)")
    return out


def _field(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DocumentsError(f"{where}: {key!r} must be a non-empty string (got {value!r})")
    return value


def _decode(data: bytes) -> str:
    """Text of a file that is UTF-8 (a byte-order mark allowed) or UTF-16 with a BOM."""
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return data.decode("utf-16")
    if b"\x00" in data:
        raise _Skip("has NUL bytes: UTF-16 without a byte-order mark, or not a text file; "
                    "save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _Skip(f"not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}, perhaps "
                    "Latin-1 or Windows-1252): save it as UTF-8") from None


def _first_line_title(text: str) -> str:
    """The first non-empty line, when it is short enough to be a heading."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= TITLE_LINE_CHARS else ""


def _plain_text(path: Path) -> tuple[str, str]:
    text = _decode(path.read_bytes())
    return _first_line_title(text), text


# CommonMark plus the two GitHub extensions that carry text (tables, strikethrough).
_MARKDOWN = MarkdownIt("commonmark").enable(["table", "strikethrough"])
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.S)


def _markdown(path: Path) -> tuple[str, str]:
    """Plain text of a Markdown file and its title: ``title:`` of a YAML front matter (as
    static-site generators write it), else the first level-1 heading.

    Block by block: paragraphs and headings are separated by blank lines, items of a tight
    list and rows of a table by line breaks (cells by `` | ``), code blocks keep their text;
    links keep their text, images and raw HTML are dropped.
    """
    source = _decode(path.read_bytes())
    title = ""
    if front := _FRONT_MATTER.match(source):
        source = source[front.end():]
        try:
            meta = yaml.safe_load(front.group(1))
        except yaml.YAMLError:
            meta = None
        if isinstance(meta, dict) and isinstance(meta.get("title"), str):
            title = meta["title"]
    blocks: list[str] = []
    row: list[str] | None = None
    new_block = True  # the next line starts a block (a blank line before it)
    tokens = _MARKDOWN.parse(source)
    for i, token in enumerate(tokens):
        if token.type in ("bullet_list_open", "ordered_list_open", "table_open"):
            new_block = True
        elif token.type == "tr_open":
            row = []
        elif token.type == "tr_close" and row is not None:
            blocks.append(("\n\n" if new_block else "\n") + " | ".join(row))
            row, new_block = None, False
        elif token.type == "inline":
            text = _inline_text(token.children or [])
            if row is not None:
                row.append(text)
                continue
            opener = tokens[i - 1]
            if not title and opener.type == "heading_open" and opener.tag == "h1":
                title = text
            if text.strip():
                tight = opener.hidden and not new_block  # a paragraph of a tight list item
                blocks.append(("\n" if tight else "\n\n") + text)
                new_block = False
        elif token.type in ("fence", "code_block"):
            blocks.append("\n\n" + token.content)
            new_block = True
    return title, "".join(blocks)


def _inline_text(children: list) -> str:
    parts = []
    for child in children:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type == "softbreak":
            parts.append(" ")  # a line wrapped in the source, not in the text
        elif child.type == "hardbreak":
            parts.append("\n")
    return "".join(parts)


def _html(path: Path) -> tuple[str, str]:
    """Main text of an HTML page by trafilatura, which drops navigation, headers, footers,
    scripts and other boilerplate; the title from the page's metadata (its heading,
    ``og:title`` or ``<title>``). Given bytes, trafilatura finds the encoding itself."""
    extracted = trafilatura.bare_extraction(path.read_bytes(), with_metadata=True,
                                            include_comments=False, include_tables=True)
    if extracted is None:
        return "", ""
    fields = extracted if isinstance(extracted, dict) else extracted.as_dict()
    # trafilatura puts one block (paragraph, heading, list item) a line.
    return fields.get("title") or "", (fields.get("text") or "").replace("\n", "\n\n")


def _pdf(path: Path) -> tuple[str, str]:
    """The text layer of every page, pages separated by blank lines; the title from the
    PDF's metadata, else its first line when short."""
    try:
        reader = pypdf.PdfReader(path)
        # An empty user password opens PDFs encrypted only to restrict printing or copying.
        if reader.is_encrypted and not reader.decrypt(""):
            raise _Skip("encrypted with a password: save a copy without one, e.g. "
                        "qpdf --decrypt --password=... in.pdf out.pdf")
        text = "\n\n".join(page.extract_text() or "" for page in reader.pages)
        title = reader.metadata.title if reader.metadata else None
    except _Skip:
        raise
    except Exception as e:  # pypdf raises many types on a damaged file; each is a skip
        raise _Skip(f"cannot be read as a PDF ({type(e).__name__}: {e})") from None
    if not text.strip():
        raise _Skip(NO_TEXT_LAYER)
    return (title or "").strip() or _first_line_title(text), text


_READERS: dict[str, Callable[[Path], tuple[str, str]]] = {
    ".md": _markdown, ".markdown": _markdown, ".txt": _plain_text,
    ".html": _html, ".htm": _html, ".pdf": _pdf,
}

_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def _normalise(text: str) -> str:
    """Runs of spaces and tabs collapsed to one space, lines stripped, runs of blank lines
    collapsed to one (the paragraph break)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


# --- The whole corpus -----------------------------------------------------------------------


def _unique(extracted: list[_Extracted]) -> tuple[list[Document], list[Skipped]]:
    """Documents with unique ids and texts: a later copy of a text is skipped, then every
    document whose id another one shares takes its long id (the path with its suffix), so
    which file is read first never decides an id."""
    first_of: dict[str, int] = {}
    kept: list[_Extracted] = []
    copies: list[tuple[_Extracted, int]] = []
    for item in extracted:
        if item.text in first_of:
            copies.append((item, first_of[item.text]))
        else:
            first_of[item.text] = len(kept)
            kept.append(item)
    wanted = Counter(item.id for item in kept)
    documents: list[Document] = []
    taken: set[str] = set()
    for item in kept:
        doc_id = item.id if wanted[item.id] == 1 else item.long_id
        # A long id can meet another document's id (``a.md`` and a file ``a.md.txt``):
        # count up until it is free.
        base, n = doc_id, 1
        while doc_id in taken:
            n += 1
            doc_id = f"{base}~{n}"
        taken.add(doc_id)
        documents.append(Document(id=doc_id, title=item.title, text=item.text,
                                  source=item.source))
    skipped = [Skipped(path=item.source, reason=f"same text as {documents[first].id}")
               for item, first in copies]
    return documents, skipped


def _nothing_read(where: str, files_seen: int, skipped: list[Skipped], shown: int = 5) -> str:
    reasons = "\n".join(f"  {s.path}: {s.reason}" for s in skipped[:shown])
    more = f"\n  ... and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return (f"{where}: no document could be read from {files_seen} "
            f"file{'s' if files_seen != 1 else ''}:\n{reasons}{more}\n"
            "tunearena reads .md, .txt, .html, .pdf and .jsonl (one {\"id\", \"text\"} object "
            "a line); convert the files to one of these (UTF-8 for text), run OCR on scanned "
            "PDFs, or point at another folder")
