"""Which changelog entries become documents, which facts are asked about, and the split.

Three kinds of fact, each answered by exactly one entry of the data:

- ``version``: the version of a package whose changelog entry is dated D (asked only where no
  other entry of that package, of any year, has the same date);
- ``date``: the date of the entry of package P, version V;
- ``package``: the package whose changelog holds a given change line (asked only for a line
  that appears in one entry of all the changelogs read, and that does not name the package).
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date

from changelog import ChangelogFile, Entry

MAX_BODY_CHARS = 700
"""A document keeps its entry's first change lines up to this many characters (security
uploads of chromium or linux list hundreds of CVEs); a change line is asked about only if
the document keeps it."""
MAX_FACTS_PER_SOURCE = 12
"""Facts of one kind about one package, at most, so chromium's 80-odd uploads do not make
most of the questions."""
MIN_VERSIONS = 4
"""A ``version`` question needs 3 other versions of the same package as distractors."""
LINE_WORDS = (6, 30)
"""A change line asked about has this many words (enough to be specific, short to quote)."""


@dataclass(frozen=True)
class Fact:
    """One question's content: the entry it comes from and what it asks."""

    kind: str
    entry: Entry
    answer: str
    line: str = ""
    """The quoted change line (``package`` facts only)."""


def unique_entries(files: list[ChangelogFile]) -> tuple[list[Entry], dict[str, set[str]]]:
    """Every entry once, sorted by (source, date, version), and each source's package dirs.

    The first file (in path order) to hold an entry wins. Entries of *sibling* sources, built
    from one upstream and uploaded together with the same version, date and text (the
    google-cloud-cli-* family), are kept once, under the first source name, so no question
    has several right answers.
    """
    by_key: dict[tuple[str, str], Entry] = {}
    dirs: dict[str, set[str]] = defaultdict(set)
    for file in files:
        for entry in file.entries:
            by_key.setdefault((entry.source, entry.version), entry)
            dirs[entry.source].add(file.package_dir)
    siblings: set[tuple] = set()
    entries = []
    for entry in sorted(by_key.values(), key=lambda e: (e.source, e.day, e.version)):
        key = (entry.version, entry.day, entry.body)
        if key not in siblings:
            siblings.add(key)
            entries.append(entry)
    return entries, dirs


def select_recent(entries: list[Entry], since: date, min_entries: int) -> tuple[list[Entry], date]:
    """Entries dated on or after ``since``; a year earlier at a time while fewer than
    ``min_entries`` remain (another machine may have older packages). Returns them and the
    date used."""
    while True:
        pool = [e for e in entries if e.day >= since]
        if len(pool) >= min_entries or since.year <= 1995:
            return pool, since
        since = since.replace(year=since.year - 1)


def kept_body(entry: Entry) -> list[str]:
    """The change lines a document keeps: whole lines, up to ``MAX_BODY_CHARS``."""
    kept, size = [], 0
    for line in entry.body:
        if kept and size + len(line) + 1 > MAX_BODY_CHARS:
            break
        kept.append(line)
        size += len(line) + 1
    return kept


def document(entry: Entry) -> dict:
    """The corpus record of one entry: a heading line, who signed it and when, its changes."""
    body = kept_body(entry)
    cut = "\n  [...]" if len(body) < len(entry.body) else ""
    text = (f"{entry.source} ({entry.version}) {entry.distribution}; urgency={entry.urgency}\n"
            f"Signed by {entry.maintainer} on {entry.date_text}.\n" + "\n".join(body) + cut)
    return {"id": entry.entry_id, "title": f"{entry.source} {entry.version}", "text": text}


def _normal(line: str) -> str:
    return " ".join(line.casefold().split())


def _names_package(line: str, names: set[str]) -> bool:
    text = line.casefold()
    return any(re.search(rf"(?<![a-z0-9]){re.escape(name)}(?![a-z0-9])", text) for name in names)


