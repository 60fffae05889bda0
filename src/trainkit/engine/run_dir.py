"""``RunDir``: the run directory: one writer at a time, never a silent replacement, and its log files.

* **One writer.** ``fit`` holds an OS file lock on ``<run_dir>/.trainkit.lock`` (``fcntl.lockf``, which
  the kernel releases when the process dies, even by SIGKILL); a second run into the same folder is
  refused with the holder's PID.
* **Nothing replaced without a word.** A fresh run (no ``resume``) into a folder that holds a run
  (``metrics.csv`` or checkpoints) is refused unless ``overwrite=True``.
* **The files.** ``metrics.csv`` is rewritten whole and atomically after every epoch from the history, so
  a failed run never truncates an older file; TensorBoard events; ``curves.png``, best-effort (a failure
  to draw it warns and never discards a finished run).

Only the main process writes; without a folder nothing is written.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from trainkit.utils.logging import CSVLogger, TensorBoardLogger

__all__ = ["RunDir", "RunDirBusy"]

LOCK_NAME = ".trainkit.lock"


class RunDirBusy(RuntimeError):
    """Another process holds the run directory's lock (it is training into it)."""


class RunDir:
    """The run directory of a ``Trainer``: its lock, its guard against replacing a run, and its log files.

    Pass one as ``Trainer(run_dir=RunDir("runs/x", overwrite=True))`` to let a fresh run replace the run
    that folder holds; a path means ``RunDir(path)``.

    Args:
        path: the folder (``None``: write nothing).
        overwrite: let a fresh run (no ``resume``) write into a folder that already holds a run; its files
            are replaced as the new run writes them.
        is_main: whether this process writes (rank 0 under DDP; the Trainer sets it).

    Example:
        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> run.open(); run.log_epoch([{"epoch": 1, "train/loss": 0.5}]); run.close()
        >>> (run.path / "metrics.csv").read_text().splitlines()[0]
        'epoch,train/loss'
        >>> run.holds_run()
        True
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, overwrite: bool = False, is_main: bool = True):
        self.path = Path(path) if path is not None else None
        self.overwrite = bool(overwrite)
        self.writes = self.path is not None and is_main
        self._csv: CSVLogger | None = None
        self._tb: TensorBoardLogger | None = None
        self._lock: IO[str] | None = None

    @classmethod
    def of(cls, value: RunDir | str | os.PathLike[str] | None, *, is_main: bool) -> RunDir:
        """``value`` as a ``RunDir`` writing on the main process only (a path, ``None`` or a ``RunDir``).

        Example:
            >>> RunDir.of("runs/a", is_main=False).writes
            False
        """
        if isinstance(value, RunDir):
            return cls(value.path, overwrite=value.overwrite, is_main=is_main)
        return cls(value, is_main=is_main)

    def __repr__(self) -> str:
        path = str(self.path) if self.path is not None else None
        return f"RunDir({path!r}{', overwrite=True' if self.overwrite else ''})"

    def holds_run(self) -> bool:
        """Whether the folder holds a run: ``metrics.csv`` or a checkpoint in ``checkpoints/``.

        Example:
            >>> RunDir("no/such/folder").holds_run()
            False
        """
        if self.path is None:
            return False
        checkpoints = self.path / "checkpoints"
        return (self.path / "metrics.csv").is_file() or (checkpoints.is_dir() and any(checkpoints.glob("*.pt")))

    def replacing_message(self) -> str | None:
        """Why a fresh run must not write here (the folder holds a run and ``overwrite`` is off), or ``None``.

        Example:
            >>> RunDir(None).replacing_message() is None  # no folder: nothing to replace
            True
        """
        if self.path is None or self.overwrite or not self.holds_run():
            return None
        names = ("metrics.csv", "checkpoints/last.pt", "checkpoints/best.pt")
        found = ", ".join(name for name in names if (self.path / name).exists()) or "checkpoints"
        return (
            f"`run_dir={str(self.path)!r}` already holds a run ({found}) and this `fit` starts afresh, which would "
            "replace it. Continue that run with `fit(..., resume='last')` (`--resume last`), replace it with "
            f"`run_dir=trainkit.RunDir({str(self.path)!r}, overwrite=True)` (`--overwrite` on the command line), "
            "or choose another folder"
        )

    def open(self, checkpoints: Path | None = None) -> None:
        """Create the folder, check that it and ``checkpoints`` (the checkpoint folder) are writable, take the
        lock, open the loggers.

        Raises:
            ValueError: a folder cannot be created or is not writable.
            RunDirBusy: another process is training into this folder.

        Example:
            >>> RunDir(None).open()  # no folder: nothing happens
        """
        if not self.writes or self.path is None:
            return
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"`run_dir={str(self.path)!r}` is a file, not a folder; choose another `run_dir`")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"`run_dir={str(self.path)!r}` cannot be created: {err.strerror or err}") from err
        for folder in (self.path, checkpoints):  # checked now, not after an epoch of training
            if folder is not None and not _writable(folder):
                raise ValueError(
                    f"`{folder}` is not writable, so the run could not save its results; fix its permissions or "
                    "choose another `run_dir`"
                )
        self._lock = _lock(self.path / LOCK_NAME)
        self._csv = CSVLogger(self.path / "metrics.csv")
        tb = TensorBoardLogger(self.path / "tensorboard")
        self._tb = tb if tb.available else None

    def log_epoch(self, history: list[dict[str, float]]) -> None:
        """Rewrite ``metrics.csv`` from ``history`` and send its last row to TensorBoard.

        Example:
            >>> RunDir(None).log_epoch([{"epoch": 1}])
        """
        if self._csv is not None:
            self._csv.start(history)
        if self._tb is not None and history:
            self._tb.log_scalars(history[-1], int(history[-1]["epoch"]))

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Send step-level scalars to TensorBoard (when it is installed and the folder is open).

        Example:
            >>> RunDir(None).log_scalars({"lr": 0.1}, step=3)
        """
        if self._tb is not None:
            self._tb.log_scalars(values, step)

    def close(self) -> None:
        """Flush and close the TensorBoard writer and release the lock.

        Example:
            >>> RunDir(None).close()
        """
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._lock is not None:
            _unlock(self._lock)
            self._lock = None

    def plot(self, history: list[dict[str, float]]) -> None:
        """Plot the losses and validation metrics of ``history`` to ``curves.png`` (imports matplotlib here).

        Example:
            >>> RunDir(None).plot([{"epoch": 1, "train/loss": 0.5}])  # no folder: nothing written
        """
        if not self.writes or self.path is None or not history:
            return
        from trainkit.utils.plots import plot_curves

        metrics = tuple(k for k in history[-1] if k.startswith("val/") and k != "val/loss")
        try:
            plot_curves(history, self.path / "curves.png", metrics=metrics)
        except (OSError, ValueError, RuntimeError) as err:  # a derived file: the run's results are already saved
            warnings.warn(
                f"could not draw {self.path / 'curves.png'} ({err}); the run's checkpoints and metrics.csv are "
                "saved, and `trainkit.utils.plots.plot_curves` can draw it later",
                stacklevel=3,
            )


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder``, or in the existing folder it would be created in."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


