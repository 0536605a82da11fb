"""Data preparation: garbled and duplicate records, benchmark leaks, splits and their report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tunearena.training.config import DataPrepConfig, DatasetConfig
from tunearena.training.data import DataError
from tunearena.training.prepare import (
    clean_records,
    find_leaks,
    prepare_dataset,
    record_text,
    split_records,
    write_prepared,
)

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo_world"

EXACT_ONLY = DataPrepConfig(near_duplicate_threshold=None)
NOTHING_DROPPED = {"empty_or_garbled": 0, "exact_duplicates": 0, "near_duplicates": 0}

QUESTIONS = {
    "rivers": ["What is the name of the river that flows through the capital of Norland?"],
    "products": ["Who designed the Orbit kettle?"],
}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def texts(records: list[dict]) -> list[str]:
    return [r["text"] for r in records]


def shingle_jaccard(a: str, b: str) -> float:
    """Word 5-gram Jaccard, computed here independently of the module under test."""

    def shingles(text: str) -> set[tuple[str, ...]]:
        words = re.findall(r"\w+", text.casefold())
        return {tuple(words[i : i + 5]) for i in range(len(words) - 4)}

    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def demo_questions() -> dict[str, list[str]]:
    def questions(path: Path) -> list[str]:
        return [json.loads(line)["question"] for line in path.read_text().splitlines() if line]

    return {
        "lumora_products": questions(DEMO / "domain" / "qa_test.jsonl"),
        "world_facts": questions(DEMO / "general" / "world_facts.jsonl"),
    }


# --- record_text ---------------------------------------------------------------------------


def test_record_text_of_each_format():
    assert record_text({"text": "a b"}, "text") == "a b"
    assert record_text({"prompt": "Q?", "response": " A"}, "instruction") == "Q?\n A"
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    assert record_text(chat, "chat") == "hi\nyo"


# --- empty and garbled ---------------------------------------------------------------------


def test_empty_and_garbled_records_are_dropped():
    good = "The Orbit kettle was designed by Ana Ruiz in the city of Tarrow."
    records = [
        {"text": good},
        {"text": ""},
        {"text": "  \n\t "},
        {"text": "\ufffd\ufffd\ufffd" + good[:30]},  # 3 of 33 characters replaced: > 5%
        {"text": "abc\x00\x01\x02\x03\x04\x05 defgh"},
        {"text": "3.14159 2.71828 1.41421 1.73205 0.57721"},  # no letters at all
        {"text": "42"},  # short: too short to judge its letters
        {"text": "Line one,\r\nline two,\r\nline three.\r\n"},  # CRLF is text
        {"text": "Revenue 2023: 1,250,000; 2024: 1,400,000 (up 12%)."},  # a figure with a label
    ]
    kept, counts = clean_records(records, "text", DataPrepConfig(), seed=0)
    assert texts(kept) == [good, "42", records[7]["text"], records[8]["text"]]
    assert counts == {"empty_or_garbled": 5, "exact_duplicates": 0, "near_duplicates": 0}


def test_a_blank_field_empties_the_record():
    instruction = [{"prompt": "Q: what?", "response": " "}, {"prompt": "Q: who?", "response": " Ana"}]
    kept, counts = clean_records(instruction, "instruction", DataPrepConfig(), seed=0)
    assert kept == instruction[1:] and counts["empty_or_garbled"] == 1
    chat = [{"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello"}]}]
    assert clean_records(chat, "chat", DataPrepConfig(), seed=0)[1]["empty_or_garbled"] == 1


def test_drop_garbled_off_keeps_everything():
    records = [{"text": ""}, {"text": "\ufffd" * 30}]
    kept, counts = clean_records(records, "text", DataPrepConfig(drop_garbled=False), seed=0)
    assert kept == records and counts["empty_or_garbled"] == 0


# --- exact duplicates ----------------------------------------------------------------------


def test_exact_duplicates_ignore_case_and_whitespace_and_keep_the_first():
    records = [
        {"text": "Hello   World"},
        {"text": "Something else"},
        {"text": "hello world"},
        {"text": "  HELLO\tworld\n"},
        {"text": "Hello, world"},  # punctuation differs: not an exact duplicate
    ]
    kept, counts = clean_records(records, "text", EXACT_ONLY, seed=0)
    assert texts(kept) == ["Hello   World", "Something else", "Hello, world"]
    assert counts == {"empty_or_garbled": 0, "exact_duplicates": 2, "near_duplicates": 0}


def test_deduplicate_off_keeps_duplicates():
    records = [{"text": "same"}, {"text": "same"}]
    cfg = DataPrepConfig(deduplicate=False, near_duplicate_threshold=None)
    assert clean_records(records, "text", cfg, seed=0) == (records, NOTHING_DROPPED)


# --- near duplicates -----------------------------------------------------------------------

WORDS_40 = [f"word{i}" for i in range(40)]
BASE = " ".join(WORDS_40)
LAST_CHANGED = " ".join([*WORDS_40[:-1], "other"])  # 1 of 36 shingles differs: 35 / 37
MIDDLE_CHANGED = " ".join([*WORDS_40[:20], "other", *WORDS_40[21:]])  # 5 differ: 31 / 41


def near(threshold: float | None) -> DataPrepConfig:
    return DataPrepConfig(near_duplicate_threshold=threshold)


def test_the_constructed_jaccards():
    assert shingle_jaccard(BASE, LAST_CHANGED) == 35 / 37  # 0.946
    assert shingle_jaccard(BASE, MIDDLE_CHANGED) == 31 / 41  # 0.756


@pytest.mark.parametrize(
    ("other", "threshold", "dropped"),
    [
        (LAST_CHANGED, 0.8, True),
        (LAST_CHANGED, 0.9, True),
        (LAST_CHANGED, 35 / 37, True),  # exactly at the threshold: dropped
        (LAST_CHANGED, 35 / 37 + 1e-9, False),  # just below it: kept
        (LAST_CHANGED, 0.99, False),
        (MIDDLE_CHANGED, 0.75, True),
        (MIDDLE_CHANGED, 0.8, False),
        (BASE.upper().replace(" ", ", "), 1.0, True),  # same words, other case and punctuation
    ],
    ids=["0.8", "0.9", "at", "just-under", "0.99", "middle-0.75", "middle-0.8", "1.0"],
)
def test_near_duplicates_at_and_below_the_threshold(other, threshold, dropped):
    records = [{"text": BASE}, {"text": "an unrelated record"}, {"text": other}]
    kept, counts = clean_records(records, "text", near(threshold), seed=0)
    assert texts(kept) == [BASE, "an unrelated record"] + ([] if dropped else [other])
    assert counts["near_duplicates"] == int(dropped)


def test_near_duplicates_keep_the_first_and_hold_for_any_seed():
    records = [{"text": LAST_CHANGED}, {"text": BASE}, {"text": BASE + " extra"}]
    for seed in range(5):
        kept, counts = clean_records(records, "text", near(0.9), seed=seed)
        assert texts(kept) == [LAST_CHANGED] and counts["near_duplicates"] == 2


def test_near_duplicate_threshold_null_turns_it_off():
    records = [{"text": BASE}, {"text": LAST_CHANGED}]
    assert clean_records(records, "text", near(None), seed=0)[0] == records


def test_demo_paraphrases_of_one_product_are_not_near_duplicates():
    lines = (DEMO / "domain" / "docs_train.jsonl").read_text().splitlines()
    peho = [json.loads(line) for line in lines[:4]]  # four paraphrases of the Peho lamp's page
    assert all("Peho lamp" in r["text"] for r in peho)
    jaccards = [shingle_jaccard(a["text"], b["text"]) for i, a in enumerate(peho) for b in peho[i + 1 :]]
    assert max(jaccards) < 0.5
    assert clean_records(peho, "text", DataPrepConfig(), seed=0) == (peho, NOTHING_DROPPED)


@pytest.mark.parametrize(("name", "fmt"), [("docs_train", "text"), ("qa_train", "instruction")])
def test_the_demo_training_files_lose_nothing(name, fmt):
    ds = DatasetConfig(path=DEMO / "domain" / f"{name}.jsonl", format=fmt)
    report = prepare_dataset(ds, DataPrepConfig(), 0.1, 0, demo_questions()).report
    assert report["kept"] == report["read"] > 0
    assert report["leaked"] == 0


# --- leaks ---------------------------------------------------------------------------------


def test_a_long_question_leaks_through_any_n_consecutive_words():
    records = [
        {"text": "Quiz. The NAME of the river, that flows through the capital... is the Velm."},
        {"text": "the name of the river that flows through"},  # 8 words: enough
        {"text": "the name of the river that flows"},  # 7 words: not enough
        {"text": "Rivers of Norland: the Velm flows through its capital."},
    ]
    leaks = find_leaks(records, "text", QUESTIONS, n=8)
    question = QUESTIONS["rivers"][0]
    assert leaks == [
        {"index": 0, "benchmark": "rivers", "question": question},
        {"index": 1, "benchmark": "rivers", "question": question},
    ]


def test_a_short_question_leaks_only_whole():
    records = [
        {"prompt": "who DESIGNED the orbit-kettle", "response": "Ana Ruiz"},
        {"prompt": "Who designed the Orbit", "response": "kettle? Ana Ruiz"},  # across fields
        {"prompt": "Who designed the Orbit lamp?", "response": "Ana Ruiz"},
        {"prompt": "Designed the Orbit kettle?", "response": "Yes"},
    ]
    leaks = find_leaks(records, "instruction", QUESTIONS, n=8)
    assert [leak["index"] for leak in leaks] == [0, 1]
    assert {leak["benchmark"] for leak in leaks} == {"products"}


def test_leaks_name_the_earliest_match():
    record = {"text": "Who designed the Orbit kettle? And what is the name of the river that "
                      "flows through the capital of Norland?"}
    assert find_leaks([record], "text", QUESTIONS, n=8)[0]["benchmark"] == "products"
    record = {"text": "What is the name of the river that flows through the capital of "
                      "Norland? Who designed the Orbit kettle?"}
    assert find_leaks([record], "text", QUESTIONS, n=8)[0]["benchmark"] == "rivers"


def test_leak_ngram_sets_the_window():
    record = {"text": "They asked: the river that flows through the capital."}
    assert find_leaks([record], "text", QUESTIONS, n=8) == []
    assert len(find_leaks([record], "text", QUESTIONS, n=5)) == 1


def test_no_questions_no_leaks():
    assert find_leaks([{"text": "anything"}], "text", {"empty": ["", "?!"]}, n=8) == []


@pytest.fixture
def leaky_file(tmp_path) -> Path:
    # Line 2 is blank and line 3 a duplicate, so the leaking record sits at line 5, index 2 of
    # the cleaned records: the report must name the line, not an index.
    path = tmp_path / "leaky.jsonl"
    path.write_text(
        json.dumps({"text": "Ana Ruiz lives in Tarrow and designs kettles for a living."}) + "\n"
        + "\n"
        + json.dumps({"text": "ana ruiz lives in tarrow and designs kettles for a living."}) + "\n"
        + json.dumps({"text": "The Orbit kettle costs 40 dollars and comes in blue."}) + "\n"
        + json.dumps({"text": "Q: Who designed the Orbit kettle? A: Ana Ruiz."}) + "\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("action", "leaked", "kept"), [("drop", 1, 2), ("warn", 1, 3), ("off", 0, 3)]
)
def test_leak_check_drop_warn_off(leaky_file, action, leaked, kept):
    cfg = DataPrepConfig(leak_check=action)
    prepared = prepare_dataset(DatasetConfig(path=leaky_file), cfg, 0.0, 0, QUESTIONS)
    report = prepared.report
    assert (report["leaked"], report["kept"], len(prepared.train)) == (leaked, kept, kept)
    assert report["exact_duplicates"] == 1 and report["leak_action"] == action
    has_leak = any("Orbit kettle?" in r["text"] for r in prepared.train)
    assert has_leak is (action != "drop")
    if leaked:
        assert report["leaked_by_benchmark"] == {"products": 1}
        assert report["leak_examples"] == [
            {"line": 5, "benchmark": "products", "question": "Who designed the Orbit kettle?"}
        ]
    else:
        assert report["leaked_by_benchmark"] == {} and report["leak_examples"] == []


# --- splits --------------------------------------------------------------------------------

RECORDS = [{"text": f"record {i}"} for i in range(100)]


def test_split_sizes_and_disjointness():
    train, validation, test = split_records(RECORDS, 0.1, 0.2, seed=0)
    assert (len(train), len(validation), len(test)) == (70, 10, 20)
    ids = [id(r) for r in train + validation + test]
    assert len(set(ids)) == 100 and set(ids) == {id(r) for r in RECORDS}


def test_split_is_deterministic_by_seed():
    assert split_records(RECORDS, 0.1, 0.2, seed=3) == split_records(RECORDS, 0.1, 0.2, seed=3)
    assert split_records(RECORDS, 0.1, 0.2, seed=3) != split_records(RECORDS, 0.1, 0.2, seed=4)


def test_small_splits_get_at_least_one_record():
    train, validation, test = split_records(RECORDS[:3], 0.05, 0.05, seed=0)
    assert (len(train), len(validation), len(test)) == (1, 1, 1)
    assert split_records(RECORDS[:1], 0.05, 0.05, seed=0) == (RECORDS[:1], [], [])
    assert [len(s) for s in split_records(RECORDS[:5], 0.0, 0.0, seed=0)] == [5, 0, 0]


def test_a_split_that_leaves_nothing_to_train_on_fails():
    with pytest.raises(DataError, match="2 records leave none to train on after 1 test and 1"):
        split_records(RECORDS[:2], 0.1, 0.1, seed=0)


def test_prepare_splits_the_file(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", RECORDS)
    ds = DatasetConfig(path=path, test_fraction=0.2)
    prepared = prepare_dataset(ds, DataPrepConfig(), 0.1, 0, {})
    assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (70, 10, 20)
    assert prepared.report["validation_source"] == "split"
    assert prepared.report["validation_file"] is None


def test_validation_path_replaces_the_validation_split(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    val_path = write_jsonl(tmp_path / "val.jsonl", [
        {"text": "held out one"}, {"text": "HELD OUT ONE"}, {"text": ""},
        {"text": "Who designed the Orbit kettle?"}, {"text": "held out two"},
    ])
    ds = DatasetConfig(path=path, validation_path=val_path, test_fraction=0.1)
    prepared = prepare_dataset(ds, DataPrepConfig(), 0.3, 0, QUESTIONS)
    assert texts(prepared.validation) == ["held out one", "held out two"]
    assert (len(prepared.train), len(prepared.test)) == (90, 10)  # validation_fraction unused
    report = prepared.report
    assert report["validation_source"] == str(val_path)
    assert (report["train"], report["validation"], report["test"]) == (90, 2, 10)
    assert report["validation_file"]["read"] == 5
    assert report["validation_file"]["exact_duplicates"] == 1
    assert report["validation_file"]["empty_or_garbled"] == 1
    assert report["validation_file"]["leaked"] == 1


def test_report_keys(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", RECORDS)
    report = prepare_dataset(DatasetConfig(path=path, name="mydocs"), DataPrepConfig(), 0.1, 0,
                             {}).report
    assert set(report) == {
        "task", "path", "format", "read", "empty_or_garbled", "exact_duplicates",
        "near_duplicates", "leaked", "leaked_by_benchmark", "leak_examples", "kept", "train",
        "validation", "test", "validation_source", "validation_file", "leak_action",
    }
    assert (report["task"], report["path"], report["format"]) == ("mydocs", str(path), "text")


# --- errors --------------------------------------------------------------------------------


def test_a_file_left_empty_names_the_path(tmp_path):
    path = write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}, {"text": " "}])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: no record is left"):
        prepare_dataset(DatasetConfig(path=path), DataPrepConfig(), 0.1, 0, {})


def test_a_file_left_empty_says_how_many_were_read_and_why_each_went(tmp_path):
    question = QUESTIONS["products"][0]
    path = write_jsonl(tmp_path / "mixed.jsonl",
                       [{"text": ""}, {"text": f"Q: {question}"}, {"text": f"q:  {question}"}])
    with pytest.raises(DataError) as err:
        prepare_dataset(DatasetConfig(path=path), DataPrepConfig(), 0.1, 0, QUESTIONS)
    message = str(err.value)
    assert "3 read, 1 dropped as empty or garbled" in message
    assert "1 dropped as exact duplicates" in message
    assert "1 dropped as holding a benchmark question (leak_check: drop)" in message
    assert "near-duplicates" not in message  # a step that dropped nothing is not listed
    assert "training.data_prep" in message


def test_leak_lines_of_a_json_array_file_are_where_the_records_start(tmp_path):
    path = tmp_path / "export.json"
    records = [{"text": "The Zephyr lamp is blue."},
               {"text": f"Asked: {QUESTIONS['products'][0]}"}]
    path.write_text(json.dumps(records, indent=2), encoding="utf-16")
    report = prepare_dataset(DatasetConfig(path=path), DataPrepConfig(), 0.0, 0, QUESTIONS).report
    assert report["leak_examples"][0]["line"] == 5


def test_a_split_error_names_the_path(tmp_path):
    path = write_jsonl(tmp_path / "two.jsonl", RECORDS[:2])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: 2 records leave none"):
        prepare_dataset(DatasetConfig(path=path, test_fraction=0.1), DataPrepConfig(), 0.1, 0, {})


def test_broken_json_still_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": ""}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: not valid JSON"):
        prepare_dataset(DatasetConfig(path=path), DataPrepConfig(), 0.1, 0, {})


# --- writing -------------------------------------------------------------------------------


def test_write_prepared_writes_every_split(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [*RECORDS[:10], {"text": "café ünïcode"}])
    prepared = prepare_dataset(DatasetConfig(path=path), DataPrepConfig(), 0.2, 0, {})
    out = tmp_path / "out" / "stage"
    paths = write_prepared(prepared, out)
    assert paths == {s: str(out / f"docs.{s}.jsonl") for s in ("train", "validation", "test")}
    for split in ("train", "validation"):
        lines = Path(paths[split]).read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == getattr(prepared, split)
    assert Path(paths["test"]).read_text() == ""  # no test split: an empty file
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(p).name for p in paths.values())
