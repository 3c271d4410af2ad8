"""The per-worker training function: one Ray Train worker's diffusion loop.

``train_worker(config)`` runs under Ray Train (``TorchTrainer``: one worker per GPU, DDP) or
in-process without Ray (world size 1) — the same code either way. Reading order:
``train_worker`` (the loop) -> ``build_run`` (what the loop needs) -> ``train_step`` (one
optimizer step) -> checkpoints and export.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from st_ray.config.plan import Plan
from st_ray.data.pipeline import EMPTY_CAPTION, text_cache_root
from st_ray.device import pick_device
from st_ray.models import quantize
from st_ray.models.family import get_family_module
from st_ray.storage import S3Settings
from st_ray.train import (
    adapters,
    attention,
    checkpoints,
    data_feed,
    eval_loss,
    lycoris_adapter,
    noise,
    regularisation,
    timesteps,
)
from st_ray.train.checkpoints import Progress
from st_ray.train.ema import EMAModel
from st_ray.train.losses import LossConfig, compute_loss
from st_ray.train.lr_schedules import build_scheduler, scaled_learning_rate
from st_ray.train.model_card import write_model_card
from st_ray.train.optimizers import SPECS, build_optimizer, set_train_mode
from st_ray.train.tracking import tracker_for
from st_ray.train.validation import Validator

Report = Callable[[dict[str, Any], Path | None], None]


def say(line: str) -> None:
    """One line to the job's log. Under Ray Train, print() is patched to tee into Train's
    logger whenever sys.stdout is wrapped, so each line would reach the driver twice; the
    stream itself is forwarded once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device
    report: Report  # metrics (+ a checkpoint directory) to Ray Train, or to the local runner
    resume_dir: Path | None  # the checkpoint to continue from, if any
    # Ray Train's controller takes one report per poll (every 2 s) and report() blocks while
    # the previous one waits, so reporting every step would cap training at a step per poll:
    # under Ray only checkpoint steps are reported (every step still goes to MLflow).
    report_each_step: bool = True
    # A Tune campaign's early stop: asked after every step; True ends the loop (no export).
    should_stop: Callable[[], bool] | None = None


class StopRequested(Exception):
    """The campaign stopped this run early (st_ray.tune.stopping)."""


@dataclass
class Run:
    """Everything the loop touches, built once per worker."""

    plan: Plan
    family: Any  # the family module (st_ray.models.<family>)
    denoiser: torch.nn.Module  # DDP-wrapped when world size > 1
    core: torch.nn.Module  # the unwrapped denoiser
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: EMAModel | None
    datasets: list[data_feed.DatasetSamples]
    latents: dict[str, data_feed.LatentStore]
    texts: data_feed.TextEmbedStore
    empty_caption: dict[str, torch.Tensor]
    noise_sampler: noise.NoiseSampler
    timestep_sampler: timesteps.TimestepSampler
    loss_config: LossConfig
    alphas_cumprod: torch.Tensor | None
    prediction_type: str
    total_steps: int
    steps_per_epoch: int
    num_epochs: int
    dtype: torch.dtype
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def core_device(self) -> torch.device:
        return next(self.core.parameters()).device


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (``train_loop_per_worker``); ``config["plan"]`` is the run plan.

    Ray Train hands back the run's latest checkpoint after a failure, or when the same run
    name and storage are trained again (``resume_from_checkpoint: latest``); otherwise an
    explicit ``resume_from_checkpoint`` path or s3:// URI is where training starts from.
    """
    plan = config["plan"]
    # st_ray prints one progress line per step from rank 0; Ray Train's own per-report lines
    # would double every step in the driver's log.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    ctx = ray_context()
    if ctx.resume_dir is None:
        ctx.resume_dir = explicit_checkpoint(plan)
    if config.get("stop_board"):
        from st_ray.tune.stopping import stop_check

        ctx.should_stop = stop_check(config["stop_board"], str(plan.options["tracker_run_name"]))
    train(plan, ctx)


def explicit_checkpoint(plan: Plan) -> Path | None:
    """``resume_from_checkpoint`` when it names a checkpoint (a folder, a name inside
    output_dir, or an s3:// URI), copied to a local folder."""
    value = str(plan.options.get("resume_from_checkpoint") or "").strip()
    if value.lower() in ("", "latest", "none", "null"):
        return None
    if value.startswith("s3://"):
        import ray.train

        from st_ray import storage

        filesystem, path = storage.pyarrow_filesystem(value, S3Settings.from_options(plan.options))
        local = Path(tempfile.mkdtemp(prefix="st_ray-resume-"))
        ray.train.Checkpoint(path=path, filesystem=filesystem).to_directory(str(local))
        return local
    for candidate in (Path(value).expanduser(), Path(plan.options["output_dir"]) / value):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"resume_from_checkpoint: no checkpoint at '{value}'")


