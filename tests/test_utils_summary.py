"""Tests for trainkit.utils.summary: parameter counts, the torchinfo table, several inputs, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from trainkit.models import UNet
from trainkit.utils.summary import count_parameters, summary


class TwoInputs(nn.Module):
    """forward(image, extra): records the shapes it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Conv2d(3, 4, 3, padding=1)
        self.extra = nn.Linear(5, 4)
        self.seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        self.seen.append((tuple(image.shape), tuple(extra.shape)))
        return self.image(image).mean(dim=(2, 3)) + self.extra(extra)


def test_count_parameters_splits_trainable_and_frozen() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.BatchNorm1d(2))
    model[0].requires_grad_(False)  # 4*3 + 3 = 15 frozen
    assert count_parameters(model) == {"total": 15 + 8 + 4, "trainable": 8 + 4, "frozen": 15}


def test_count_parameters_counts_shared_weights_once() -> None:
    shared = nn.Linear(3, 3)
    assert count_parameters(nn.Sequential(shared, shared)) == {"total": 12, "trainable": 12, "frozen": 0}


def test_summary_totals_match_count_parameters_and_leave_the_model_as_it_was(capsys) -> None:
    model = UNet(3, 2, base_channels=4, depth=2)
    model.encoder[0].requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = summary(model, (3, 32, 32), batch_size=2, device="cpu", verbose=0)
    counts = count_parameters(model)
    assert stats.total_params == counts["total"] == sum(p.numel() for p in model.parameters())
    assert stats.trainable_params == counts["trainable"] and counts["frozen"] > 0
    assert "UNet" in str(stats) and "[2, 2, 32, 32]" in str(stats)
    assert capsys.readouterr().out == ""
    assert model.training  # mode restored
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics untouched


def test_summary_prints_the_table_when_verbose(capsys) -> None:
    stats = summary(nn.Sequential(nn.Conv2d(1, 2, 3)), (1, 8, 8))
    printed = capsys.readouterr().out
    assert printed.strip() == str(stats).strip()
    assert "Total params: 20" in printed


def test_summary_with_several_inputs_and_dtypes() -> None:
    model = TwoInputs()
    stats = summary(model, [(3, 8, 8), (5,)], batch_size=3, verbose=0)
    assert model.seen == [((3, 3, 8, 8), (3, 5))]
    assert stats.total_params == count_parameters(model)["total"] == 3 * 4 * 9 + 4 + 5 * 4 + 4
    embedding = nn.Embedding(10, 4)
    stats = summary(embedding, (6,), dtypes=[torch.long], verbose=0)
    assert stats.total_params == 40


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (((3, 0, 8),), {}, r"`input_size` must be one sample's size .* got \(3, 0, 8\)"),
        (("3x8x8",), {}, "`input_size` must be one sample's size"),
        (([],), {}, "`input_size` must be one sample's size"),
        (((3, 8, 8),), {"batch_size": 0}, "`batch_size` must be an int >= 1, got 0"),
        (((3, 8, 8),), {"dtypes": [torch.float32, torch.long]}, "1 input size.* but 2 dtype"),
        (((3, 8, 8),), {"verbose": 3}, r"`verbose` must be 0 \(quiet\), 1 \(table\) or 2"),
        (((3, 8, 8),), {"depth": -1}, "`depth` must be an int >= 0, got -1"),
        (((3, 8, 8),), {"device": "gpu0"}, "`device='gpu0'` is not a device PyTorch knows"),
    ],
)
def test_summary_rejects_bad_arguments(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        summary(nn.Conv2d(3, 1, 1), *args, **{"verbose": 0, **kwargs})


def test_importing_summary_does_not_import_torchinfo() -> None:
    code = (
        "import sys\n"
        "import trainkit.utils.summary as s\n"
        "assert 'torchinfo' not in sys.modules\n"
        "import torch.nn as nn\n"
        "s.summary(nn.Linear(2, 2), (2,), verbose=0)\n"
        "assert 'torchinfo' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_summary_on_another_device_gives_the_model_back() -> None:
    model = nn.Conv2d(3, 2, 3)
    stats = summary(model, (3, 8, 8), device="cuda", verbose=0)
    assert stats.total_params == 56 and next(model.parameters()).device.type == "cpu"
    model.cuda()
    summary(model, (3, 8, 8), verbose=0)  # runs on the default device="cpu"
    assert next(model.parameters()).device.type == "cuda"
