"""The driver's progress bar, fed through a real Ray queue as rank 0 feeds it."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from tunearena.training.progress import StageProgress


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=140), out


def test_the_bar_shows_rank_zeros_lines_and_closes(ray_local):
    console, out = terminal()
    with StageProgress("ft", console) as progress:
        assert progress.queue is not None
        progress.queue.put({"step": 5, "total_steps": 10, "train_loss": 3.25,
                            "tokens_per_s": 1234.0})
        progress.queue.put({"step": 10, "total_steps": 10, "val_loss": 2.5})
    assert progress.queue is None
    text = out.getvalue()
    # Every line put before the stage ended is shown; a validation line keeps the loss.
    assert "10/10" in text and "loss 3.25" in text and "val 2.5" in text
    assert "1,234 tok/s" in text


def test_a_failed_stage_closes_the_bar_too(ray_local):
    console, _ = terminal()
    with (pytest.raises(RuntimeError, match="worker died"),
          StageProgress("ft", console) as progress):
        raise RuntimeError("worker died")
    assert progress.queue is None  # the thread joined, the bar stopped, the queue shut down


def test_without_a_terminal_rank_zero_prints_instead():
    with StageProgress("ft", Console(file=io.StringIO())) as progress:
        assert progress.queue is None
