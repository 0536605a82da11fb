"""Facts turned into held-out multiple-choice questions and training instruction records.

Distractors come from the answer's own field and from the documents' entries only (a
distractor that no document mentions could be ruled out by a model that merely recognises
what it was trained on): other versions of the same package, other dates of the same package
(then of any package), other package names drawn in proportion to how often each is a right answer, so that
neither the answer's frequency nor its position, length or recency tells it apart.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict

from changelog import MONTHS, Entry
from facts import Fact

TEST_TEMPLATES = {
    "version": "Which version of {source} has a changelog entry dated {date}?",
    "date": "What date is on the changelog entry of {source} version {version}?",
    "package": 'Which Debian source package\'s changelog has the entry "{line}"?',
}
TRAIN_TEMPLATES = {
    # Worded unlike the test questions, so the leak check (shared 8-word runs) finds none.
    "version": ("What {source} version was signed on {date}?",
                "On {date}, which {source} version got a changelog entry?"),
    "date": ("When was {source} {version} signed?",
             "{source} {version} is dated what day?"),
    "package": ('The change "{line}" belongs to which package?',
                'Name the package whose changelog lists "{line}".'),
}
KINDS = tuple(TEST_TEMPLATES)


def _fill(template: str, fact: Fact) -> str:
    e = fact.entry
    return template.format(source=e.source, date=e.date_text, version=e.version, line=fact.line)


class Distractors:
    """Draws three wrong answers for a fact from the documents' entries."""

    def __init__(self, pool: list[Entry], tested: list[Fact], trained: list[Fact],
                 rng: random.Random):
        self.rng = rng
        # Versions and dates that training questions give as answers are drawn last: a model
        # that learned them could rule them out without knowing the test fact.
        self.trained = {(f.kind, f.answer) for f in trained}
        self.versions = defaultdict(list)
        self.days = defaultdict(list)
        for e in pool:
            self.versions[e.source].append(e.version)
            self.days[e.source].append(e.date_text)
        self.all_days = sorted({e.date_text for e in pool}, key=lambda d: d)
        self.package_weight = Counter(f.answer for f in tested if f.kind == "package")

    def draw(self, fact: Fact) -> list[str]:
        """Three distinct wrong answers; raises ValueError if the field has too few."""
        source = fact.entry.source
        if fact.kind == "version":
            return self._sample("version", self.versions[source], fact.answer, 3)
        if fact.kind == "date":
            same = self._sample("date", self.days[source], fact.answer,
                                min(3, len(set(self.days[source])) - 1))
            return same + self._sample("date", self.all_days, fact.answer, 3 - len(same), same)
        return self._weighted_packages(fact.answer)

    def _sample(self, kind: str, values: list[str], answer: str, k: int,
                exclude: list[str] = ()) -> list[str]:
        options = sorted(set(values) - {answer} - set(exclude))
        if len(options) < k:
            raise ValueError(f"only {len(options)} distractors for {answer!r}")
        fresh = [o for o in options if (kind, o) not in self.trained]
        seen = [o for o in options if (kind, o) in self.trained]
        if len(fresh) >= k:
            return self.rng.sample(fresh, k)
        return fresh + self.rng.sample(seen, k - len(fresh))

    def _weighted_packages(self, answer: str) -> list[str]:
        # Each name is drawn in proportion to how often it is a right answer in the test
        # file, so it is offered about four times for each time it is right: no rule that
        # looks at the name alone (its frequency here or in training) beats chance.
        names = sorted(n for n in self.package_weight if n != answer)
        weight = dict(self.package_weight)
        if len(names) < 3:  # tiny data: any other package of the documents, weight 1
            names += sorted(set(self.versions) - set(names) - {answer})
            weight = {n: weight.get(n, 1) for n in names}
        if len(names) < 3:
            raise ValueError(f"only {len(names)} other packages to offer beside {answer!r}")
        chosen: list[str] = []
        while len(chosen) < 3:
            left = [n for n in names if n not in chosen]
            chosen.append(self.rng.choices(left, [weight[n] for n in left])[0])
        return chosen


def test_rows(facts: list[Fact], distractors: Distractors, rng: random.Random) -> list[dict]:
    """One multiple-choice row per fact, the answer's position balanced within each kind
    (a shuffled cycle of 0..3), the rows in a seeded order so that the first N are a mix."""
    rows = []
    for kind in KINDS:
        of_kind = [f for f in facts if f.kind == kind]
        positions = [i % 4 for i in range(len(of_kind))]
        rng.shuffle(positions)
        for fact, position in zip(of_kind, positions, strict=True):
            wrong = distractors.draw(fact)
            rng.shuffle(wrong)
            choices = wrong[:position] + [fact.answer] + wrong[position:]
            rows.append({"id": f"{fact.entry.entry_id}-{kind}",
                         "question": _fill(TEST_TEMPLATES[kind], fact),
                         "choices": choices, "answer": position,
                         "doc_id": fact.entry.entry_id})
    rng.shuffle(rows)
    return rows


def train_records(facts: list[Fact]) -> list[dict]:
    """Two differently worded instruction records per training fact, in the
    ``Question: ...\\nAnswer:`` form the few-shot arm also reads."""
    return [{"prompt": f"Question: {_fill(template, fact)}\nAnswer:", "response": f" {fact.answer}"}
            for fact in facts for template in TRAIN_TEMPLATES[fact.kind]]


def _version_key(version: str) -> list:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", version)]


def guessing_baselines(rows: list[dict], train: list[dict], kinds: dict[str, str]) -> dict:
    """Accuracy of answering without knowledge, overall: always the same position; the choice
    most often right in the training data; the choice most often offered in the test file;
    the longest choice; the latest date or highest version (their own kinds only)."""
    right_in_train = Counter(r["response"].strip() for r in train)
    offered = Counter(c for r in rows for c in r["choices"])

    def score(pick) -> float:
        return round(sum(pick(r) == r["answer"] for r in rows) / len(rows), 4)

    def argmax(r, key) -> int:
        return max(range(len(r["choices"])), key=lambda i: (key(r["choices"][i]), -i))

    result = {f"position_{p}": score(lambda r, p=p: p) for p in range(4)}
    result["most_right_in_training"] = score(lambda r: argmax(r, lambda c: right_in_train[c]))
    result["least_right_in_training"] = score(lambda r: argmax(r, lambda c: -right_in_train[c]))
    result["most_offered"] = score(lambda r: argmax(r, lambda c: offered[c]))
    result["longest"] = score(lambda r: argmax(r, len))
    def latest(c: str) -> tuple[int, int, int]:
        day, month, year = c.split()
        return int(year), MONTHS.index(month), int(day)

    for kind, key in (("date", latest), ("version", _version_key)):
        of_kind = [r for r in rows if kinds[r["id"]] == kind]
        hits = sum(argmax(r, key) == r["answer"] for r in of_kind)
        result[f"{'latest' if kind == 'date' else 'highest'}_{kind}"] = round(
            hits / max(1, len(of_kind)), 4)
    return result
