"""Learning-rate schedules at hand-computed steps, lr_scale, the LambdaLR built from the options
and its resume from a state dict."""

from __future__ import annotations

import io
import math

import pytest
import torch

from st_ray.config.options import CANONICAL, OPTIONS
from st_ray.train.lr_schedules import (
    SCHEDULERS,
    build_scheduler,
    check_schedule_options,
    lr_multiplier,
    scaled_learning_rate,
    scheduler_name,
)

DEFAULTS = {o.name: o.default for o in OPTIONS}


def m(name: str, step: int, **kwargs: float) -> float:
    args = {"total_steps": 110, "warmup_steps": 10, "power": 1.0, "lr_end_ratio": 0.0} | kwargs
    return lr_multiplier(name, step, **args)


def test_every_catalog_choice_is_implemented() -> None:
    assert set(CANONICAL["lr_scheduler"].choices) == set(SCHEDULERS)


def test_constant_and_constant_with_warmup() -> None:
    assert [m("constant", s) for s in (0, 5, 500)] == [1.0, 1.0, 1.0]
    assert [m("constant_with_warmup", s) for s in (0, 5, 10, 500)] == [0.0, 0.5, 1.0, 1.0]
    # SimpleTuner runs 'constant' with warmup steps as 'constant_with_warmup'
    assert scheduler_name({**DEFAULTS, "lr_scheduler": "constant", "lr_warmup_steps": 10}) == (
        "constant_with_warmup"
    )
    assert scheduler_name({**DEFAULTS, "lr_scheduler": "constant", "lr_warmup_steps": 0}) == (
        "constant"
    )


def test_linear_warms_up_then_decays_to_zero_at_the_end() -> None:
    # W = 10, T = 110: decay over 100 steps
    assert [m("linear", s) for s in (0, 5, 10, 60, 110, 200)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]


def test_polynomial_reaches_lr_end() -> None:
    # power 2, r = 0.1: halfway through the decay 0.1 + 0.9 * 0.5² = 0.325
    values = [m("polynomial", s, power=2.0, lr_end_ratio=0.1) for s in (5, 10, 60, 110, 500)]
    assert values == pytest.approx([0.5, 1.0, 0.325, 0.1, 0.1])
    # power 1 is a straight line from 1 to r
    assert m("polynomial", 35, lr_end_ratio=0.2) == pytest.approx(1 - 0.8 * 0.25)


def test_cosine_is_a_wave_with_lr_warmup_steps_as_half_period() -> None:
    kw = {"warmup_steps": 100}
    assert [m("cosine", s, **kw) for s in (0, 50, 100, 150, 200)] == pytest.approx(
        [1.0, 0.5, 0.0, 0.5, 1.0], abs=1e-12
    )
    # between the learning rate and lr_end: the midpoint is (1 + r) / 2
    assert m("cosine", 50, lr_end_ratio=0.2, **kw) == pytest.approx(0.6)
    # no lr_warmup_steps: SimpleTuner's 1000-step fallback
    assert m("cosine", 500, warmup_steps=0) == pytest.approx(0.5)


def test_sine_starts_halfway_and_peaks_at_half_the_period() -> None:
    kw = {"warmup_steps": 100}
    assert [m("sine", s, **kw) for s in (0, 50, 100, 150, 200)] == pytest.approx(
        [0.5, 1.0, 0.5, 0.0, 0.5], abs=1e-12
    )
    assert m("sine", 150, lr_end_ratio=0.1, **kw) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr_warmup_steps"):
        m("sine", 3, warmup_steps=0)


def test_cosine_with_restarts_restarts_every_cycle() -> None:
    kw = {"warmup_steps": 100}
    values = [m("cosine_with_restarts", s, **kw) for s in (0, 50, 99, 100, 150, 250)]
    near_end = (1 + math.cos(math.pi * 0.99)) / 2
    assert values == pytest.approx([1.0, 0.5, near_end, 1.0, 0.5, 0.5])
    assert m("cosine_with_restarts", 50, lr_end_ratio=0.5, **kw) == pytest.approx(0.75)


def test_unknown_schedule_is_rejected() -> None:
    with pytest.raises(ValueError, match="lr_scheduler 'step'"):
        m("step", 1)


def test_lr_scale() -> None:
    options = {**DEFAULTS, "learning_rate": 1e-4, "gradient_accumulation_steps": 2}
    options["train_batch_size"] = 3
    assert scaled_learning_rate(options, 4) == 1e-4
    assert scaled_learning_rate({**options, "lr_scale_sqrt": True}, 4) == 1e-4
    assert scaled_learning_rate({**options, "lr_scale": True}, 4) == pytest.approx(2.4e-3)
    both = {**options, "lr_scale": True, "lr_scale_sqrt": True}
    assert scaled_learning_rate(both, 4) == pytest.approx(1e-4 * math.sqrt(24))


