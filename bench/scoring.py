"""tunearena's multiple-choice scoring against lm-eval's own HFLM on the same requests, and the
RAG arm's cost per token against the plain arm's.

    python bench/scoring.py [--model smollm2-135m-instruct] [--questions 40] [--batch-size 8]
                            [--passages 3] [--repeats 3]

Writes the demo world's first test questions as tunearena's lm-eval tasks, plain and with
``--passages`` product documents as context (the gold one among them, as retrieval gives), and
times, alternating so that machine noise hits all alike:

- ``tunearena``: ``harness.score_model`` on the task (lm-eval's ``simple_evaluate`` with the
  per-question bookkeeping and the context check), the model already loaded;
- ``HFLM``: the bare ``HFLM.loglikelihood`` over the same (prompt, " " + choice) requests at
  the same batch size: the baseline, the least that scoring them can cost.

Prints the median wall time of each, the ratio tunearena / HFLM per task (the harness's
overhead), and the time per scored token of the RAG task over the plain one's (a ratio above 1
means long prompts cost more per token than short ones). Both paths pick the same choice for
every question: the check that they did the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "demo_world"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_tasks(task_dir: Path, questions: int, passages: int) -> tuple[str, str]:
    """The plain and the RAG task of the first ``questions`` demo test questions."""
    from tunearena.evaluation.benchmarks import load_qa
    from tunearena.evaluation.tasks import write_mc_task

    docs = {d["id"]: d["text"] for d in read_jsonl(DEMO / "domain" / "documents.jsonl")}
    items = load_qa(DEMO / "domain" / "qa_test.jsonl")[:questions]
    rng = random.Random(0)
    context = {}
    for item in items:
        others = rng.sample(sorted(set(docs) - {item.doc_id}), passages - 1)
        chosen = [item.doc_id, *others] if item.doc_id in docs else others
        context[item.id] = [docs[d] for d in chosen[:passages]]
    return (write_mc_task(task_dir, "bench", items),
            write_mc_task(task_dir, "bench", items, passages=context))


def requests(task_dir: Path, task: str) -> list:
    """lm-eval's requests for ``task``: one (prompt, " " + choice) per choice."""
    from lm_eval.api.instance import Instance

    from tunearena.evaluation.prompt import ANSWER_DELIMITER

    out = []
    for i, row in enumerate(read_jsonl(task_dir / f"{task}.jsonl")):
        out += [Instance("loglikelihood", row, (row["prompt"], ANSWER_DELIMITER + choice), i,
                         (task, i, 1)) for choice in row["choices"]]
    return out


def picks(lls: list[tuple[float, bool]], reqs: list) -> list[int]:
    """The chosen choice per question (highest summed log-likelihood), from bare HFLM."""
    per_doc: dict[int, list[float]] = {}
    for (ll, _), req in zip(lls, reqs, strict=True):
        per_doc.setdefault(req.idx, []).append(ll)
    return [max(range(len(v)), key=v.__getitem__) for _, v in sorted(per_doc.items())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEMO / "base_model"),
                        help="a model dir, a .gguf file or smollm2-135m-instruct")
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--passages", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from lm_eval.models.huggingface import HFLM

    from tunearena.evaluation.harness import load_model, score_model
    from tunearena.training.gguf import resolve_base

    model_dir = Path(resolve_base(args.model))
    model, tokenizer = load_model(model_dir)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {model_dir} ({n_params:.1f}M params), batch size {args.batch_size}, "
          f"{args.questions} questions, {args.passages} passages for RAG, {os.cpu_count()} CPUs")
    task_dir = Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    plain, rag = write_tasks(task_dir, args.questions, args.passages)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device="cpu")
    times: dict[tuple[str, str], list[float]] = {}
    tokens, agree = {}, {}
    for task in (plain, rag):
        reqs = requests(task_dir, task)
        tokens[task] = sum(len(tokenizer(r.args[0] + r.args[1])["input_ids"]) for r in reqs)
    for repeat in range(args.repeats):
        for task in (plain, rag):
            t0 = time.perf_counter()
            rows = score_model(model_dir, task_dir, [task], args.batch_size,
                               loaded=(model, tokenizer))[task]
            times.setdefault(("tunearena", task), []).append(time.perf_counter() - t0)
            reqs = requests(task_dir, task)
            t0 = time.perf_counter()
            lls = lm.loglikelihood(reqs, disable_tqdm=True)
            times.setdefault(("HFLM", task), []).append(time.perf_counter() - t0)
            answers = [r["answer"] for r in read_jsonl(task_dir / f"{task}.jsonl")]
            bare = [int(p == a) for p, a in zip(picks(lls, reqs), answers, strict=True)]
            agree[task] = bare == [row["acc"] for row in rows]
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"{'task':<12}{'path':<11}{'median s':>9}{'tokens':>8}{'ms/token':>9}")
    for (path, task), s in median.items():
        print(f"{task:<12}{path:<11}{s:>9.2f}{tokens[task]:>8}{1000 * s / tokens[task]:>9.3f}")
    for task in (plain, rag):
        print(f"ratio tunearena/HFLM ({task}): "
              f"{median[('tunearena', task)] / median[('HFLM', task)]:.2f}")
        print(f"same choices as HFLM ({task}): {'yes' if agree[task] else 'NO'}")
    per_token = {t: median[("tunearena", t)] / tokens[t] for t in (plain, rag)}
    print(f"per-token time ratio rag/plain (tunearena): {per_token[rag] / per_token[plain]:.2f}")
    return 0 if all(agree.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
