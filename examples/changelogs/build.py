"""Write the changelog example's committed data from this machine's Debian changelogs.

    python examples/changelogs/build.py            # rewrite the files beside this script
    python examples/changelogs/build.py --check    # rebuild in memory, say what would change

Reads ``<doc-root>/*/changelog.Debian.gz`` (default ``/usr/share/doc``) and writes, beside
itself: ``documents.jsonl`` (the RAG corpus, also the continued-pretraining text: one
document per recent changelog entry), ``qa_train.jsonl`` (instruction records about the
training entries), ``qa_test.jsonl`` (held-out multiple-choice questions about the other
entries), ``manifest.json`` (settings, counts, guessing baselines) and ``inputs.tsv`` (every
file read, with its SHA-256). The output depends only on the seed and the bytes of the files
read: another machine, with other packages installed, gets other data, which ``--check``
reports file by file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections import Counter
from datetime import date
from pathlib import Path

from changelog import read_changelogs
from facts import (
    MAX_BODY_CHARS,
    MAX_FACTS_PER_SOURCE,
    document,
    find_facts,
    select_recent,
    split_facts,
    unique_entries,
)
from questions import Distractors, guessing_baselines, test_rows, train_records

HERE = Path(__file__).resolve().parent
SEED = 0
SINCE = date(2025, 1, 1)
"""SmolLM2's pretraining data ends in 2024: entries from 2025 on are news to it."""
MIN_ENTRIES = 120
TEST_FRACTION = 0.5
LEAK_NGRAM = 8
"""The training data check's default (``training.data_prep.leak_ngram``)."""
OUTPUTS = ("documents.jsonl", "qa_train.jsonl", "qa_test.jsonl", "manifest.json", "inputs.tsv")


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def drop_leaks(train: list[dict], rows: list[dict]) -> tuple[list[dict], int]:
    """Training records in which the run's leak check would find a test question: dropped
    here, so the QA stage trains on exactly this file."""
    from tunearena.training.prepare import find_leaks

    leaks = find_leaks(train, "instruction", {"test": [r["question"] for r in rows]}, LEAK_NGRAM)
    leaking = {leak["index"] for leak in leaks}
    return [r for i, r in enumerate(train) if i not in leaking], len(leaking)


def build(doc_root: Path, seed: int = SEED, since: date = SINCE, min_entries: int = MIN_ENTRIES,
          test_fraction: float = TEST_FRACTION) -> dict[str, str]:
    """Every output file's text, by name."""
    paths = sorted(doc_root.glob("*/changelog.Debian.gz"))
    files = read_changelogs(paths)
    if not files:
        raise SystemExit(f"no readable {doc_root}/*/changelog.Debian.gz")
    everything, dirs = unique_entries(files)
    pool, since_used = select_recent(everything, since, min_entries)
    rng = random.Random(seed)
    facts = find_facts(pool, everything, dirs, rng)
    train_facts, test_facts = split_facts(facts, test_fraction, rng)
    rows = test_rows(test_facts, Distractors(pool, test_facts, train_facts, rng), rng)
    train, leaked = drop_leaks(train_records(train_facts), rows)
    inputs = "".join(f"{f.sha256}\t{f.path.relative_to(doc_root)}\n" for f in files)
    kinds = {f"{f.entry.entry_id}-{f.kind}": f.kind for f in test_facts}
    manifest = {
        "seed": seed,
        "since_requested": since.isoformat(),
        "since_used": since_used.isoformat(),
        "settings": {"min_entries": min_entries, "test_fraction": test_fraction,
                     "max_body_chars": MAX_BODY_CHARS,
                     "max_facts_per_source": MAX_FACTS_PER_SOURCE, "leak_ngram": LEAK_NGRAM},
        "inputs": {"doc_root": str(doc_root), "files": len(files),
                   "sha256_of_inputs_tsv": hashlib.sha256(inputs.encode()).hexdigest()},
        "entries": {"read": len(everything), "documents": len(pool),
                    "packages": len({e.source for e in pool}),
                    "documents_by_year": dict(sorted(Counter(str(e.day.year) for e in pool).items())),
                    "train_entries": len({f.entry.entry_id for f in train_facts}),
                    "test_entries": len({f.entry.entry_id for f in test_facts})},
        "facts": {"train": dict(sorted(Counter(f.kind for f in train_facts).items())),
                  "test": dict(sorted(Counter(f.kind for f in test_facts).items()))},
        "train_records": len(train),
        "train_records_dropped_by_leak_check": leaked,
        "test_questions": len(rows),
        "answer_positions": dict(sorted(Counter(str(r["answer"]) for r in rows).items())),
        "guessing_baselines": guessing_baselines(rows, train, kinds),
    }
    return {
        "documents.jsonl": jsonl([document(e) for e in pool]),
        "qa_train.jsonl": jsonl(train),
        "qa_test.jsonl": jsonl(rows),
        "manifest.json": json.dumps(manifest, indent=2, sort_keys=True) + "\n",
        "inputs.tsv": inputs,
    }


def _input_changes(old: str, new: str) -> list[str]:
    def table(text: str) -> dict[str, str]:
        return {path: digest for digest, path in (line.split("\t") for line in text.splitlines())}

    before, after = table(old), table(new)
    changes = [f"  added:   {p}" for p in sorted(after.keys() - before.keys())]
    changes += [f"  removed: {p}" for p in sorted(before.keys() - after.keys())]
    changes += [f"  changed: {p}" for p in sorted(before.keys() & after.keys())
                if before[p] != after[p]]
    return changes


def check(out: Path, built: dict[str, str]) -> int:
    """Compare ``built`` with the files in ``out``; print what differs and why; 0 if nothing."""
    differ = [name for name in OUTPUTS
              if not (out / name).exists() or (out / name).read_text(encoding="utf-8") != built[name]]
    if not differ:
        print(f"{out}: up to date (same inputs, same output)")
        return 0
    print(f"{out}: would change {', '.join(differ)}")
    if "inputs.tsv" in differ and (out / "inputs.tsv").exists():
        changes = _input_changes((out / "inputs.tsv").read_text(encoding="utf-8"),
                                 built["inputs.tsv"])
        print(f"the changelogs on this machine differ from those the files were built from "
              f"({len(changes)} files):")
        print("\n".join(changes[:20] + (["  ..."] if len(changes) > 20 else [])))
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc-root", type=Path, default=Path("/usr/share/doc"))
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--since", type=date.fromisoformat, default=SINCE)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the committed files would change")
    args = parser.parse_args(argv)
    built = build(args.doc_root, args.seed, args.since)
    if args.check:
        return check(args.out, built)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in built.items():
        (args.out / name).write_text(text, encoding="utf-8")
    print(json.dumps({k: v for k, v in json.loads(built["manifest.json"]).items()
                      if k in ("since_used", "entries", "facts", "test_questions",
                               "guessing_baselines")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
