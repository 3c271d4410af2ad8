"""A deterministic evaluation loss: the number a sweep ranks trials on.

Evaluation samples come from the datasets marked ``"dataset_type": "eval"`` in
multidatabackend.json (cached like image datasets, never trained on), or only the one
``eval_dataset_id`` names. Everything random is fixed once, before the first step, and never
redrawn (the ideas of "Demystifying SD fine-tuning", which SimpleTuner's eval loss follows):

* the samples: the first ``num_eval_images`` of each eval dataset in content-hash order,
  each with its first caption;
* the noise levels: ``eval_timesteps`` levels spread evenly over the schedule (DDPM: integer
  timesteps 0..T-1; flow matching: sigmas (i+1)/(n+1), unshifted);
* the noise: one tensor per (sample, level), seeded by a fixed seed and the sample's hash.

The loss is the plain mean squared error between the prediction and the target, averaged over
samples and levels -- deliberately NOT the training loss (no snr_gamma weighting, no huber,
no noise offset), so that two trials with different loss settings are compared on the same
quantity. Computed on rank 0 with the unwrapped denoiser in eval mode, without gradients.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from st_ray.plan import Plan
from st_ray.train import controlnet, data_feed, noise, timesteps

# Independent of the run's seed: trials with different seeds still see the same eval noise.
EVAL_NOISE_SEED = 20240917


def eval_datasets(plan: Plan) -> list[Any]:
    """The dataset entries evaluated: every ``eval`` dataset, or the one eval_dataset_id names."""
    wanted = plan.options.get("eval_dataset_id")
    evals = [d for d in plan.datasets if d.dataset_type == "eval"]
    return [d for d in evals if d.id == wanted] if wanted else evals


def is_enabled(plan: Plan) -> bool:
    return bool(eval_datasets(plan)) and not plan.options.get("eval_loss_disable")


def eval_levels(
    count: int, *, flow_matching: bool, num_train_timesteps: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(timesteps, sigmas) of ``count`` noise levels spread evenly over the schedule."""
    if count < 1:
        raise ValueError("eval_timesteps must be at least 1")
    if flow_matching:
        sigmas = torch.arange(1, count + 1, dtype=torch.float32) / (count + 1)
        return timesteps.flow_timesteps(sigmas, num_train_timesteps), sigmas
    steps = torch.linspace(0, num_train_timesteps - 1, count).round().long()
    return steps, None


def step_interval(options: Mapping[str, Any], steps_per_epoch: int) -> int:
    """Steps between evaluations (the shorter of eval_steps_interval and eval_epoch_interval in
    steps; fractions of an epoch run several times per epoch); 0 = only at the last step."""
    steps = int(options.get("eval_steps_interval") or 0)
    epochs = float(options.get("eval_epoch_interval") or 0)
    from_epochs = max(1, round(epochs * steps_per_epoch)) if epochs > 0 else 0
    candidates = [s for s in (steps, from_epochs) if s > 0]
    return min(candidates) if candidates else 0


@dataclass
class EvalBatch:
    dataset_id: str
    batch: dict[str, Any]  # collated latents, text embeds, size conditioning
    noise: torch.Tensor  # (levels, B, C, h, w), fixed


