"""iter_jsonl: JSONL as common tools write it is read; what it cannot read is named by line."""

from __future__ import annotations

import codecs
import json

import pytest

from tunearena.files import MAX_RECORD_BYTES, iter_jsonl

RECORDS = [{"id": "a", "text": "Première ligne"}, {"id": "b", "text": "second, 二"}]


def read(path, **kwargs):
    return list(iter_jsonl(path, ValueError, "test file", **kwargs))


def jsonl(newline: str = "\n") -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + newline for r in RECORDS)


@pytest.mark.parametrize(("name", "data"), [
    ("plain", jsonl().encode()),
    ("utf-8 with a BOM (Windows editors, Excel's CSV UTF-8)", codecs.BOM_UTF8 + jsonl().encode()),
    ("CRLF line ends", jsonl("\r\n").encode()),
    ("a trailing blank line", (jsonl() + "\n  \n").encode()),
    ("UTF-16 LE with a BOM ('Unicode' on Windows)", jsonl("\r\n").encode("utf-16")),
    ("UTF-16 BE with a BOM", codecs.BOM_UTF16_BE + jsonl().encode("utf-16-be")),
    ("a JSON array", json.dumps(RECORDS, ensure_ascii=False).encode()),
    ("a JSON array with a BOM, indented",
     codecs.BOM_UTF8 + json.dumps(RECORDS, indent=2, ensure_ascii=False).encode()),
])
def test_common_ways_of_writing_the_file_are_read(tmp_path, name, data):
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    assert [record for _, record in read(path)] == RECORDS


def test_array_items_are_named_by_the_line_they_start_on(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(RECORDS, indent=2) + "\n")
    assert [where for where, _ in read(path)] == [f"{path}:2", f"{path}:6"]
    path.write_text('[\n  {"id": "a"},\n  {"id": "a"}\n]\n')
    with pytest.raises(ValueError, match=rf"{path}:3: duplicate id 'a' \(first seen on line 2\)"):
        read(path, unique_key="id")
    path.write_text('[\n  {"id": "a"},\n  "b"\n]\n')
    with pytest.raises(ValueError, match=rf"{path}:3: expected a JSON object, got str"):
        read(path)
    path.write_text('[\n  {"id": "a"}\n  {"id": "b"}\n]\n')
    with pytest.raises(ValueError, match=rf"{path}:3: not valid JSON: expected ',' or ']'"):
        read(path)


def test_crlf_errors_still_name_their_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"a": 1}\r\n\r\n{"a": oops}\r\n')
    with pytest.raises(ValueError, match=rf"{path}:3: not valid JSON"):
        read(path)


def test_what_cannot_be_read_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"is a directory, expected a test file \(JSONL"):
        read(tmp_path)
    table = tmp_path / "data.xlsx"
    table.write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match=r"data.xlsx: a \.xlsx table.*pd.read_excel"):
        read(table)
    bare = tmp_path / "utf16.jsonl"
    bare.write_bytes(jsonl().encode("utf-16-le"))
    with pytest.raises(ValueError, match="UTF-16 without a byte-order mark"):
        read(bare)


def test_a_record_over_the_limit_is_refused_by_line_before_it_is_parsed(tmp_path):
    path = tmp_path / "data.jsonl"
    with path.open("w") as f:
        f.write('{"text": "short"}\n\n')
        f.write('{"text": "' + "x" * MAX_RECORD_BYTES + '"}\n')
    with pytest.raises(ValueError, match=rf"{path}:3: a record of 8.0 MiB, over the 8 MiB"):
        read(path)
    array = tmp_path / "data.json"
    array.write_text('[{"text": "short"},\n {"text": "' + "x" * MAX_RECORD_BYTES + '"}]')
    with pytest.raises(ValueError, match=rf"{array}:2: a record of 8.0 MiB"):
        read(array)
