"""Fine-tuning: the encoder found in each family, its own learning rate, frozen for the first epochs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import trainkit
from trainkit.callbacks import Callback, FreezeEncoder
from trainkit.models import create_model, find_encoder, param_groups

TINY_SMP = {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 4]}


@pytest.mark.parametrize(
    ("name", "options", "attribute"),
    [
        ("smp:Unet", TINY_SMP, "encoder"),
        ("torchvision:lraspp_mobilenet_v3_large", {}, "backbone"),
        ("unet", {"base_channels": 4, "depth": 2}, "encoder"),
    ],
)
def test_param_groups_split_encoder_and_the_rest_at_their_rates(name: str, options: dict, attribute: str) -> None:
    model = create_model(name, num_classes=2, **options)
    groups = param_groups(model, lr=1e-3, encoder_lr=1e-4, weight_decay=0.01)
    encoder_params = list(getattr(model, attribute).parameters())
    assert [g["name"] for g in groups] == ["decoder", "encoder"]
    assert groups[1]["params"] == encoder_params and groups[1]["lr"] == 1e-4
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    assert groups[0]["lr"] == 1e-3 and groups[0]["weight_decay"] == groups[1]["weight_decay"] == 0.01
    optimizer = torch.optim.AdamW(groups)  # the groups are what optimizers take
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-4]


def test_find_encoder_looks_through_wrappers_and_says_what_it_looked_for() -> None:
    model = create_model("unet", num_classes=2, base_channels=4, depth=2)

    class Wrapper(nn.Module):  # as DistributedDataParallel holds the model
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    assert find_encoder(Wrapper(model)) is model.encoder
    with pytest.raises(ValueError, match=r"found no encoder in Sequential: it has no `\.encoder` \(smp, trainkit's "
                                         r"UNet\) or `\.backbone` \(torchvision\) submodule; pass the pretrained part "
                                         r"yourself, e\.g\. `encoder=model\.features`"):  # fmt: skip
        param_groups(nn.Sequential(nn.Conv2d(3, 2, 1)), lr=1e-3, encoder_lr=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"lr": 1e-3, "encoder_lr": 0.0}, r"`encoder_lr` must be a finite number > 0, got 0\.0"),
        ({"lr": float("nan"), "encoder_lr": 1e-4}, r"`lr` must be a finite number > 0, got nan"),
        ({"lr": 1e-3, "encoder_lr": 1e-4, "encoder": nn.Conv2d(1, 1, 1)},
         r"the encoder's parameters are not the model's .*: pass a submodule of the model as `encoder`"),
    ],
)  # fmt: skip
def test_param_groups_refuse_bad_rates_and_foreign_encoders(kwargs: dict, expected: str) -> None:
    model = create_model("unet", num_classes=2, base_channels=4, depth=2)
    with pytest.raises(ValueError, match=expected):
        param_groups(model, **kwargs)


def test_freeze_encoder_rejects_a_negative_count() -> None:
    with pytest.raises(ValueError, match=r"`epochs` must be an int >= 0 \(the epochs the encoder stays frozen\)"):
        FreezeEncoder(epochs=-1)


class _EncoderSnapshots(Callback):
    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []
        self.trainable: list[bool] = []

    def on_epoch_end(self, trainer: trainkit.Trainer, logs: dict[str, float]) -> None:
        encoder = find_encoder(trainer.module)
        self.weights.append(torch.cat([p.detach().flatten() for p in encoder.parameters()]).clone())
        self.trainable.append(all(p.requires_grad for p in encoder.parameters()))


def _fit(epochs: int, freeze: int, run_dir: Path | None = None, resume: str | None = None) -> _EncoderSnapshots:
    torch.manual_seed(0)
    model = create_model("unet", num_classes=2, base_channels=4, depth=2)
    before = torch.cat([p.detach().flatten() for p in model.encoder.parameters()]).clone()
    data = [(torch.randn(4, 3, 16, 16), torch.randint(0, 2, (4, 16, 16))) for _ in range(3)]
    snapshots = _EncoderSnapshots()
    snapshots.weights.append(before)
    trainer = trainkit.Trainer(
        model, torch.optim.AdamW(param_groups(model, lr=1e-2, encoder_lr=1e-3)), nn.CrossEntropyLoss(),
        callbacks=[FreezeEncoder(epochs=freeze), snapshots], device="cpu", progress=False, amp=False, seed=0,
        run_dir=run_dir,
    )  # fmt: skip
    trainer.fit(data, epochs=epochs, resume=resume)
    assert all(p.requires_grad for p in model.parameters())  # fit leaves the encoder trainable
    return snapshots


def test_the_encoder_stays_fixed_while_frozen_and_trains_after(capsys: pytest.CaptureFixture[str]) -> None:
    snapshots = _fit(epochs=3, freeze=2)
    start, epoch1, epoch2, epoch3 = snapshots.weights
    assert torch.equal(start, epoch1) and torch.equal(epoch1, epoch2)  # no gradient, no weight decay
    assert not torch.equal(epoch2, epoch3)
    assert snapshots.trainable == [False, False, True]


def test_a_resumed_run_freezes_as_the_uninterrupted_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = _fit(epochs=3, freeze=2)
    _fit(epochs=1, freeze=2, run_dir=tmp_path / "run")
    resumed = _fit(epochs=3, freeze=2, run_dir=tmp_path / "run", resume="last")
    assert resumed.trainable == [False, True]  # epochs 2 and 3
    torch.testing.assert_close(resumed.weights[-1], whole.weights[-1], rtol=0, atol=0)
