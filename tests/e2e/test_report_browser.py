"""report.html opened in a real headless Chromium, as a reader would open the file.

The driver is Playwright's Python package (the ``dev`` extra, from PyPI); the browser is a
Chromium already on the machine, never one downloaded at test time: Playwright's own
``playwright install`` fetches from a CDN, which CI cannot reach. On Debian,
``apt-get install chromium`` provides ``/usr/bin/chromium``; ``TUNEARENA_CHROMIUM`` names
another executable. Without either the test skips and says which one was missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.report import summarise, write_reports

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the Python package 'playwright' is not installed (pip install -e '.[dev]')",
)

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
BENCHMARKS = [
    BenchmarkConfig(name="lumora_products", path="products.jsonl", kind="domain"),
    BenchmarkConfig(name="world_facts", path="world.jsonl", kind="general"),
]


def _chromium_executable(playwright) -> str | None:
    """TUNEARENA_CHROMIUM, else a Chromium on PATH, else one Playwright downloaded earlier."""
    named = os.environ.get("TUNEARENA_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    bundled = playwright.chromium.executable_path
    return bundled if Path(bundled).is_file() else None


@pytest.fixture(scope="module")
def browser():
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
            "run_dir": "runs/demo",
            "base_model": "models/tiny-base",
            "config_hash": "cc4f263d3c6c39dc",
            "code_version": "0.1.0+366752e",
            "python": "3.11.7",
            "seed": 0,
        },
        "latency": {
            arm: {
                "score_s": 1.2 + i,
                "ms_per_question": 7.5 + 6 * i,
                "model": "runs/demo/models/ft" if arm.startswith("ft") else "base",
            }
            for i, arm in enumerate(domain)
        },
        "training": {
            "steps": 60,
            "method": "lora",
            "train_tokens": 122880,
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
    assert "Decided by:" in verdict.locator(".confidence").inner_text()
    sections = page.locator("main > section")
    assert sections.first.get_attribute("id") == "verdict"
    ids = sections.evaluate_all("els => els.map(e => e.id)")
    assert ids == ["verdict", "scores", "forgetting", "retrieval", "cost", "training", "provenance"]
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


def test_report_reads_on_a_phone_sized_screen(browser, run_dir):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto((run_dir / "report.html").as_uri(), wait_until="load")
    assert page.locator("#verdict .verdict-label").is_visible()
    # Plots shrink to the screen instead of running off it.
    widths = page.locator("img").evaluate_all(
        "els => els.map(e => e.getBoundingClientRect().width)"
    )
    body = page.evaluate("document.querySelector('main').clientWidth")
    assert widths and all(0 < w <= body for w in widths)
    page.close()
