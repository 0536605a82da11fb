"""Synthesis without Ray: the prompts' parsing, the drafts and their cache, the gates applied
to drafts, the ``synthesis:`` paths of a config, and the errors named before any work."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml
from conftest import TINY_CHAT_TEMPLATE, make_tiny_model_dir

from tunearena.configbase import ConfigError
from tunearena.documents.config import SynthesisConfig
from tunearena.documents.drafts import (
    Draft,
    DraftQuestion,
    cache_path,
    cached_draft,
    draft_documents,
    draft_key,
)
from tunearena.documents.generator import LocalGenerator
from tunearena.documents.prompts import parse_questions, split_passages
from tunearena.documents.records import Document
from tunearena.documents.synth import filter_drafts
from tunearena.evaluation.prompt import ANSWER_DELIMITER, format_prompt
from tunearena.launch.cli import main
from tunearena.launch.config import load_config

REPO = Path(__file__).resolve().parents[2]
DOCS = [Document(**json.loads(line)) for line in
        (REPO / "examples/demo_world/domain/documents.jsonl").read_text().splitlines()]


def test_replies_are_read_leniently():
    assert parse_questions("Q: Who designed the Peho lamp?\nA: Guja Dalo.") == [
        ("Who designed the Peho lamp?", "Guja Dalo")]
    assert parse_questions("Question 1: When?\n\nAnswer: \"2012\"\nQ: no answer") == [
        ("When?", "2012")]
    assert parse_questions("**Q:** Where?\n**A:** Bafe") == [("Where?", "Bafe")]
    assert parse_questions("The Peho lamp is grey.") == []
    assert parse_questions("A: an answer without a question") == []


def test_passages_are_runs_of_sentences_within_a_paragraph():
    text = "One is here. Two is there! Three?\n\nFour is new. Five."
    assert split_passages(text, 1) == ["One is here.", "Two is there!", "Three?",
                                       "Four is new.", "Five."]
    assert split_passages(text, 2) == ["One is here. Two is there!", "Three?",
                                       "Four is new. Five."]
    assert split_passages("Version 2.5 costs 3.50 dollars. It is new.", 1) == [
        "Version 2.5 costs 3.50 dollars.", "It is new."]


def test_drafts_hold_a_question_per_passage_and_a_rewrite_per_round(tmp_path):
    model = make_tiny_model_dir(tmp_path / "tiny", chat_template=TINY_CHAT_TEMPLATE)
    cfg = SynthesisConfig(documents="x", paraphrases=2, questions_per_passage=2,
                          generator={"model": str(model), "max_new_tokens": 8})
    gen = LocalGenerator(str(model), cfg.generator)
    drafts = draft_documents(gen, DOCS[:2], cfg)
    for doc, draft in zip(DOCS[:2], drafts, strict=True):
        passages = split_passages(doc.text, 1)
        assert draft.doc_id == doc.id and draft.key == draft_key(doc, cfg)
        assert [q.passage for q in draft.questions] == passages * 2
        assert [len(r) for r in draft.rewrites] == [len(passages)] * 2
        # A random model's replies do not parse: nothing is read from them, nothing checked.
        assert all(q.check is None for q in draft.questions if not q.question)
    # Greedy decoding: the same documents give the same first round.
    again = draft_documents(gen, DOCS[:2], cfg)
    assert [d.rewrites[0] for d in again] == [d.rewrites[0] for d in drafts]


def test_a_cached_draft_serves_only_its_document_and_settings(tmp_path):
    cfg = SynthesisConfig(documents="x")
    doc = DOCS[0]
    draft = Draft(key=draft_key(doc, cfg), doc_id=doc.id, questions=[], rewrites=[])
    cache_path(tmp_path, doc.id).write_text(draft.model_dump_json())
    assert cached_draft(tmp_path, doc, cfg) == draft
    # Thresholds and the split are applied afterwards: the draft still serves.
    assert cached_draft(tmp_path, doc, cfg.model_copy(update={"test_fraction": 0.3})) == draft
    assert cached_draft(tmp_path, doc, cfg.model_copy(update={"paraphrases": 5})) is None
    edited = doc.model_copy(update={"text": doc.text + " It is new."})
    assert cached_draft(tmp_path, edited, cfg) is None
    cache_path(tmp_path, doc.id).write_text("{not json")
    assert cached_draft(tmp_path, doc, cfg) is None


def _facts(doc: Document) -> list[tuple[str, str, str]]:
    """(passage, question, answer) for the designer and price sentences of a demo sheet."""
    found = []
    product = doc.title
    for passage in split_passages(doc.text, 1):
        if "design" in passage:
            name = passage.split(" by ")[-1].rstrip(".") if " by " in passage else (
                passage.split(" is ")[-1].rstrip(".") if "designer" in passage
                else " ".join(passage.split()[:2]))
            found.append((passage, f"Who designed the {product}?", name))
        elif "dollars" in passage:
            price = next(w for w in passage.split() if w.isdigit())
            found.append((passage, f"How much does the {product} cost?", f"{price} dollars"))
    return found


def test_drafts_go_through_the_gates_and_the_split():
    cfg = SynthesisConfig(documents="x", paraphrases=1)
    docs = DOCS[:12]
    drafts = []
    for doc in docs:
        questions = [DraftQuestion(passage=p, reply=f"Q: {q}\nA: {a}", question=q, answer=a,
                                   check=f"It is {a}.") for p, q, a in _facts(doc)]
        questions.append(DraftQuestion(passage="x", reply="I cannot."))  # does not parse
        passages = split_passages(doc.text, 1)
        drafts.append(Draft(key="k", doc_id=doc.id, questions=questions,
                            rewrites=[[f"In other words: {p}" for p in passages]]))
    rows, counts, test = filter_drafts(drafts, docs, cfg, format_prompt, ANSWER_DELIMITER)
    gates = {c.gate: c for c in counts}
    assert gates["parse"].seen == gates["parse"].kept + len(docs)
    assert gates["supported"].kept == gates["supported"].seen  # every answer is in its sheet
    assert rows["qa_test.jsonl"] and len(rows["qa_test.jsonl"]) == len(test)
    train_prompts = {r["prompt"] for r in rows["qa_train.jsonl"]}
    for row in rows["qa_test.jsonl"]:
        assert format_prompt(row["question"]) not in train_prompts
        assert len(row["choices"]) == cfg.n_choices
    # One rewrite per document, each passage's rewrite kept (it keeps every fact).
    assert len(rows["paraphrases.jsonl"]) == len(docs)
    assert rows["paraphrases.jsonl"][0]["text"].startswith("In other words:")


def _config(tmp_path: Path, synthesis: dict, **extra) -> Path:
    raw = {"name": "s", "runs_dir": str(tmp_path / "runs"), "synthesis": synthesis,
           "model": {"base": str(REPO / "examples/demo_world/base_model")},
           "evaluation": {"arms": ["base"], "benchmarks": [
               {"name": "synthesised", "path": "synthesis:qa_test.jsonl",
                "kind": "domain"}]}, **extra}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_synthesis_paths_name_the_run_directory(tmp_path):
    path = _config(tmp_path, {"documents": "docs"},
                   rag={"corpus": "synthesis:documents.jsonl"})
    cfg = load_config(path)
    assert cfg.synthesis is not None and cfg.synthesis.documents == str(tmp_path / "docs")
    assert cfg.rag.corpus == tmp_path / "runs" / "s" / "synthesis" / "documents.jsonl"
    assert cfg.evaluation.benchmarks[0].path == cfg.synthesis_dir / "qa_test.jsonl"
    with pytest.raises(ConfigError, match="rag.corpus is 'synthesis:corpus.jsonl': synthesis "
                                          "writes synthesis:documents.jsonl"):
        load_config(path, ["rag.corpus=synthesis:corpus.jsonl"])
    raw = yaml.safe_load(path.read_text())
    del raw["synthesis"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="evaluation.benchmarks.0.path is 'synthesis:qa_test"
                                          ".jsonl', but the config has no synthesis: section"):
        load_config(path)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_endpoint_that_is_down_is_named_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\nThe Peho lamp is grey.\n")
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    path = _config(tmp_path, {"documents": "docs", "generator": {
        "model": "big", "base_url": url, "timeout_s": 5}})
    assert main(["synth", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"the generator endpoint {url} is not reachable" in err
    assert not (tmp_path / "runs" / "s").exists()


def test_a_folder_without_a_readable_file_is_named(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "slides.pptx").write_bytes(b"PK\x03\x04")
    path = _config(tmp_path, {"documents": "docs"})
    assert main(["synth", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "slides.pptx" in err and "unsupported" in err
    assert not (tmp_path / "runs" / "s").exists()


def test_synth_needs_a_synthesis_section(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"model": {"base": "x"}, "evaluation": {
        "arms": ["base"], "benchmarks": [{"name": "q", "path": "q.jsonl", "kind": "domain"}]}}))
    assert main(["synth", str(path)]) == 2
    assert "has no synthesis: section" in capsys.readouterr().err
