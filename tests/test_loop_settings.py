"""The loop's typed settings and the values a run derives from its options: the rate after
lr_scale (applied once), the schedule that runs with a schedule-free optimizer, the run's
length; the trained-weights strategy chosen once; train/ asking no Tune module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from st_ray.config.options import OPTIONS
from st_ray.train.lr_schedules import schedule_scheduler
from st_ray.train.settings import LoopSettings, derive
from st_ray.train.trainable import FullTrainable, LoraTrainable, LycorisTrainable, trainable_for

DEFAULTS = {o.name: o.default for o in OPTIONS}


def _run_schedule(options: dict, world_size: int, steps: int) -> tuple[list[float], object]:
    derived = derive(options, world_size=world_size, steps_per_epoch=steps)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=derived.learning_rate)
    scheduler = schedule_scheduler(optimizer, derived.schedule, derived.total_steps)
    rates = []
    for _ in range(derived.total_steps + 1):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates, derived


def test_lr_scale_is_applied_once_and_the_schedule_ends_at_lr_end() -> None:
    options = {**DEFAULTS, "learning_rate": 1e-4, "lr_scale": True, "train_batch_size": 2}
    options |= {"gradient_accumulation_steps": 2, "lr_scheduler": "polynomial"}
    options |= {"lr_end": 1e-5, "lr_warmup_steps": 0, "lr_power": 1.0, "max_train_steps": 10}
    rates, derived = _run_schedule(options, world_size=2, steps=5)
    assert derived.learning_rate == pytest.approx(8e-4)  # 1e-4 x (2 workers x 2 x 2)
    assert derived.effective_batch_size == 8
    assert rates[0] == pytest.approx(8e-4) and rates[-1] == pytest.approx(1e-5)
    assert options["learning_rate"] == 1e-4  # the options stay as configured
    assert derived.as_dict() == {
        "world_size": 2,
        "learning_rate": pytest.approx(8e-4),
        "lr_scheduler": "polynomial",
        "lr_warmup_steps": 0,
        "effective_batch_size": 8,
        "steps_per_epoch": 5,
        "total_steps": 10,
        "num_epochs": 2,
    }


def test_schedule_free_optimizer_runs_a_constant_schedule() -> None:
    options = {**DEFAULTS, "optimizer": "adamw_schedulefree", "lr_scheduler": "cosine"}
    options |= {"lr_warmup_steps": 7, "num_train_epochs": 3, "max_train_steps": 0}
    derived = derive(options, world_size=1, steps_per_epoch=4)
    assert (derived.schedule.name, derived.schedule.warmup_steps) == ("constant", 0)
    assert (derived.total_steps, derived.num_epochs) == (12, 3)
    assert options["lr_scheduler"] == "cosine" and options["lr_warmup_steps"] == 7


def test_a_schedule_simpletuner_rejects_is_refused() -> None:
    options = {**DEFAULTS, "lr_scheduler": "cosine_with_restarts", "lr_warmup_steps": 0}
    with pytest.raises(ValueError, match="lr_warmup_steps"):
        derive(options, world_size=1, steps_per_epoch=4)


def test_loop_settings_coerce_unset_values_once() -> None:
    options = {**DEFAULTS, "gradient_accumulation_steps": None, "checkpoint_step_interval": None}
    options |= {"caption_dropout_probability": None, "max_grad_norm": 2, "seed": None}
    options |= {"grad_clip_method": "value", "seed_for_each_device": True}
    loop = LoopSettings.from_options(options)
    assert (loop.grad_accumulation, loop.checkpoint_steps, loop.caption_dropout) == (1, 0, 0.0)
    assert (loop.max_grad_norm, loop.clip_by_value, loop.seed) == (2.0, True, 0)
    assert loop.rank_seed(5, 0) == 5 and loop.rank_seed(5, 1) != 5
    assert (
        LoopSettings.from_options({**options, "seed_for_each_device": False}).rank_seed(5, 1) == 5
    )
    # SimpleTuner leaves these optimizers' gradients unclipped whatever max_grad_norm says
    assert LoopSettings.from_options({**options, "optimizer": "prodigy"}).max_grad_norm == 0.0


class _Plan:
    def __init__(self, **options) -> None:
        from types import SimpleNamespace

        self.options = {**DEFAULTS, **options}
        self.family = SimpleNamespace(name="sd1x", denoiser="unet")
        self.config = SimpleNamespace(config_path=Path("/configs/run.json"))


def test_the_trained_weights_strategy_is_chosen_once() -> None:
    assert isinstance(trainable_for(_Plan(model_type="full")), FullTrainable)
    lora = trainable_for(_Plan(model_type="lora", lora_type="standard"))
    assert isinstance(lora, LoraTrainable) and lora.model_type == "lora"
    lycoris = trainable_for(_Plan(model_type="lora", lora_type="lycoris"))
    assert isinstance(lycoris, LycorisTrainable) and lycoris.config_dir == Path("/configs")


def test_train_package_imports_nothing_of_tune() -> None:
    root = Path(__file__).resolve().parents[1] / "st_ray" / "train"
    offenders = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("st_ray.tune")]
    assert offenders == []
