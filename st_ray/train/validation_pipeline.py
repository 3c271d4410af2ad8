"""The validation pipeline: the family's diffusers pipeline around the live denoiser
(``build_pipeline``) and its sampler (``build_scheduler``: validation_noise_scheduler, the run's
prediction type and zero-terminal-SNR betas)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from st_ray.models.family import FamilySpec, get_family_module, unwrap
from st_ray.models.quantize import quantize_text_encoders
from st_ray.train.validation_settings import ValidationSettings

if TYPE_CHECKING:
    import torch

    from st_ray.models.text_encoders import TextEncoders


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


def build_pipeline(
    pipeline_class: str,
    model_path: str,
    denoiser: torch.nn.Module,
    family_spec: FamilySpec,
    settings: ValidationSettings,
    *,
    options: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    text_encoders: TextEncoders | None = None,
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
    encoders = text_encoders  # trained ones (train_text_encoder) render as they are now
    if encoders is None:
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
    # validation_torch_compile: the pipeline renders with a compiled view of the denoiser.
    from st_ray.train import compiling

    compiled = compiling.for_validation(core, options)
    if compiled is not core:
        setattr(pipeline, family_spec.denoiser, compiled)
    pipeline.scheduler = build_scheduler(
        pipeline.scheduler, settings, flow_matching(family_spec, settings)
    )
    return pipeline


def flow_matching(family_spec: FamilySpec, settings: ValidationSettings) -> bool:
    return family_spec.flow_matching or settings.prediction_type == "flow_matching"


def _base_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the frozen base weights (LoRA parameters may be fp32 over bf16 ones)."""
    import torch

    dtypes = [p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    if not dtypes:
        dtypes = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return dtypes[0] if dtypes else torch.float32
