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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_ray.models.family import FamilySpec, get_family_module, unwrap
from st_ray.train import attention, clip_score, guidance, lycoris_adapter, watermark
from st_ray.train.validation_pipeline import build_pipeline, check_scheduler, flow_matching
from st_ray.train.validation_settings import ValidationSettings, is_due, training_edge
from st_ray.train.validation_video import clip_fps, save_clip

if TYPE_CHECKING:
    import torch

    from st_ray.models.text_encoders import TextEncoders
    from st_ray.plan import Plan
    from st_ray.train.ema import EMAModel


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
    ``out_dir/validation/step-<step>/<name>-<W>x<H>-<i>[-<suffix>].png`` (a video family:
    ``.mp4`` and a ``.gif`` preview of validation_num_video_frames frames).

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
    # Video pipelines count clips per prompt under another name.
    count_key = "num_videos_per_prompt" if family_spec.video else "num_images_per_prompt"
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
                    with guidance.no_cfg_until(denoiser, settings.guidance_modes):
                        result = pipeline(
                            prompt=prompt,
                            height=height,
                            width=width,
                            **{count_key: settings.num_images},
                            generator=generators,
                            output_type="pil",
                            **call,
                        )
                    tail = f"-{suffix}" if suffix else ""
                    if family_spec.video:  # clips: (prompt x image) lists of PIL frames
                        for i, frames in enumerate(result.frames):
                            stem = folder / f"{name}-{width}x{height}-{i}{tail}"
                            paths += save_clip(frames, stem, clip_fps(options))
                        continue
                    images = result.images
                    for i, (image, seed) in enumerate(zip(images, seeds, strict=True)):
                        path = folder / f"{name}-{width}x{height}-{i}{tail}.png"
                        info = PngInfo()
                        info.add_text("parameters", _parameters(prompt, seed, settings))
                        image = watermark.apply(image, options)
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
        text_encoders: TextEncoders | None = None,
        eval_every: int = 0,
    ) -> None:
        """``eval_every``: the eval schedule in steps (eval_steps_interval /
        eval_epoch_interval); with evaluation_type clip, validations (and their CLIP scores)
        also run on it."""
        config_path = plan.config.config_path
        self.text_encoders = text_encoders  # the trained ones (train_text_encoder), if any
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
        check_scheduler(self.settings.scheduler, flow_matching(plan.family, self.settings))
        if self.settings.enabled:  # the family's own refusals (e.g. Cosmos' sampler) too
            get_family_module(plan.family.name).validation_components(plan.options)
            import diffusers

            pipeline_class = getattr(diffusers, plan.family.pipeline_class)
            guidance.check(self.settings.guidance_modes, pipeline_class, plan.family.name)
        self.pipeline: Any = None
        self.done: dict[int, list[Path]] = {}
        self.clip = clip_score.is_enabled(plan.options) and self.settings.enabled
        self.eval_every = eval_every if self.clip else 0
        self.scorer: clip_score.ClipScorer | None = None
        self.metrics: dict[int, dict[str, float]] = {}  # step -> CLIP scores

    def is_due(self, step: int, epoch_end: bool = False, epoch: int = 0) -> bool:
        if step in self.done:
            return False
        on_eval = self.eval_every > 0 and step > 0 and not epoch_end
        return is_due(self.settings, step, epoch_end, epoch) or (
            on_eval and step % self.eval_every == 0
        )

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
                text_encoders=self.text_encoders,
            )
        # One base seed for both passes, so the EMA images compare with the trained ones.
        seed = _base_seed(self.settings)
        common = dict(step=step, out_dir=self.out_dir, options=self.plan.options, seed=seed)
        args = (self.pipeline, self.plan.family, self.settings)
        # validation_lycoris_strength scales a LyCORIS network while rendering.
        trained = list(self.text_encoders.models.values()) if self.text_encoders else []
        with (
            lycoris_adapter.strength(
                self.denoiser, self.plan.options.get("validation_lycoris_strength")
            ),
            contextlib.ExitStack() as modes,
        ):
            for encoder in trained:
                modes.enter_context(_eval_mode(encoder))
            paths = render_with(*args, device=self.device, **common)
            if self.ema is not None and step > 0:  # at step 0 the EMA equals the weights
                with self.ema.swapped_in():
                    paths += render_with(*args, device=self.device, suffix="ema", **common)
        for encoder in trained:  # the render may have offloaded them; training goes on
            encoder.to(self.device)
        self.done[step] = paths
        if self.clip:
            if self.scorer is None:
                self.scorer = clip_score.ClipScorer.from_options(self.plan.options, self.device)
            assert self.scorer is not None
            self.metrics[step] = self.scorer.score_files(paths, self.settings.prompts)
        return paths


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
    # (validation_guidance_real > 1: guidance.call_kwargs).
    if (
        settings.negative_prompt
        and "negative_prompt" in accepted
        and "true_cfg_scale" not in accepted
    ):
        kwargs["negative_prompt"] = settings.negative_prompt
    if settings.guidance_rescale > 0 and "guidance_rescale" in accepted:
        kwargs["guidance_rescale"] = settings.guidance_rescale
    kwargs.update(guidance.call_kwargs(settings.guidance_modes, accepted, settings.negative_prompt))
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
