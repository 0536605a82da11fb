"""The run manifest decides what --resume may reuse."""

from __future__ import annotations

import json
import threading

import pytest

from tunearena.files import write_atomic
from tunearena.launch.manifest import Manifest, ManifestError, read_manifest


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


def test_running_steps_are_closed_as_interrupted_with_their_signal(tmp_path):
    m = Manifest.open(tmp_path, "cfg", "v")
    m.start("prepare", "h")
    m.finish("prepare", {}, {}, 0.1)
    m.start("evaluate:base", "h")
    m.start("evaluate:ft", "h")
    assert m.close_running("interrupted", "SIGTERM") == ["evaluate:base", "evaluate:ft"]
    steps = json.loads((tmp_path / "manifest.json").read_text())["steps"]
    assert steps["prepare"]["status"] == "done"
    assert {steps[s]["status"] for s in ("evaluate:base", "evaluate:ft")} == {"interrupted"}
    assert steps["evaluate:ft"]["signal"] == "SIGTERM"


def test_a_truncated_manifest_is_named_with_what_to_do(tmp_path):
    Manifest.open(tmp_path, "cfg", "v").start("train", "h")
    path = tmp_path / "manifest.json"
    path.write_text(path.read_text()[:30])
    with pytest.raises(ManifestError) as e:
        read_manifest(tmp_path)
    assert str(path) in str(e.value) and "--resume" in str(e.value)
    with pytest.raises(ManifestError):
        Manifest.open(tmp_path, "cfg", "v")
    assert len(path.read_text()) == 30, "a manifest that cannot be read is not overwritten"


def test_concurrent_writers_never_share_a_temp_file(tmp_path):
    # With one fixed temp name, one writer's rename moved another's half-written file into
    # place (or found it gone). Every reader must see one writer's whole text.
    path = tmp_path / "manifest.json"
    texts = [json.dumps({"writer": i, "pad": "x" * 200_000}) for i in range(4)]
    errors: list[BaseException] = []

    def write(text: str) -> None:
        try:
            for _ in range(25):
                write_atomic(path, text)
                assert path.read_text() in texts
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_closing_steps_tells_an_interrupt_from_a_failure(tmp_path):
    m = Manifest.open(tmp_path, "cfg", "v")
    m.start("train", "h")
    with pytest.raises(KeyboardInterrupt), m.closing_steps():
        raise KeyboardInterrupt  # Ctrl-C with no handler of ours: SIGINT
    m.start("index", "h")
    with pytest.raises(RuntimeError), m.closing_steps():
        raise RuntimeError("boom")
    steps = json.loads((tmp_path / "manifest.json").read_text())["steps"]
    assert steps["train"]["status"] == "interrupted" and steps["train"]["signal"] == "SIGINT"
    assert steps["index"]["status"] == "failed" and steps["index"]["error"] == "RuntimeError: boom"
