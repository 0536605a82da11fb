"""From a folder of documents to a report: ingestion, synthesis with the packaged SmolLM2
(in Ray Data actors, or behind an OpenAI-compatible endpoint), the gates, and the run.

The documents are ten of the demo world's product sheets, written by the test as Markdown,
HTML (with navigation and a footer to strip), PDF (by fpdf2) and text, beside a scanned PDF
with no text layer and a file of a type tunearena does not read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from openai_server import local_reply, openai_server

from tunearena.documents.drafts import Draft
from tunearena.launch.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # about 12 minutes

REPO = Path(__file__).resolve().parents[2]
DOCS = [json.loads(line) for line in
        (REPO / "examples/demo_world/domain/documents.jsonl").read_text().splitlines()]
BASE = REPO / "examples/demo_world/base_model"


def _pdf(path: Path, title: str, text: str | None) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    if text is None:
        pdf.rect(20, 20, 100, 60)  # a drawing, as a scan is an image: no text layer
    else:
        pdf.set_title(title)
        pdf.set_font("helvetica", size=11)
        pdf.multi_cell(0, 6, text)
    pdf.output(str(path))


def write_folder(folder: Path, docs: list[dict]) -> dict[str, str]:
    """The documents as files of every kind, in turn; returns each file's name -> doc id."""
    folder.mkdir(parents=True)
    names = {}
    for i, doc in enumerate(docs):
        kind = ("md", "html", "pdf", "txt")[i % 4]
        name = f"{doc['id']}.{kind}"
        path = folder / name
        if kind == "md":
            path.write_text(f"# {doc['title']}\n\n{doc['text']}\n")
        elif kind == "html":
            path.write_text(
                f"<html><head><title>{doc['title']}</title></head><body>"
                f"<nav><a href='/'>Home</a> | <a href='/shop'>Shop all products</a></nav>"
                f"<article><h1>{doc['title']}</h1><p>{doc['text']}</p></article>"
                f"<footer>Copyright Lumora. All rights reserved. Cookie settings.</footer>"
                f"</body></html>")
        elif kind == "pdf":
            _pdf(path, doc["title"], doc["text"])
        else:
            path.write_text(f"{doc['title']}\n\n{doc['text']}\n")
        names[name] = doc["id"]
    _pdf(folder / "scanned.pdf", "A scan", None)
    (folder / "notes.docx").write_bytes(b"PK\x03\x04 not read")
    return names


def write_config(path: Path, folder: Path, runs_dir: Path, generator: dict,
                 arms: list[str]) -> Path:
    cfg = {
        "name": "docs", "runs_dir": str(runs_dir), "seed": 0,
        "synthesis": {"documents": str(folder), "generator": generator, "paraphrases": 1},
        "model": {"base": str(BASE)},
        "cluster": {"address": "local", "num_workers": 1, "cpus_per_worker": 2},
        "rag": {"corpus": "synthesis:documents.jsonl", "top_k": 2},
        "evaluation": {"arms": arms, "batch_size": 16, "latency_questions": 2, "benchmarks": [
            {"name": "synthesised", "path": "synthesis:qa_test.jsonl", "kind": "domain"}]},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# configs/demo_documents.yaml, pointed at the folder and shrunk: one paraphrase, three steps
# a stage, no latency measurement.
SHRINK = [
    "synthesis.paraphrases=1", "cluster.num_workers=1", "cluster.cpus_per_worker=2",
    "stages.0.max_steps=3", "stages.1.max_steps=3", "training.warmup_steps=0",
    "evaluation.limit=40", "evaluation.latency_questions=0", "evaluation.batch_size=16",
    "evaluation.bootstrap_samples=200",
]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("folder")
    names = write_folder(tmp / "docs", DOCS[:12])
    args = ["run", str(REPO / "configs" / "demo_documents.yaml"), "--set", f"runs_dir={tmp}",
            "--set", f"synthesis.documents={tmp / 'docs'}"]
    for override in SHRINK:
        args += ["--set", override]
    assert main(args) == 0
    return tmp / "demo_documents", names


def test_a_folder_of_documents_goes_through_synthesis_to_a_report(folder_run):
    run, names = folder_run
    synthesis = run / "synthesis"
    documents = _jsonl(synthesis / "documents.jsonl")
    # Every readable file is one document, its source recorded; the boilerplate is gone.
    assert sorted(d["source"] for d in documents) == sorted(names)
    html = next(d for d in documents if d["source"].endswith(".html"))
    assert "Cookie settings" not in html["text"] and "Shop all products" not in html["text"]
    by_id = {d["id"]: d for d in documents}
    pdf = next(d for d in documents if d["source"].endswith(".pdf"))
    original = next(doc for doc in DOCS if doc["id"] == names[pdf["source"]])
    assert " ".join(original["text"].split()) in " ".join(pdf["text"].split())

    results = json.loads((run / "results.json").read_text())
    data = results["data"]
    gates = {g["gate"]: g for g in data["gates"]}
    assert {"parse", "supported", "answer_check", "duplicate", "leak", "distractors",
            "paraphrase_faithful"} <= set(gates)
    for g in data["gates"]:
        assert 0 <= g["kept"] <= g["seen"], g
    # The gates are a funnel: each question gate sees what the one before kept.
    order = ["parse", "supported", "answer_check", "duplicate"]
    for before, after in zip(order, order[1:], strict=False):
        assert gates[after]["seen"] == gates[before]["kept"]
    skipped = {s["path"]: s["reason"] for s in data["skipped"]}
    assert "no text layer" in skipped["scanned.pdf"]
    assert "unsupported" in skipped["notes.docx"]

    test = _jsonl(synthesis / "qa_test.jsonl")
    train = _jsonl(synthesis / "qa_train.jsonl")
    assert data["test_questions"] == len(test) > 0
    assert data["train_questions"] == len(train)
    for row in test:
        # A test question is about a document the corpus (and so training) holds; its
        # answer is among its choices, and no training question asks it.
        assert row["doc_id"] in by_id
        assert 0 <= row["answer"] < len(row["choices"]) == 4
        assert len(set(row["choices"])) == 4
    asked = {r["prompt"] for r in train}
    assert not any(f"Question: {row['question']}\nAnswer:" in asked for row in test)
    # The synthesised benchmark was scored on every arm, question by question, beside the
    # hand-made questions about the same documents.
    for arm in ("base", "base+rag", "ft", "ft+rag"):
        assert len(results["samples"][arm]["synthesised"]) == min(len(test), 40)
        assert results["samples"][arm]["lumora_products"]
    assert (run / "report.html").is_file()


def test_a_new_split_reuses_every_draft(folder_run, tmp_path):
    run, _ = folder_run
    drafts = sorted((run / "synthesis" / "drafts").iterdir())
    stamps = {p.name: p.stat().st_mtime_ns for p in drafts}
    config = run / "config.yaml"  # the resolved config, with absolute paths
    # The split is applied to the drafts: changing it synthesises again, drafting nothing.
    assert main(["synth", str(config), "--set", "synthesis.test_fraction=0.4"]) == 0
    summary = json.loads((run / "synthesis" / "synthesis.json").read_text())
    assert summary["drafted"] == 0 and summary["reused"] == summary["documents"] == 12
    assert json.loads((run / "manifest.json").read_text())["steps"]["synthesize"]["status"] \
        == "done"
    assert {p.name: p.stat().st_mtime_ns for p in drafts} == stamps


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunearena.launch.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)


