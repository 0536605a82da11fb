"""report.html opened in a real headless Chromium, as a reader would open the file, and printed
to report.pdf by ``tunearena report --pdf``.

The driver is Playwright's Python package (the ``dev`` extra, from PyPI); the browser is a
Chromium already on the machine, never one downloaded at test time: Playwright's own
``playwright install`` fetches from a CDN, which CI cannot reach. On Debian,
``apt-get install chromium`` provides ``/usr/bin/chromium``; ``TUNEARENA_CHROMIUM`` names
another executable. Without either the test skips and says which one was missing. The PDF test
needs no Playwright (tunearena runs Chromium itself), but poppler's ``pdftoppm``, ``pdfinfo``
and ``pdftotext`` (``apt-get install poppler-utils``) to open what was printed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.report import summarise, write_reports, write_results
from tunearena.evaluation.selection import select_stage
from tunearena.launch.cli import main

# Quiet, offline Chromium: without the background-networking flags it keeps trying to reach
# Google's hosts, and the closed network refuses each attempt.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Absolute paths and a full config hash as a real run records them: long strings with few or
# no break points, which must wrap rather than push a table past its card.
LONG_ROOT = (
    "/home/analyst/projects/lumora-support-assistant/experiments/2025-q3-fine-tune-versus-"
    "retrieval/shared-storage"
)
BENCHMARKS = [
    BenchmarkConfig(name="lumora_products", path="products.jsonl", kind="domain"),
    BenchmarkConfig(name="world_facts", path="world.jsonl", kind="general"),
]


def _system_chromium() -> str | None:
    """TUNEARENA_CHROMIUM, else a Chromium on PATH."""
    named = os.environ.get("TUNEARENA_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _chromium_executable(playwright) -> str | None:
    """A system Chromium, else one Playwright downloaded earlier."""
    bundled = playwright.chromium.executable_path
    return _system_chromium() or (bundled if Path(bundled).is_file() else None)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="the Python package 'playwright' is not installed (pip install -e '.[dev]')",
    )
    with sync_api.sync_playwright() as playwright:
        executable = _chromium_executable(playwright)
        if executable is None:
            pytest.skip(
                "no Chromium executable: TUNEARENA_CHROMIUM is unset, none of chromium, "
                "chromium-browser, google-chrome is on PATH, and Playwright has no downloaded "
                "browser; install Debian's package (apt-get install chromium)"
            )
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _answers(n: int, right: set[int], prefix: str) -> list[dict]:
    return [
        {"id": f"{prefix}-{i:03d}", "acc": int(i in right), "acc_norm": int(i in right)}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory holding the reports of a demo-like run, written as the CLI writes them."""
    # Each arm gets a different set of questions right (not nested), as real arms do.
    domain = {
        "base": set(range(0, 60, 5)),
        "base+rag": set(range(0, 60, 2)),
        "ft": set(range(0, 60, 3)),
        "ft+rag": set(range(0, 60, 4)) | set(range(1, 60, 3)),
    }
    general = {
        "base": set(range(70)),
        "base+rag": set(range(69)),
        "ft": set(range(3, 70)),
        "ft+rag": set(range(2, 70)),
    }
    samples = {
        arm: {
            "lumora_products": _answers(60, domain[arm], "lp"),
            "world_facts": _answers(100, general[arm], "wf"),
        }
        for arm in domain
    }
    history = [
        {"step": s, "train_loss": 3.2 * 0.97**s + 0.4, "tokens_per_s": 4100.0, "lr": 1e-4}
        | ({"val_loss": 3.0 * 0.975**s + 0.6} if s % 10 == 0 else {})
        for s in range(2, 61, 2)
    ]
    extra = {
        "run": {
            "name": "demo",
            "run_dir": f"{LONG_ROOT}/runs/demo",
            "base_model": f"{LONG_ROOT}/examples/demo_world/models/tiny-base",
            "config_hash": "cc4f263d3c6c39dc" * 4,
            "code_version": "0.1.0+366752e",
            "python": "3.11.7",
            "seed": 0,
        },
        "latency": {
            arm: {
                "score_s": 1.2 + i,
                "ms_per_question": 7.5 + 6 * i,
                "model": f"{LONG_ROOT}/runs/demo/models/ft/export/hf_model_consolidated"
                if arm.startswith("ft")
                else f"{LONG_ROOT}/examples/demo_world/models/tiny-base",
            }
            for i, arm in enumerate(domain)
        },
        "training": {
            "steps": 60,
            "planned_steps": 60,
            "method": "lora",
            "parameters": 1_115_264,
            "trainable_parameters": 16_384,
            "train_tokens": 122880,
            "tokens_per_s_per_worker": 2041.2,
            "device": "cpu",
            "train_sequences": 240,
            "val_sequences": 24,
            "train_loss_tokens": 20480,
            "mix": {"target": {"docs_train": 1.0}, "realised": {"docs_train": 1.0},
                    "sequences": {"docs_train": 480}},
            "train_s": 30.1,
            "time_to_first_step_s": 4.2,
            "tokens_per_s": 4082.4,
            "world_size": 2,
            "global_batch_size": 8,
            "final_train_loss": history[-1]["train_loss"],
            "final_val_loss": history[-1]["val_loss"],
            "bf16": False,
            "use_gpu": False,
            "history": history,
            "stage": "ft",
            "median_step_s": 0.49,
            "p90_step_s": 0.61,
        },
        "cost": {
            "device": "CPU worker",
            "device_hours": 0.0167,
            "usd": 0.0418,
            "usd_per_device_hour": 2.5,
        },
        "retrieval": {
            "index": {
                "n_documents": 30,
                "n_chunks": 42,
                "dim": 384,
                "index_factory": "Flat",
                "build_s": 1.73,
            },
            "lumora_products": {"k": 2, "search_ms_per_question": 12.8, "recall_at_k": 0.85},
            "world_facts": {"k": 2, "search_ms_per_question": 2.11},
        },
    }
    cfg = EvaluationConfig(benchmarks=BENCHMARKS, bootstrap_samples=1000)
    results = summarise(samples, BENCHMARKS, cfg, ReportConfig(), extra)
    out = tmp_path_factory.mktemp("runs") / "demo"
    out.mkdir()
    write_results(out, results)
    write_reports(out, results)
    return out


