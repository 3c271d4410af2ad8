"""Sizing figures for splitting GPUs between caching and training (clusters/README.md).

Counts, with torch's FLOP counter on the meta device (no weights, no GPU, seconds on a CPU),
the work of the two stages for the real architecture of ``st_ray.zoo.SIZING_FAMILY``: one VAE
encode per image (the caching stage, once per image) and one denoiser forward per training
sample. A LoRA training
sample costs about 2 forwards (forward + backward through the activations; LoRA's weight
gradients are negligible), a full fine-tune about 3. The FLOPs are then turned into
per-GPU rates with the vendors' published dense BF16 peaks and an assumed utilisation
(``--mfu``): estimates to size a cluster with, not measurements of a GPU.

    python -m st_ray.bench sizing [--resolution 1024] [--mfu 0.35]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from st_ray.zoo import SIZING_FAMILY

# Published dense (no sparsity) BF16/FP16 tensor-core peaks, TFLOPS.
GPUS = {
    "T4": (65.0, "NVIDIA T4 datasheet (FP16 mixed precision)"),
    "L4": (121.0, "NVIDIA L4 datasheet (BF16, 242 with sparsity)"),
    "A100": (312.0, "NVIDIA A100 datasheet (BF16)"),
    "H100 SXM": (989.0, "NVIDIA H100 datasheet (BF16, 1979 with sparsity)"),
}
TRAIN_FORWARDS = {"lora": 2.0, "full": 3.0}


@dataclass(frozen=True)
class Work:
    resolution: int
    vae_encode_tflop: float  # per image, once (caching)
    unet_forward_tflop: float  # per sample and step (training)
    unet_params: int


def count(resolution: int) -> Work:
    """FLOPs of the sizing family's VAE encode and denoiser forward at ``resolution``
    (square), its real architecture built on the meta device by its zoo recipe."""
    from torch.utils.flop_counter import FlopCounterMode

    from st_ray import zoo

    load = zoo.reference_workload(resolution)
    with FlopCounterMode(display=False) as vae_flops:
        load.encode()
    with FlopCounterMode(display=False) as denoiser_flops:
        load.forward()
    return Work(
        resolution,
        vae_flops.get_total_flops() / 1e12,
        denoiser_flops.get_total_flops() / 1e12,
        sum(p.numel() for p in load.denoiser.parameters()),
    )


def per_gpu_rates(work: Work, peak_tflops: float, mfu: float) -> dict[str, float]:
    """Images/s a GPU encodes and samples/s it trains (LoRA, full) at ``mfu`` of its peak."""
    effective = peak_tflops * mfu
    return {
        "encode_images_s": effective / work.vae_encode_tflop,
        **{
            f"train_{kind}_samples_s": effective / (work.unet_forward_tflop * forwards)
            for kind, forwards in TRAIN_FORWARDS.items()
        },
    }


def report(work: Work, mfu: float) -> str:
    lines = [
        f"{SIZING_FAMILY} at {work.resolution}x{work.resolution} "
        f"(denoiser {work.unet_params / 1e9:.3f} B params)",
        f"  VAE encode (caching, once per image)   {work.vae_encode_tflop:.2f} TFLOP / image",
        f"  denoiser forward (training, each step)  {work.unet_forward_tflop:.2f} TFLOP / sample",
        f"  LoRA step ~{TRAIN_FORWARDS['lora']:.0f} forwards, full ~{TRAIN_FORWARDS['full']:.0f}",
        "",
        f"per GPU at {mfu:.0%} of the published dense BF16 peak (estimates):",
        f"  {'GPU':9} {'peak':>6} {'encode img/s':>13} {'LoRA smp/s':>11} {'full smp/s':>11}",
    ]
    for name, (peak, _source) in GPUS.items():
        rates = per_gpu_rates(work, peak, mfu)
        lines.append(
            f"  {name:9} {peak:6.0f} {rates['encode_images_s']:13.1f} "
            f"{rates['train_lora_samples_s']:11.2f} {rates['train_full_samples_s']:11.2f}"
        )
    lines.append("")
    lines += [f"  {name}: {source}" for name, (_peak, source) in GPUS.items()]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    for resolution in args.resolution:
        print(report(count(resolution), args.mfu))
        print()
    return 0