def train(plan: Plan, ctx: WorkerContext) -> Progress:
    """The loop. Returns where training stopped (for tests and the in-process runner)."""
    options = plan.options
    progress = Progress(seed=_run_seed(options))
    run = build_run(plan, ctx, progress.seed)
    # Noise, timesteps and caption dropout draw from this generator; it is checkpointed so a
    # resumed run draws exactly what the uninterrupted run would have.
    generator = torch.Generator(device="cpu").manual_seed(rank_seed(options, progress.seed, ctx))
    if ctx.resume_dir is not None:
        progress = restore(run, ctx.resume_dir, generator)
    events = Events.start(run, ctx, progress)
    grad_accum = int(options["gradient_accumulation_steps"] or 1)
    try:
        events.before_training(progress)
        while progress.global_step < run.total_steps and progress.epoch < run.num_epochs:
            batches = plan_for(run, progress, ctx).batches(ctx.rank)[progress.batches_in_epoch :]
            for start in range(0, len(batches), grad_accum):
                group = batches[start : start + grad_accum]
                started = time.perf_counter()
                loss = train_step(run, group, generator, progress.global_step)
                progress.global_step += 1
                progress.batches_in_epoch += len(group)
                elapsed = time.perf_counter() - started
                metrics = {
                    "loss": loss,
                    "lr": float(run.scheduler.get_last_lr()[0]),
                    "epoch": progress.epoch,
                    "step_time_s": elapsed,
                    "samples_per_s": sum(map(len, group)) * ctx.world_size / max(elapsed, 1e-9),
                    **run.metrics,
                }
                events.after_step(progress, metrics, generator)
                if progress.global_step >= run.total_steps:
                    break
            else:  # the epoch ran out before the step budget
                progress.epoch += 1
                progress.batches_in_epoch = 0
                events.after_epoch(progress, generator, ran_batches=bool(batches))
        events.after_training(progress)
    except StopRequested:
        if ctx.rank == 0:
            say(f"stopped early by the campaign at step {progress.global_step}")
        events.tracker.finish("KILLED")
        return progress
    except BaseException:
        events.tracker.finish("FAILED")
        raise
    events.tracker.finish()
    return progress