def test_report_opens_cleanly_and_shows_verdict_tables_and_plots(browser, run_dir, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    fetched: list[str] = []
    page.on(
        "console",
        lambda m: (
            problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning")
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on(
        "request", lambda r: None if r.url.startswith(("file:", "data:")) else fetched.append(r.url)
    )
    page.goto((run_dir / "report.html").as_uri(), wait_until="load")

    verdict = page.locator("#verdict")
    assert verdict.is_visible()
    label = verdict.locator(".verdict-label").inner_text()
    assert label in ("fine-tune", "RAG", "both", "neither")
    assert verdict.locator(".sentence").inner_text().strip()
    # The reasons and the intervals are one click away, not on the first screen.
    confidence = verdict.locator(".confidence")
    assert confidence.is_hidden()
    verdict.locator("details.why > summary").click()
    assert "Decided by:" in confidence.inner_text() and confidence.is_visible()
    # Depth on demand: every other folded section opens too.
    folded = page.locator("details:not([open])")
    assert folded.count() >= 4  # pairs per benchmark, latency, training, provenance
    page.evaluate("() => document.querySelectorAll('details').forEach(d => { d.open = true; })")
    sections = page.locator("main > section")
    assert sections.first.get_attribute("id") == "verdict"
    ids = sections.evaluate_all("els => els.map(e => e.id)")
    assert ids == ["verdict", "scores", "forgetting", "retrieval", "cost", "training", "review",
                   "provenance"]
    tops = [page.locator(f"#{i}").bounding_box()["y"] for i in ids]
    assert tops == sorted(tops)  # laid out in reading order, verdict on top

    scores = page.locator("table.scores")
    assert scores.count() == 2
    for i in range(2):
        assert scores.nth(i).is_visible()
        assert scores.nth(i).locator("tbody tr").count() == 4
    assert scores.first.locator("tbody tr").first.locator("td").first.inner_text().endswith("%")
    assert page.locator("table.pairs").first.is_visible()
    assert page.locator("table.forgetting").is_visible()
    assert page.get_by_role("columnheader", name="recall at k").is_visible()

    images = page.locator("img")
    assert images.count() == 3
    for i in range(images.count()):
        img = images.nth(i)
        img.scroll_into_view_if_needed()
        assert img.is_visible()
        box = img.bounding_box()
        assert box["width"] > 200 and box["height"] > 100
        # Decoded by the browser, not just laid out: a broken image has naturalWidth 0.
        assert img.evaluate("el => el.complete && el.naturalWidth > 0 && el.naturalHeight > 0")

    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert problems == [] and fetched == []
    page.close()


@pytest.mark.parametrize("which", ["run_dir", "stages_run_dir"])
def test_report_reads_on_a_phone_sized_screen(browser, which, request):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto((request.getfixturevalue(which) / "report.html").as_uri(), wait_until="load")
    assert page.locator("#verdict .verdict-label").is_visible()
    # Plots shrink to the screen instead of running off it.
    widths = page.locator("img").evaluate_all(
        "els => els.map(e => e.getBoundingClientRect().width)"
    )
    body = page.evaluate("document.querySelector('main').clientWidth")
    assert widths and all(0 < w <= body for w in widths)
    page.close()


@pytest.fixture(scope="module")
def stages_run_dir(tmp_path_factory) -> Path:
    """A run with three sequential stages where every stage forgets past the tolerance, so
    the page carries the selection warning; the stage chosen is the real select_stage's."""
    order = ["docs", "qa", "qa_replay"]
    start_from = {"docs": "base", "qa": "docs", "qa_replay": "docs"}
    domain = {
        "base": set(range(0, 60, 5)),
        "base+rag": set(range(0, 60, 2)),
        "ft@docs": set(range(0, 60, 3)),
        "ft@qa": set(range(0, 60, 3)) | set(range(1, 60, 4)),
        "ft@qa_replay": set(range(0, 60, 3)) | set(range(1, 60, 6)),
    }
    general = {
        "base": set(range(70)),
        "base+rag": set(range(69)),
        "ft@docs": set(range(4, 70)),
        "ft@qa": set(range(12, 70)),
        "ft@qa_replay": set(range(3, 70)),
    }
    accuracy = {
        arm: {"lumora_products": len(domain[arm]) / 60, "world_facts": len(general[arm]) / 100}
        for arm in domain
    }
    selection = select_stage(
        {stage: accuracy[f"ft@{stage}"] for stage in order},
        accuracy["base"],
        {b.name: b.kind for b in BENCHMARKS},
        tolerance=0.02,
    )
    assert selection["warning"] and selection["selected"] == "qa_replay"
    samples = {
        arm: {
            "lumora_products": _answers(60, domain[arm], "lp"),
            "world_facts": _answers(100, general[arm], "wf"),
        }
        for arm in domain
    }
    samples["ft"] = samples[f"ft@{selection['selected']}"]
    stages = {
        "order": order,
        "selection": selection,
        "stages": {
            stage: {
                "start_from": start_from[stage],
                "method": "lora",
                "steps": 40 + 20 * i,
                "stopped_early_at": None,
                "final_val_loss": 1.4 - 0.1 * i,
                "val_loss_by_task": {f"{stage}_train": 1.4 - 0.1 * i},
                "mix": {
                    "target": {f"{stage}_train": 1.0},
                    "realised": {f"{stage}_train": 1.0},
                    "sequences": {f"{stage}_train": 320},
                },
                "replay": {"fraction": 0.25, "sources": ["general_facts"]}
                if stage == "qa_replay"
                else None,
                "data": {
                    f"{stage}_train": {
                        "read": 400,
                        "empty_or_garbled": 2,
                        "exact_duplicates": 9,
                        "near_duplicates": 4,
                        "leaked": 1,
                        "kept": 384,
                        "train": 365,
                        "validation": 19,
                        "test": 0,
                    }
                },
            }
            for i, stage in enumerate(order)
        },
    }
    arms = ["base", "base+rag", *(f"ft@{s}" for s in order), "ft"]
    cfg = EvaluationConfig(benchmarks=BENCHMARKS, arms=arms, bootstrap_samples=1000)
    results = summarise(
        samples, BENCHMARKS, cfg, ReportConfig(), {"run": {"name": "stages"}, "stages": stages}
    )
    out = tmp_path_factory.mktemp("runs") / "stages"
    out.mkdir()
    write_reports(out, results)
    return out


def test_report_with_stages_shows_the_warning_matrix_and_stage_plot(browser, stages_run_dir):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto((stages_run_dir / "report.html").as_uri(), wait_until="load")

    warning = page.get_by_role("alert")
    assert warning.is_visible()
    assert warning.inner_text().startswith("Warning: Every fine-tuning stage forgets more")
    # Straight under the verdict, above the scores, in a colour that sets it apart.
    verdict, scores = (
        page.locator("#verdict").bounding_box(),
        page.locator("#scores").bounding_box(),
    )
    box = warning.bounding_box()
    assert verdict["y"] + verdict["height"] <= box["y"] < scores["y"]
    background = warning.evaluate("el => getComputedStyle(el).backgroundColor")
    assert background not in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)")

    ids = page.locator("main > section").evaluate_all("els => els.map(e => e.id)")
    assert ids == ["verdict", "scores", "stages", "forgetting", "review", "provenance"]
    matrix = page.locator("#stages table.stage-matrix")
    matrix.scroll_into_view_if_needed()
    assert matrix.is_visible()
    assert matrix.locator("tbody tr").count() == 4  # base, then the three stages
    chosen = matrix.locator("tbody tr.selected")
    assert chosen.count() == 1 and chosen.locator("th").inner_text().startswith("qa_replay")
    assert "vs start" in chosen.locator("td").nth(1).inner_text()
    assert page.locator("#stages table.stage-candidates").is_visible()
    data = page.locator("#stages table.stage-data").first
    assert data.is_hidden()  # per-stage data is there on demand
    page.locator("#stages details.stage-details > summary").click()
    assert data.is_visible()

    plot = page.locator("#stages img")
    plot.scroll_into_view_if_needed()
    assert plot.is_visible()
    assert plot.evaluate("el => el.complete && el.naturalWidth > 0 && el.naturalHeight > 0")
    assert problems == []
    page.close()


# Every element's right edge, in CSS pixels, except those of zero width (nothing drawn).
# Elements inside a scroll container count too: a table cut off at its card's edge, to be
# scrolled sideways, is what this guards against.
_OVERFLOWING = """() => {
  const width = window.innerWidth;
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    const box = el.getBoundingClientRect();
    if (box.width > 0 && box.right > width + 1) {
      out.push(`${el.tagName.toLowerCase()}.${el.className} right=${Math.round(box.right)}: `
               + (el.textContent || '').trim().slice(0, 60));
    }
  }
  return {scrollWidth: document.documentElement.scrollWidth, width, out};
}"""


@pytest.mark.parametrize("width", [1280, 800])
@pytest.mark.parametrize("which", ["run_dir", "stages_run_dir"])
def test_no_element_is_wider_than_the_page(browser, which, width, request):
    """Long absolute paths and a full config hash (in the run and latency tables) wrap inside
    their cells, and ten columns of data counts (the stages' tables) fit their card."""
    page = browser.new_page(viewport={"width": width, "height": 800})
    page.goto((request.getfixturevalue(which) / "report.html").as_uri(), wait_until="load")
    found = page.evaluate(_OVERFLOWING)
    assert found["scrollWidth"] <= found["width"], found["out"]
    assert found["out"] == []
    page.close()


SUMMARY_REQUIRED = True
"""Whether the verdict must carry its summary bullets (``ul.summary``); until then they are
checked only where the page has them."""


def test_first_screen_holds_the_verdict_and_its_summary(browser, run_dir):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto((run_dir / "report.html").as_uri(), wait_until="load")

    def on_first_screen(locator) -> bool:
        box = locator.bounding_box()
        return box is not None and box["height"] > 0 and box["y"] + box["height"] <= 800

    sentence = page.locator(".verdict .sentence")
    assert sentence.count() == 1 and sentence.inner_text().strip()
    assert on_first_screen(page.locator(".verdict .verdict-label"))
    assert on_first_screen(sentence)
    bullets = page.locator(".verdict ul.summary > li")
    if SUMMARY_REQUIRED or bullets.count():
        assert 3 <= bullets.count() <= 5
        for i in range(bullets.count()):
            assert on_first_screen(bullets.nth(i)), bullets.nth(i).inner_text()
    page.close()


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (apt-get install poppler-utils)")
    return found


def test_report_pdf_is_the_page_printed_every_page_renders(run_dir, tmp_path, capsys):
    """``tunearena report RUN_DIR --pdf`` as a user runs it: report.pdf beside report.html, a
    PDF poppler renders page by page, the verdict on its first page, and what the page keeps
    collapsed (the rule in full) printed open."""
    if _system_chromium() is None:
        pytest.skip("no Chromium executable: TUNEARENA_CHROMIUM is unset and none of chromium, "
                    "chromium-browser, google-chrome is on PATH (apt-get install chromium)")
    pdftoppm, pdfinfo, pdftotext = _tool("pdftoppm"), _tool("pdfinfo"), _tool("pdftotext")
    run = tmp_path / "demo"
    run.mkdir()
    shutil.copy(run_dir / "results.json", run / "results.json")
    assert main(["report", str(run), "--pdf"]) == 0
    assert f"report: {run / 'report.pdf'}" in capsys.readouterr().out
    # Written through a temp name and a rename: nothing else is left beside it.
    assert sorted(p.name for p in run.iterdir()) == [
        "report.html", "report.md", "report.pdf", "results.json", "review.csv"]

    info = subprocess.run([pdfinfo, run / "report.pdf"], capture_output=True, text=True,
                          check=True).stdout
    pages = int(next(line.split()[1] for line in info.splitlines() if line.startswith("Pages:")))
    assert pages >= 2  # the whole report, not only the first screen
    pngs = tmp_path / "pages"
    pngs.mkdir()
    subprocess.run([pdftoppm, "-r", "30", "-png", run / "report.pdf", pngs / "page"],
                   capture_output=True, check=True)
    rendered = sorted(pngs.glob("page-*.png"))
    assert len(rendered) == pages and all(p.stat().st_size > 1000 for p in rendered)

    def text(*pages: str) -> str:
        out = subprocess.run([pdftotext, *pages, run / "report.pdf", "-"], capture_output=True,
                             text=True, check=True).stdout
        return " ".join(out.split())

    decision = json.loads((run / "results.json").read_text())["decision"]
    first = text("-f", "1", "-l", "1")
    assert " ".join(decision["sentence"].split()) in first
    assert decision["verdict"] in first
    # <details> print open: the rule in full, collapsed on screen, is on paper.
    assert decision["rule_in_full"] and all(
        " ".join(clause.split()) in text() for clause in decision["rule_in_full"])
