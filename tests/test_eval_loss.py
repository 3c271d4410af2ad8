"""The evaluation loss: fixed samples, noise levels and noise, so that runs with different
training settings are measured on the same quantity; scheduled and reported like the loss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from st_ray import zoo
from st_ray.config.errors import ConfigError
from st_ray.device import pick_device
from st_ray.plan import build_plan, format_plan
from st_ray.train import eval_loss
from st_ray.train.build import build_run
from st_ray.train.context import WorkerContext
from st_ray.train.trainer import fit_in_process
from tests.test_training import _write_config


def _plan(config: Path, out: Path, *extra: str):
    return build_plan(config, ["--output_dir", str(out), *extra], {})


def test_eval_levels_spread_over_the_schedule() -> None:
    steps, sigmas = eval_loss.eval_levels(5, flow_matching=False, num_train_timesteps=1000)
    assert sigmas is None and steps.tolist() == [0, 250, 500, 749, 999]
    steps, sigmas = eval_loss.eval_levels(3, flow_matching=True, num_train_timesteps=1000)
    assert torch.allclose(sigmas, torch.tensor([0.25, 0.5, 0.75]))
    assert torch.allclose(steps, torch.tensor([250.0, 500.0, 750.0]))


def test_eval_interval_from_steps_and_epochs() -> None:
    assert eval_loss.step_interval({}, 10) == 0  # only at the last step
    assert eval_loss.step_interval({"eval_steps_interval": 4}, 10) == 4
    assert eval_loss.step_interval({"eval_epoch_interval": 0.5}, 10) == 5
    assert eval_loss.step_interval({"eval_epoch_interval": 0.01}, 10) == 1
    assert eval_loss.step_interval({"eval_steps_interval": 7, "eval_epoch_interval": 0.5}, 10) == 5


def test_eval_options_need_an_eval_dataset(tmp_path: Path, zoo_root, example_dataset) -> None:
    model = zoo.ensure("sd1x", zoo_root)
    config = _write_config(tmp_path, model, example_dataset.images_dir, "sd1x")
    with pytest.raises(ConfigError) as err:
        build_plan(config, ["--eval_steps_interval", "2", "--eval_dataset_id", "photos"], {})
    text = err.value.render()
    assert "eval_dataset_id: 'photos' is not an enabled dataset" in text
    assert "eval_steps_interval" not in text  # SimpleTuner runs it: a note, not an error
    plan = build_plan(config, ["--eval_steps_interval", "2"], {})
    (note,) = [n for n in plan.notes if "eval_steps_interval" in n]
    assert "command line: eval_steps_interval schedules the evaluation loss" in note
    assert "none is computed" in note
    assert f"  note: {note}" in format_plan(plan)


def test_eval_loss_is_the_same_quantity_for_every_training_setting(
    eval_setup, tmp_path: Path
) -> None:
    """Untrained LoRA weights equal the base model: every seed, loss weighting and rate must
    then give the same eval loss, and it is a real, finite number."""
    config = eval_setup.config
    values = []
    for extra in (
        (),
        ("--seed", "99", "--snr_gamma", "5", "--learning_rate", "1e-2", "--lora_rank", "8"),
        ("--train_batch_size", "1"),
    ):
        plan = _plan(config, tmp_path / "out", *extra)
        ctx = WorkerContext(0, 1, pick_device(), lambda m, d: None, None)
        run = build_run(plan, ctx, seed=int(plan.options["seed"]))
        assert [d.dataset_id for d in run.datasets] == ["photos"]  # eval images: not trained
        evaluator = eval_loss.EvalLoss.from_run(run)
        assert evaluator is not None
        assert sum(len(b.batch["latents"]) for b in evaluator.batches) == 4  # num_eval_images
        first = evaluator.compute(run)
        assert evaluator.compute(run) == first  # deterministic
        values.append(first["eval_loss"])
    assert math.isfinite(values[0]) and values[0] > 0
    assert values == pytest.approx([values[0]] * 3, rel=1e-5)


def test_eval_loss_reported_on_schedule_to_ray_and_mlflow(eval_setup, tmp_path: Path) -> None:
    config = eval_setup.config
    plan = _plan(
        config,
        tmp_path / "out",
        "--max_train_steps",
        "6",
        "--eval_steps_interval",
        "3",
        "--learning_rate",
        "3e-3",
        "--caption_dropout_probability",
        "0",
    )
    progress, reported = fit_in_process(plan, tmp_path / "ckpt")
    assert progress.global_step == 6
    with_eval = [r["step"] for r in reported if "eval_loss" in r]
    assert with_eval == [3, 6]
    assert all(math.isfinite(r["eval_loss"]) for r in reported if "eval_loss" in r)

    import mlflow

    mlflow.set_tracking_uri(plan.tracking_uri)
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "eval_loss")
    assert [m.step for m in history] == [3, 6]
