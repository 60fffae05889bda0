"""Run the `trainkit` command from a test: in this process (fast), or as `python -m trainkit` (the real thing).

Both return a ``subprocess.CompletedProcess`` (``returncode``, ``stdout``, ``stderr``). A subprocess pays
~2.5 s of importing torch and torchvision; :func:`run_cli` calls ``trainkit.cli.main`` here instead, with what
the command sees and changes of this process's global state set up as in a fresh ``python -m trainkit`` and put
back afterwards: the working folder, ``sys.argv``, ``os.environ``, the warning filters (Python's defaults, the
warnings printed to the command's stderr), the SIGINT/SIGTERM handlers, torch's thread count, the global RNGs
(train seeds them), torch's determinism switches, the logging handlers, the models registered by ``--import``
(with the module it put in ``sys.modules``); worker processes left behind are ended, as a process's exit would.

Keep :func:`run_subprocess` for what a process alone shows: the installed entry point, signals, file permissions
under `setpriv`, imports, what a terminal shows.
"""

from __future__ import annotations

import contextlib
import gc
import io
import itertools
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

import trainkit
from trainkit.cli import main
from trainkit.models import factory

__all__ = ["run_cli", "run_subprocess"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The filters of an interpreter started without -W, PYTHONWARNINGS or -X dev (the `warnings` docs' list).
_DEFAULT_FILTERS: tuple[tuple[Any, type[Warning], str], ...] = (
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, ""),
    ("ignore", PendingDeprecationWarning, ""),
    ("ignore", ImportWarning, ""),
    ("ignore", ResourceWarning, ""),
)


def run_subprocess(
    *args: str, cwd: Path | None = None, prefix: Sequence[str] = (), timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``[*prefix] python -m trainkit ARGS`` in a new process (unbuffered, so stdout and stderr keep their order)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "trainkit", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``trainkit ARGS`` in this process: its exit status and what it printed, as :func:`run_subprocess` returns.

    An argparse error (``SystemExit``) gives its code; an uncaught exception prints its traceback and gives 1, as
    the interpreter would. Output written below Python (a C library writing to file descriptor 2) is not captured.
    """
    argv = [str(arg) for arg in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    with _isolated(argv, cwd), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        returncode = _call_main(argv)
    return subprocess.CompletedProcess(
        [sys.executable, "-m", "trainkit", *argv], returncode, stdout.getvalue(), stderr.getvalue()
    )


def status_and_line(*args: str) -> tuple[int, str]:
    """``trainkit ARGS`` in this process (:func:`run_cli`): its exit status and the one line it printed on stderr."""
    result = run_cli(*args)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return result.returncode, lines[0]


def _call_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_info:  # argparse: --help (0), a bad argument (2)
        code = exit_info.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1


@contextlib.contextmanager
def _isolated(argv: list[str], cwd: Path | None) -> Iterator[None]:
    """Run the body as `python -m trainkit ARGV` would, in ``cwd``; put this process's state back afterwards."""
    with contextlib.ExitStack() as stack:
        if cwd is not None:
            stack.callback(os.chdir, os.getcwd())
            os.chdir(cwd)
        stack.enter_context(_default_warnings())
        stack.callback(_restore_environ, dict(os.environ))
        stack.callback(setattr, sys, "argv", sys.argv)
        sys.argv = [str(Path(trainkit.__file__).with_name("__main__.py")), *argv]
        stack.callback(_restore_signals, {sig: signal.getsignal(sig) for sig in _SIGNALS})
        stack.callback(torch.set_num_threads, torch.get_num_threads())
        stack.callback(_set_rngs, _get_rngs())
        stack.callback(_set_switches, _get_switches())
        stack.callback(_restore_logging, _get_logging())
        stack.callback(_restore_imports, dict(factory._registry), _imported_modules(argv))
        stack.callback(_reap_workers, set(multiprocessing.active_children()))
        yield


@contextlib.contextmanager
def _default_warnings() -> Iterator[None]:
    """Python's default warning filters, each warning printed to the (redirected) ``sys.stderr``."""

    def show(message: Any, category: Any, filename: str, lineno: int, file: TextIO | None = None, line: Any = None):
        (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.resetwarnings()
        for action, category, module in reversed(_DEFAULT_FILTERS):
            warnings.filterwarnings(action, category=category, module=module)
        warnings.showwarning = show
        yield


def _restore_signals(handlers: dict[signal.Signals, Any]) -> None:
    for sig, handler in handlers.items():
        if handler is not None:  # None: installed outside Python, cannot be put back from here
            signal.signal(sig, handler)


def _reap_workers(children: set[multiprocessing.process.BaseProcess]) -> None:
    """End the worker processes a command left behind as the exit of its process would: terminate the daemonic
    ones (DataLoader workers), join them, then collect what held them.

    (A safety net: the Trainer stops its loader's workers when training ends on an error, but a command that
    left any would keep them, in this long-lived process, until a garbage collection that waits 5 s for each.)
    """
    left = [child for child in multiprocessing.active_children() if child not in children]
    if not left:
        return
    for child in left:
        if child.daemon:
            child.terminate()
    for child in left:
        child.join()
    gc.collect()


def _restore_environ(saved: dict[str, str]) -> None:
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _get_rngs() -> dict[str, Any]:
    rngs = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rngs["cuda"] = torch.cuda.get_rng_state_all()
    return rngs


def _set_rngs(rngs: dict[str, Any]) -> None:
    random.setstate(rngs["python"])
    np.random.set_state(rngs["numpy"])
    torch.set_rng_state(rngs["torch"])
    if "cuda" in rngs:
        torch.cuda.set_rng_state_all(rngs["cuda"])


def _get_switches() -> dict[str, Any]:
    return {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic),
        "grad": torch.is_grad_enabled(),
        "dtype": torch.get_default_dtype(),
        "matmul": torch.get_float32_matmul_precision(),
    }


def _set_switches(switches: dict[str, Any]) -> None:
    torch.use_deterministic_algorithms(switches["deterministic"], warn_only=switches["warn_only"])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = switches["cudnn"]
    torch.set_grad_enabled(switches["grad"])
    torch.set_default_dtype(switches["dtype"])
    torch.set_float32_matmul_precision(switches["matmul"])


def _get_logging() -> dict[str, Any]:
    loggers = {"": logging.getLogger(), **logging.Logger.manager.loggerDict}
    return {name: (lg.handlers[:], lg.level) for name, lg in loggers.items() if isinstance(lg, logging.Logger)}


def _restore_logging(saved: dict[str, Any]) -> None:
    for name, (handlers, level) in saved.items():
        logger = logging.getLogger(name or None)
        logger.handlers[:] = handlers
        logger.setLevel(level)


def _imported_modules(argv: list[str]) -> dict[str, Any]:
    """The ``sys.modules`` entries ``--import FILE.py`` replaces (the file's stem), as they are now (None: absent)."""
    files = [value for flag, value in itertools.pairwise(argv) if flag == "--import"]
    files += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--import=")]
    names = [os.path.splitext(os.path.basename(f))[0] for f in files if f.endswith(".py") or os.sep in f]
    return {name: sys.modules.get(name) for name in names}


def _restore_imports(registry: dict[str, Any], modules: dict[str, Any]) -> None:
    factory._registry.clear()
    factory._registry.update(registry)
    for name, module in modules.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module
