"""load_documents: the JSONL corpus reader and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunearena.rag.corpus import CorpusError, Document, load_documents


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_documents_in_order_skipping_blank_lines(tmp_path):
    path = write_lines(
        tmp_path / "corpus.jsonl",
        [
            json.dumps({"id": "a", "text": "Alpha text.", "title": "Alpha"}),
            "",
            "   ",
            json.dumps({"id": "b", "text": "Bravo text.", "source": "ignored"}),
        ],
    )
    assert load_documents(path) == [
        Document(id="a", text="Alpha text.", title="Alpha"),
        Document(id="b", text="Bravo text.", title=None),
    ]


def test_missing_file(tmp_path):
    with pytest.raises(CorpusError, match="corpus file not found"):
        load_documents(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"id": "b", "text": ', "not valid JSON"),
        ('["b", "text"]', "expected a JSON object"),
        ('{"text": "no id"}', "missing 'id'"),
        ('{"id": "", "text": "empty id"}', "empty 'id'"),
        ('{"id": "b"}', "missing 'text'"),
        ('{"id": "b", "text": "  \\n "}', "empty 'text'"),
        ('{"id": 7, "text": "int id"}', "'id' must be a string"),
        ('{"id": "b", "text": "t", "title": 3}', "'title' must be a string"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, bad_line, message):
    # The bad record is on line 3, after a good line and a blank one.
    path = write_lines(tmp_path / "c.jsonl", ['{"id": "a", "text": "fine"}', "", bad_line])
    with pytest.raises(CorpusError, match=message) as err:
        load_documents(path)
    assert str(err.value).startswith(f"{path}:3: ")


def test_duplicate_id_names_both_lines(tmp_path):
    path = write_lines(
        tmp_path / "c.jsonl",
        ['{"id": "a", "text": "one"}', '{"id": "b", "text": "two"}', '{"id": "a", "text": "3"}'],
    )
    with pytest.raises(CorpusError, match=r":3: duplicate id 'a' \(first seen on line 1\)"):
        load_documents(path)


def test_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "\xff"}\n')
    with pytest.raises(CorpusError, match=":2: not valid UTF-8"):
        load_documents(path)


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_empty_corpus(tmp_path, content):
    path = tmp_path / "c.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusError, match="corpus is empty"):
        load_documents(path)


def test_a_corpus_exported_as_a_json_array_in_utf16_is_read(tmp_path):
    path = tmp_path / "corpus.json"
    docs = [{"id": "a", "text": "Alpha ünïcode."}, {"id": "b", "text": "Bravo.", "title": "B"}]
    path.write_text(json.dumps(docs, indent=1, ensure_ascii=False), encoding="utf-16")
    assert load_documents(path) == [Document("a", "Alpha ünïcode."), Document("b", "Bravo.", "B")]


def test_a_directory_given_for_the_corpus_is_named_as_one(tmp_path):
    with pytest.raises(CorpusError, match="is a directory, expected a corpus file"):
        load_documents(tmp_path)
