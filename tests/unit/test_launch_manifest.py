"""The run manifest decides what --resume may reuse."""

from __future__ import annotations

import json

from tunearena.launch.manifest import Manifest


def test_done_step_is_reusable_only_with_same_hash_and_artifacts(tmp_path):
    m = Manifest.open(tmp_path, "cfg1", "0.1.0")
    m.start("index", "h1")
    (tmp_path / "index").mkdir()
    m.finish("index", {"index": "index"}, {"n_chunks": 3}, 1.5)

    again = Manifest.open(tmp_path, "cfg1", "0.1.0")
    assert again.is_done("index", "h1")
    assert again.outputs("index") == {"n_chunks": 3}
    assert not again.is_done("index", "h2"), "a changed config must rerun the step"
    (tmp_path / "index").rmdir()
    assert not again.is_done("index", "h1"), "a deleted artifact must rerun the step"


def test_running_or_failed_step_is_not_reusable(tmp_path):
    m = Manifest.open(tmp_path, "cfg", "v")
    m.start("train", "h")
    assert not m.is_done("train", "h")
    m.fail("train", "RuntimeError: boom")
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["steps"]["train"]["status"] == "failed"
    assert "boom" in data["steps"]["train"]["error"]
    assert not m.is_done("train", "h")


def test_manifest_write_leaves_no_temp_file(tmp_path):
    m = Manifest.open(tmp_path, "cfg", "v")
    m.start("report", "h")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
