"""Setup shared by every test module."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _interrupt_signals_not_ignored() -> Iterator[None]:
    """Run with SIGINT/SIGTERM handled as usual, also when pytest was started with them ignored.

    A shell starts background jobs (``cmd &``, ``nohup``) with SIGINT ignored, and child processes
    inherit that. trainkit then leaves the signal ignored, as it should, so the Ctrl-C tests (in this
    process and in the training subprocesses they start) would receive nothing.
    """
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            if signal.getsignal(sig) is signal.SIG_IGN:
                previous[sig] = signal.signal(sig, handler)
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)