def _package_names(source: str, dirs: set[str]) -> set[str]:
    """Names that would give a package away: the source, its binary dirs, and their stems
    without version digits (``postgresql-15`` -> ``postgresql``)."""
    names = {source, *dirs}
    names |= {re.sub(r"[\d.+-]+$", "", n) for n in names}
    return {n.casefold() for n in names if len(n) >= 3}


def find_facts(pool: list[Entry], everything: list[Entry], dirs: dict[str, set[str]],
               rng: random.Random) -> list[Fact]:
    """Every fact of every kind that is unambiguous within ``everything`` (all entries read),
    at most ``MAX_FACTS_PER_SOURCE`` per package and kind, chosen with ``rng``."""
    line_counts = Counter(_normal(item) for e in everything for item in set(e.items()))
    days_of = defaultdict(Counter)
    for e in everything:
        days_of[e.source][e.day] += 1
    versions = defaultdict(set)
    for e in pool:
        versions[e.source].add(e.version)

    by_source_kind: dict[tuple[str, str], list[Fact]] = defaultdict(list)
    for e in pool:
        by_source_kind[(e.source, "date")].append(Fact("date", e, e.date_text))
        if len(versions[e.source]) >= MIN_VERSIONS and days_of[e.source][e.day] == 1:
            by_source_kind[(e.source, "version")].append(Fact("version", e, e.version))
        lines = [item for item in _items_kept(e) if _askable(item, e, line_counts, dirs)]
        if lines:
            by_source_kind[(e.source, "package")].append(
                Fact("package", e, e.source, line=rng.choice(lines)))
    facts = []
    for key in sorted(by_source_kind):
        found = by_source_kind[key]
        facts += rng.sample(found, MAX_FACTS_PER_SOURCE) if len(found) > MAX_FACTS_PER_SOURCE \
            else found
    return facts


def _items_kept(entry: Entry) -> list[str]:
    kept = Entry(**{**entry.__dict__, "body": tuple(kept_body(entry))})
    return kept.items()


def _askable(item: str, entry: Entry, line_counts: Counter, dirs: dict[str, set[str]]) -> bool:
    words = len(item.split())
    return (LINE_WORDS[0] <= words <= LINE_WORDS[1]
            and line_counts[_normal(item)] == 1
            and '"' not in item
            and not _names_package(item, _package_names(entry.source, dirs[entry.source])))


def upstream(version: str) -> str:
    """The upstream part of a Debian version: no epoch (``1:``), no Debian revision (``-2``)."""
    return re.sub(r"-[^-]*$", "", version.split(":", 1)[-1])


def split_facts(facts: list[Fact], test_fraction: float, rng: random.Random
                ) -> tuple[list[Fact], list[Fact]]:
    """(train, test): whole entries go to one side, and entries that share an upstream
    version (one release packaged under several names, as kubectl and google-cloud-cli, or
    uploaded twice, as chromium's ``-1`` and ``-2``) go together, so no training question
    states a test answer or its near twin. Groups are drawn in a seeded order until the test
    side holds ``test_fraction`` of the facts."""
    groups: dict[str, set[str]] = {}
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for f in facts:
        a, b = root("entry:" + f.entry.entry_id), root("version:" + upstream(f.entry.version))
        if a != b:
            parent[max(a, b)] = min(a, b)
    for f in facts:
        groups.setdefault(root("entry:" + f.entry.entry_id), set()).add(f.entry.entry_id)
    order = sorted(groups)
    rng.shuffle(order)
    per_entry = Counter(f.entry.entry_id for f in facts)
    test_entries: set[str] = set()
    for key in order:
        if sum(per_entry[e] for e in test_entries) >= test_fraction * len(facts):
            break
        test_entries |= groups[key]
    train = [f for f in facts if f.entry.entry_id not in test_entries]
    test = [f for f in facts if f.entry.entry_id in test_entries]
    return train, test
