"""Validation images: the family's diffusers pipeline around the denoiser being trained.

``ValidationSettings.from_options`` reads the validation_* options once; ``is_due`` says when
to render; ``Validator`` builds the pipeline on its first use (text encoders, VAE and
tokenizers from the base model, the *live* denoiser object as the unet/transformer, so no
weights are copied) and renders PNGs to ``<output_dir>/validation/step-<step>/``.

Distributed runs: only rank 0 renders. The other ranks go on to the next step and wait for
rank 0 at its first collective (the DDP gradient all-reduce), so a validation costs every
rank its wall time; keep it shorter than the process group timeout (Ray Train: 30 minutes).
Rendering in the background is not implemented yet.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_ray.config.sources import read_json
from st_ray.models.family import FamilySpec, get_family, get_family_module, unwrap
from st_ray.models.quantize import quantize_text_encoders
from st_ray.train import attention, lycoris_adapter

if TYPE_CHECKING:
    import torch

    from st_ray.plan import Plan
    from st_ray.train.ema import EMAModel

log = logging.getLogger(__name__)

# validation_noise_scheduler -> diffusers scheduler class, for the DDPM-style families.
DDPM_SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
}
# The flow-matching pipelines pass sigmas (and mu) to set_timesteps: only samplers that take
# them and integrate the velocity field fit (SimpleTuner maps these two the same way).
FLOW_SCHEDULERS = {
    "euler": "FlowMatchEulerDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
}

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


# ----------------------------------------------------------------------------- option parsing


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


# ---------------------------------------------------------------------------------- schedulers


def check_scheduler(name: str | None, flow_matching: bool) -> None:
    """Refuse a validation_noise_scheduler that cannot sample the family's objective."""
    if name is None:
        return
    table = FLOW_SCHEDULERS if flow_matching else DDPM_SCHEDULERS
    if name not in table:
        kind = "flow-matching" if flow_matching else "DDPM-style (noise/v prediction)"
        raise ValueError(
            f"validation_noise_scheduler {name!r} does not fit this {kind} model; use one of "
            f"{', '.join(table)} (or leave it unset for the model's own sampler)"
        )


def build_scheduler(current: Any, settings: ValidationSettings, flow_matching: bool) -> Any:
    """The sampler for validation, built from the pipeline's scheduler config."""
    import diffusers

    check_scheduler(settings.scheduler, flow_matching)
    config = dict(current.config)
    if flow_matching:
        if settings.scheduler == "unipc":
            return diffusers.UniPCMultistepScheduler.from_config(
                config,
                prediction_type="flow_prediction",
                use_flow_sigmas=True,
                flow_shift=float(config.get("shift") or 1.0),
            )
        if settings.scheduler == "euler" and type(current).__name__ != FLOW_SCHEDULERS["euler"]:
            return diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
        return current
    cls = (
        getattr(diffusers, DDPM_SCHEDULERS[settings.scheduler])
        if settings.scheduler
        else type(current)
    )
    accepted = inspect.signature(cls.__init__).parameters
    overrides: dict[str, Any] = {}
    if settings.prediction_type and settings.prediction_type != "flow_matching":
        overrides["prediction_type"] = settings.prediction_type  # trained against the config
    # Zero-terminal-SNR models must start sampling from the last timestep.
    spacing = "trailing" if settings.zero_terminal_snr else settings.timestep_spacing
    if "timestep_spacing" in accepted or "timestep_spacing" in config:
        overrides["timestep_spacing"] = spacing
    if settings.zero_terminal_snr and "rescale_betas_zero_snr" in accepted:
        overrides["rescale_betas_zero_snr"] = True
    if config.get("variance_type") in ("learned", "learned_range"):
        # The pipelines drop the learned-variance channels before calling the sampler.
        overrides["variance_type"] = "fixed_small"
    overrides = {k: v for k, v in overrides.items() if k in accepted or k in config}
    if cls is type(current) and all(config.get(k) == v for k, v in overrides.items()):
        return current
    return cls.from_config(config, **overrides)


# ---------------------------------------------------------------------------------- pipelines


