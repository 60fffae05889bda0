"""Tests for trainkit.engine.precision: modes, auto on CPU, errors, the fp16 GradScaler path on CPU, state."""

from __future__ import annotations

import warnings

import pytest
import torch

from trainkit.engine.precision import MixedPrecision


def _fp16_cpu(**kwargs) -> MixedPrecision:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the "fp16 on CPU is slow" warning
        return MixedPrecision("fp16", device="cpu", **kwargs)


@pytest.mark.parametrize(
    ("mode", "resolved", "dtype"),
    [(False, "fp32", None), (None, "fp32", None), ("fp32", "fp32", None), ("bf16", "bf16", torch.bfloat16)],
)
def test_modes_resolve_to_a_precision_and_dtype(mode, resolved, dtype) -> None:
    mp = MixedPrecision(mode, device="cpu")
    assert mp.mode == resolved and mp.dtype == dtype
    assert mp.enabled is (dtype is not None)
    assert not mp.scaler.is_enabled()


@pytest.mark.parametrize("mode", ["auto", True])
@pytest.mark.parametrize("amx", [False, True])
def test_auto_on_the_cpu_is_bf16_with_amx_tiles_and_fp32_without(mode, amx, monkeypatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    mp = MixedPrecision(mode, device=torch.device("cpu"))
    expected = "bf16" if amx else "fp32"
    assert mp.mode == expected and mp.enabled is amx
    assert mp.dtype == (torch.bfloat16 if amx else None)
    assert repr(mp) == f"MixedPrecision(mode='{expected}', device='cpu')"


def test_cpu_has_amx_is_false_when_torch_has_no_probe_or_it_fails(monkeypatch) -> None:
    from trainkit.engine.precision import cpu_has_amx

    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert cpu_has_amx() is False

    def broken() -> bool:
        raise RuntimeError("no cpuinfo")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert cpu_has_amx() is False


@pytest.mark.parametrize("bad", ["fp8", "float16", "half", 16])
def test_an_unknown_mode_names_the_choices(bad) -> None:
    with pytest.raises(ValueError, match=rf"`amp={bad!r}` is not a precision mode; use one of 'auto', 'fp16', 'bf16'"):
        MixedPrecision(bad, device="cpu")


def test_fp16_on_cpu_warns_and_turns_the_scaler_on() -> None:
    with pytest.warns(UserWarning, match=r"`amp='fp16'` on the CPU is slow.*amp='bf16'"):
        mp = MixedPrecision("fp16", device="cpu")
    assert mp.dtype == torch.float16 and mp.scaler.is_enabled()


def test_bf16_autocast_runs_linear_layers_in_bf16_and_fp32_does_not() -> None:
    layer = torch.nn.Linear(3, 2)
    with MixedPrecision("bf16", device="cpu").autocast():
        low = layer(torch.ones(1, 3))
    with MixedPrecision(False, device="cpu").autocast():
        full = layer(torch.ones(1, 3))
    assert low.dtype == torch.bfloat16 and full.dtype == torch.float32
    torch.testing.assert_close(low.float(), full, atol=2e-2, rtol=2e-2)


def test_fp32_step_is_a_plain_optimizer_step() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = torch.optim.SGD([p], lr=0.5)
    mp = MixedPrecision(False, device="cpu")
    mp.backward((p * torch.tensor([2.0, 4.0])).sum())
    mp.unscale_(opt)  # a no-op without a scaler
    assert mp.step(opt) is True
    mp.update()
    assert torch.equal(p.detach(), torch.tensor([0.0, 0.0]))
    assert mp.state_dict() == {}


def test_fp16_scaler_skips_an_inf_step_and_halves_the_scale() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = torch.optim.SGD([p], lr=0.5)
    mp = _fp16_cpu(init_scale=1024.0)
    mp.backward(p.sum() * float("inf"))
    assert mp.step(opt) is False
    mp.update()
    assert torch.equal(p.detach(), torch.tensor([1.0, 2.0]))  # untouched
    assert mp.scaler.get_scale() == 512.0

    opt.zero_grad(set_to_none=True)
    mp.backward((p * torch.tensor([2.0, 4.0])).sum())
    assert torch.equal(p.grad, torch.tensor([1024.0, 2048.0]))  # the gradients carry the loss scale, 512
    mp.unscale_(opt)
    assert torch.equal(p.grad, torch.tensor([2.0, 4.0]))  # true units, ready for clipping
    assert mp.step(opt) is True
    mp.update()
    assert torch.equal(p.detach(), torch.tensor([0.0, 0.0]))
    assert mp.scaler.get_scale() == 512.0  # no growth before `growth_interval` good steps


def test_state_dict_round_trip_restores_the_scale() -> None:
    mp = _fp16_cpu(init_scale=256.0)
    p = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([p], lr=0.1)
    mp.backward(p.sum() * float("nan"))
    mp.step(opt)
    mp.update()
    state = mp.state_dict()
    assert state["scale"] == 128.0
    other = _fp16_cpu()
    other.load_state_dict(state)
    assert other.scaler.get_scale() == 128.0
    assert other.state_dict() == state
    plain = MixedPrecision(False, device="cpu")
    plain.load_state_dict({})  # an fp32 run's checkpoint holds no scaler state
    assert plain.state_dict() == {}
