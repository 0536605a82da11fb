"""SIGINT and SIGTERM, sent for real to this process, become the interrupt a run unwinds on,
with the exit status a shell gives death by that signal."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tunearena.launch.interrupts import exit_status, reclaim, signal_name, signals_interrupt


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_raises_keyboard_interrupt_and_names_itself(signum, status):
    before = signal.getsignal(signal.SIGTERM)
    with signals_interrupt():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler runs before this ends
        assert exit_status() == status and signal_name() == signal.Signals(signum).name
    assert signal.getsignal(signal.SIGTERM) is before, "the previous handlers come back"
    assert exit_status() == 130, "outside the block, a KeyboardInterrupt is Ctrl-C's"


def test_reclaim_takes_back_a_handler_a_library_replaced():
    with signals_interrupt():
        # What ray.init does to SIGTERM.
        signal.signal(signal.SIGTERM, lambda signum, frame: exit(signum))
        reclaim()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert exit_status() == 143