_HELD: set[Path] = set()  # run directories this process holds: POSIX locks do not refuse their own process


def _lock(path: Path) -> IO[str]:
    """Hold an exclusive lock on ``path`` (with this process's PID in it) until :func:`_unlock`.

    A POSIX record lock (``fcntl.lockf``) rather than ``flock``: it belongs to this process only, so the
    DataLoader workers it forks do not inherit it and a run killed by SIGKILL frees its folder at once
    (with ``flock`` its orphaned workers would hold the lock until they notice). Such a lock does not
    refuse its own process, hence the set of held folders; and closing any handle on the file releases
    it, hence the check before the file is opened.
    """
    key = path.resolve()
    if key in _HELD:
        raise _busy(path, f"PID {os.getpid()} on {socket.gethostname()} (this process)")
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks; runs are not guarded against a second writer
        return open(os.devnull, "w")
    handle = open(path, "a+")  # noqa: SIM115  (held open for the whole run)
    try:
        fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise _busy(path, holder) from None
    _HELD.add(key)
    handle.seek(0)
    handle.truncate()
    handle.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def _unlock(handle: IO[str]) -> None:
    _HELD.discard(Path(handle.name).resolve())
    handle.close()  # closing the file releases the lock


def _busy(path: Path, holder: str) -> RunDirBusy:
    return RunDirBusy(
        f"`run_dir={str(path.parent)!r}` is in use by {holder}: two runs writing into one folder would "
        "overwrite each other's checkpoints. Wait for it to finish, stop it, or choose another `run_dir`"
    )
