"""``tunearena report RUN_DIR --pdf`` where printing cannot work: no Chromium, one that fails,
one that hangs. Each is a user-facing error (exit 2, no traceback) that leaves the previous
report.pdf as it was. The stand-in "Chromium" here is a shell script playing the failing
browser; the real Chromium prints in tests/e2e/test_report_browser.py."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tunearena.evaluation.config import BenchmarkConfig, EvaluationConfig, ReportConfig
from tunearena.evaluation.report import pdf, summarise, write_results
from tunearena.evaluation.report.pdf import PdfError, write_pdf
from tunearena.launch.cli import main

BENCHMARKS = [
    BenchmarkConfig(name="products", path="products.jsonl", kind="domain"),
    BenchmarkConfig(name="facts", path="facts.jsonl", kind="general"),
]


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run directory holding only results.json, as a finished run leaves it."""
    samples = {
        arm: {
            name: [{"id": f"{name}-{i}", "acc": int(i % step == 0), "acc_norm": int(i % step == 0)}
                   for i in range(40)]
            for name in ("products", "facts")
        }
        for arm, step in (("base", 4), ("base+rag", 2), ("ft", 3), ("ft+rag", 2))
    }
    cfg = EvaluationConfig(benchmarks=BENCHMARKS, bootstrap_samples=200)
    write_results(tmp_path, summarise(samples, BENCHMARKS, cfg, ReportConfig(), {}))
    return tmp_path


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_without_a_chromium_it_names_what_to_install_and_writes_nothing(
    run_dir, tmp_path_factory, monkeypatch, capsys
):
    monkeypatch.delenv(pdf.CHROMIUM_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path_factory.mktemp("empty-path")))
    monkeypatch.setattr(pdf, "CHROMIUM_APPS", ())  # a macOS machine's browsers, out of sight
    assert main(["report", str(run_dir), "--pdf"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "error: --pdf prints report.html with a headless Chromium, and none was found" in err
    assert "apt-get install chromium" in err and "TUNEARENA_CHROMIUM" in err
    assert "Traceback" not in err
    # Found out before anything was written: no half-done report command.
    assert sorted(p.name for p in run_dir.iterdir()) == ["results.json"]


def test_a_tunearena_chromium_that_is_not_there_is_named(run_dir, monkeypatch, capsys):
    monkeypatch.setenv(pdf.CHROMIUM_ENV, "/opt/nowhere/chrome")
    assert main(["report", str(run_dir), "--pdf"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "TUNEARENA_CHROMIUM=/opt/nowhere/chrome: no such executable" in err


def test_a_chromium_that_fails_keeps_the_previous_pdf(run_dir, tmp_path_factory, monkeypatch,
                                                      capsys):
    bin_dir = tmp_path_factory.mktemp("bin")
    chromium = _script(bin_dir / "chromium",
                       'echo "[1:1:ERROR:dbus/bus.cc] Failed to connect to the bus" >&2\n'
                       'echo "Missing X server or $DISPLAY" >&2\nexit 3\n')
    monkeypatch.setenv(pdf.CHROMIUM_ENV, chromium)
    (run_dir / "report.pdf").write_bytes(b"%PDF-1.7 the previous one")
    assert main(["report", str(run_dir), "--pdf"]) == 2
    err = capsys.readouterr().err
    assert f"{chromium} did not print" in " ".join(err.split()) and "(exit 3)" in err
    assert "Missing X server" in err and "dbus" not in err  # its words, without the noise
    assert (run_dir / "report.pdf").read_bytes() == b"%PDF-1.7 the previous one"
    # The HTML it would have printed was written; no temp file is left behind.
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "report.html", "report.md", "report.pdf", "results.json", "review.csv"]


def test_a_chromium_that_writes_no_pdf_is_refused(run_dir, tmp_path_factory):
    # Exit 0 and a file where the PDF should be, but not a PDF: not renamed over report.pdf.
    chromium = _script(tmp_path_factory.mktemp("bin") / "chromium",
                       'for a; do case "$a" in --print-to-pdf=*) '
                       'echo "<html>" > "${a#--print-to-pdf=}";; esac; done\n')
    (run_dir / "report.html").write_text("<!doctype html><title>t</title>")
    with pytest.raises(PdfError, match=r"did not print .*\(exit 0\); report.pdf not written"):
        write_pdf(run_dir / "report.html", chromium)
    assert sorted(p.name for p in run_dir.iterdir()) == ["report.html", "results.json"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="reads a process's state in /proc")
def test_a_chromium_that_hangs_is_ended_with_its_helpers(run_dir, tmp_path_factory):
    # Like Chromium, the script starts a helper process; a timeout must end both.
    helper_pid = run_dir / "helper.pid"
    chromium = _script(tmp_path_factory.mktemp("bin") / "chromium",
                       f'sleep 300 &\necho $! > "{helper_pid}"\nwait\n')
    (run_dir / "report.html").write_text("<!doctype html><title>t</title>")
    with pytest.raises(PdfError, match=r"took over 2 s to print .*; report.pdf not written"):
        write_pdf(run_dir / "report.html", chromium, timeout_s=2)
    pid = int(helper_pid.read_text())
    status = Path(f"/proc/{pid}/status")
    # Gone, or a zombie waiting for a PID 1 that does not reap: either way, not running.
    assert not status.exists() or "State:\tZ" in status.read_text()
    assert not (run_dir / "report.pdf").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".report.pdf.")]
