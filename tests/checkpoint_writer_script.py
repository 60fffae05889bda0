"""Helper for tests/test_resume.py: save a large checkpoint to one path again and again until killed.

Usage: ``python checkpoint_writer_script.py PATH RUN MEGABYTES``. Prints ``ready`` once imported, then
``begin <step>`` before and ``end <step>`` after every save, so the test can SIGKILL it in the middle of a write.
Each checkpoint holds ``{"model": {"w": full(step)}, "run": RUN, "step": step}``: a reader can tell a complete
file from a mix of two writes.
"""

from __future__ import annotations

import sys

import torch

from trainkit.engine.checkpoint import save_checkpoint


def main(path: str, run: int, megabytes: int) -> None:
    """Write checkpoints of ``megabytes`` MB to ``path`` forever."""
    numel = megabytes * 2**20 // 4
    print("ready", flush=True)
    step = 0
    while True:
        step += 1
        state = {"model": {"w": torch.full((numel,), float(step))}, "run": run, "step": step}
        print(f"begin {step}", flush=True)
        save_checkpoint(path, state)
        print(f"end {step}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
