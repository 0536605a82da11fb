"""``tunearena preflight CONFIG`` on the demo config: a real local Ray, every check in a table."""

from __future__ import annotations

import pytest

from tunearena.launch.cli import DEMO_CONFIG, main

pytestmark = pytest.mark.slow


def test_preflight_passes_on_the_demo_and_writes_no_results(tmp_path, capsys):
    assert main(["preflight", str(DEMO_CONFIG), "--set", f"runs_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    for stage in ("docs", "qa", "qa_replay"):
        for check in ("batch", "resources", "memory", "tokenizer"):
            assert f"{stage}: {check}" in out
    # Storage and the all-reduce run once, over the real backend (gloo on CPU).
    assert "docs: storage" in out and "all-reduce over 2 workers (gloo)" in out
    assert "all 14 checks passed" in out
    assert not (tmp_path / "demo" / "manifest.json").exists()


def test_preflight_fails_with_fixes_and_skips_the_slow_checks(tmp_path, capsys):
    code = main(["preflight", str(DEMO_CONFIG), "--set", f"runs_dir={tmp_path}",
                 "--set", "cluster.num_workers=64", "--set", "cluster.num_cpus=2"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL" in out and "lower cluster.num_workers to 2" in out
    # The cheap checks failed, so neither storage nor the collective was tried.
    assert "storage" not in out and "collective" not in out
