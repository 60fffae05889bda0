"""A training script for ``tests/test_distributed.py``, launched with ``torchrun --nproc_per_node=2
--max-restarts=1`` on CPU (gloo): ``python -m torch.distributed.run ... tests/ddp_script.py OUT``.

It is an ordinary trainkit script: nothing in it knows about ranks except the test hooks (results written per
rank into ``OUT``, the injected failure). In order:

1. the elastic run: 2 ranks x batch 16, ``last.pt`` every 3 steps, ``fit(resume="auto")`` in a shared run_dir;
   on torchrun's first attempt rank 1 dies (``os._exit(1)``) after global step ``FAIL_AT_STEP``, torchrun
   restarts both ranks and the run resumes from ``last.pt`` mid-epoch;
2. the same run uninterrupted, with a run_dir per rank so the test can see that only rank 0 writes;
3. evaluations through the fallback shardings, gradient accumulation with a DDP communication hook counting
   the all-reduces, and ``on_nan="skip"`` with a NaN loss on one rank only.

The same functions build the data and the model for the single-process reference in the test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

import trainkit
from trainkit.callbacks import Callback, ModelCheckpoint
from trainkit.metrics import MeanIoU, PixelAccuracy

TRAIN_SIZE, VAL_SIZE, EPOCHS, SEED = 128, 21, 2, 0
PER_RANK_BATCH, VAL_BATCH, EVERY_N_STEPS, FAIL_AT_STEP = 16, 5, 3, 7
SUBSET = [0, 3, 4, 8, 9, 10, 15, 20]  # validation samples picked by a SubsetRandomSampler


def make_data(n: int, seed: int) -> TensorDataset:
    """Images ``[n, 3, 16, 16]`` and a 2-class mask that a small conv net can learn from the first channel."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0.2).long()
    return TensorDataset(x, y)


def make_model() -> nn.Module:
    """A segmentation net without batch norm (same initial weights in every process)."""
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))


def make_metrics() -> dict[str, Any]:
    """The metrics every run reports."""
    return {"miou": MeanIoU(num_classes=2), "acc": PixelAccuracy(num_classes=2)}


def make_trainer(model: nn.Module, **kwargs: Any) -> trainkit.Trainer:
    """The Trainer of every run: SGD with momentum, cross-entropy, CPU, fp32."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    kwargs = {"metrics": make_metrics(), "device": "cpu", "amp": False, "progress": False, "seed": SEED, **kwargs}
    return trainkit.Trainer(model, opt, nn.CrossEntropyLoss(), **kwargs)


class FailOnce(Callback):
    """Kill rank 1 right after global step ``step``, on torchrun's first attempt only."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: trainkit.Trainer, state: Any, output: Any) -> None:
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if first_attempt and trainer.dist.rank == 1 and state.global_step == self.step:
            os._exit(1)


class NanOnRank1(trainkit.Trainer):
    """A NaN loss on rank 1 at the second batch of the epoch, finite losses everywhere else."""

    def training_step(self, batch: Any) -> Any:
        out = super().training_step(batch)
        if self.dist.rank == 1 and self.state.batch_idx == 1:
            out["loss"] = out["loss"] * float("nan")
        return out


def main_run(run_dir: Path, callbacks: list[Callback]) -> tuple[trainkit.Trainer, list[dict[str, float]]]:
    """2 ranks x batch 16, validation on 21 samples, ``last.pt`` every 3 steps, ``resume="auto"``."""
    trainer = make_trainer(
        make_model(), run_dir=run_dir, callbacks=[ModelCheckpoint(every_n_steps=EVERY_N_STEPS), *callbacks]
    )
    train = DataLoader(make_data(TRAIN_SIZE, seed=1), batch_size=PER_RANK_BATCH, shuffle=True)
    val = DataLoader(make_data(VAL_SIZE, seed=2), batch_size=VAL_BATCH)
    history = trainer.fit(train, val, epochs=EPOCHS, resume="auto")
    return trainer, history


def extra_runs(trainer: trainkit.Trainer) -> dict[str, Any]:
    """Fallback shardings, gradient accumulation with a counting comm hook, and ``on_nan="skip"``."""
    val = make_data(VAL_SIZE, seed=2)
    results: dict[str, Any] = {
        "eval_batches": trainer.evaluate([val[i : i + 4] for i in range(0, VAL_SIZE, 4)]),  # a list: ShardedBatches
        "eval_subset": trainer.evaluate(DataLoader(val, batch_size=3, sampler=SubsetRandomSampler(SUBSET))),
    }
    accum = make_trainer(make_model(), grad_accum=2)
    syncs = []

    def counting_hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP rejects string annotations here
        syncs.append(bucket.index())
        return allreduce_hook(None, bucket)

    accum.model.register_comm_hook(None, counting_hook)
    train = DataLoader(make_data(TRAIN_SIZE, seed=1), batch_size=PER_RANK_BATCH // 2, shuffle=True)
    accum.fit(train, epochs=EPOCHS)
    results["accum_weights"] = accum.module.state_dict()
    results["accum_syncs"] = len(syncs)
    results["accum_steps"] = accum.state.global_step

    model = make_model()
    options = {"device": "cpu", "amp": False, "progress": False, "seed": SEED, "on_nan": "skip"}
    nan = NanOnRank1(model, torch.optim.SGD(model.parameters(), lr=0.2), nn.CrossEntropyLoss(), **options)
    nan.fit(DataLoader(make_data(TRAIN_SIZE, seed=1), batch_size=PER_RANK_BATCH, shuffle=True), epochs=1)
    results["nan_weights"] = nan.module.state_dict()
    results["nan_history"] = nan.history
    return results


def main() -> None:
    out = Path(sys.argv[1]).resolve()
    rank = int(os.environ["RANK"])
    cwd = out / f"cwd{rank}"  # each rank works in its own folder: the test checks that nothing lands there
    cwd.mkdir(parents=True, exist_ok=True)
    os.chdir(cwd)
    restarted, _ = main_run(out / "run", [FailOnce(FAIL_AT_STEP)])
    trainer, history = main_run(out / f"run{rank}", [])
    results: dict[str, Any] = {
        "history": history,
        "weights": trainer.module.state_dict(),
        "restarted_history": restarted.history,
        "restarted_weights": restarted.module.state_dict(),
        "restarts": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        "world_size": trainer.dist.world_size,
        "ddp": type(trainer.model).__name__,
        "val": trainer.evaluate(DataLoader(make_data(VAL_SIZE, seed=2), batch_size=VAL_BATCH)),
        **extra_runs(trainer),
    }
    torch.save(results, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
