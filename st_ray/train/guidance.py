"""Guidance modes for validation renders, SimpleTuner's options mapped onto the diffusers
pipelines that have them:

* skip-layer guidance (``validation_guidance_skip_layers``, ``_start``, ``_stop``,
  ``validation_guidance_skip_scale``): the pipeline's ``skip_guidance_layers`` with
  ``skip_layer_guidance_start/stop/scale``;
* true CFG for guidance-distilled models (``validation_guidance_real`` > 1): the pipeline's
  ``true_cfg_scale`` with the validation negative prompt, and
  ``validation_no_cfg_until_timestep``: the first N sampling steps without it.

A family whose pipeline has neither is refused before training starts.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GuidanceModes:
    skip_layers: tuple[int, ...] | None = None
    skip_start: float = 0.01
    skip_stop: float = 0.2
    skip_scale: float = 2.8
    guidance_real: float = 1.0  # > 1: true CFG
    no_cfg_until: int = 2  # sampling steps without true CFG

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> GuidanceModes:
        return cls(
            skip_layers=parse_skip_layers(options.get("validation_guidance_skip_layers")),
            skip_start=float(_or(options.get("validation_guidance_skip_layers_start"), 0.01)),
            skip_stop=float(_or(options.get("validation_guidance_skip_layers_stop"), 0.2)),
            skip_scale=float(_or(options.get("validation_guidance_skip_scale"), 2.8)),
            guidance_real=float(_or(options.get("validation_guidance_real"), 1.0)),
            no_cfg_until=int(_or(options.get("validation_no_cfg_until_timestep"), 2)),
        )

    @property
    def true_cfg(self) -> bool:
        return self.guidance_real > 1.0


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def parse_skip_layers(value: Any) -> tuple[int, ...] | None:
    """validation_guidance_skip_layers: a JSON list of block indices (or its text)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"validation_guidance_skip_layers: {value!r} is not JSON; give a list of "
                "transformer block indices such as [7, 8, 9]"
            ) from err
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ValueError(
            f"validation_guidance_skip_layers: {value!r} is not a list of block indices; give "
            "non-negative integers such as [7, 8, 9]"
        )
    return tuple(value) or None


def check(modes: GuidanceModes, pipeline_class: type, family: str) -> None:
    """Refuse a guidance mode the family's pipeline cannot sample with."""
    accepted = inspect.signature(pipeline_class.__call__).parameters
    if modes.skip_layers and "skip_guidance_layers" not in accepted:
        raise ValueError(
            f"validation_guidance_skip_layers: the {family} pipeline ({pipeline_class.__name__}) "
            "takes no skip_guidance_layers (no skip-layer guidance); unset the option"
        )
    if modes.true_cfg and "true_cfg_scale" not in accepted:
        raise ValueError(
            f"validation_guidance_real {modes.guidance_real:g}: the {family} pipeline "
            f"({pipeline_class.__name__}) takes no true_cfg_scale (true CFG of "
            "guidance-distilled models); leave it at 1.0"
        )


def call_kwargs(modes: GuidanceModes, accepted: Mapping[str, Any], negative: str | None) -> dict:
    """The pipeline arguments for these modes (``accepted``: its __call__ parameters)."""
    kwargs: dict[str, Any] = {}
    if modes.skip_layers and "skip_guidance_layers" in accepted:
        kwargs.update(
            skip_guidance_layers=list(modes.skip_layers),
            skip_layer_guidance_start=modes.skip_start,
            skip_layer_guidance_stop=modes.skip_stop,
            skip_layer_guidance_scale=modes.skip_scale,
        )
    if modes.true_cfg and "true_cfg_scale" in accepted:
        # True CFG is on only with a negative prompt; an empty one is the unconditional.
        kwargs.update(true_cfg_scale=modes.guidance_real, negative_prompt=negative or "")
    return kwargs


@contextlib.contextmanager
def no_cfg_until(denoiser: Any, modes: GuidanceModes) -> Iterator[None]:
    """For one pipeline call with true CFG: the first ``no_cfg_until`` steps unguided.

    The true-CFG pipelines call the denoiser twice per step, conditional then unconditional,
    and mix ``neg + scale * (pos - neg)``. While the step is under the threshold the
    unconditional call hands back the conditional output, so the mix is exactly the
    conditional prediction (the step runs as without CFG)."""
    if not modes.true_cfg or modes.no_cfg_until <= 0:
        yield
        return
    calls = [0]
    last: list[Any] = [None]

    def hook(module: Any, args: Any, output: Any) -> Any:
        step, unconditional = divmod(calls[0], 2)
        calls[0] += 1
        if not unconditional:
            last[0] = output
            return None
        return last[0] if step < modes.no_cfg_until else None

    handle = denoiser.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
