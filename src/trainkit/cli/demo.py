"""``trainkit demo``: the whole story offline in one command.

Makes the synthetic shapes dataset, trains a CPU-sized UNet on it with the training recipe,
reloads the best checkpoint, and leaves ``checkpoints/best.pt`` and ``last.pt``, ``metrics.csv``,
``curves.png`` and ``predictions.png`` in the run directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainkit.cli.recipe import Recipe, load_model, normalizer, train_recipe

if TYPE_CHECKING:
    from trainkit.models import CheckpointSpec

__all__ = ["DEMO_CLASSES", "run_demo"]

DEMO_CLASSES = ["background", "circle", "square", "triangle"]


def run_demo(
    run_dir: str | Path = "runs/demo",
    *,
    epochs: int = 28,
    device: str = "auto",
    n: int = 480,
    size: int = 64,
    batch_size: int = 8,
    base_channels: int = 16,
    depth: int = 4,
    lr: float = 3e-3,
    progress: bool = True,
    overwrite: bool = False,
    extra_callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Train the demo UNet on synthetic shapes and write its outputs to ``run_dir``.

    Returns:
        ``{"miou": best validation mIoU, "epochs": epochs run, "seconds": wall time, "run_dir": path}``.

    Example:
        >>> result = run_demo("runs/demo", epochs=1, n=16, size=32)  # doctest: +SKIP
        >>> sorted(result)  # doctest: +SKIP
        ['epochs', 'miou', 'run_dir', 'seconds']
    """
    from trainkit.data import make_shapes

    start = time.perf_counter()
    run_dir = Path(run_dir)
    data = make_shapes(run_dir / "data", n=n, size=size, seed=0, exist_ok=True)
    recipe = Recipe(
        images=str(data / "PNGImages"),
        masks=str(data / "SemanticMasks"),
        mask_suffix="_mask",
        num_classes=len(DEMO_CLASSES),
        class_names=list(DEMO_CLASSES),
        val_split=0.2,
        size=(size, size),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        amp="auto",
        run_dir=str(run_dir),
        overwrite=overwrite,
        device=device,
        base_channels=base_channels,
        depth=depth,
        seed=0,
        progress=progress,
        scale=(1.0, 1.0),  # shapes are drawn at their final size: flips and colour jitter, no rescaling
        callbacks=list(extra_callbacks or []),
    )
    trainer, history, _, val_loader = train_recipe(recipe)
    best = run_dir / "checkpoints" / "best.pt"
    model, spec = load_model(best, device=trainer.device)
    write_predictions(model, val_loader, run_dir / "predictions.png", spec, trainer.device)
    scores = [row["val/miou"] for row in history if "val/miou" in row]
    return {
        "miou": max(scores) if scores else float("nan"),
        "epochs": len(history),
        "seconds": time.perf_counter() - start,
        "run_dir": str(run_dir),
    }


def write_predictions(
    model: torch.nn.Module, loader: Any, path: Path, spec: CheckpointSpec, device: torch.device, rows: int = 6
) -> Path:
    """Plot image | truth | prediction for the first ``rows`` samples of ``loader``.

    Example:
        >>> write_predictions(model, val_loader, Path("p.png"), spec, torch.device("cpu"))  # doctest: +SKIP
    """
    from trainkit.cli.predict import class_ids
    from trainkit.utils.outputs import main_output
    from trainkit.utils.plots import plot_predictions

    images, masks = next(iter(loader))
    images, masks = images[:rows], masks[:rows]
    with torch.inference_mode():
        preds = class_ids(main_output(model(normalizer(spec)(images.to(device))))).cpu()
    names = spec.class_names or None
    return plot_predictions(
        images, masks, preds, path, num_classes=max(2, spec.num_classes), max_rows=rows, class_names=names
    )
