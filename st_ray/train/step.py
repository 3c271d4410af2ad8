"""One optimizer step: load the group's batches, the diffusion loss of each, backward with DDP
synchronising on the last, clip, step the optimizer, the LR schedule and EMA."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import torch

from st_ray.train import (
    attention,
    controlnet,
    data_feed,
    diff2flow,
    layersync,
    loss_masks,
    noise,
    regularisation,
    rollout,
    timesteps,
    tread,
)
from st_ray.train.losses import compute_loss

if TYPE_CHECKING:
    from st_ray.train.build import Run


def train_step(
    run: Run, group: list[list[data_feed.Sample]], generator: torch.Generator, step: int
) -> float:
    """One optimizer step over ``group`` (gradient_accumulation_steps batches)."""
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
        kernel = attention.context(run.plan.options, run.core_device)
        with tread.routing(run.tread):  # the backward's checkpoint recomputes route alike
            with sync, autocast(run.dtype, run.core), kernel:
                loss = batch_loss(run, batch, generator, step) / len(batches)
            loss.backward()
        total += float(loss.detach())
    if run.text_training is not None:
        run.text_training.sync_gradients()
    if run.crepa is not None:
        run.crepa.sync_gradients(_world_size())
    run.metrics["grad_norm"] = clip_gradients(run)  # before step: schedule-free rewrites .grad
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=run.loop.grads_to_none)
    if run.ema is not None:
        run.ema.step(step + 1)
    if run.text_training is not None:
        run.text_training.after_step(step + 1, run.total_steps)
    return total


def load_batch(
    run: Run, samples: list[data_feed.Sample], generator: torch.Generator
) -> dict[str, Any]:
    latents, texts = run.feed.rows(samples)
    return data_feed.collate(
        samples,
        latents,
        texts,
        caption_dropout_probability=run.loop.caption_dropout,
        generator=generator,
        empty_caption_embeds=run.empty_caption,
        conditioning_sampling=str(run.plan.options["conditioning_multidataset_sampling"]),
    )


def batch_loss(
    run: Run, batch: dict[str, Any], generator: torch.Generator, step: int
) -> torch.Tensor:
    device = run.core_device
    x0 = batch["latents"].to(device, torch.float32)
    draw = run.timestep_sampler.sample(
        x0.shape[0], generator, image_seq_len=timesteps.image_seq_len(x0.shape)
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
    embeds = dict(batch["text_embeds"])
    if run.text_training is not None:  # captions through the trained encoders, not the cache
        embeds.update(run.text_training.encode(batch["captions"]))
    inputs = {
        **{k: v.to(device) for k, v in embeds.items()},
        **{k: batch[k].to(device) for k in ("original_size", "crop_top_left", "target_size")},
    }
    if run.plan.options.get("controlnet"):
        inputs["controlnet_cond"] = controlnet.control_image(batch).to(device)
    rolled = rollout.roll(run, x0, input_noise, draw.sigmas, inputs, generator, step)
    if rolled is not None:  # scheduled sampling: train on the model's own rollout
        noisy, t = rolled.noisy, rolled.timesteps.to(device)
    regularised = regularisation.is_regularisation_batch(run.datasets, batch)
    if regularised:  # before: aux_loss state

        def base_prediction(gen: torch.Generator | None) -> torch.Tensor:
            args = (run.core, noisy.to(run.dtype), t, inputs, run.plan.options)
            return run.family.predict(*args, generator=gen).output

        target = regularisation.base_model_target(base_prediction, run.core, generator)
    with layersync.capturing(run.layersync, run.crepa):
        prediction = run.family.predict(
            run.denoiser, noisy.to(run.dtype), t, inputs, run.plan.options, generator=generator
        )
    pred = prediction.output.float()
    probability = float(run.plan.options["masked_loss_probability"])
    mask = loss_masks.batch_mask(run.mask_kinds, batch, x0.shape[2:], probability, generator)
    if draw.sigmas is None and diff2flow.active(run.plan.options):
        convert = (noisy, t, run.alphas_cumprod, run.prediction_type)
        # Regularisation data: the base model's prediction, as a flow, is the target.
        flow = diff2flow.prediction_to_flow(target, *convert) if regularised else target_noise - x0
        loss = diff2flow.flow_loss(pred, *convert, target_flow=flow, mask=mask)
    elif rolled is not None and rolled.clean is not None:  # ReflexFlow
        loss = rollout.rolled_loss(run, pred, target.float(), t, x0, rolled, mask)
    else:
        loss = compute_loss(
            run.loss_config,
            pred,
            target.float(),
            timesteps=t,
            snr=snr,
            prediction_type="flow_matching" if draw.sigmas is not None else run.prediction_type,
            num_train_timesteps=run.timestep_sampler.num_train_timesteps,
            mask=mask,
        )
    if run.layersync is not None:
        term, similarity = run.layersync.loss()
        run.metrics.update(
            layersync_loss=float(term.detach()), layersync_similarity=float(similarity.detach())
        )
        loss = loss + term.to(loss.device)
    if run.crepa is not None:
        term, crepa_metrics = run.crepa.loss(x0, step)
        run.metrics.update(crepa_metrics)
        loss = loss + term.to(loss.device)
    # A family's own loss term from that forward pass (e.g. a MoE load-balancing loss).
    extra = prediction.aux_loss
    return loss if extra is None else loss + extra.to(loss.device, loss.dtype)


def autocast(dtype: torch.dtype, model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA when the base weights are half precision (``weight_dtype``)."""
    device = next(model.parameters()).device
    if device.type != "cuda" or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def clip_gradients(run: Run) -> float:
    """The gradients' total norm (logged as grad_norm), clipped to max_grad_norm when set."""
    trained = [*run.core.parameters(), *(run.crepa.parameters() if run.crepa else [])]
    if run.text_training is not None:
        trained += run.text_training.parameters()
    params = [p for p in trained if p.requires_grad and p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
    max_norm = run.loop.max_grad_norm
    if max_norm > 0:
        if run.loop.clip_by_value:
            torch.nn.utils.clip_grad_value_(params, max_norm)
        else:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return float(norm)


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
