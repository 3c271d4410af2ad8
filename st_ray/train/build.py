"""Building a run: everything the loop touches, once per worker.

The denoiser (quantised when asked) with its ``Trainable`` attached, the optimizer and LR
schedule at the run's derived rate, EMA, the cached datasets and the noise/timestep/loss
settings. The plan's options are read as configured; what the run derives from them (scaled
learning rate, the schedule that runs, the run's length) is ``Run.derived``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from st_ray.data.pipeline import EMPTY_CAPTION, text_cache_root
from st_ray.models import quantize
from st_ray.models.family import Family, get_family_module
from st_ray.plan import Plan
from st_ray.storage import S3Settings
from st_ray.train import (
    compiling,
    controlnet,
    data_feed,
    epoch_plan,
    loss_masks,
    noise,
    scheduled_sampling,
    timesteps,
)
from st_ray.train.checkpoints import Progress
from st_ray.train.context import WorkerContext
from st_ray.train.crepa import Crepa
from st_ray.train.ema import EMAModel
from st_ray.train.feed import Feed
from st_ray.train.layersync import LayerSync
from st_ray.train.losses import LossConfig
from st_ray.train.lr_schedules import schedule_scheduler
from st_ray.train.optimizers import build_optimizer
from st_ray.train.plan_ahead import EpochPlans
from st_ray.train.settings import Derived, LoopSettings, derive, weight_dtype
from st_ray.train.text_training import TextEncoderTraining
from st_ray.train.trainable import Trainable, trainable_for
from st_ray.train.tread import Tread


@dataclass
class Run:
    """Everything the loop touches, built once per worker."""

    plan: Plan  # as configured
    derived: Derived  # what the run derived from it (the rate after lr_scale, its schedule...)
    loop: LoopSettings
    trainable: Trainable
    family: Family  # the family's hooks
    denoiser: torch.nn.Module  # DDP-wrapped when world size > 1
    core: torch.nn.Module  # the unwrapped denoiser
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: EMAModel | None
    datasets: list[epoch_plan.DatasetSamples]
    latents: dict[str, data_feed.LatentStore]
    texts: data_feed.TextEmbedStore
    empty_caption: dict[str, torch.Tensor]
    feed: Feed  # reads the next batches' rows while the step computes
    plans: EpochPlans  # (epoch, seed) -> plan, the next one computed by the feed's readers
    noise_sampler: noise.NoiseSampler
    timestep_sampler: timesteps.TimestepSampler
    loss_config: LossConfig
    alphas_cumprod: torch.Tensor | None
    prediction_type: str
    dtype: torch.dtype
    layersync: LayerSync | None = None  # hooks on the core's student / teacher blocks
    mask_kinds: dict[str, str] = field(default_factory=dict)  # dataset id -> mask kind
    tread: Tread | None = None  # token routing hooks on the core's blocks (training only)
    scheduled_sampling: scheduled_sampling.Settings | None = None  # rollouts, ReflexFlow
    text_training: TextEncoderTraining | None = None  # train_text_encoder
    crepa: Crepa | None = None  # hooks, projection head, frozen encoder and VAE
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def core_device(self) -> torch.device:
        return next(self.core.parameters()).device

    @property
    def total_steps(self) -> int:
        return self.derived.total_steps

    @property
    def steps_per_epoch(self) -> int:
        return self.derived.steps_per_epoch

    @property
    def num_epochs(self) -> int:
        return self.derived.num_epochs


def build_run(plan: Plan, ctx: WorkerContext, seed: int) -> Run:
    options = plan.options
    loop = LoopSettings.from_options(options)
    torch.manual_seed(loop.rank_seed(seed, ctx.rank))
    if ctx.device.type == "cuda" and loop.disable_tf32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    family = get_family_module(plan.family.name)
    dtype = weight_dtype(options, ctx.device)
    core = load_denoiser(plan, family, dtype, ctx.device)
    if controlnet.enabled(options):  # the UNet, frozen, with the ControlNet that trains
        core = controlnet.attach(core, options)
    tread = Tread.attach(options, core, plan.family)  # before LayerSync: it sees routed tokens
    trainable = trainable_for(plan)
    trainable.attach(core)
    compiling.check_device(options, ctx.device)
    compiling.compile_denoiser(core, options)  # after the adapter, before DDP
    core.train()
    denoiser = wrap_ddp(core, ctx)

    s3 = S3Settings.from_options(options)
    images = [d for d in plan.datasets if d.is_image]
    datasets = [data_feed.load_dataset_samples(str(d["cache_dir_vae"]), d, s3) for d in images]
    latents = {d.id: data_feed.LatentStore(str(d["cache_dir_vae"]), s3) for d in images}
    texts = data_feed.TextEmbedStore(text_cache_root(plan), s3)
    empty = next(iter(texts.load_captions([EMPTY_CAPTION]).values()))
    rank, world_size = ctx.rank, ctx.world_size
    plans = EpochPlans(
        lambda epoch, at_seed: plan_epoch(
            plan, datasets, epoch=epoch, seed=at_seed, world_size=world_size
        )
    )
    feed = Feed.from_options(
        latents, texts, options, lambda epoch: plans(epoch, seed).batches(rank)
    )
    first_epoch = plans(0, seed)
    derived = derive(
        options,
        world_size=ctx.world_size,
        steps_per_epoch=epoch_plan.steps_per_epoch(first_epoch),
    )

    crepa = attach_crepa(plan, family, core, datasets, empty, derived.total_steps, dtype)
    named = {name: p for name, p in core.named_parameters() if p.requires_grad}
    text_training = TextEncoderTraining.build(plan, family, ctx.device, dtype)
    # The CREPA head trains with the adapter (same optimizer and schedule), outside EMA.
    params: list = list(named.values()) + (crepa.parameters() if crepa is not None else [])
    if text_training is not None:  # the encoders' own group (text_encoder_lr)
        params = [{"params": params}, text_training.param_group(derived.learning_rate)]
    optimizer = build_optimizer(params, options, learning_rate=derived.learning_rate)
    if loop.release_gradients:
        import optimi

        # optimi steps each parameter from its gradient hook during backward and frees the
        # gradient; optimizer.step()/zero_grad() in the loop are then no-ops.
        optimi.prepare_for_gradient_release(core, optimizer)
    ema = EMAModel.from_options(named, options, ctx.device) if loop.use_ema else None

    scheduler_config = family.noise_scheduler_config(plan.model, options)
    flow = plan.family.flow_matching
    num_train_timesteps = int(scheduler_config.get("num_train_timesteps") or 1000)
    alphas = None
    if not flow:
        alphas = noise.alphas_cumprod_from_config(
            scheduler_config, rescale_betas_zero_snr=bool(options["rescale_betas_zero_snr"])
        ).to(ctx.device)
    return Run(
        plan=plan,
        derived=derived,
        loop=loop,
        trainable=trainable,
        family=family,
        denoiser=denoiser,
        core=core,
        optimizer=optimizer,
        scheduler=schedule_scheduler(optimizer, derived.schedule, derived.total_steps),
        ema=ema,
        datasets=datasets,
        latents=latents,
        texts=texts,
        empty_caption=empty,
        feed=feed,
        plans=plans,
        noise_sampler=noise.NoiseSampler.from_options(options, flow_matching=flow),
        timestep_sampler=timesteps.TimestepSampler.from_options(
            options,
            flow_matching=flow,
            num_train_timesteps=num_train_timesteps,
            scheduler_config=scheduler_config,
        ),
        loss_config=LossConfig.from_options(options, flow_matching=flow),
        alphas_cumprod=alphas,
        prediction_type=options.get("prediction_type") or plan.family.prediction_types[0],
        dtype=dtype,
        layersync=LayerSync.attach(options, core, plan.family.hidden_blocks),
        mask_kinds=loss_masks.mask_kinds(plan.datasets),
        tread=tread,
        scheduled_sampling=scheduled_sampling.Settings.from_options(options, flow_matching=flow),
        text_training=text_training,
        crepa=crepa,
    )


def attach_crepa(
    plan: Plan,
    family: Family,
    core: torch.nn.Module,
    datasets: list[epoch_plan.DatasetSamples],
    empty: dict[str, torch.Tensor],
    total_steps: int,
    dtype: torch.dtype,
) -> Crepa | None:
    """CREPA's hooks and head; its block widths are read from one forward pass of the core
    at the smallest training bucket (st_ray.train.crepa.probe_inputs)."""
    if not plan.options.get("crepa_enabled"):
        return None
    from st_ray.data.encoders import VaeEncoder, vae_encoder_kwargs
    from st_ray.train import crepa, step

    options = plan.options
    device = next(core.parameters()).device
    buckets = (tuple(b) for d in datasets for b in d.samples.bucket.tolist())
    shape, inputs = crepa.probe_inputs(plan.family, buckets, empty)

    def probe() -> None:
        x = torch.zeros((1, *shape), device=device, dtype=dtype)
        t = torch.full((1,), 500.0, device=device)
        with step.autocast(dtype, core):
            family.predict(core, x, t, {k: v.to(device) for k, v in inputs.items()}, options)

    def vae() -> Any:
        loader = VaeEncoder(**vae_encoder_kwargs(plan))
        return None if loader.vae is None else loader.vae.to(device)

    return Crepa.attach(options, core, family, probe=probe, total_steps=total_steps, vae_loader=vae)


def load_denoiser(
    plan: Plan, family: Family, dtype: torch.dtype, device: torch.device
) -> torch.nn.Module:
    """The family's denoiser, quantised once here when base_model_precision asks for it
    (quantize_via 'pipeline': diffusers quantises while loading)."""
    options = plan.options
    if quantize.quantizing(options) and options.get("quantize_via") == "pipeline":
        return quantize.load_denoiser_via_pipeline(
            plan.family, plan.model, device=device, options=options
        )
    at = quantize.load_device(options, device)
    core = family.load_denoiser(plan.model, dtype=dtype, device=at, options=options)
    return quantize.quantize_denoiser(core, options, device)


def plan_epoch(
    plan: Plan,
    datasets: list[epoch_plan.DatasetSamples],
    *,
    epoch: int,
    seed: int,
    world_size: int,
) -> epoch_plan.EpochPlan:
    return epoch_plan.plan_epoch(
        datasets,
        epoch=epoch,
        seed=seed,
        world_size=world_size,
        **epoch_plan.plan_options(plan.options),
    )


def plan_for(run: Run, progress: Progress) -> epoch_plan.EpochPlan:
    """The plan of the epoch in progress (computed ahead by the feed's readers, or now)."""
    run.plans.release(progress.epoch)
    return run.plans(progress.epoch, progress.seed)


def wrap_ddp(core: torch.nn.Module, ctx: WorkerContext) -> torch.nn.Module:
    if ctx.world_size == 1:
        return core
    import ray.train.torch

    return ray.train.torch.prepare_model(core, move_to_device=False)
