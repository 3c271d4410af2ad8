"""A checked Sweep as Ray Tune objects: the parameter space and the early-stopping scheduler."""

from __future__ import annotations

from typing import Any

from st_ray.tune.sweep import Sweep

# ASHA measures time in optimizer steps: trials are compared at the same step, and every
# report of the worker loop carries "step".
TIME_ATTR = "step"


def param_space(sweep: Sweep) -> dict[str, Any]:
    from ray import tune

    make = {
        "choice": lambda v: tune.choice(list(v)),
        "grid": lambda v: tune.grid_search(list(v)),
        "uniform": lambda v: tune.uniform(*v),
        "loguniform": lambda v: tune.loguniform(*v),
        "randint": lambda v: tune.randint(*v),
        "fixed": lambda v: v[0],
    }
    return {d.option: make[d.kind](d.values) for d in sweep.dimensions}


def scheduler(sweep: Sweep, *, max_steps: int, eval_interval: int, board: str) -> Any:
    """ASHA over steps (None for scheduler 'none'). Rungs start at grace_period (default: the
    eval interval, the first step with an eval loss); trials that reach the end finish on
    their own (stop_last_trials off) so their final checkpoint and export complete, and
    stopped trials end themselves at their next report (see st_ray.tune.stopping)."""
    if sweep.scheduler == "none":
        return None
    from st_ray.tune.stopping import GracefulASHA

    return GracefulASHA(
        board=board,
        time_attr=TIME_ATTR,
        max_t=sweep.max_t or max_steps,
        grace_period=sweep.grace_period or max(eval_interval, 1),
        reduction_factor=sweep.reduction_factor,
        stop_last_trials=False,
    )
