"""Tests for trainkit.engine.progress: the bars on terminals of any reported size, 0×0 included."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap

import pytest

from trainkit.engine.progress import Progress

_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, with a file descriptor whose size ``os.get_terminal_size`` reports."""

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return 1


def _lines(text: str) -> list[str]:
    """What the terminal shows line by line: each ``\\r`` starts the line again, escapes removed."""
    return [part for line in _ESCAPES.sub("", text).split("\n") for part in line.split("\r") if part.strip()]


def _draw_an_epoch(columns: int, lines: int, monkeypatch: pytest.MonkeyPatch, values: dict[str, float]) -> str:
    """One epoch drawn through ``sys.stdout`` (the stream tqdm sizes itself) on a terminal of the given size."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=1: os.terminal_size((columns, lines)))
    stream = _Terminal()
    monkeypatch.setattr(sys, "stdout", stream)
    bar = Progress(enabled=True, total_epochs=2, refresh_s=0.0)
    bar.start_fit()
    bar.start_batches(2, desc="train 1")
    bar.advance(lambda: {"loss": 0.5})
    bar.advance(lambda: {"loss": 0.25})
    bar.end_batches()
    bar.epoch_line({"epoch": 1, **values})
    bar.close()
    return stream.getvalue()


def test_a_terminal_reporting_0x0_gets_80_column_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _draw_an_epoch(0, 0, monkeypatch, {"train/loss": 0.25})
    shown = _lines(text)
    assert any(line.startswith("train 1:   0%") and "0/2" in line for line in shown), shown  # then within tqdm's 0.1 s
    assert any(line.startswith("epochs:  50%") and "train/loss=0.25" in line for line in shown), shown
    assert max(len(line) for line in shown) == 79  # tqdm leaves the last column free, as on any terminal


def test_columns_from_the_environment_size_a_0x0_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=1: os.terminal_size((0, 0)))
    monkeypatch.setenv("COLUMNS", "100")
    bar = Progress(enabled=True, total_epochs=1, stream=_Terminal())
    bar.start_fit()
    bar.close()
    assert max(len(line) for line in _lines(bar.stream.getvalue())) == 99


def test_a_wide_terminal_shows_every_value_of_the_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {f"val/class{i}": 0.125 for i in range(16)}  # a postfix of about 260 characters
    text = _draw_an_epoch(400, 50, monkeypatch, values)
    epoch_bar = [line for line in _lines(text) if line.startswith("epochs:  50%")][-1]
    assert epoch_bar.endswith("val/class15=0.125]") and all(f"val/class{i}=0.125" in epoch_bar for i in range(16))
    assert len(epoch_bar) == 399


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "openpty") or sys.platform == "win32", reason="needs POSIX pseudo-terminals")
def test_fit_on_a_pseudo_terminal_reporting_0x0_draws_its_bars() -> None:
    import fcntl
    import struct
    import termios

    script = textwrap.dedent(
        """
        import torch, trainkit
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(2)]
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        trainkit.Trainer(model, opt, torch.nn.CrossEntropyLoss(), device="cpu").fit(data, data, epochs=2)
        """
    )
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))  # rows, columns: 0×0
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    try:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=terminal, stderr=subprocess.PIPE, env=env)
        os.close(terminal)  # the child holds the terminal now: reading ends (EIO) when it exits
        output = b""
        while True:  # read while it runs, so a full terminal buffer never blocks the child
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        stderr = proc.stderr.read() if proc.stderr else b""
        proc.wait(timeout=120)
    finally:
        os.close(controller)
    assert proc.returncode == 0, stderr.decode()
    shown = _lines(output.decode(errors="replace"))
    assert any(line.startswith("epochs: 100%") and "2/2" in line for line in shown), shown
    assert max(len(line) for line in shown) == 79
