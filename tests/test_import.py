"""`import trainkit` stays cheap: the heavy optional modules load only when a feature needs them."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torchvision", "matplotlib", "tensorboard", "torchinfo")


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_import_trainkit_loads_no_heavy_module() -> None:
    assert _loaded_after("import trainkit; trainkit.Trainer; trainkit.callbacks.EarlyStopping") == set()


def test_subpackages_load_on_first_use() -> None:
    assert "torchvision" in _loaded_after("import trainkit; trainkit.data.SegmentationDataset")
    assert _loaded_after("import trainkit; trainkit.metrics.MeanIoU; trainkit.losses.DiceLoss") == set()