def build_pipeline(
    pipeline_class: str,
    model_path: str,
    denoiser: torch.nn.Module,
    family_spec: FamilySpec,
    settings: ValidationSettings,
    *,
    options: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """``<pipeline_class>.from_pretrained(model_path, <unet|transformer>=denoiser)`` with the
    family's own text encoders (honouring revision, variant and the T5 / VAE overrides) on the
    CPU; ``render_with`` moves them to the device for each validation."""
    import diffusers
    import torch

    options = options or {}
    core = unwrap(denoiser)
    dtype = dtype or _base_dtype(core)
    cpu = torch.device("cpu")
    family = get_family_module(family_spec.name)
    encoders = family.load_text_encoders(model_path, device=cpu, dtype=dtype, options=options)
    quantize_text_encoders(encoders.models, options, cpu)  # as for caching: less memory
    slots = {s.name: s.tokenizer for s in getattr(family, "SLOTS", ())}
    components: dict[str, Any] = {family_spec.denoiser: core}
    for name, model in encoders.models.items():
        components[name] = model
        components[slots.get(name, name.replace("text_encoder", "tokenizer"))] = (
            encoders.tokenizers[name]
        )
    vae_path = options.get("pretrained_vae_model_name_or_path")
    if vae_path:
        vae_class = getattr(diffusers, family_spec.vae_class or "AutoencoderKL")
        components["vae"] = vae_class.from_pretrained(vae_path, dtype=dtype)
    cls = getattr(diffusers, pipeline_class)
    init = inspect.signature(cls.__init__).parameters
    if "safety_checker" in init:
        # Validation shows what the model learned; the SD safety checker would black it out.
        components.update(safety_checker=None, feature_extractor=None)
        if "requires_safety_checker" in init:
            components["requires_safety_checker"] = False
    components.update(family.validation_components(options))
    kwargs = {k: options[k] for k in ("revision", "variant") if options.get(k)}
    diffusers.utils.logging.disable_progress_bar()  # "Loading pipeline components..."
    pipeline = cls.from_pretrained(model_path, dtype=dtype, **components, **kwargs)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.scheduler = build_scheduler(
        pipeline.scheduler, settings, _flow_matching(family_spec, settings)
    )
    return pipeline


def render_with(
    pipeline: Any,
    family_spec: FamilySpec,
    settings: ValidationSettings,
    *,
    device: torch.device,
    step: int,
    out_dir: Path,
    options: Mapping[str, Any] | None = None,
    suffix: str = "",
    offload: bool | None = None,
    seed: int | None = None,
) -> list[Path]:
    """Render every prompt x resolution x ``num_images`` and save
    ``out_dir/validation/step-<step>/<name>-<W>x<H>-<i>[-<suffix>].png``.

    Image ``i`` draws its noise from a generator seeded ``seed + i`` (a fresh random base seed
    per call with validation_randomize), so an image depends on neither the batch nor what was
    rendered before it; ``seed`` overrides the base seed. The denoiser renders in eval mode and
    gets its modes back afterwards. ``offload`` (default: on CUDA) returns the other components to the CPU when done.
    """
    import torch
    from PIL.PngImagePlugin import PngInfo

    options = options or {}
    device = torch.device(device)
    denoiser = getattr(pipeline, family_spec.denoiser)
    others = [
        c
        for c in pipeline.components.values()
        if isinstance(c, torch.nn.Module) and c is not denoiser
    ]
    offload = device.type == "cuda" if offload is None else offload
    folder = Path(out_dir) / "validation" / f"step-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    base_seed = _base_seed(settings) if seed is None else seed
    gen_device = device if settings.seed_source == "gpu" else torch.device("cpu")
    call = _call_kwargs(pipeline, family_spec, settings, options)
    family = get_family_module(family_spec.name)
    paths: list[Path] = []
    for module in others:
        module.to(device)
    try:
        # No autocast: each component runs in its own dtype, as when people load the result
        # (PEFT casts between fp32 adapter weights and half-precision base weights itself).
        with _eval_mode(denoiser), torch.no_grad(), attention.context(options, device):
            for name, prompt in settings.prompts:
                for width, height in settings.resolutions:
                    family.prepare_render(pipeline, width, height)
                    seeds = [base_seed + i for i in range(settings.num_images)]
                    generators = [torch.Generator(gen_device).manual_seed(s) for s in seeds]
                    images = pipeline(
                        prompt=prompt,
                        height=height,
                        width=width,
                        num_images_per_prompt=settings.num_images,
                        generator=generators,
                        output_type="pil",
                        **call,
                    ).images
                    for i, (image, seed) in enumerate(zip(images, seeds, strict=True)):
                        tail = f"-{suffix}" if suffix else ""
                        path = folder / f"{name}-{width}x{height}-{i}{tail}.png"
                        info = PngInfo()
                        info.add_text("parameters", _parameters(prompt, seed, settings))
                        image.save(path, pnginfo=info)
                        paths.append(path)
    finally:
        if offload:
            for module in others:
                module.to("cpu")
    return paths


def render(
    pipeline_class: str,
    model_path: str,
    denoiser: torch.nn.Module,
    family_spec: FamilySpec,
    settings: ValidationSettings,
    *,
    device: torch.device,
    step: int,
    out_dir: Path,
    options: Mapping[str, Any] | None = None,
) -> list[Path]:
    """One validation with a pipeline built for it (``Validator`` keeps the pipeline)."""
    pipeline = build_pipeline(
        pipeline_class, model_path, denoiser, family_spec, settings, options=options
    )
    return render_with(
        pipeline, family_spec, settings, device=device, step=step, out_dir=out_dir, options=options
    )


class Validator:
    """Rank 0's validation renderer for a run: settings from the plan, the pipeline built on the
    first ``run`` and kept (text encoders and VAE load once). With ``ema`` (use_ema), each
    validation after step 0 renders the trained weights and then the EMA weights (files with
    an ``-ema`` suffix; ema_validation 'comparison')."""

    def __init__(
        self,
        plan: Plan,
        denoiser: torch.nn.Module,
        device: torch.device,
        *,
        ema: EMAModel | None = None,
        out_dir: Path | None = None,
    ) -> None:
        config_path = plan.config.config_path
        self.plan = plan
        self.denoiser = unwrap(denoiser)
        self.device = device
        self.ema = ema
        self.out_dir = Path(out_dir) if out_dir is not None else plan.output_dir
        self.settings = ValidationSettings.from_options(
            plan.options,
            train_resolution=training_edge(plan),
            base_dir=config_path.parent if config_path else None,
        )
        # Fail before training starts rather than at the first validation.
        check_scheduler(self.settings.scheduler, _flow_matching(plan.family, self.settings))
        if self.settings.enabled:  # the family's own refusals (e.g. Cosmos' sampler) too
            get_family_module(plan.family.name).validation_components(plan.options)
        self.pipeline: Any = None
        self.done: dict[int, list[Path]] = {}

    def is_due(self, step: int, epoch_end: bool = False, epoch: int = 0) -> bool:
        return is_due(self.settings, step, epoch_end, epoch) and step not in self.done

    def run(self, step: int) -> list[Path]:
        """Render the validation for ``step``; the paths written (a step renders once)."""
        if not self.settings.enabled:
            return []
        if step in self.done:
            return self.done[step]
        if self.pipeline is None:
            self.pipeline = build_pipeline(
                self.plan.family.pipeline_class,
                self.plan.model,
                self.denoiser,
                self.plan.family,
                self.settings,
                options=self.plan.options,
            )
        # One base seed for both passes, so the EMA images compare with the trained ones.
        seed = _base_seed(self.settings)
        common = dict(step=step, out_dir=self.out_dir, options=self.plan.options, seed=seed)
        args = (self.pipeline, self.plan.family, self.settings)
        # validation_lycoris_strength scales a LyCORIS network while rendering.
        with lycoris_adapter.strength(
            self.denoiser, self.plan.options.get("validation_lycoris_strength")
        ):
            paths = render_with(*args, device=self.device, **common)
            if self.ema is not None and step > 0:  # at step 0 the EMA equals the weights
                with self.ema.swapped_in():
                    paths += render_with(*args, device=self.device, suffix="ema", **common)
        self.done[step] = paths
        return paths


# ---------------------------------------------------------------------------------- helpers


def _flow_matching(family_spec: FamilySpec, settings: ValidationSettings) -> bool:
    return family_spec.flow_matching or settings.prediction_type == "flow_matching"


def _call_kwargs(
    pipeline: Any, family_spec: FamilySpec, settings: ValidationSettings, options: Mapping
) -> dict[str, Any]:
    """Sampling arguments the pipeline's __call__ accepts."""
    accepted = inspect.signature(type(pipeline).__call__).parameters
    kwargs: dict[str, Any] = {
        "num_inference_steps": settings.num_inference_steps,
        "guidance_scale": settings.guidance,
    }
    # A guidance-distilled pipeline's negative prompt only feeds true CFG
    # (validation_guidance_real), unsupported here.
    if (
        settings.negative_prompt
        and "negative_prompt" in accepted
        and "true_cfg_scale" not in accepted
    ):
        kwargs["negative_prompt"] = settings.negative_prompt
    if settings.guidance_rescale > 0 and "guidance_rescale" in accepted:
        kwargs["guidance_rescale"] = settings.guidance_rescale
    family = get_family_module(family_spec.name)
    # Family extras, e.g. the T5 length the prompts were encoded with for training.
    kwargs.update({k: v for k, v in family.validation_kwargs(options).items() if k in accepted})
    return kwargs


def _base_seed(settings: ValidationSettings) -> int:
    import torch

    if settings.randomize:
        return torch.Generator().seed() % 2**31  # fresh, without touching the global RNG
    return settings.seed


def _parameters(prompt: str, seed: int, settings: ValidationSettings) -> str:
    """PNG text metadata, so a validation image can be reproduced (nothing that changes
    between validations of the same weights, so those stay byte-identical)."""
    return (
        f"{prompt}\nNegative prompt: {settings.negative_prompt or ''}\n"
        f"Steps: {settings.num_inference_steps}, Sampler: {settings.scheduler or 'default'}, "
        f"CFG scale: {settings.guidance:g}, Seed: {seed}"
    )


def _base_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the frozen base weights (LoRA parameters may be fp32 over bf16 ones)."""
    import torch

    dtypes = [p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    if not dtypes:
        dtypes = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return dtypes[0] if dtypes else torch.float32


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the block, then each submodule's own mode back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
