"""Tests for trainkit.engine.distributed and DDP training under torchrun (CPU, gloo, 2 processes).

The slow tests launch ``tests/ddp_script.py`` with ``python -m torch.distributed.run --standalone
--nproc_per_node=2`` (a free port is picked by the standalone rendezvous) twice: once uninterrupted, once
with rank 1 killed mid-epoch and ``--max-restarts=1``. The fast tests check the samplers, the
single-process context and the pieces the Trainer uses without a process group.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import (
    DataLoader,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)
from torch.utils.data.distributed import DistributedSampler

import ddp_script as script
import trainkit
from trainkit.callbacks import Callback, ModelCheckpoint
from trainkit.engine.distributed import DistributedContext, check_ddp_kwargs, local_device, torchrun_env
from trainkit.engine.loops import evaluate
from trainkit.engine.sharding import ShardedBatches, ShardSampler
from trainkit.errors import CheckpointError

SCRIPT = Path(__file__).with_name("ddp_script.py")
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")


# ----------------------------------------------------------------------------- launching torchrun


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[dict[str, Any]]]:
    """Launch ``ddp_script.py`` on 2 CPU processes with one restart allowed; its folder, output and results."""
    out = tmp_path_factory.mktemp("ddp")
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env["OMP_NUM_THREADS"] = "1"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1"]
    proc = subprocess.run([*torchrun, str(SCRIPT), str(out)], capture_output=True, text=True, env=env, timeout=240)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return out, output, [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


@pytest.fixture(scope="module")
def single_process() -> trainkit.Trainer:
    """The reference: one process, batch 32, the same shuffled order as the two ranks together."""
    train = script.make_data(script.TRAIN_SIZE, seed=1)
    order = DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=script.SEED)
    trainer = script.make_trainer(script.make_model())
    val = DataLoader(script.make_data(script.VAL_SIZE, seed=2), batch_size=script.VAL_BATCH)
    trainer.fit(DataLoader(train, batch_size=2 * script.PER_RANK_BATCH, sampler=order), val, epochs=script.EPOCHS)
    return trainer


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _single_process_eval(weights: dict[str, torch.Tensor], loader: Any) -> dict[str, float]:
    model = script.make_model()
    model.load_state_dict(weights)
    return evaluate(model, loader, nn.CrossEntropyLoss(), script.make_metrics())


# ----------------------------------------------------------------------------- DDP runs (slow)


@pytest.mark.slow
def test_two_ranks_of_batch_16_train_like_one_process_of_batch_32(ddp_run, single_process) -> None:
    _, _, (rank0, rank1) = ddp_run
    assert rank0["world_size"] == 2 and rank0["ddp"] == "DistributedDataParallel"
    assert _max_diff(rank0["weights"], single_process.module.state_dict()) < 1e-5
    assert _max_diff(rank0["weights"], rank1["weights"]) == 0.0
    assert rank0["history"] == rank1["history"]  # every rank reports the same (reduced) values
    assert [row["epoch"] for row in rank0["history"]] == [1, 2]
    for ddp_row, ref_row in zip(rank0["history"], single_process.history, strict=True):
        assert list(ddp_row) == list(ref_row)
        for key, ref in ref_row.items():
            assert ddp_row[key] == pytest.approx(ref, rel=1e-5, abs=1e-6), key
    assert rank0["history"][-1]["train/loss"] < rank0["history"][0]["train/loss"]


@pytest.mark.slow
def test_val_metrics_equal_a_single_process_pass_over_an_uneven_val_set(ddp_run) -> None:
    _, _, (rank0, rank1) = ddp_run
    assert script.VAL_SIZE % 2 == 1  # 11 samples on rank 0 (3 batches), 10 on rank 1 (2 batches)
    val = script.make_data(script.VAL_SIZE, seed=2)
    reference = _single_process_eval(rank0["weights"], DataLoader(val, batch_size=script.VAL_BATCH))
    subset = _single_process_eval(
        rank0["weights"], DataLoader(val, batch_size=3, sampler=SubsetRandomSampler(script.SUBSET))
    )
    last = {k.removeprefix("val/"): v for k, v in rank0["history"][-1].items() if k.startswith("val/")}
    for rank in (rank0, rank1):
        # Metrics are ratios of summed integer counts: exactly equal. The loss sums batch means formed
        # over other groups of samples, so it agrees up to float rounding.
        for ddp in (last, rank["val"], rank["eval_batches"]):
            assert ddp["miou"] == reference["miou"] and ddp["acc"] == reference["acc"]
            assert ddp["loss"] == pytest.approx(reference["loss"], rel=1e-6)
        assert rank["eval_subset"]["miou"] == subset["miou"] and rank["eval_subset"]["acc"] == subset["acc"]
        assert rank["eval_subset"]["loss"] == pytest.approx(subset["loss"], rel=1e-6)
    assert subset["acc"] != reference["acc"]  # the subset is really evaluated, not the whole set


@pytest.mark.slow
def test_only_rank_0_writes_files(ddp_run) -> None:
    out, _, _ = ddp_run
    run0 = out / "run0"
    written = sorted(p.name for p in run0.iterdir() if p.name != "tensorboard")  # tensorboard: when installed
    assert written == [".trainkit.lock", "checkpoints", "curves.png", "metrics.csv"]
    assert sorted(p.name for p in (run0 / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert len((run0 / "metrics.csv").read_text().splitlines()) == 1 + script.EPOCHS
    assert not (out / "run1").exists()  # rank 1 was given its own run_dir and wrote nothing there
    assert list((out / "cwd0").iterdir()) == [] and list((out / "cwd1").iterdir()) == []
    ckpt = torch.load(run0 / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == script.EPOCHS and ckpt["batch_idx"] == 0


@pytest.mark.slow
def test_grad_accum_skips_the_all_reduce_on_micro_steps(ddp_run, single_process) -> None:
    _, _, (rank0, rank1) = ddp_run
    # 2 ranks x batch 8 x grad_accum 2 = 32 samples a step: 16 micro-batches, 8 optimizer steps, 8 all-reduces.
    assert rank0["accum_steps"] == 8 and rank0["accum_syncs"] == 8 and rank1["accum_syncs"] == 8
    assert _max_diff(rank0["accum_weights"], single_process.module.state_dict()) < 1e-5
    assert _max_diff(rank0["accum_weights"], rank1["accum_weights"]) == 0.0


@pytest.mark.slow
def test_on_nan_skip_skips_the_step_on_every_rank(ddp_run) -> None:
    _, _, (rank0, rank1) = ddp_run
    assert _max_diff(rank0["nan_weights"], rank1["nan_weights"]) == 0.0
    assert all(torch.isfinite(w).all() for w in rank0["nan_weights"].values())
    assert rank0["nan_history"] == rank1["nan_history"] and math.isfinite(rank0["nan_history"][0]["train/loss"])


@pytest.mark.slow
def test_elastic_restart_resumes_from_last_pt_and_ends_like_an_uninterrupted_run(ddp_run) -> None:
    out, output, ranks = ddp_run
    # last.pt was written at step 6 (epoch 2, batch 2); rank 1 died after step 7 on the first attempt.
    assert "resumed from" in output and "at epoch 2, batch 2" in output
    for rank in ranks:
        assert rank["restarts"] == 1
        # Bitwise: the same samples, the same order of float operations (a 2-rank all-reduce is one addition),
        # the same optimizer and RNG state restored, so nothing can differ, not even in the last bit.
        assert all(torch.equal(rank["restarted_weights"][k], rank["weights"][k]) for k in rank["weights"])
        # The mid-epoch checkpoint kept every rank's running sums: the resumed epoch reports the same values.
        assert rank["restarted_history"] == rank["history"]
    assert len((out / "run" / "metrics.csv").read_text().splitlines()) == 1 + script.EPOCHS


# ----------------------------------------------------------------------------- samplers (fast)


@pytest.mark.parametrize("n", [0, 1, 2, 5, 21, 32])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_sampler_splits_a_dataset_into_disjoint_unpadded_shards(n: int, world: int) -> None:
    shards = [list(ShardSampler(range(n), world, rank)) for rank in range(world)]
    assert [len(ShardSampler(range(n), world, rank)) for rank in range(world)] == [len(s) for s in shards]
    assert sorted(i for shard in shards for i in shard) == list(range(n))  # disjoint, complete, nothing repeated
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_sampler_shards_a_base_order() -> None:
    shards = [list(ShardSampler(range(100), 2, rank, base=[7, 3, 9, 1, 5])) for rank in (0, 1)]
    assert shards == [[7, 9, 5], [3, 1]]


BAD_SHARDS = [
    (0, 0, "`num_replicas` must be"),
    (True, 0, "`num_replicas` must be"),
    (2, 2, r"`rank` must be .*\[0, 2\)"),
    (2, -1, "`rank` must be"),
]


@pytest.mark.parametrize(("world", "rank", "match"), BAD_SHARDS)
def test_shard_sampler_rejects_bad_ranks(world: Any, rank: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ShardSampler(range(4), world, rank)
    with pytest.raises(ValueError, match=match):
        ShardedBatches([1, 2], world, rank)


def test_sharded_batches_split_any_iterable_of_batches() -> None:
    batches = [f"b{i}" for i in range(5)]
    shards = [list(ShardedBatches(batches, 2, rank)) for rank in (0, 1)]
    assert shards == [["b0", "b2", "b4"], ["b1", "b3"]]
    assert [len(ShardedBatches(batches, 2, rank)) for rank in (0, 1)] == [3, 2]
    with pytest.raises(TypeError):
        len(ShardedBatches(iter(batches), 2, 0))


def _indices(loader: Any) -> list[int]:
    return [int(i) for batch in loader for i in batch]


def test_train_sampler_pads_to_equal_shards_and_keeps_shuffling() -> None:
    data = list(range(5))
    ordered = [DistributedContext(rank=r, world_size=2).train_sampler(DataLoader(data), seed=3) for r in (0, 1)]
    assert all(isinstance(s, DistributedSampler) and not s.shuffle for s in ordered)
    assert [list(s) for s in ordered] == [[0, 2, 4], [1, 3, 0]]  # sample 0 repeated: same number of steps
    shuffled = DistributedContext(rank=0, world_size=2).train_sampler(DataLoader(data, shuffle=True), seed=3)
    assert shuffled.shuffle and shuffled.seed == 3 and len(shuffled) == 3


def test_train_sampler_keeps_a_rank_aware_sampler_and_warns_about_a_custom_one() -> None:
    ctx = DistributedContext(rank=1, world_size=2)
    data = list(range(6))
    own = DistributedSampler(data, num_replicas=2, rank=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ctx.train_sampler(DataLoader(data, sampler=own), seed=0) is None
    with pytest.warns(UserWarning, match=r"SubsetRandomSampler is used as it is on every rank.*`Subset\(dataset"):
        assert ctx.train_sampler(DataLoader(data, sampler=SubsetRandomSampler([0, 1])), seed=0) is None
    with pytest.warns(UserWarning, match=r"WeightedRandomSampler is used as it is"):
        assert ctx.train_sampler(DataLoader(data, sampler=WeightedRandomSampler([1.0] * 6, 6)), seed=0) is None
    custom = [[0, 1], [2, 3, 4]]
    with pytest.warns(UserWarning, match=r"list is used as it is"):
        assert ctx.train_sampler(DataLoader(data, batch_sampler=custom), seed=0) is None


def test_shard_eval_loader_covers_what_the_loader_visits_once() -> None:
    data = TensorDataset(torch.arange(11))
    loaders = {
        "ordered": (DataLoader(data, batch_size=3), list(range(11))),
        "shuffled": (DataLoader(data, batch_size=3, shuffle=True), list(range(11))),
        "distributed": (DataLoader(data, batch_size=3, sampler=DistributedSampler(data, 4, 3)), list(range(11))),
        "subset": (DataLoader(data, batch_size=2, sampler=SubsetRandomSampler([9, 2, 4, 7])), [2, 4, 7, 9]),
        "batch_sampler": (DataLoader(data, batch_sampler=[[0, 1], [5], [2, 3, 4]]), [0, 1, 2, 3, 4, 5]),
        "list": ([(torch.tensor([i, i + 1]),) for i in range(0, 10, 2)], list(range(10))),
    }
    for name, (loader, expected) in loaders.items():
        shards = []
        for rank in (0, 1):
            ctx = DistributedContext(rank=rank, world_size=2)
            sharded = ctx.shard_eval_loader(loader)
            assert ctx.shard_eval_loader(sharded) is sharded  # idempotent: fit prepares, evaluate prepares again
            shards.append([int(i) for (batch,) in sharded for i in batch])
        assert sorted(shards[0] + shards[1]) == expected, name
        assert not set(shards[0]) & set(shards[1]), name


# ----------------------------------------------------------------------------- the single-process context


def test_single_context_is_a_no_op_everywhere(tmp_path: Path) -> None:
    ctx = DistributedContext.single()
    assert (ctx.enabled, ctx.is_main, ctx.rank, ctx.world_size) == (False, True, 0, 1)
    t = torch.ones(2)
    assert ctx.all_reduce_sum(t) is t
    assert ctx.gather({"a": 1}) == [{"a": 1}]
    assert ctx.any_true(False, torch.device("cpu")) is False
    ctx.barrier()
    loader = DataLoader(list(range(4)), batch_size=2, shuffle=True)
    assert ctx.train_sampler(loader, seed=0) is None and ctx.eval_sampler(loader) is None
    assert ctx.shard_eval_loader(loader) is loader
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    assert ctx.wrap_model(model, torch.device("cpu"), sync_batchnorm=True) is model
    assert isinstance(model[1], nn.BatchNorm2d) and not isinstance(model[1], nn.SyncBatchNorm)
    assert ctx.file_on_main(tmp_path / "last.pt", torch.device("cpu")) is False
    (tmp_path / "last.pt").write_bytes(b"x")
    assert ctx.file_on_main(tmp_path / "last.pt", torch.device("cpu")) is True
    ctx.shutdown()


def test_detect_outside_torchrun_is_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    assert torchrun_env() is None
    assert DistributedContext.detect(torch.device("cpu")) == DistributedContext.single()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node=1: no group, no DDP
    assert torchrun_env() == {"rank": 0, "local_rank": 0, "world_size": 1}
    ctx = DistributedContext.detect(torch.device("cpu"))
    assert not ctx.enabled and not torch.distributed.is_initialized()


def test_local_device_is_the_local_ranks_gpu_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    assert local_device(torch.device("cuda")) == torch.device("cuda")
    monkeypatch.setenv("RANK", "7")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert local_device(torch.device("cuda")) == torch.device("cuda", 3)
    assert local_device(torch.device("cuda", 1)) == torch.device("cuda", 1)  # an explicit index is kept
    assert local_device(torch.device("cpu")) == torch.device("cpu")


def test_ddp_kwargs_are_checked_even_in_a_single_process() -> None:
    check_ddp_kwargs({"find_unused_parameters": True, "static_graph": True, "gradient_as_bucket_view": True})
    with pytest.raises(TypeError, match=r"'find_unused_paramters', which `DistributedDataParallel` does not take"):
        check_ddp_kwargs({"find_unused_paramters": True})
    with pytest.raises(TypeError, match=r"sets 'device_ids', which the Trainer sets itself.*`device=`"):
        check_ddp_kwargs({"device_ids": [0]})
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"'static_grpah'"):
        trainkit.Trainer(
            model, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu", ddp_kwargs={"static_grpah": 1}
        )


def test_sync_batchnorm_on_the_cpu_is_refused_with_the_fix() -> None:
    ctx = DistributedContext(rank=0, world_size=2)  # raises before any collective: no process group needed
    with pytest.raises(ValueError, match=r"`sync_batchnorm=True` needs CUDA.*`sync_batchnorm=False`"):
        ctx.wrap_model(nn.BatchNorm2d(2), torch.device("cpu"), sync_batchnorm=True)


def test_file_on_main_needs_a_filesystem_every_rank_shares(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = DistributedContext(rank=1, world_size=2)
    rank0_sees_it = torch.tensor([1.0, 1.0], dtype=torch.float64)  # rank 0's [file on main, file here]
    monkeypatch.setattr(ctx, "all_reduce_sum", lambda t: t + rank0_sees_it)
    with pytest.raises(
        CheckpointError, match=r"exists on rank 0 but 1 of 2 ranks cannot read it.*filesystem that all nodes share"
    ):
        ctx.file_on_main(tmp_path / "last.pt", torch.device("cpu"))
    (tmp_path / "last.pt").write_bytes(b"x")
    assert ctx.file_on_main(tmp_path / "last.pt", torch.device("cpu")) is True
    monkeypatch.setattr(ctx, "all_reduce_sum", lambda t: t)  # rank 0 does not see it: nobody resumes
    assert ctx.file_on_main(tmp_path / "last.pt", torch.device("cpu")) is False


def test_epoch_state_of_picks_this_ranks_sums_or_restarts_the_epoch() -> None:
    ckpt = {"world_size": 2, "epoch_state": {"ranks": [{"samples": 4}, {"samples": 6}]}}
    assert DistributedContext(rank=1, world_size=2).epoch_state_of(ckpt) == {"samples": 6}
    with pytest.warns(UserWarning, match=r"written mid-epoch by 2 process\(es\) and this run has 1.*restarts"):
        assert DistributedContext.single().epoch_state_of(ckpt) is None
    with pytest.warns(UserWarning, match=r"by 1 process\(es\) and this run has 2"):
        assert DistributedContext(rank=0, world_size=2).epoch_state_of({"epoch_state": {"samples": 3}}) is None


# ----------------------------------------------------------------------------- pieces of the Trainer (fast)


def test_evaluate_joins_the_reduction_on_a_rank_with_an_empty_shard() -> None:
    calls = []

    def other_rank_sums(total: torch.Tensor) -> torch.Tensor:  # the other rank saw 2 samples with loss sum 3
        calls.append(total.clone())  # [loss sum, samples, has loss, metrics fed, non-finite batches]
        return total + torch.tensor([3.0, 2.0, 1.0, 0.0, 0.0], dtype=total.dtype)

    model = nn.Linear(2, 2)
    assert evaluate(model, [], nn.CrossEntropyLoss(), reduce=other_rank_sums) == {"loss": 1.5}
    assert len(calls) == 1 and calls[0].tolist() == [0.0, 0.0, 0.0, 0.0, 0.0]
    assert evaluate(model, [], nn.CrossEntropyLoss(), reduce=lambda t: t) == {}


def _batches(n: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 2, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(n)]


def _linear_trainer(run_dir: Path, callbacks: list[Callback] | None = None) -> trainkit.Trainer:
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kwargs = {"device": "cpu", "progress": False, "seed": 0}
    return trainkit.Trainer(model, opt, nn.CrossEntropyLoss(), run_dir=run_dir, callbacks=callbacks, **kwargs)


def test_resume_auto_starts_fresh_then_resumes_from_last_pt(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = DataLoader(TensorDataset(*map(torch.cat, zip(*_batches(), strict=True))), batch_size=4, shuffle=True)
    whole = _linear_trainer(tmp_path / "whole")
    whole.fit(data, epochs=3)
    first = _linear_trainer(tmp_path / "run")
    assert len(first.fit(data, epochs=2, resume="auto")) == 2  # no last.pt yet: a fresh, seeded start
    assert "resumed from" not in capsys.readouterr().out
    again = _linear_trainer(tmp_path / "run")
    history = again.fit(data, epochs=3, resume="auto")
    assert "resumed from" in capsys.readouterr().out
    assert [row["epoch"] for row in history] == [1, 2, 3] and history == whole.history
    assert all(torch.equal(a, b) for a, b in zip(again.module.parameters(), whole.module.parameters(), strict=True))
    with pytest.raises(ValueError, match=r"`resume='auto'` needs `run_dir`"):
        _linear_trainer(None).fit(data, epochs=1, resume="auto")


def test_mid_epoch_checkpoint_from_another_world_size_restarts_the_epoch(tmp_path: Path) -> None:
    trainer = _linear_trainer(tmp_path / "run", callbacks=[ModelCheckpoint(every_n_steps=4)])
    trainer.fit(_batches(6), epochs=1)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["world_size"] == 1 and ckpt["batch_idx"] == 0  # the epoch-end save came last
    # The same file as if 2 ranks had written it 3 batches into the epoch.
    mid_epoch = {**ckpt, "epoch": 0, "batch_idx": 3, "world_size": 2, "epoch_state": {"ranks": [{}, {}]}}
    path = trainkit.save_checkpoint(tmp_path / "other.pt", mid_epoch)
    resumed = _linear_trainer(tmp_path / "resumed")
    with pytest.warns(UserWarning, match=r"written mid-epoch by 2 process\(es\) and this run has 1"):
        resumed.load_checkpoint(path)
    assert resumed.state.batch_idx == 0 and resumed.state.samples == 0
