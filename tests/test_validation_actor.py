"""The asynchronous validation runner on a real Ray actor: an actor that dies costs one
validation, training goes on, and the next validation starts a fresh actor. The worker here
has the validation actor's interface but "renders" a text file (the real render is tested
end to end in test_training's two-worker run)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from st_ray.train.validation_actor import BackgroundValidation
from st_ray.train.validation_mode import ValidationPlacement

pytestmark = pytest.mark.usefixtures("ray_local")


class FirstActorDies:
    """Dies in its first render (as if killed or OOM); a later actor renders the weight."""

    def __init__(self, plan, denoiser, eval_every, gpu) -> None:
        self.marker = Path(plan["marker"])

    def render(self, step: int, weights: dict) -> dict:
        if not self.marker.exists():
            self.marker.write_text("died")
            os._exit(1)
        time.sleep(0.5)
        files = {f"step-{step}.txt": str(float(weights["weight"].sum())).encode()}
        return {"step": step, "files": files, "metrics": {"m": step}, "started": 0, "ended": 1}


def test_dead_actor_costs_one_validation_and_the_next_starts_fresh(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.ones_(model.weight)
    logged: list[tuple[int, list[str], dict]] = []
    runner = BackgroundValidation(
        ValidationPlacement("async", "test", num_gpus=0, num_cpus=0),
        {"marker": str(tmp_path / "marker")},  # stands for the plan the worker gets
        model,
        eval_every=0,
        out_dir=tmp_path / "out",
        on_result=lambda step, paths, metrics: logged.append(
            (step, [p.read_text() for p in paths], metrics)
        ),
        worker_class=FirstActorDies,
    )
    assert runner.submit(2) == []  # returns at once; the actor dies rendering it
    assert runner.wait() == [] and runner.actor is None  # lost with a warning, no raise
    with torch.no_grad():
        model.weight.mul_(3)  # training went on
    runner.submit(4)  # a fresh actor, with the weights as they are at step 4
    assert runner.submit(5) == [] and runner.backlog.skipped == [5]  # 4 still pending
    final = runner.submit(6, final=True)  # waits for 4, then renders 6
    runner.close()
    assert [step for step, _, _ in logged] == [4, 6]
    assert logged[0] == (4, ["6.0"], {"m": 4})
    assert [p.name for p in final] == ["step-6.txt"]
    assert (tmp_path / "out" / "validation" / "step-4" / "step-4.txt").read_text() == "6.0"