def test_an_endpoint_generator_killed_midway_resumes_without_redrafting(tmp_path):
    from tunearena.training.gguf import resolve_base

    docs = DOCS[12:20]
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "products.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    reply = local_reply(resolve_base("smollm2-135m-instruct"))
    with openai_server(reply, model="smollm2") as served:
        config = write_config(tmp_path / "docs.yaml", folder, tmp_path / "runs",
                              {"model": "smollm2", "base_url": served.url}, ["base"])
        # Killed as soon as the first documents' drafts are written (a batch at a time).
        proc = _cli("synth", str(config))
        drafts = tmp_path / "runs" / "docs" / "synthesis" / "drafts"
        deadline = time.monotonic() + 900
        while not (drafts.is_dir() and any(drafts.iterdir())):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no document was ever drafted"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        first = {p.name: p.stat().st_mtime_ns for p in drafts.iterdir()}
        assert 1 <= len(first) < len(docs)
        finished = [Draft.model_validate_json((drafts / name).read_text()).doc_id
                    for name in first]
        # Requests the killed run had sent are still answered; wait until the endpoint idles.
        while True:
            asked_before = len(served.requests)
            time.sleep(5)
            if len(served.requests) == asked_before:
                break

        # The run directory says the step was running when its driver died: resume it.
        assert main(["run", str(config), "--resume"]) == 0
        again = served.requests[asked_before:]
        done = [d["title"].split()[0] for d in docs if d["id"] in finished]
        redrafted = [m[-1]["content"][-80:] for m in again
                     if any(name in m[-1]["content"] for name in done)]
        assert not redrafted, redrafted
        assert {p.name: p.stat().st_mtime_ns for p in drafts.iterdir()
                if p.name in first} == first
        summary = json.loads((drafts.parent / "synthesis.json").read_text())
        assert (summary["reused"], summary["drafted"]) == (len(first), len(docs) - len(first))
        results = json.loads((tmp_path / "runs" / "docs" / "results.json").read_text())
        assert results["data"]["generator"] == f"smollm2 at {served.url}"


def test_a_generator_that_writes_garbage_is_named_and_its_drafts_kept(tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "products.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS[:3]))
    with openai_server(lambda m, t, n: "", model="noise") as served:
        served.garbage = True
        config = write_config(tmp_path / "docs.yaml", folder, tmp_path / "runs",
                              {"model": "noise", "base_url": served.url}, ["base"])
        assert main(["synth", str(config)]) == 2
    err = capsys.readouterr().err
    assert "synthesis left no test question (parse: 0 of" in " ".join(err.split())
    synthesis = tmp_path / "runs" / "docs" / "synthesis"
    assert len(list((synthesis / "drafts").iterdir())) == 3  # nothing is lost
    summary = json.loads((synthesis / "synthesis.json").read_text())
    assert summary["gates"][0]["gate"] == "parse" and summary["gates"][0]["kept"] == 0
