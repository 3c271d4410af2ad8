"""The bare PyTorch loop ``bench train`` compares st_ray against: the same denoiser, LoRA and
optimizer as the run's plan, stepping on random in-memory tensors already on the device with
the shapes the caches hold (``cached_shapes``); no data loading, checkpointing, LR scheduler,
gradient-norm/clipping or tracking."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from st_ray.plan import Plan


@dataclass
class CachedShapes:
    bucket: tuple[int, int]  # (width, height) in pixels
    latent: tuple[int, ...]  # one latent, (C, h, w)
    text: dict[str, tuple[tuple[int, ...], Any]]  # key -> (shape without batch, torch dtype)


def cached_shapes(plan: Plan) -> CachedShapes:
    """The shapes (and the embeddings' dtypes) the loop reads from the caches."""
    from st_ray.data.pipeline import text_cache_root
    from st_ray.storage import S3Settings
    from st_ray.train import data_feed

    s3 = S3Settings.from_options(plan.options)
    entry = next(d for d in plan.datasets if d.is_image)
    root = str(entry["cache_dir_vae"])
    samples = data_feed.load_dataset_samples(root, entry, s3).samples
    if not samples:
        raise RuntimeError(f"no cached latents in {root}")
    buckets = {s.bucket for s in samples}
    if len(buckets) != 1:
        raise RuntimeError(f"expected one aspect bucket, got {sorted(buckets)}")
    first = samples[0]
    (latent,) = data_feed.LatentStore(root, s3).load([first.content_hash]).values()
    texts = data_feed.TextEmbedStore(text_cache_root(plan), s3)
    (embeds,) = texts.load_captions(first.captions[:1]).values()
    return CachedShapes(
        first.bucket, tuple(latent.shape), {k: (tuple(v.shape), v.dtype) for k, v in embeds.items()}
    )


class BareLoop:
    """The bare loop (see the module docstring): built as the loop's ``build_run`` builds its
    denoiser, LoRA and optimizer; ``step()`` runs one optimizer step and returns its seconds."""

    def __init__(self, plan: Plan, shapes: CachedShapes) -> None:
        import torch

        from st_ray.device import pick_device
        from st_ray.models.family import get_family_module
        from st_ray.train import adapters, noise
        from st_ray.train.optimizers import build_optimizer
        from st_ray.train.settings import weight_dtype

        options = self.options = plan.options
        device = self.device = pick_device()
        seed = int(options.get("seed") or 0)
        family = self.family = get_family_module(plan.family.name)
        dtype = self.dtype = weight_dtype(options, device)
        # Built while st_ray's loop runs: seed the LoRA init without touching its global RNG.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            core = self.core = family.load_denoiser(
                plan.model, dtype=dtype, device=device, options=options
            )
            core.requires_grad_(False)
            adapters.add_lora(core, plan.family.name, options)
        core.train()
        params = [p for p in core.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, options)

        scheduler_config = family.noise_scheduler_config(plan.model, options)
        self.flow = plan.family.flow_matching
        self.num_timesteps = int(scheduler_config.get("num_train_timesteps") or 1000)
        self.prediction_type = options.get("prediction_type") or plan.family.prediction_types[0]
        self.alphas = None
        if not self.flow:
            self.alphas = noise.alphas_cumprod_from_config(
                scheduler_config, rescale_betas_zero_snr=bool(options["rescale_betas_zero_snr"])
            ).to(device)

        batch = self.batch = int(options["train_batch_size"])
        self.on_device = torch.Generator(device=device).manual_seed(seed)
        self.on_cpu = torch.Generator().manual_seed(
            seed
        )  # for per-step draws (e.g. random guidance)
        self.x0 = torch.randn((batch, *shapes.latent), generator=self.on_device, device=device)
        width, height = shapes.bucket
        # What collate gives the size-conditioning inputs: (height, width), crops at (0, 0).
        sizes = torch.tensor([[height, width]] * batch, dtype=torch.long, device=device)
        self.inputs = {
            **{
                key: torch.randn((batch, *shape), generator=self.on_device, device=device).to(kind)
                for key, (shape, kind) in shapes.text.items()
            },
            "original_size": sizes,
            "target_size": sizes,
            "crop_top_left": torch.zeros_like(sizes),
        }

    def step(self) -> float:
        import torch
        import torch.nn.functional as F

        from st_ray.train import noise
        from st_ray.train.step import autocast

        x0, device, gen = self.x0, self.device, self.on_device
        self._sync()  # st_ray's step may still be running on the GPU
        start = time.perf_counter()
        eps = torch.randn(x0.shape, generator=gen, device=device)
        if self.flow:
            sigmas = torch.rand(self.batch, generator=gen, device=device)
            t = sigmas * 1000
            noisy, target = noise.flow_noisy(x0, eps, sigmas), noise.flow_target(x0, eps)
        else:
            t = torch.randint(0, self.num_timesteps, (self.batch,), generator=gen, device=device)
            noisy = noise.add_noise(x0, eps, t, self.alphas)
            target = noise.ddpm_target(self.prediction_type, x0, eps, t, self.alphas)
        with autocast(self.dtype, self.core):
            pred = self.family.predict(
                self.core, noisy.to(self.dtype), t, self.inputs, self.options, generator=self.on_cpu
            ).output
            loss = F.mse_loss(pred.float(), target.float())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._sync()  # the GPU runs ahead; time the work, not the launch
        return time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)


def run_bare(
    plan: Plan, shapes: CachedShapes, steps: int, threads: int | None = None
) -> list[float]:
    """``steps`` bare steps in this process with ``threads`` torch threads (None: as set)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        loop = BareLoop(plan, shapes)
        return [loop.step() for _ in range(steps)]
    finally:
        torch.set_num_threads(previous)