def _optimizer(*lrs: float) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _run(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])  # the rate this update uses
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def test_built_polynomial_schedule_ends_at_lr_end_for_every_group() -> None:
    options = {**DEFAULTS, "lr_scheduler": "polynomial", "learning_rate": 1e-4, "lr_end": 1e-6}
    options |= {"lr_warmup_steps": 10, "lr_power": 1.0}
    optimizer = _optimizer(1e-4, 5e-5)  # e.g. a text encoder at half the rate
    scheduler = build_scheduler(optimizer, options, total_steps=60, world_size=1)
    lrs = _run(scheduler, 61)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(5e-5) and lrs[10] == pytest.approx(1e-4)
    assert lrs[35] == pytest.approx(1e-6 + (1e-4 - 1e-6) * 0.5)
    assert lrs[60] == pytest.approx(1e-6)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.5e-6)  # same proportion


def test_built_schedule_uses_the_scaled_rate_for_lr_end() -> None:
    options = {**DEFAULTS, "lr_scheduler": "cosine", "learning_rate": 1e-4, "lr_end": 2e-4}
    options |= {"lr_warmup_steps": 4, "lr_scale": True, "train_batch_size": 2}
    lr = scaled_learning_rate(options, world_size=2)  # 4e-4
    scheduler = build_scheduler(_optimizer(lr), options, total_steps=8, world_size=2)
    lrs = _run(scheduler, 5)
    # r = lr_end / 4e-4 = 0.5: top at 4e-4, midpoint 3e-4, floor lr_end itself at step W
    assert [lrs[0], lrs[2], lrs[4]] == pytest.approx([4e-4, 3e-4, 2e-4])


def test_schedule_options_simpletuner_rejects() -> None:
    check_schedule_options(DEFAULTS, world_size=1)
    poly = {**DEFAULTS, "lr_scheduler": "polynomial"}  # default learning_rate == lr_end
    with pytest.raises(ValueError, match="lr_end"):
        check_schedule_options(poly, world_size=1)
    # lr_scale lifts the learning rate above lr_end
    check_schedule_options({**poly, "lr_scale": True}, world_size=2)
    with pytest.raises(ValueError, match="lr_warmup_steps"):
        build_scheduler(
            _optimizer(1e-4),
            {**DEFAULTS, "lr_scheduler": "cosine_with_restarts", "lr_warmup_steps": 0},
            total_steps=10,
            world_size=1,
        )


@pytest.mark.parametrize("name", SCHEDULERS)
def test_resume_from_state_dict_continues_at_the_saved_step(name: str) -> None:
    options = {**DEFAULTS, "lr_scheduler": name, "learning_rate": 1e-3, "lr_end": 1e-5}
    options |= {"lr_warmup_steps": 7, "lr_power": 1.5}
    straight = build_scheduler(_optimizer(1e-3), options, total_steps=40, world_size=1)
    expected = _run(straight, 50)

    first = build_scheduler(_optimizer(1e-3), options, total_steps=40, world_size=1)
    before = _run(first, 23)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # as a checkpoint would hold it
    buffer.seek(0)

    optimizer = _optimizer(1e-3)  # a fresh optimizer whose own state is not restored
    resumed = build_scheduler(optimizer, options, total_steps=40, world_size=1)
    resumed.load_state_dict(torch.load(buffer))  # weights_only: plain data
    assert resumed.last_epoch == 23
    after = _run(resumed, 27)
    assert before + after == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("name", ["constant", "cosine"])
def test_resume_with_a_new_learning_rate_continues_at_the_new_rate(name: str) -> None:
    """A run continued with another learning_rate (noted in the plan) uses it from the
    restored step on, along the same schedule."""
    options = {**DEFAULTS, "lr_scheduler": name, "learning_rate": 1e-3, "lr_end": 1e-5}
    options |= {"lr_warmup_steps": 7}
    first = build_scheduler(_optimizer(1e-3), options, total_steps=40, world_size=1)
    _run(first, 5)
    state = first.state_dict()

    faster = {**options, "learning_rate": 4e-3}
    # The worker's order: build both from the new options, then restore the checkpoint's.
    resumed = build_scheduler(_optimizer(4e-3), faster, total_steps=40, world_size=1)
    resumed.optimizer.load_state_dict(first.optimizer.state_dict())  # holds the old rate
    resumed.load_state_dict(state)
    reference = build_scheduler(_optimizer(4e-3), faster, total_steps=40, world_size=1)
    _run(reference, 5)
    new_rates = _run(resumed, 4)
    assert new_rates == pytest.approx(_run(reference, 4), rel=1e-12, abs=0)
    assert new_rates != pytest.approx(_run(first, 4))  # not the checkpoint's old rate
