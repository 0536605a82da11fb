"""Write the demo world's committed data files from the seed.

    python examples/demo_world/generate.py

Writes ``domain/`` (the RAG corpus, fine-tuning data and preference pairs, held-out test
questions) and
``general/`` (the forgetting benchmark, and general text to replay during fine-tuning). The base model's pretraining corpus is not
committed; ``build_base.py`` regenerates it from the same seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from world import domain_files, general_benchmark, general_replay, make_world, preference_pairs

HERE = Path(__file__).resolve().parent
SEED = 0


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    world = make_world(args.seed)
    domain = domain_files(world, args.seed + 1)
    write_jsonl(args.out / "domain" / "documents.jsonl", domain["documents"])
    write_jsonl(args.out / "domain" / "docs_train.jsonl", domain["docs_train"])
    write_jsonl(args.out / "domain" / "qa_train.jsonl", domain["qa_train"])
    write_jsonl(args.out / "domain" / "qa_test.jsonl", domain["qa_test"])
    write_jsonl(args.out / "domain" / "qa_pairs.jsonl", preference_pairs(world, args.seed + 6))
    write_jsonl(args.out / "general" / "world_facts.jsonl", general_benchmark(world, args.seed + 2))
    write_jsonl(args.out / "general" / "replay.jsonl", general_replay(world, args.seed + 4))
    for name, records in domain.items():
        print(f"domain/{name}: {len(records)} records")


if __name__ == "__main__":
    main()
