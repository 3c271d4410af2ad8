"""CREPA: align a denoiser block's hidden states with a frozen visual encoder's features.

The block's output (``FamilySpec.hidden_blocks``, 0-based ``crepa_block_index`` as in
SimpleTuner) goes through a trained projection head (LayerNorm + Linear, fp32, trained with
the adapter and kept in checkpoints) and is compared with the features of the same image: an
image is one frame, a video's frames and neighbours follow st_ray.train.crepa_math.

Where the pixels come from (decided as SimpleTuner does): the clean training latents are
decoded with the family's VAE inside the step (no gradient), resized to
``crepa_encoder_image_size`` and normalised with the ImageNet statistics DINOv2 was trained
with. The cache is not touched, so turning CREPA on needs no re-cache and any later latent
augmentation is seen by both sides. The cost is a VAE decode and an encoder forward per step,
and both models held on the worker. ``crepa_use_backbone_features`` replaces the encoder by a
deeper block of the same forward pass (``crepa_teacher_block_index``), detached: no VAE, no
encoder.

The encoder is any transformers ``AutoModel`` whose ``last_hidden_state`` is CLS (+ register
tokens) then a square grid of patch tokens (DINOv2 with or without registers). SimpleTuner's
torch.hub names map to the Hub's DINOv2 repositories.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from st_ray.train import crepa_math
from st_ray.train.layersync import Capture, check_index, denoiser_blocks, tokens

# SimpleTuner's crepa_model names (torch.hub) -> the same weights on the Hugging Face Hub.
ENCODERS = {
    "dinov2_vits14": "facebook/dinov2-small",
    "dinov2_vitb14": "facebook/dinov2-base",
    "dinov2_vitl14": "facebook/dinov2-large",
    "dinov2_vitg14": "facebook/dinov2-giant",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def encoder_source(name: str) -> str:
    """The Hub id or local folder ``crepa_model`` names."""
    return ENCODERS.get(name.strip().lower().replace("-", "_"), name)


@dataclass(frozen=True)
class Settings:
    student: int
    teacher: int | None  # backbone mode only
    distance: int
    tau: float
    cumulative: bool
    normalize_by_frames: bool
    spatial_align: bool
    encoder: str
    image_size: int
    frames_batch: int

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Settings | None:
        if not options.get("crepa_enabled"):
            return None
        student = int(options.get("crepa_block_index") or 0)
        teacher = options.get("crepa_teacher_block_index")
        return cls(
            student=student,
            teacher=(
                (student if teacher is None else int(teacher))
                if options.get("crepa_use_backbone_features")
                else None
            ),
            distance=int(options.get("crepa_adjacent_distance") or 0),
            tau=float(options.get("crepa_adjacent_tau") or 1.0),
            cumulative=bool(options.get("crepa_cumulative_neighbors")),
            normalize_by_frames=bool(options.get("crepa_normalize_by_frames", True)),
            spatial_align=bool(options.get("crepa_spatial_align", True)),
            encoder=encoder_source(str(options.get("crepa_model") or "dinov2_vitg14")),
            image_size=int(options.get("crepa_encoder_image_size") or 518),
            frames_batch=int(options.get("crepa_encoder_frames_batch_size") or -1),
        )


def projector(width: int, target: int) -> torch.nn.Module:
    """SimpleTuner's CREPA head: LayerNorm over the block width, then Linear to the target's."""
    return torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, target))


def load_encoder(source: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(source, torch_dtype=dtype)
    return encoder.to(device).eval().requires_grad_(False)


def encoder_grid(encoder: torch.nn.Module, image_size: int) -> tuple[int, int]:
    patch = encoder.config.patch_size
    side = image_size // (patch[0] if isinstance(patch, list | tuple) else int(patch))
    return side, side


@torch.no_grad()
def encode_pixels(
    encoder: torch.nn.Module, pixels: torch.Tensor, settings: Settings
) -> torch.Tensor:
    """(B, 1, N, D) patch tokens of pixels (B, 3, H, W) in [-1, 1]: resized to the encoder's
    square input, ImageNet-normalised, CLS and register tokens dropped."""
    dtype = next(encoder.parameters()).dtype
    size = (settings.image_size, settings.image_size)
    x = torch.nn.functional.interpolate(
        ((pixels.float() + 1) / 2).clamp(0, 1), size=size, mode="bilinear", align_corners=False
    )
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = ((x - mean) / std).to(dtype)
    chunk = settings.frames_batch if settings.frames_batch > 0 else x.shape[0]
    skip = 1 + int(getattr(encoder.config, "num_register_tokens", 0) or 0)
    parts = [encoder(pixel_values=part).last_hidden_state[:, skip:] for part in x.split(chunk)]
    return torch.cat(parts).unsqueeze(1)


class Crepa:
    """Hooks on the student (and teacher) block, the projection head, the frozen encoder and
    VAE, and the weight schedule of one run."""

    def __init__(
        self,
        settings: Settings,
        capture: Capture,
        head: torch.nn.Module,
        schedule: crepa_math.Schedule,
        *,
        family: Any,
        encoder: torch.nn.Module | None = None,
        vae: Any = None,
    ) -> None:
        self.settings, self.capture, self.head, self.schedule = settings, capture, head, schedule
        self.family, self.encoder, self.vae = family, encoder, vae

    @classmethod
    def attach(
        cls,
        options: Mapping[str, Any],
        core: torch.nn.Module,
        family: Any,
        *,
        widths: Mapping[int, int] | None = None,
        probe: Any = None,
        total_steps: int,
        vae_loader: Any = None,
    ) -> Crepa | None:
        """Hooks on ``core``'s blocks and a fresh head; None when CREPA is off. The block
        widths come from ``widths`` or from ``probe()``, a forward pass of ``core`` that the
        hooks watch (the head must exist before the optimizer is built)."""
        settings = Settings.from_options(options)
        if settings is None:
            return None
        blocks = denoiser_blocks(core, family.spec.hidden_blocks)
        check_index("crepa_block_index", settings.student, blocks, one_based=False)
        wanted = {settings.student}
        if settings.teacher is not None:
            check_index("crepa_teacher_block_index", settings.teacher, blocks, one_based=False)
            wanted.add(settings.teacher)
        capture = Capture.on(blocks, wanted)
        if widths is None:  # fork_rng: the run's random streams are left as they were
            with torch.random.fork_rng(), torch.no_grad(), capture.capturing():
                probe()
            widths = {i: int(_width(capture.captured[i])) for i in wanted}
            capture.captured.clear()
        device = next(core.parameters()).device
        encoder = vae = None
        if settings.teacher is None:
            dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
            encoder = load_encoder(settings.encoder, device, dtype)
            target = int(encoder.config.hidden_size)
            vae = vae_loader() if vae_loader is not None else None
        else:
            target = widths[settings.teacher]
        with torch.random.fork_rng(devices=[]):
            head = projector(widths[settings.student], target).to(device, torch.float32)
        schedule = crepa_math.Schedule(options, total_steps)
        return cls(settings, capture, head, schedule, family=family, encoder=encoder, vae=vae)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.head.parameters())

    def capturing(self) -> contextlib.AbstractContextManager:
        return self.capture.capturing()

    def loss(self, x0: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """(the weighted term, metrics) of the last captured forward pass over clean latents
        ``x0`` (B, C, h, w) at global step ``step``."""
        captured = dict(self.capture.captured)
        self.capture.captured.clear()
        if self.schedule.off_for_good(step):
            zero = x0.new_zeros(())
            return zero, {"crepa_loss": 0.0, "crepa_weight": 0.0, "crepa_cutoff": 1.0}
        student = captured.get(self.settings.student)
        if student is None:
            raise RuntimeError("CREPA: crepa_block_index's block did not run in the forward")
        hidden, grid = crepa_math.as_frames(student)
        aspect = x0.shape[-1] / x0.shape[-2]
        grid = grid or crepa_math.grid_for(hidden.shape[2], aspect)
        projected = self.head(hidden.float())
        if self.settings.teacher is not None:
            features, feature_grid = crepa_math.as_frames(captured[self.settings.teacher].detach())
            feature_grid = feature_grid or crepa_math.grid_for(features.shape[2], aspect)
        else:
            features = encode_pixels(self.encoder, self.pixels(x0), self.settings)
            feature_grid = encoder_grid(self.encoder, self.settings.image_size)
        projected, features = crepa_math.align_tokens(
            projected,
            grid,
            features.float(),
            feature_grid,
            spatial_align=self.settings.spatial_align,
        )
        s = self.settings
        similarity = crepa_math.frame_similarity(
            projected,
            features,
            distance=s.distance,
            tau=s.tau,
            cumulative=s.cumulative,
            normalize_by_frames=s.normalize_by_frames,
        )
        weight = self.schedule.weight(step, similarity.alignment)
        term = -weight * similarity.score.mean()
        metrics = {
            "crepa_loss": float(term.detach()),
            "crepa_alignment_score": similarity.alignment,
            "crepa_similarity_self": similarity.self_similarity,
            "crepa_weight": weight,
            "crepa_cutoff": float(weight == 0.0),
        }
        if self.schedule.ema is not None:
            metrics["crepa_alignment_score_ema"] = self.schedule.ema
        return term, metrics

    @torch.no_grad()
    def pixels(self, x0: torch.Tensor) -> torch.Tensor:
        """The clean latents decoded to pixels in [-1, 1] (the family's own decode)."""
        dtype = next(self.vae.parameters()).dtype if self.vae is not None else x0.dtype
        return self.family.decode_latents(self.vae, x0.to(dtype)).float()

    def sync_gradients(self, world_size: int) -> None:
        """Average the head's gradients over the DDP ranks (the head sits outside the DDP
        wrapper); a rank whose term was off contributes zeros."""
        if world_size <= 1:
            return
        import torch.distributed as dist

        for p in self.head.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= world_size

    def state_dict(self) -> dict[str, Any]:
        return {
            "head": {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()},
            "schedule": self.schedule.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        self.schedule.load_state_dict(state["schedule"])


def _width(hidden: torch.Tensor) -> int:
    return tokens(hidden).shape[-1]


def probe_inputs(
    spec: Any, buckets: Iterator[tuple[int, int]], empty_caption: Mapping[str, torch.Tensor]
) -> tuple[tuple[int, ...], dict[str, torch.Tensor]]:
    """A one-image batch (latent shape, conditioning) for the width probe: zero latents at the
    smallest training bucket, the empty caption's embeddings, that bucket's sizes."""
    width, height = min(buckets, key=lambda b: b[0] * b[1])
    shape = (spec.latent_channels, height // spec.latent_downscale, width // spec.latent_downscale)
    size = torch.tensor([[height, width]])
    inputs = {k: v.unsqueeze(0) for k, v in empty_caption.items()}
    inputs.update(original_size=size, target_size=size, crop_top_left=torch.zeros_like(size))
    return shape, inputs


def option_problems(
    options: Mapping[str, Any], *, hidden_blocks: tuple, family: str
) -> list[tuple[str, str]]:
    """Why the CREPA options cannot apply to this run: (option, message) pairs."""
    if not options.get("crepa_enabled"):
        return []
    problems = []
    if not hidden_blocks:
        problems.append(
            (
                "crepa_enabled",
                f"{family} does not expose its denoiser's block list to st_ray "
                "(FamilySpec.hidden_blocks), so CREPA cannot read its hidden states",
            )
        )
    if not float(options.get("crepa_lambda") or 0) > 0:
        problems.append(("crepa_lambda", "must be greater than 0 when CREPA is enabled"))
    tau = options.get("crepa_adjacent_tau")
    if tau is not None and not float(tau) > 0:
        problems.append(("crepa_adjacent_tau", "must be greater than 0"))
    if options.get("crepa_teacher_block_index") is not None and not options.get(
        "crepa_use_backbone_features"
    ):
        problems.append(
            (
                "crepa_teacher_block_index",
                "only applies with crepa_use_backbone_features (the teacher is then a block of "
                "the denoiser); without it CREPA's teacher is the crepa_model encoder",
            )
        )
    if options.get("optimizer_release_gradients"):
        problems.append(
            (
                "optimizer_release_gradients",
                "cannot be combined with CREPA: its projection head sits outside the denoiser, "
                "whose gradient hooks step the optimizer",
            )
        )
    if not str(options.get("crepa_model") or "dinov2_vitg14").strip():
        problems.append(("crepa_model", "must name a DINOv2 model (Hub id, folder or alias)"))
    return problems