@dataclass
class Events:
    """What happens around the steps: metrics, checkpoints, validation, the final export."""

    run: Run
    ctx: WorkerContext
    tracker: Any
    validator: Validator | None
    evaluator: eval_loss.EvalLoss | None  # rank 0 only; every rank reports at its steps
    eval_interval: int | None  # None: no eval loss
    checkpoint_steps: int
    checkpoint_epochs: int
    clear_cache_steps: int
    last_metrics: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False
    checkpointed_step: int = -1

    @classmethod
    def start(cls, run: Run, ctx: WorkerContext, progress: Progress) -> Events:
        options = run.plan.options
        tracker = tracker_for(run.plan, ctx.rank, progress.tracking_run_id)
        progress.tracking_run_id = tracker.run_id
        # Rank 0 renders; the other ranks wait for it at their next gradient all-reduce.
        validator = None
        if ctx.rank == 0 and not options.get("validation_disable"):
            validator = Validator(
                run.plan, run.core, ctx.device, ema=run.ema, out_dir=final_output_dir(options)
            )
        enabled = eval_loss.is_enabled(run.plan)
        return cls(
            run=run,
            ctx=ctx,
            tracker=tracker,
            validator=validator,
            evaluator=eval_loss.EvalLoss.from_run(run) if enabled and ctx.rank == 0 else None,
            eval_interval=eval_loss.step_interval(options, run.steps_per_epoch)
            if enabled
            else None,
            checkpoint_steps=int(options.get("checkpoint_step_interval") or 0),
            checkpoint_epochs=int(options.get("checkpoint_epoch_interval") or 0),
            clear_cache_steps=int(options.get("accelerator_cache_clear_interval") or 0),
            resumed=progress.global_step > 0,
        )

    def before_training(self, progress: Progress) -> None:
        if not self.resumed:  # the base model's images, for comparison
            self.validate(progress.global_step, self.validator and self.validator.is_due(0))

    def after_step(
        self, progress: Progress, metrics: dict[str, Any], generator: torch.Generator
    ) -> None:
        step = progress.global_step
        done = step >= self.run.total_steps
        evaluated = self.evaluate(step, done, metrics)
        self.tracker.log_metrics(metrics, step)
        if self.ctx.rank == 0:
            say(
                f"step {step}/{self.run.total_steps}  epoch {progress.epoch}  "
                f"loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  "
                f"{metrics['samples_per_s']:.1f} samples/s  "
                f"data wait {metrics.get('data_wait_s', 0.0) * 1000:.0f} ms"
                + (f"  eval loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else "")
            )
        metrics["step"] = step
        self.last_metrics = metrics
        if done or (self.checkpoint_steps and step % self.checkpoint_steps == 0):
            report_checkpoint(self.run, self.ctx, progress, metrics, generator)
            self.checkpointed_step = step
        elif self.ctx.report_each_step or evaluated:  # Tune ranks trials on eval steps
            self.ctx.report(metrics, None)
        if not done and self.ctx.should_stop and self.ctx.should_stop():
            raise StopRequested(step)
        if self.clear_cache_steps and step % self.clear_cache_steps == 0:
            empty_device_cache(self.ctx.device)
        self.validate(step, self.validator and self.validator.is_due(step))

    def after_epoch(
        self, progress: Progress, generator: torch.Generator, ran_batches: bool
    ) -> None:
        epoch_due = self.checkpoint_epochs and progress.epoch % self.checkpoint_epochs == 0
        if epoch_due and ran_batches and self.checkpointed_step != progress.global_step:
            report_checkpoint(self.run, self.ctx, progress, self.last_metrics, generator)
            self.checkpointed_step = progress.global_step
        due = self.validator and self.validator.is_due(
            progress.global_step, epoch_end=True, epoch=progress.epoch
        )
        self.validate(progress.global_step, due)

    def evaluate(self, step: int, final: bool, metrics: dict[str, Any]) -> bool:
        """Add the eval loss to ``metrics`` when due; True on eval steps (on every rank)."""
        if self.eval_interval is None:
            return False
        due = final or (self.eval_interval > 0 and step % self.eval_interval == 0)
        if due and self.evaluator is not None:
            with evaluation_mode(self.run):
                metrics.update(self.evaluator.compute(self.run))
        return due

    def validate(self, step: int, due: bool | None) -> list[Path]:
        if not due or self.validator is None:
            return []
        with evaluation_mode(self.run):
            images = self.validator.run(step)
        if images:
            self.tracker.log_artifact(images[0].parent, "validation")
        return images

    def after_training(self, progress: Progress) -> None:
        if self.ctx.rank != 0:
            return
        output_dir = final_output_dir(self.run.plan.options)
        for name in export_final(self.run, output_dir):
            self.tracker.log_artifact(output_dir / name, "final")
        images = self.validate(progress.global_step, self.validator is not None)
        card = write_model_card(
            output_dir,
            self.run.plan,
            steps=progress.global_step,
            final_loss=self.last_metrics.get("loss"),
            validation_images=images,
            image_counts={d.dataset_id: len(d.samples) for d in self.run.datasets},
        )
        self.tracker.log_artifact(card, "final")


# ---------------------------------------------------------------------------- building


def build_run(plan: Plan, ctx: WorkerContext, seed: int) -> Run:
    options = plan.options
    torch.manual_seed(rank_seed(options, seed, ctx))
    if ctx.device.type == "cuda" and options.get("disable_tf32"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    family = get_family_module(plan.family.name)
    dtype = _weight_dtype(options, ctx.device)
    core = load_denoiser(plan, family, dtype, ctx.device)
    if options["model_type"] == "lora":
        core.requires_grad_(False)
        if lycoris_adapter.enabled(options):
            lycoris_adapter.add_lycoris(core, options, _config_dir(plan))
        else:
            adapters.add_lora(core, plan.family.name, options)
    else:
        core.requires_grad_(True)
    core.train()
    denoiser = _wrap_ddp(core, ctx)

    named = {name: p for name, p in core.named_parameters() if p.requires_grad}
    options = {**options, "learning_rate": scaled_learning_rate(options, ctx.world_size)}
    optimizer = build_optimizer(list(named.values()), options)
    if options.get("optimizer_release_gradients"):
        import optimi

        # optimi steps each parameter from its gradient hook during backward and frees the
        # gradient; optimizer.step()/zero_grad() in the loop are then no-ops.
        optimi.prepare_for_gradient_release(core, optimizer)
    if SPECS[options["optimizer"]].replaces_lr_scheduler:
        # Schedule-free optimizers shape the rate themselves (their warmup included).
        options = {**options, "lr_scheduler": "constant", "lr_warmup_steps": 0}
    ema = EMAModel.from_options(named, options, ctx.device) if options["use_ema"] else None

    s3 = S3Settings.from_options(options)
    images = [d for d in plan.datasets if d.is_image]
    datasets = [data_feed.load_dataset_samples(str(d["cache_dir_vae"]), d, s3) for d in images]
    latents = {d.id: data_feed.LatentStore(str(d["cache_dir_vae"]), s3) for d in images}
    texts = data_feed.TextEmbedStore(text_cache_root(plan), s3)
    empty = next(iter(texts.load_captions([EMPTY_CAPTION]).values()))

    scheduler_config = family.noise_scheduler_config(plan.model, options)
    flow = plan.family.flow_matching
    num_train_timesteps = int(scheduler_config.get("num_train_timesteps") or 1000)
    prediction_type = options.get("prediction_type") or plan.family.prediction_types[0]
    alphas = None
    if not flow:
        alphas = noise.alphas_cumprod_from_config(
            scheduler_config, rescale_betas_zero_snr=bool(options["rescale_betas_zero_snr"])
        ).to(ctx.device)

    first_plan = data_feed.plan_epoch(
        datasets, epoch=0, seed=seed, world_size=ctx.world_size, **data_feed.plan_options(options)
    )
    steps_per_epoch = data_feed.steps_per_epoch(first_plan)
    total_steps, num_epochs = training_length(options, steps_per_epoch)
    scheduler = build_scheduler(optimizer, options, total_steps, world_size=ctx.world_size)
    return Run(
        plan=plan,
        family=family,
        denoiser=denoiser,
        core=core,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        datasets=datasets,
        latents=latents,
        texts=texts,
        empty_caption=empty,
        noise_sampler=noise.NoiseSampler.from_options(options, flow_matching=flow),
        timestep_sampler=timesteps.TimestepSampler.from_options(
            options,
            flow_matching=flow,
            num_train_timesteps=num_train_timesteps,
            scheduler_config=scheduler_config,
        ),
        loss_config=LossConfig.from_options(options, flow_matching=flow),
        alphas_cumprod=alphas,
        prediction_type=prediction_type,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        num_epochs=num_epochs,
        dtype=dtype,
    )


def load_denoiser(
    plan: Plan, family: Any, dtype: torch.dtype, device: torch.device
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


def training_length(options: dict[str, Any], steps_per_epoch: int) -> tuple[int, int]:
    """(total optimizer steps, epochs). max_train_steps, when set, decides and the epoch count
    follows from it (SimpleTuner: 0 means "use num_train_epochs")."""
    max_steps = int(options.get("max_train_steps") or 0)
    if max_steps:
        return max_steps, math.ceil(max_steps / max(steps_per_epoch, 1))
    epochs = int(options.get("num_train_epochs") or 0)
    return epochs * steps_per_epoch, epochs


def plan_for(run: Run, progress: Progress, ctx: WorkerContext) -> data_feed.EpochPlan:
    return data_feed.plan_epoch(
        run.datasets,
        epoch=progress.epoch,
        seed=progress.seed,
        world_size=ctx.world_size,
        **data_feed.plan_options(run.plan.options),
    )


# ---------------------------------------------------------------------------- one step


def train_step(
    run: Run, group: list[list[data_feed.Sample]], generator: torch.Generator, step: int
) -> float:
    """One optimizer step over ``group`` (gradient_accumulation_steps batches)."""
    options = run.plan.options
    wait = time.perf_counter()
    batches = [load_batch(run, samples, generator) for samples in group]
    run.metrics["data_wait_s"] = time.perf_counter() - wait
    total = 0.0
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        sync = (
            contextlib.nullcontext()
            if last or not hasattr(run.denoiser, "no_sync")
            else (run.denoiser.no_sync())
        )
        kernel = attention.context(options, run.core_device)
        with sync, _autocast(options, run.dtype, run.core), kernel:
            loss = batch_loss(run, batch, generator, step) / len(batches)
        loss.backward()
        total += float(loss.detach())
    run.metrics["grad_norm"] = _clip(run, options)  # before step: schedule-free rewrites .grad
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=bool(options.get("set_grads_to_none", True)))
    if run.ema is not None:
        run.ema.step(step + 1)
    return total


def load_batch(
    run: Run, samples: list[data_feed.Sample], generator: torch.Generator
) -> dict[str, Any]:
    dataset_id = samples[0].dataset_id
    latents = run.latents[dataset_id].load(s.content_hash for s in samples)
    texts = run.texts.load_captions(data_feed.batch_captions(samples))
    return data_feed.collate(
        samples,
        latents,
        texts,
        caption_dropout_probability=float(run.plan.options["caption_dropout_probability"] or 0),
        generator=generator,
        empty_caption_embeds=run.empty_caption,
    )


def batch_loss(
    run: Run, batch: dict[str, Any], generator: torch.Generator, step: int
) -> torch.Tensor:
    device = next(run.core.parameters()).device
    x0 = batch["latents"].to(device, torch.float32)
    draw = run.timestep_sampler.sample(
        x0.shape[0], generator, image_seq_len=timesteps.image_seq_len(x0.shape[1:])
    )
    target_noise, input_noise = run.noise_sampler.sample(x0, generator, step)
    t = draw.timesteps.to(device)
    if draw.sigmas is None:
        noisy = noise.add_noise(x0, input_noise, t, run.alphas_cumprod)
        target = noise.ddpm_target(run.prediction_type, x0, target_noise, t, run.alphas_cumprod)
        snr = noise.snr(t, run.alphas_cumprod)
    else:
        noisy = noise.flow_noisy(x0, input_noise, draw.sigmas.to(device))
        target = noise.flow_target(x0, target_noise)
        snr = None
    inputs = {
        **{k: v.to(device) for k, v in batch["text_embeds"].items()},
        **{k: batch[k].to(device) for k in ("original_size", "crop_top_left", "target_size")},
    }
    if regularisation.is_regularisation_batch(run.datasets, batch):  # before: aux_loss state
        target = regularisation.base_model_target(
            lambda gen: run.family.predict(
                run.core, noisy.to(run.dtype), t, inputs, run.plan.options, generator=gen
            ),
            run.core,
            generator,
        )
    pred = run.family.predict(
        run.denoiser, noisy.to(run.dtype), t, inputs, run.plan.options, generator=generator
    ).float()
    loss = compute_loss(
        run.loss_config,
        pred,
        target.float(),
        timesteps=t,
        snr=snr,
        prediction_type="flow_matching" if draw.sigmas is not None else run.prediction_type,
        num_train_timesteps=run.timestep_sampler.num_train_timesteps,
    )
    # A family's own loss term from that forward pass (HiDream's MoE load balancing).
    extra = run.family.aux_loss(run.denoiser, run.plan.options)
    return loss if extra is None else loss + extra.to(loss.device, loss.dtype)


# ---------------------------------------------------------------------------- checkpoints


def report_checkpoint(
    run: Run,
    ctx: WorkerContext,
    progress: Progress,
    metrics: dict[str, Any],
    generator: torch.Generator,
) -> None:
    """Every rank reports; rank 0 attaches the checkpoint (DDP replicas hold the same weights)."""
    if ctx.rank != 0:
        ctx.report(metrics, None)
        return
    # The report takes ownership of the folder: Ray uploads it in the background and deletes
    # it afterwards, so training does not wait on the upload.
    directory = Path(tempfile.mkdtemp(prefix="st_ray-ckpt-"))
    with evaluation_mode(run):
        files = save_weights(run, directory)
        checkpoints.save_state(
            directory,
            {
                # The adapter exactly as trained (PEFT keys) for resume; the .safetensors file
                # beside it is the diffusers-format export that people load.
                "adapter": _adapter_state(run),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "ema": run.ema.state_dict() if run.ema is not None else None,
                "rng": checkpoints.rng_state(),
                "generator": generator.get_state(),
            },
        )
        checkpoints.write_manifest(
            directory,
            progress,
            model_type=run.plan.options["model_type"],
            family=run.plan.family.name,
            files=[*files, checkpoints.STATE],
            fingerprint=config_fingerprint(run.plan),
        )
    ctx.report(metrics, directory)


def save_weights(run: Run, directory: Path) -> list[str]:
    """The denoiser weights in diffusers layout; returns the paths written (relative)."""
    if lycoris_adapter.enabled(run.plan.options):
        return lycoris_adapter.save(run.core, directory, _modelspec(run.plan.options))
    if run.plan.options["model_type"] == "lora":
        adapters.save_lora(
            run.core,
            run.plan.family.name,
            directory,
            lora_format=str(run.plan.options.get("lora_format") or "diffusers"),
            metadata=_modelspec(run.plan.options),
        )
        return [adapters.WEIGHT_NAME]
    run.core.save_pretrained(directory / run.plan.family.denoiser, safe_serialization=True)
    return [run.plan.family.denoiser]


def restore(run: Run, directory: Path, generator: torch.Generator) -> Progress:
    manifest = checkpoints.read_manifest(directory)
    state = checkpoints.load_state(directory)
    if lycoris_adapter.enabled(run.plan.options):
        lycoris_adapter.load_state_dict(run.core, state["adapter"])
    elif run.plan.options["model_type"] == "lora":
        adapters.load_lora_state_dict(run.core, state["adapter"])
    else:
        loaded = type(run.core).from_pretrained(directory / run.plan.family.denoiser)
        run.core.load_state_dict(loaded.state_dict())
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.ema is not None and state["ema"] is not None:
        run.ema.load_state_dict(state["ema"])
    checkpoints.restore_rng(state["rng"])
    generator.set_state(state["generator"])
    return checkpoints.progress_from(manifest)


def _config_dir(plan: Plan) -> Path | None:
    path = plan.config.config_path
    return Path(path).parent if path else None


def _modelspec(options: dict[str, Any]) -> dict[str, str] | None:
    """modelspec_comment travels in the safetensors header, where model viewers show it."""
    comment = options.get("modelspec_comment")
    return {"modelspec.comment": str(comment)} if comment else None


def final_output_dir(options: dict[str, Any]) -> Path:
    """output_dir, or output_dir/<hub_model_id> when a model id is given (SimpleTuner)."""
    output_dir = Path(options["output_dir"])
    model_id = options.get("hub_model_id")
    return output_dir / str(model_id).split("/")[-1] if model_id else output_dir


def _adapter_state(run: Run) -> dict[str, torch.Tensor] | None:
    if run.plan.options["model_type"] != "lora":
        return None
    if lycoris_adapter.enabled(run.plan.options):
        return lycoris_adapter.state_dict(run.core)
    return {k: v.detach().cpu().clone() for k, v in adapters.lora_state_dict(run.core).items()}


def config_fingerprint(plan: Plan) -> str:
    text = json.dumps(plan.to_dict()["options"], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def export_final(run: Run, output_dir: Path) -> list[str]:
    """The final weights in output_dir, loadable by diffusers (EMA weights when use_ema)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    swap = run.ema.swapped_in() if run.ema is not None else contextlib.nullcontext()
    with evaluation_mode(run), swap:
        return save_weights(run, output_dir)


@contextlib.contextmanager
def evaluation_mode(run: Run):
    """Schedule-free optimizers hold training-mode weights; saving needs the averaged ones."""
    set_train_mode(run.optimizer, False)
    try:
        yield
    finally:
        set_train_mode(run.optimizer, True)


# ---------------------------------------------------------------------------- context


def ray_context() -> WorkerContext:
    """This worker's rank, device and reporting, from Ray Train."""
    import ray.train

    context = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    resume_dir = None
    if checkpoint is not None:
        resume_dir = Path(tempfile.mkdtemp(prefix="st_ray-resume-"))
        checkpoint.to_directory(str(resume_dir))
        if context.get_world_rank() == 0:  # in the job's log: where this attempt starts
            say(f"resuming from checkpoint {checkpoint.path}")

    def report(metrics: dict[str, Any], directory: Path | None) -> None:
        if directory is None:
            ray.train.report(metrics)
            return
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
            checkpoint_dir_name=f"checkpoint-{metrics['step']}",
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
        )

    return WorkerContext(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=pick_device(),
        report=report,
        resume_dir=resume_dir,
        report_each_step=False,
    )


def empty_device_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def rank_seed(options: dict[str, Any], seed: int, ctx: WorkerContext) -> int:
    """seed_for_each_device gives every rank its own noise stream (the usual choice: ranks
    would otherwise draw identical noise for different images); off, all ranks share one."""
    return seed + 7919 * ctx.rank if options.get("seed_for_each_device", True) else seed


def _run_seed(options: dict[str, Any]) -> int:
    seed = options.get("seed")
    return int(seed) if seed is not None else 0


def _weight_dtype(options: dict[str, Any], device: torch.device) -> torch.dtype:
    """Frozen base weights in the mixed-precision dtype on GPUs; fp32 on CPU (CPU half math
    is slow and partly unsupported). Trainable weights stay fp32 (see _autocast)."""
    if device.type != "cuda":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        str(options.get("mixed_precision")), torch.float32
    )


def _autocast(
    options: dict[str, Any], dtype: torch.dtype, model: torch.nn.Module
) -> contextlib.AbstractContextManager:
    device = next(model.parameters()).device
    if device.type != "cuda" or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def _clip(run: Run, options: dict[str, Any]) -> float:
    params = [p for p in run.core.parameters() if p.requires_grad and p.grad is not None]
    max_norm = float(options.get("max_grad_norm") or 0)
    if not SPECS[options["optimizer"]].clip_gradients:
        max_norm = 0.0  # SimpleTuner leaves these optimizers' gradients unclipped
    norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
    if max_norm > 0:
        if options.get("grad_clip_method") == "value":
            torch.nn.utils.clip_grad_value_(params, max_norm)
        else:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return float(norm)


def _wrap_ddp(core: torch.nn.Module, ctx: WorkerContext) -> torch.nn.Module:
    if ctx.world_size == 1:
        return core
    import ray.train.torch

    return ray.train.torch.prepare_model(core, move_to_device=False)
