"""A warm worker's peak memory is each stage's own: the peak restarts when a stage begins."""

from __future__ import annotations

import sys

import pytest

from tunearena.training.worker import _vm_hwm_mb, reset_peak_rss

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's VmHWM")


def test_the_peak_of_an_earlier_stage_is_not_the_next_ones():
    reset_peak_rss()  # whatever this process held before the test is not its peak
    before = _vm_hwm_mb()
    earlier = bytearray(200 * 2**20)  # 200 MiB, every page touched
    earlier[::4096] = b"\1" * len(earlier[::4096])
    held = _vm_hwm_mb()
    assert before is not None and held is not None and held >= before + 190
    del earlier
    reset_peak_rss()
    assert _vm_hwm_mb() < held - 150
