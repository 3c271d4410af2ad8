"""What a run's validations render and when: ``ValidationSettings.from_options`` reads the
validation_* options once (prompts, the built-in prompt library, resolutions, seeds);
``is_due`` says when to render. The renderer: ``st_ray.train.validation``."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_ray.config.sources import read_json
from st_ray.models.family import get_family
from st_ray.train.guidance import GuidanceModes

if TYPE_CHECKING:
    from st_ray.plan import Plan

log = logging.getLogger(__name__)


# validation_prompt_library: a small built-in set of test prompts covering the usual failure
# modes (faces, hands, text, composition, texture, lighting).
BUILTIN_PROMPTS = {
    "portrait": "a close-up portrait photo of an elderly fisherman, soft window light",
    "hands": "two hands holding a steaming cup of tea, detailed fingers, shallow depth of field",
    "text": "a wooden shop sign that reads 'OPEN', painted white letters",
    "landscape": "a wide mountain valley at sunrise with a river and pine forest",
    "interior": "a cosy reading room with bookshelves, an armchair and a lamp, evening",
    "animal": "a red fox sitting in fresh snow, looking at the camera",
    "still_life": "a glass bowl of lemons on a marble table, studio photograph",
    "illustration": "a flat vector illustration of a lighthouse on a cliff, pastel colours",
}


@dataclass(frozen=True)
class ValidationSettings:
    """What each validation renders, from the validation_* options."""

    prompts: tuple[tuple[str, str], ...]  # (file-name-safe name, prompt), in render order
    resolutions: tuple[tuple[int, int], ...]  # (width, height) in pixels
    num_images: int
    num_inference_steps: int
    guidance: float
    guidance_rescale: float
    negative_prompt: str | None
    seed: int
    randomize: bool
    seed_source: str  # "cpu" or "gpu": the device of the noise generators
    scheduler: str | None  # validation_noise_scheduler; None keeps the pipeline's own
    step_interval: int | None
    epoch_interval: int | None
    on_startup: bool  # render at step 0 (the base-model benchmark)
    disabled: bool  # validation_disable
    prediction_type: str | None  # the run's prediction_type override, for the sampler
    zero_terminal_snr: bool  # rescale_betas_zero_snr: the sampler must use the same betas
    timestep_spacing: str = "trailing"  # inference_scheduler_timestep_spacing (DDPM samplers)
    guidance_modes: GuidanceModes = GuidanceModes()  # skip-layer guidance, true CFG

    @property
    def enabled(self) -> bool:
        return not self.disabled and bool(self.prompts)

    @classmethod
    def from_options(
        cls,
        options: Mapping[str, Any],
        *,
        train_resolution: float,
        base_dir: Path | None = None,
    ) -> ValidationSettings:
        """``train_resolution`` is the training edge in pixels (see ``training_edge``): the
        square validation size when validation_resolution is unset. ``base_dir`` resolves a
        relative user_prompt_library path (the config file's folder)."""
        granularity = get_family(str(options["model_family"])).pixel_granularity
        text = options.get("validation_resolution")
        if text is None or not str(text).strip():
            edge = _round_to(float(train_resolution), granularity)
            resolutions: tuple[tuple[int, int], ...] = ((edge, edge),)
        else:
            resolutions = parse_resolutions(str(text), granularity)
        seed = options.get("validation_seed")
        if seed is None:
            seed = options.get("seed") or 0
        step_interval = options.get("validation_step_interval")
        negative = options.get("validation_negative_prompt")
        return cls(
            prompts=prompt_list(options, base_dir),
            resolutions=resolutions,
            num_images=int(options.get("num_validation_images") or 1),
            num_inference_steps=int(options.get("validation_num_inference_steps") or 30),
            guidance=float(options.get("validation_guidance", 7.5)),
            guidance_rescale=float(options.get("validation_guidance_rescale") or 0.0),
            negative_prompt=str(negative) if negative else None,
            seed=int(seed),
            randomize=bool(options.get("validation_randomize")),
            seed_source=str(options.get("validation_seed_source") or "cpu"),
            scheduler=options.get("validation_noise_scheduler") or None,
            step_interval=int(step_interval) if step_interval else None,
            epoch_interval=int(options.get("validation_epoch_interval") or 0) or None,
            on_startup=bool(options.get("validation_on_startup"))
            or not bool(options.get("disable_benchmark")),
            disabled=bool(options.get("validation_disable")),
            prediction_type=options.get("prediction_type") or None,
            zero_terminal_snr=bool(options.get("rescale_betas_zero_snr")),
            timestep_spacing=str(options.get("inference_scheduler_timestep_spacing") or "trailing"),
            guidance_modes=GuidanceModes.from_options(options),
        )


def is_due(settings: ValidationSettings, step: int, epoch_end: bool, epoch: int) -> bool:
    """Whether to render now.

    ``step`` is the number of optimizer steps done. Step 0 (before training) is the startup
    benchmark of the base model: on unless disable_benchmark, or when validation_on_startup.
    After an optimizer step (``epoch_end`` False) the step interval decides; at the end of an
    epoch (``epoch_end`` True, ``epoch`` = epochs completed, from 1) the epoch interval does.
    A step that is due both ways renders once: ``Validator.run`` skips a step it has done.
    """
    if not settings.enabled:
        return False
    if step == 0:
        return settings.on_startup and not epoch_end
    if epoch_end:
        return bool(settings.epoch_interval) and epoch > 0 and epoch % settings.epoch_interval == 0
    return bool(settings.step_interval) and step % settings.step_interval == 0


def parse_resolutions(text: str, granularity: int) -> tuple[tuple[int, int], ...]:
    """'1024' -> (1024, 1024); '1216x832' -> (1216, 832) (WIDTHxHEIGHT); comma lists of both.
    Sides are rounded to the family's pixel granularity (the pipelines refuse or silently
    crop other sizes)."""
    sizes = []
    for piece in text.split(","):
        value = piece.strip().lower()
        if not value:
            continue
        parts = value.split("x")
        if len(parts) > 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise ValueError(
                f"validation_resolution: cannot read {piece.strip()!r}; use an edge in pixels "
                "('1024'), WIDTHxHEIGHT ('1216x832') or a comma-separated list of those"
            )
        width, height = (int(parts[0]), int(parts[-1]))
        size = (_round_to(width, granularity), _round_to(height, granularity))
        if size != (width, height):
            log.warning(
                "validation_resolution %s is not a multiple of %d pixels; rendering %dx%d",
                value,
                granularity,
                *size,
            )
        if size not in sizes:
            sizes.append(size)
    if not sizes:
        raise ValueError("validation_resolution is empty")
    return tuple(sizes)


def training_edge(plan: Plan) -> float:
    """The training resolution as a square edge in pixels: the first image dataset's
    resolution (else the run's), converted from megapixels when resolution_type is 'area'."""
    images = [d for d in plan.datasets if d.is_image]
    source = images[0].fields if images else plan.options
    value = float(source.get("resolution") or plan.options.get("resolution") or 1024)
    kind = source.get("resolution_type") or plan.options.get("resolution_type")
    if kind == "area":
        return math.sqrt(value * 1_000_000)
    return value


def prompt_list(
    options: Mapping[str, Any], base_dir: Path | None = None
) -> tuple[tuple[str, str], ...]:
    """(name, prompt) pairs: validation_prompt ('validation'), then user_prompt_library, then the
    built-in library, then '' ('unconditional') unless validation_disable_unconditional. The
    unconditional image comes only with at least one real prompt."""
    named: list[tuple[str, str]] = []
    if options.get("validation_prompt"):
        named.append(("validation", str(options["validation_prompt"])))
    library = options.get("user_prompt_library")
    if library:
        named.extend(_user_library(library, base_dir))
    if options.get("validation_prompt_library"):
        named.extend(BUILTIN_PROMPTS.items())
    if named and not options.get("validation_disable_unconditional"):
        named.append(("unconditional", ""))
    out: list[tuple[str, str]] = []
    taken: set[str] = set()
    for name, prompt in named:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "prompt"
        unique, n = safe, 2
        while unique in taken:
            unique, n = f"{safe}-{n}", n + 1
        taken.add(unique)
        out.append((unique, prompt))
    return tuple(out)


def _user_library(value: Any, base_dir: Path | None) -> list[tuple[str, str]]:
    """user_prompt_library: {name: prompt} inline or in a JSON file; a value may also be an
    object with a 'prompt' key (SimpleTuner's richer entries)."""
    if isinstance(value, str):
        path = Path(value).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        value = read_json(path, "user_prompt_library")
    if not isinstance(value, dict):
        raise ValueError("user_prompt_library must be a JSON object mapping names to prompts")
    pairs = []
    for name, entry in value.items():
        prompt = entry.get("prompt") if isinstance(entry, dict) else entry
        if not isinstance(prompt, str):
            raise ValueError(f"user_prompt_library: entry {name!r} has no prompt text")
        pairs.append((str(name), prompt))
    return pairs


def _round_to(value: float, granularity: int) -> int:
    return max(granularity, math.floor(value / granularity + 0.5) * granularity)  # half up
