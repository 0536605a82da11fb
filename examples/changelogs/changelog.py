"""Debian changelogs read into entries: one per ``package (version) dist; urgency=...`` block.

A Debian changelog (``debian/changelog``, installed as
``/usr/share/doc/<binary package>/changelog.Debian.gz``) is a list of entries, newest first:

    curl (7.88.1-10+deb12u14) bookworm; urgency=medium

      * d/p/0001-http_chunks-reset...: New patch to fix memory leak:
        - Thanks to Daniel Stenberg ...

     -- Samuel Henrique <samueloph@debian.org>  Sat, 19 Jul 2025 21:04:59 +0200

The name in the header is the *source* package; several binary packages built from one source
ship the same file (often as a link), so entries are keyed by (source, version).
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from datetime import date
from email.utils import parsedate_to_datetime
from pathlib import Path

_HEADER = re.compile(r"^(?P<source>[a-z0-9][a-z0-9+.-]*) \((?P<version>[^)\s]+)\) "
                     r"(?P<dist>[^;]+);(?P<opts>.*)$")
_TRAILER = re.compile(r"^ -- (?P<name>.+?) <(?P<address>[^>]*)>  (?P<date>.+?)\s*$")
_BULLET = re.compile(r"^\s*[*+-]\s+")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


@dataclass(frozen=True)
class Entry:
    """One changelog entry, as its maintainer wrote it."""

    source: str
    version: str
    distribution: str
    urgency: str
    maintainer: str
    day: date
    """The date of the signature line, in the signer's own time zone (as written)."""
    body: tuple[str, ...]
    """The entry's change lines, indentation kept, blank lines dropped."""

    @property
    def entry_id(self) -> str:
        """A stable id: source and version, with characters outside [A-Za-z0-9.+-] replaced."""
        return re.sub(r"[^A-Za-z0-9.+-]", "_", f"{self.source}_{self.version}")

    @property
    def date_text(self) -> str:
        """``7 July 2026``: one spelling for documents, questions and answers alike."""
        return format_day(self.day)

    def items(self) -> list[str]:
        """The change items: each bullet with its continuation lines joined into one line."""
        items: list[str] = []
        for line in self.body:
            text = line.strip()
            if text.startswith("[") and text.endswith("]"):
                items.append("")  # a "[ Name ]" attribution closes the item before it
            elif _BULLET.match(line):
                items.append(_BULLET.sub("", line).strip())
            elif items and items[-1]:
                items[-1] += " " + text
        return [" ".join(item.split()) for item in items if item]


def format_day(day: date) -> str:
    """``7 July 2026``, whatever the locale."""
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}"


def parse_changelog(text: str) -> list[Entry]:
    """The entries of one changelog; an entry whose header or date cannot be read is skipped
    (old changelogs hold hand-written oddities that no question should rest on)."""
    entries: list[Entry] = []
    header, body = None, []
    for line in text.splitlines():
        match = _HEADER.match(line)
        if match:
            header, body = match, []
            continue
        trailer = _TRAILER.match(line)
        if trailer and header:
            entry = _entry(header, trailer, body)
            if entry:
                entries.append(entry)
            header = None
        elif header and line.strip():
            body.append(line.rstrip())
    return entries


def _entry(header: re.Match, trailer: re.Match, body: list[str]) -> Entry | None:
    try:
        day = parsedate_to_datetime(trailer["date"]).date()
    except (TypeError, ValueError, IndexError):
        return None
    urgency = re.search(r"urgency=(\w+)", header["opts"])
    return Entry(
        source=header["source"],
        version=header["version"],
        distribution=header["dist"].strip(),
        urgency=urgency.group(1).lower() if urgency else "unknown",
        maintainer=" ".join(trailer["name"].split()),
        day=day,
        body=tuple(body),
    )


@dataclass(frozen=True)
class ChangelogFile:
    """One file read: where, its SHA-256, and the binary package dir it was found under."""

    path: Path
    sha256: str
    package_dir: str
    entries: tuple[Entry, ...]


def read_changelogs(paths: list[Path]) -> list[ChangelogFile]:
    """Each file decompressed and parsed, in the order given; unreadable files are skipped."""
    files = []
    for path in paths:
        try:
            raw = path.read_bytes()
            text = gzip.decompress(raw).decode("utf-8", errors="replace")
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        files.append(ChangelogFile(path, hashlib.sha256(raw).hexdigest(), path.parent.name,
                                   tuple(parse_changelog(text))))
    return files
