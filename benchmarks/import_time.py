"""Import time: ``import trainkit`` against ``import torch`` alone, each in a fresh process.

    python benchmarks/import_time.py --runs 15

Prints the median wall time of each import over interleaved runs and what trainkit adds on top of
torch (target: <= 0.15 s), plus whether heavy modules were imported by ``import trainkit``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

_SNIPPET = """
import time, sys
t = time.perf_counter()
import {module}
elapsed = time.perf_counter() - t
heavy = [m for m in ("torchvision", "matplotlib", "tensorboard", "torchinfo") if m in sys.modules]
print(elapsed, ",".join(heavy))
"""


def measure(module: str) -> tuple[float, str]:
    out = subprocess.run(
        [sys.executable, "-c", _SNIPPET.format(module=module)], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), (out[1] if len(out) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json")
    args = parser.parse_args()
    measure("torch")  # warm the file cache
    torch_times, trainkit_times, heavy = [], [], ""
    for _ in range(args.runs):  # interleaved, so drift on a shared machine hits both alike
        torch_times.append(measure("torch")[0])
        seconds, heavy = measure("trainkit")
        trainkit_times.append(seconds)
    t_torch, t_trainkit = statistics.median(torch_times), statistics.median(trainkit_times)
    print(f"{'import':<16}{'median s':>10}{'min s':>9}")
    print(f"{'torch':<16}{t_torch:>10.3f}{min(torch_times):>9.3f}")
    print(f"{'trainkit':<16}{t_trainkit:>10.3f}{min(trainkit_times):>9.3f}")
    print(f"trainkit adds {t_trainkit - t_torch:+.3f} s (median) over torch; heavy modules imported: {heavy or 'none'}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"torch": torch_times, "trainkit": trainkit_times, "heavy": heavy}, handle)


if __name__ == "__main__":
    main()
