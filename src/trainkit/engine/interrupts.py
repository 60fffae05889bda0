"""Ctrl-C (SIGINT) and SIGTERM during ``fit``: stop at a step boundary, save ``last.pt``, say how to resume.

While :meth:`Trainer.fit <trainkit.Trainer.fit>` runs, :class:`GracefulInterrupt` replaces the handlers of
SIGINT and SIGTERM. The first signal only sets a flag; the Trainer looks at it after every training batch
and stops at the next optimizer-step boundary (never inside a ``grad_accum`` group), or at the end of the
epoch (a validation pass that has begun is finished). It then writes ``last.pt`` and prints the argument
(and, under the ``trainkit`` command, the command line) that resumes the run, then leaves with a non-zero
status::

    SIGINT   ->  KeyboardInterrupt          (exit status 130 when uncaught)
    SIGTERM  ->  SystemExit(143)            (128 + 15, what schedulers expect after a SIGTERM)

A second signal while the first is being handled aborts at once, like an ordinary Ctrl-C, without a
checkpoint. The previous handlers are put back when ``fit`` returns or raises.

A signal that is ignored when ``fit`` starts (``SIG_IGN``, as for background jobs of a non-interactive shell)
stays ignored. Handlers are installed only in the main thread of the process that calls ``fit`` and only outside DDP
(ranks would stop at different steps and deadlock in the next all-reduce; a DDP run resumes from the
``every_n_steps`` checkpoints). DataLoader workers forked during ``fit`` inherit the handler, which ignores
the signal there: the main process still needs their batches to finish its step, and shuts them down itself.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["GracefulInterrupt", "StopRequested", "resume_hint"]

_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class StopRequested(BaseException):
    """Raised inside ``fit`` at a step boundary after a signal, so the Trainer can save and leave.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that ``except Exception`` in user callbacks does not
    swallow it. The Trainer replaces it with the error that :meth:`GracefulInterrupt.exit_error` returns.

    Example:
        >>> issubclass(StopRequested, Exception)
        False
    """


class GracefulInterrupt:
    """Turn SIGINT/SIGTERM into a request that the training loop honours at the next step boundary.

    :meth:`install` before the loop and :meth:`restore` in a ``finally``; nothing is installed when ``enabled``
    is false, outside the main thread, or where ``signal.signal`` is refused.

    Args:
        enabled: install the handlers (the Trainer passes ``False`` under DDP).
        stream: where the notices go (default ``sys.stderr``).

    Attributes:
        signum: the signal received, or ``None``.
        installed: whether the handlers are in place.

    Example:
        >>> interrupt = GracefulInterrupt().install()
        >>> try:
        ...     pass  # the training loop: call interrupt.check() where stopping is clean
        ... finally:
        ...     interrupt.restore()
        >>> interrupt.requested, interrupt.installed
        (False, False)
    """

    def __init__(self, enabled: bool = True, *, stream: Any = None):
        self.enabled = enabled
        self.stream = stream
        self.signum: int | None = None
        self.installed = False
        self._owner_pid = os.getpid()
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal asked the loop to stop.

        Example:
            >>> GracefulInterrupt().requested
            False
        """
        return self.signum is not None

    def check(self) -> None:
        """Raise :class:`StopRequested` if a signal arrived; call it only where stopping is clean.

        Example:
            >>> GracefulInterrupt().check()  # no signal: nothing happens
        """
        if self.signum is not None:
            raise StopRequested(signal.Signals(self.signum).name)

    def exit_error(self) -> BaseException:
        """The error that ends the process after the checkpoint: ``KeyboardInterrupt`` or ``SystemExit(128+n)``.

        Example:
            >>> GracefulInterrupt().exit_error().__class__.__name__
            'KeyboardInterrupt'
        """
        if self.signum in (None, signal.SIGINT):
            return KeyboardInterrupt()
        return SystemExit(128 + int(self.signum))

    def install(self) -> GracefulInterrupt:
        """Replace the SIGINT/SIGTERM handlers (main thread only) and forget any earlier signal; returns ``self``.

        Example:
            >>> GracefulInterrupt(enabled=False).install().installed
            False
        """
        self.signum = None
        self._owner_pid = os.getpid()
        if not self.enabled or self.installed or threading.current_thread() is not threading.main_thread():
            return self
        try:
            for sig in _SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored signal (`nohup`, `cmd &`) stays ignored
                    self._previous[sig] = signal.signal(sig, self._handle)
        except (ValueError, OSError):  # e.g. an embedded interpreter that refuses handlers
            self.restore()
            return self
        self.installed = bool(self._previous)
        return self

    def restore(self) -> None:
        """Put the previous handlers back (safe to call more than once).

        Example:
            >>> GracefulInterrupt().restore()
        """
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self.installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner_pid:
            return  # a forked DataLoader worker: the main process decides, and shuts the workers down
        name = signal.Signals(signum).name
        if self.signum is not None:
            self.restore()
            self._print(f"trainkit: second {name}: stopping now, without a checkpoint")
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum
        self._print(
            f"trainkit: {name} received: stopping after the current optimizer step and saving a checkpoint "
            f"(send it again to stop at once, without saving)"
        )

    def _print(self, text: str) -> None:
        print(text, file=self.stream if self.stream is not None else sys.stderr, flush=True)


def resume_hint(path: Path | None, argv: Sequence[str] | None = None) -> str:
    """How to resume from ``path``: the ``fit`` argument, plus the command line when run by ``trainkit``.

    Args:
        path: the checkpoint just written, or ``None`` when nothing could be saved.
        argv: the process's arguments (default ``sys.argv``); a ``trainkit`` command gets its own line
            with ``--resume last`` in place of any earlier ``--resume``.

    Example:
        >>> print(resume_hint(Path("r/last.pt"), ["trainkit", "train", "--run-dir", "r", "--resume", "r/a.pt"]))
        resume with `trainer.fit(..., resume='r/last.pt')`, or run: trainkit train --run-dir r --resume last
    """
    if path is None:
        return "no checkpoint was written (set `Trainer(run_dir=...)` to make interrupted runs resumable)"
    text = f"resume with `trainer.fit(..., resume={str(path)!r})`"
    command = _trainkit_command(list(sys.argv if argv is None else argv))
    return f"{text}, or run: {command}" if command else text


def _trainkit_command(argv: list[str]) -> str | None:
    if not argv:
        return None
    program = Path(argv[0])
    if program.name == "trainkit":
        prefix = ["trainkit"]
    elif program.name == "__main__.py" and program.parent.name == "trainkit":
        prefix = ["python", "-m", "trainkit"]
    else:
        return None
    args: list[str] = []
    skip = False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            args.append(arg)
    return shlex.join([*prefix, *args, "--resume", "last"])
