"""The EMA of the trained weights: the update and its decay warm-up against hand computation,
the update interval, placement, swapping in for validation, and checkpoint state."""

from __future__ import annotations

import pytest
import torch

from st_ray.train.ema import EMAModel, ema_decay_at, trainable_parameters


def _params(*values: float, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {
        "a": torch.nn.Parameter(torch.full((2, 3), values[0], dtype=dtype)),
        "b": torch.nn.Parameter(torch.full((4,), values[1], dtype=dtype)),
    }


def _set(params: dict[str, torch.Tensor], a: float, b: float) -> None:
    with torch.no_grad():
        params["a"].fill_(a)
        params["b"].fill_(b)


def _values(ema: EMAModel) -> tuple[float, float]:
    a, b = ema.shadow["a"], ema.shadow["b"]
    assert (a == a.flatten()[0]).all() and (b == b.flatten()[0]).all()
    return a.flatten()[0].item(), b.flatten()[0].item()


def test_decay_warm_up_follows_simpletuner() -> None:
    assert ema_decay_at(1, 0.995) == 0.0  # the first update copies the weights
    assert ema_decay_at(2, 0.995) == pytest.approx(2 / 11)
    assert ema_decay_at(11, 0.995) == pytest.approx(11 / 20)
    assert ema_decay_at(1790, 0.995) == pytest.approx(1790 / 1799)
    assert ema_decay_at(1791, 0.995) == 0.995  # (1 + n) / (10 + n) reaches 0.995 at n = 1790
    assert ema_decay_at(10**6, 0.995) == 0.995
    assert ema_decay_at(1, 0.9, warmup=False) == 0.9


@pytest.mark.parametrize("foreach", [True, False])
def test_decay_half_over_three_updates(foreach: bool) -> None:
    params = _params(1.0, -2.0)
    ema = EMAModel(params, decay=0.5, warmup=False, foreach=foreach)
    # By hand, shadow <- (shadow + param) / 2: a 1 -> 2 -> 3.5 -> 1.25, b -2 -> 0 -> 0 -> 2.
    steps = [((3.0, 2.0), (2.0, 0.0)), ((5.0, 0.0), (3.5, 0.0)), ((-1.0, 4.0), (1.25, 2.0))]
    for step, ((a, b), expected) in enumerate(steps, start=1):
        _set(params, a, b)
        assert ema.step(step)
        assert _values(ema) == expected


def test_warm_up_decay_in_the_update() -> None:
    params = _params(0.0, 0.0)
    ema = EMAModel(params, decay=0.5)
    _set(params, 4.0, 4.0)
    ema.step(1)  # decay 0: a copy
    assert _values(ema) == (4.0, 4.0)
    _set(params, 15.0, 15.0)
    ema.step(2)  # decay 2/11: 2/11 * 4 + 9/11 * 15 = 13
    assert _values(ema) == pytest.approx((13.0, 13.0))
    _set(params, 1.0, 1.0)
    ema.step(3)  # decay 3/12: 13/4 + 3/4
    assert _values(ema) == pytest.approx((4.0, 4.0))


def test_update_interval_counts_optimizer_steps() -> None:
    params = _params(0.0, 0.0)
    ema = EMAModel(params, decay=0.5, update_interval=3, warmup=False)
    _set(params, 8.0, 8.0)
    assert not ema.step(1) and not ema.step(2)
    assert _values(ema) == (0.0, 0.0)
    assert ema.step(3)
    assert _values(ema) == (4.0, 4.0) and ema.last_step == 3
    assert not ema.step(4) and ema.step(6)
    assert _values(ema) == (6.0, 6.0)
    # With warm-up the decay is that of the optimizer step, not of the update count.
    warm = EMAModel(_params(0.0, 0.0), decay=0.99, update_interval=10)
    warm.params["a"].data.fill_(19.0)
    warm.step(10)  # decay 10/19
    assert warm.shadow["a"][0, 0].item() == pytest.approx(9.0)


def test_swap_in_for_validation_restores_the_trained_weights_exactly() -> None:
    params = _params(0.0, 0.0, dtype=torch.bfloat16)
    ema = EMAModel(params, decay=0.5, warmup=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.randn(p.shape, generator=generator))
    ema.step(1)
    trained = {n: p.detach().clone() for n, p in params.items()}
    with ema.swapped_in():
        for name, p in params.items():
            assert torch.equal(p, ema.shadow[name].to(torch.bfloat16))
            assert not torch.equal(p, trained[name])
    for name, p in params.items():
        assert torch.equal(p, trained[name])
    with pytest.raises(RuntimeError, match="validation failed"), ema.swapped_in():
        raise RuntimeError("validation failed")
    for name, p in params.items():
        assert torch.equal(p, trained[name])


def test_copy_to_other_parameters() -> None:
    params = _params(2.0, 3.0)
    ema = EMAModel(params, decay=0.9)
    other = _params(0.0, 0.0, dtype=torch.float16)
    ema.copy_to(other)
    assert (
        other["a"].dtype == torch.float16
        and (other["a"] == 2.0).all()
        and (other["b"] == 3.0).all()
    )
    with pytest.raises(KeyError, match="'b'"):
        ema.copy_to({"a": other["a"]})


def test_placement_and_dtype_on_cpu() -> None:
    params = _params(1.0, 1.0, dtype=torch.bfloat16)
    for device, cpu_only in (("cpu", False), ("accelerator", False), ("accelerator", True)):
        ema = EMAModel(params, decay=0.9, device=device, cpu_only=cpu_only)
        assert ema.device == ("cpu" if cpu_only else device)
        for name, shadow in ema.shadow.items():
            assert shadow.device == params[name].device == torch.device("cpu")
            assert shadow.dtype == torch.float32  # a bf16 average would stall near decay 1
            assert shadow.data_ptr() != params[name].data_ptr()


def test_from_options() -> None:
    options = {
        "ema_decay": 0.99,
        "ema_update_interval": 5,
        "ema_device": "accelerator",
        "ema_cpu_only": True,
        "ema_foreach_disable": True,
    }
    ema = EMAModel.from_options(_params(1.0, 1.0), options)
    assert (ema.decay, ema.update_interval, ema.device, ema.foreach) == (0.99, 5, "cpu", False)
    assert ema.warmup


def test_a_list_of_parameters_is_named_by_position() -> None:
    params = list(_params(1.0, 2.0).values())
    options = {
        "ema_decay": 0.5,
        "ema_update_interval": 1,
        "ema_device": "accelerator",
        "ema_cpu_only": False,
        "ema_foreach_disable": False,
    }
    ema = EMAModel.from_options(params, options, torch.device("cpu"))
    assert list(ema.shadow) == ["0", "1"] and ema.params["1"] is params[1]
    assert ema.shadow["1"].device == torch.device("cpu")


def test_state_dict_round_trip() -> None:
    params = _params(1.0, 2.0)
    ema = EMAModel(params, decay=0.5, warmup=False)
    _set(params, 3.0, 4.0)
    ema.step(1)
    state = ema.state_dict()
    assert state["last_step"] == 1 and set(state["shadow"]) == {"a", "b"}

    restored = EMAModel(_params(0.0, 0.0), decay=0.5, warmup=False)
    restored.load_state_dict(state)
    assert _values(restored) == (2.0, 3.0) and restored.last_step == 1
    _set(params, 3.0, 4.0)
    assert state["shadow"]["a"].data_ptr() != ema.shadow["a"].data_ptr()  # a copy, not the live one

    with pytest.raises(ValueError, match="unexpected \\['c'\\], missing \\['b'\\]"):
        restored.load_state_dict({"shadow": {"a": state["shadow"]["a"], "c": torch.zeros(4)}})
    with pytest.raises(ValueError, match="'b' has shape \\(5,\\), the parameter \\(4,\\)"):
        restored.load_state_dict({"shadow": {"a": state["shadow"]["a"], "b": torch.zeros(5)}})


def test_trainable_parameters_of_a_lora_like_module() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    module[0].requires_grad_(False)
    assert list(trainable_parameters(module)) == ["1.weight", "1.bias"]


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="ema_device must be 'cpu' or 'accelerator'"):
        EMAModel({}, decay=0.9, device="cuda")
    with pytest.raises(ValueError, match="ema_update_interval must be >= 1"):
        EMAModel({}, decay=0.9, update_interval=0)


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("device", "cpu_only"), [("cpu", False), ("accelerator", False), ("cpu", True)]
)
def test_placement_with_cuda_parameters(device: str, cpu_only: bool) -> None:
    params = {"w": torch.nn.Parameter(torch.ones(8, device="cuda"))}
    ema = EMAModel(params, decay=0.5, device=device, cpu_only=cpu_only, warmup=False)
    home = (
        torch.device("cuda", torch.cuda.current_device())
        if device == "accelerator"
        else torch.device("cpu")
    )
    assert ema.shadow["w"].device == home
    with torch.no_grad():
        params["w"].fill_(3.0)
    ema.step(1)
    assert ema.shadow["w"].device == home and (ema.shadow["w"] == 2.0).all()
    with ema.swapped_in():
        assert (params["w"] == 2.0).all()
    assert (params["w"] == 3.0).all()
