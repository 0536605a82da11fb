"""RAFT training prompts from a real index: the demo world's documents, chunked small so each
has several chunks, embedded with the packaged MiniLM, searched with real FAISS; the demo's
training questions as records."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from tunearena.evaluation.prompt import format_prompt
from tunearena.rag.config import RagConfig
from tunearena.rag.index import RagIndex, build_index
from tunearena.rag.retrieve import retrieve_contexts
from tunearena.training.config import RagContextConfig
from tunearena.training.rag_context import (
    RagContextCounts,
    RagContextError,
    add_rag_context,
    check_rag_context_stage,
    load_stage_index,
    rag_context_file,
)

DOMAIN = Path(__file__).resolve().parents[2] / "examples" / "demo_world" / "domain"
TOP_K = 3


@dataclass(frozen=True)
class Item:
    """A training question as retrieval reads a benchmark question."""

    id: str
    question: str
    doc_id: str | None


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "index"
    # 32-token chunks: every demo document has several, so "not from the gold document" is
    # more than "not the gold chunk".
    build_index(RagConfig(corpus=DOMAIN / "documents.jsonl", chunk_tokens=32,
                          chunk_overlap_tokens=8), out)
    return out


@pytest.fixture(scope="module")
def index(index_dir) -> RagIndex:
    return RagIndex.load(index_dir)


@pytest.fixture(scope="module")
def records() -> list[dict]:
    """216 of the demo's training QA (three of every five: each document's), each given the
    document its question names by title."""
    docs = [json.loads(line) for line in (DOMAIN / "documents.jsonl").open()]
    out = []
    lines = (DOMAIN / "qa_train.jsonl").read_text(encoding="utf-8").splitlines()
    for line in [line for n, line in enumerate(lines) if n % 5 < 3]:
        record = json.loads(line)
        (doc_id,) = [d["id"] for d in docs if d["title"] in record["prompt"]]
        out.append({**record, "doc_id": doc_id})
    return out


@pytest.fixture(scope="module")
def doc_of(index) -> dict[str, str]:
    """Chunk text -> its document (each chunk opens with its document's title: unique)."""
    texts = {c.text: c.doc_id for c in index.chunks}
    assert len(texts) == len(index.chunks)
    return texts


@pytest.fixture(scope="module")
def with_context(index, records, tmp_path_factory):
    """``rag_context_file`` over the records, cached by its config."""
    made: dict = {}
    tmp = tmp_path_factory.mktemp("records")
    source = write_records(tmp / "qa_train.jsonl", records)

    def run(**settings) -> tuple[list[dict], RagContextCounts]:
        key = tuple(sorted(settings.items()))
        if key not in made:
            out = tmp / f"out-{len(made)}.jsonl"
            counts = rag_context_file(source, out, index, RagContextConfig(**settings), TOP_K)
            made[key] = [json.loads(line) for line in out.open()], counts
        return made[key]

    return run


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def passages(prompt: str) -> list[str]:
    return [line.removeprefix("Context: ") for line in prompt.split("\n")
            if line.startswith("Context: ")]


def question(prompt: str) -> str:
    return prompt.split("Question: ")[-1].removesuffix("\nAnswer:")


def gold_passages(record: dict, doc_of: dict[str, str], doc_id: str | None = None) -> list[str]:
    return [p for p in passages(record["prompt"]) if doc_of[p] == (doc_id or record["doc_id"])]


def test_gold_rate_follows_p_gold_and_the_prompts_show_it(with_context, records, doc_of):
    out, counts = with_context(p_gold=0.7)
    n = len(records)
    assert counts.records == n == 216
    # Four standard deviations of a binomial count: a fixed seed, so this never flakes.
    assert abs(counts.gold_rate - 0.7) <= 4 * math.sqrt(0.7 * 0.3 / n)
    found = [len(gold_passages(r, doc_of)) for r in out]
    assert set(found) == {0, 1}
    assert sum(found) == counts.with_gold
    assert counts.gold_rate == counts.with_gold / n
    assert [r["response"] for r in out] == [r["response"] for r in records]
    assert [r["doc_id"] for r in out] == [r["doc_id"] for r in records]


@pytest.mark.parametrize("p_gold", [1.0, 0.0])
def test_p_gold_one_gives_every_prompt_its_gold_and_zero_none(with_context, doc_of, p_gold):
    out, counts = with_context(p_gold=p_gold)
    # Exactly one: the gold document's other chunks, which the question retrieves too, are
    # never distractors.
    assert [len(gold_passages(r, doc_of)) for r in out] == [int(p_gold)] * len(out)
    assert counts.with_gold == int(p_gold) * len(out)


@pytest.mark.parametrize(("distractors", "expected"), [(None, TOP_K), (0, 1), (4, 5)])
def test_every_prompt_has_the_configured_passages(with_context, doc_of, distractors, expected):
    out, counts = with_context(p_gold=0.5, distractors=distractors)
    assert {len(passages(r["prompt"])) for r in out} == {expected}
    assert counts.mean_passages == expected
    for r in out:
        # Every passage is a chunk of the index, each at most once.
        assert len(set(passages(r["prompt"]))) == expected
        assert all(p in doc_of for p in passages(r["prompt"]))


def test_prompts_are_rendered_as_scoring_renders_them(with_context, records, index, index_dir,
                                                     doc_of):
    items = [Item(str(n), question(r["prompt"]), r["doc_id"]) for n, r in enumerate(records)]
    scored = retrieve_contexts(index_dir, {"train": items}, TOP_K, 0)["train"].contexts
    out, _ = with_context(p_gold=1.0)
    same = 0
    for item, r in zip(items, out, strict=True):
        assert r["prompt"] == format_prompt(item.question, passages(r["prompt"]))
        context = scored[item.id]
        scored_gold = [p for p, d in zip(context["passages"], context["doc_ids"], strict=True)
                       if d == item.doc_id]
        # Where scoring's top k hold this prompt's gold passage and no other chunk of its
        # document, the two prompts must be identical: same passages, best first. (The demo's
        # chunks all open with their product's name, so the top k often hold several.)
        if scored_gold == gold_passages(r, doc_of):
            assert r["prompt"] == format_prompt(item.question, context["passages"])
            same += 1
    assert same >= 20  # 30 with these records, corpus and chunking
    # Without the gold passage, a prompt is the question's top k outside its document.
    out, _ = with_context(p_gold=0.0)
    hits = index.search([item.question for item in items], 20)
    for item, r, found in zip(items, out, hits, strict=True):
        outside = [h.text for h in found if h.doc_id != item.doc_id][:TOP_K]
        assert r["prompt"] == format_prompt(item.question, outside)


def test_same_seed_same_prompts_other_seed_other_draws(with_context, doc_of):
    first, _ = with_context(p_gold=0.5, seed=1)
    again, _ = with_context(p_gold=0.5, seed=1)
    other, _ = with_context(p_gold=0.5, seed=2)
    assert [r["prompt"] for r in first] == [r["prompt"] for r in again]

    def holding_gold(out: list[dict]) -> list[bool]:
        return [bool(gold_passages(r, doc_of)) for r in out]

    # Positions follow the similarity to the question, as in scoring; the seed draws which
    # records hold their gold passage.
    assert holding_gold(first) != holding_gold(other)
    assert [r["prompt"] for r in first] != [r["prompt"] for r in other]


def test_records_without_doc_id_find_their_gold_document(with_context, index, records):
    rows = [(f"qa_train.jsonl:{n}", {k: v for k, v in r.items() if k != "doc_id"})
            for n, r in enumerate(records, start=1)]
    out, counts = add_rag_context(rows, index, RagContextConfig(p_gold=0.0), TOP_K)
    assert counts.inferred_gold == len(records)
    assert "doc_id" not in out[0]
    # Without its gold passage a prompt holds the top k outside the gold document, so it is
    # the prompt written from the record's doc_id exactly when retrieval found that document.
    # Question and answer together find it for 209 of these 216 records (a 32-token chunk of
    # another product, "... costs 45 dollars", can outscore the right one; with the default
    # 96-token chunks, for all).
    named, _ = with_context(p_gold=0.0)
    found = sum(a["prompt"] == b["prompt"] for a, b in zip(out, named, strict=True))
    assert found >= 0.9 * len(records)


def test_unknown_doc_id_names_file_line_and_id(index, records, tmp_path):
    bad = [records[0], records[1], {**records[2], "doc_id": "product-99"}]
    path = write_records(tmp_path / "train.jsonl", bad)
    with pytest.raises(RagContextError, match=r"train\.jsonl:3: doc_id 'product-99' is not"):
        rag_context_file(path, tmp_path / "out.jsonl", index, RagContextConfig(), TOP_K)
    assert not (tmp_path / "out.jsonl").exists()


def test_prompt_that_is_not_a_bare_question_names_its_line(index, records, tmp_path):
    fewshot = format_prompt("Who designed it?", examples=[("What is it?", "a lamp")])
    path = write_records(tmp_path / "train.jsonl", [records[0], {**records[1], "prompt": fewshot}])
    with pytest.raises(RagContextError, match=r"train\.jsonl:2: .*bare question"):
        rag_context_file(path, tmp_path / "out.jsonl", index, RagContextConfig(), TOP_K)


def test_too_few_documents_for_the_distractors(index, records):
    with pytest.raises(RagContextError, match=r"x:1: 100 passages .*rag_context\.distractors"):
        add_rag_context([("x:1", records[0])], index,
                        RagContextConfig(p_gold=0.0, distractors=99), TOP_K)


def test_missing_index_names_the_path(tmp_path):
    with pytest.raises(RagContextError, match=rf"'ft'.*{tmp_path / 'index'}.*must be built"):
        load_stage_index(tmp_path / "index", "ft")


def test_stage_check_needs_a_corpus_rag_and_instruction_data(tmp_path):
    data = [(tmp_path / "qa.jsonl", "instruction")]
    check_rag_context_stage("ft", data, True, tmp_path / "docs.jsonl")
    with pytest.raises(RagContextError, match="stage 'ft'.*rag.corpus is not set"):
        check_rag_context_stage("ft", data, True, None)
    with pytest.raises(RagContextError, match="rag.enabled is false"):
        check_rag_context_stage("ft", data, False, tmp_path / "docs.jsonl")
    with pytest.raises(RagContextError, match=r"not .*notes\.jsonl \(text\)"):
        check_rag_context_stage("ft", [*data, (tmp_path / "notes.jsonl", "text")], True,
                                tmp_path / "docs.jsonl")


def test_config_ranges_and_keys():
    with pytest.raises(ValueError, match="less than or equal to 1"):
        RagContextConfig(p_gold=1.5)
    with pytest.raises(ValueError, match="Extra inputs"):
        RagContextConfig.model_validate({"distractor": 2})