class EvalLoss:
    """The fixed evaluation set of a run and the loss of the current weights on it."""

    def __init__(
        self,
        batches: list[EvalBatch],
        levels: tuple[torch.Tensor, torch.Tensor | None],
        *,
        pooled: bool,
    ) -> None:
        self.batches = batches
        self.timesteps, self.sigmas = levels
        self.pooled = pooled

    @classmethod
    def from_run(cls, run: Any) -> EvalLoss | None:
        """Built on rank 0 once per run (``run``: the worker's Run); None when no eval dataset."""
        plan: Plan = run.plan
        if not is_enabled(plan):
            return None
        options = plan.options
        s3 = _s3(options)
        count = int(options.get("num_eval_images") or 4)
        batch_size = int(options.get("train_batch_size") or 1)
        levels = eval_levels(
            int(options.get("eval_timesteps") or 28),
            flow_matching=run.alphas_cumprod is None,
            num_train_timesteps=run.timestep_sampler.num_train_timesteps,
        )
        batches: list[EvalBatch] = []
        for entry in eval_datasets(plan):
            samples = data_feed.load_dataset_samples(str(entry["cache_dir_vae"]), entry, s3)
            # The first caption of each sample: collate would otherwise draw one at random.
            chosen = [
                dataclasses.replace(s, captions=s.captions[:1])
                for s in samples.samples.first_by_hash(count)
            ]
            if not chosen:
                raise ValueError(
                    f"eval dataset '{entry.id}' has no cached samples; check its "
                    "instance_data_dir and the caching summary"
                )
            store = data_feed.LatentStore(str(entry["cache_dir_vae"]), s3)
            for group in _bucket_batches(chosen, batch_size):
                batch = data_feed.collate(
                    group,
                    store.load(s.content_hash for s in group),
                    run.texts.load_captions(data_feed.batch_captions(group)),
                    caption_dropout_probability=0.0,
                    generator=torch.Generator().manual_seed(EVAL_NOISE_SEED),
                )
                shape = (len(levels[0]), *batch["latents"].shape[1:])
                eps = torch.stack([_sample_noise(s.content_hash, shape) for s in group], dim=1)
                batches.append(EvalBatch(entry.id, batch, eps))
        return cls(
            batches,
            levels,
            pooled=bool(options.get("eval_dataset_pooling")),
        )

    @torch.no_grad()
    def compute(self, run: Any) -> dict[str, float]:
        """``eval_loss`` (every eval sample), plus ``eval_loss/<dataset id>`` per dataset
        unless eval_dataset_pooling."""
        model = run.core
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        try:
            for item in self.batches:
                x0 = item.batch["latents"].to(device, torch.float32)
                inputs = {
                    **{k: v.to(device) for k, v in item.batch["text_embeds"].items()},
                    **{
                        k: item.batch[k].to(device)
                        for k in ("original_size", "crop_top_left", "target_size")
                    },
                }
                if run.plan.options.get("controlnet"):  # eval pairs carry control images too
                    inputs["controlnet_cond"] = controlnet.control_image(item.batch).to(device)
                for level in range(len(self.timesteps)):
                    eps = item.noise[level].to(device)
                    loss = self._level_loss(run, model, x0, eps, level, inputs)
                    sums[item.dataset_id] = sums.get(item.dataset_id, 0.0) + loss * len(x0)
                    counts[item.dataset_id] = counts.get(item.dataset_id, 0) + len(x0)
        finally:
            model.train(was_training)
        metrics = {"eval_loss": sum(sums.values()) / max(sum(counts.values()), 1)}
        if not self.pooled and len(sums) > 1:
            metrics.update({f"eval_loss/{k}": sums[k] / counts[k] for k in sorted(sums)})
        # A diverged model (NaN/inf predictions) is infinitely bad, not "not measured": inf
        # ranks it last and lets early stopping (ASHA) stop it; NaN would compare as neither.
        return {k: v if math.isfinite(v) else math.inf for k, v in metrics.items()}

    def _level_loss(
        self,
        run: Any,
        model: torch.nn.Module,
        x0: torch.Tensor,
        eps: torch.Tensor,
        level: int,
        inputs: dict[str, torch.Tensor],
    ) -> float:
        batch = x0.shape[0]
        t = self.timesteps[level].expand(batch).to(x0.device)
        if self.sigmas is None:
            noisy = noise.add_noise(x0, eps, t, run.alphas_cumprod)
            target = noise.ddpm_target(run.prediction_type, x0, eps, t, run.alphas_cumprod)
        else:
            sigma = self.sigmas[level].expand(batch).to(x0.device)
            noisy = noise.flow_noisy(x0, eps, sigma)
            target = noise.flow_target(x0, eps)
        generator = torch.Generator().manual_seed(EVAL_NOISE_SEED)
        pred = run.family.predict(
            model, noisy.to(run.dtype), t, inputs, run.plan.options, generator=generator
        ).output.float()
        return float(torch.nn.functional.mse_loss(pred, target.float()))


def _sample_noise(content_hash: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A sample's noise at every level, from its own seed: the same whatever the batch size or
    the other samples evaluated."""
    seed = (EVAL_NOISE_SEED * 1_000_003 + int(content_hash[:12], 16)) % (2**63)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _bucket_batches(samples: Sequence[data_feed.Sample], size: int) -> list[list[Any]]:
    """Batches of at most ``size`` samples, each from one bucket (collate needs one shape)."""
    by_bucket: dict[tuple[int, int], list[data_feed.Sample]] = {}
    for sample in samples:
        by_bucket.setdefault(tuple(sample.bucket), []).append(sample)
    return [
        group[i : i + size]
        for _, group in sorted(by_bucket.items())
        for i in range(0, len(group), size)
    ]


def _s3(options: Mapping[str, Any]) -> Any:
    from st_ray.storage import S3Settings

    return S3Settings.from_options(options)
