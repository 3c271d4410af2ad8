"""CREPA's maths: the weight schedule and the frame-alignment similarity (pure functions).

Shapes are frame-first, (B, T, N, D): T frames of N tokens. An image is one frame (T = 1), so
only the frame's own term counts; the neighbour terms are written for T > 1 (video) and follow
SimpleTuner's ``CrepaRegularizer`` (Eq. 6 of the CREPA paper): frame f's projected hidden
states are compared with the encoder features of frame f itself (weight 1) and of the frames
f ± d (weight exp(-d / tau)), exactly distance d, or every distance 1..d when cumulative. Each
comparison is the cosine similarity per token, averaged over tokens. The per-clip score is the
sum over frames, divided by T when normalised by frames; the term is -weight x its batch mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class Similarity:
    score: torch.Tensor  # (B,) per-clip summed (or frame-averaged) similarity, differentiable
    alignment: float  # mean of the per-frame totals (neighbours included): the EMA's input
    self_similarity: float  # mean of the frame-to-itself similarity


def frame_similarity(
    projected: torch.Tensor,
    features: torch.Tensor,
    *,
    distance: int,
    tau: float,
    cumulative: bool,
    normalize_by_frames: bool,
) -> Similarity:
    """The CREPA similarity of (B, T, N, D) projected hidden states with (B, T, N, D) encoder
    features (both normalised here along D)."""
    if projected.shape[:3] != features.shape[:3]:
        raise ValueError(
            f"CREPA: hidden states {tuple(projected.shape)} and encoder features "
            f"{tuple(features.shape)} differ in batch, frames or tokens"
        )
    p = F.normalize(projected.float(), dim=-1)
    f = F.normalize(features.float(), dim=-1)
    self_sim = (p * f).sum(-1).mean(-1)  # (B, T)
    total = self_sim.clone()
    frames = total.shape[1]
    d = min(distance, frames - 1)
    offsets = range(1, d + 1) if cumulative else ([d] if d > 0 else [])
    for offset in offsets:
        weight = math.exp(-offset / max(tau, 1e-8))
        # frame f with the features of f + offset, and frame f with those of f - offset
        total[:, :-offset] += weight * (p[:, :-offset] * f[:, offset:]).sum(-1).mean(-1)
        total[:, offset:] += weight * (p[:, offset:] * f[:, :-offset]).sum(-1).mean(-1)
    score = total.sum(dim=1)
    if normalize_by_frames:
        score = score / frames
    return Similarity(
        score=score,
        alignment=float(total.detach().mean()),
        self_similarity=float(self_sim.detach().mean()),
    )


def as_frames(hidden: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """(B, 1, N, D) frame tokens of a block output, with the (h, w) grid when the output is a
    feature map: DiT tokens (B, N, D) are one frame of N tokens; a UNet map (B, C, H, W) one
    frame of H·W tokens of C channels. (A video family's frames would be split here.)"""
    if hidden.ndim == 3:
        return hidden.unsqueeze(1), None
    if hidden.ndim == 4:
        h, w = hidden.shape[2:]
        return hidden.flatten(2).transpose(1, 2).unsqueeze(1), (h, w)
    raise ValueError(f"CREPA cannot read hidden states of shape {tuple(hidden.shape)}")


def grid_for(tokens: int, aspect: float) -> tuple[int, int]:
    """The (h, w) factorisation of ``tokens`` whose w/h is closest to ``aspect`` (a DiT's
    token grid follows the latent's aspect ratio)."""
    best: tuple[float, int, int] | None = None
    for h in range(1, math.isqrt(tokens) + 1):
        if tokens % h:
            continue
        for gh, gw in ((h, tokens // h), (tokens // h, h)):
            error = abs(math.log((gw / gh) / aspect))
            if best is None or error < best[0]:
                best = (error, gh, gw)
    assert best is not None
    return best[1], best[2]


def resample(tokens: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(B, T, h·w, D) tokens on ``grid`` bilinearly resampled onto ``size``."""
    if tuple(grid) == tuple(size):
        return tokens
    b, t, n, d = tokens.shape
    maps = tokens.reshape(b * t, *grid, d).permute(0, 3, 1, 2).float()
    out = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(b, t, size[0] * size[1], d).to(tokens.dtype)


def align_tokens(
    projected: torch.Tensor,
    projected_grid: tuple[int, int],
    features: torch.Tensor,
    features_grid: tuple[int, int],
    *,
    spatial_align: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring both token sets onto one grid: with ``spatial_align`` the finer grid is resampled
    onto the coarser one (patch-level alignment); without it, different grids are each pooled
    to one global token (SimpleTuner's fallback)."""
    if tuple(projected_grid) == tuple(features_grid):
        return projected, features
    if not spatial_align:
        return projected.mean(2, keepdim=True), features.mean(2, keepdim=True)
    coarse = min(projected_grid, features_grid, key=lambda g: g[0] * g[1])
    return resample(projected, projected_grid, coarse), resample(features, features_grid, coarse)


class Schedule:
    """The CREPA weight per step (SimpleTuner's ``CrepaScheduler``): a linear warmup from 0 to
    crepa_lambda over crepa_warmup_steps, then constant or a linear / cosine / polynomial
    (crepa_power) decay to crepa_lambda_end, reached at step crepa_decay_steps (counted from
    step 0; 0 means the run's last step). The weight is 0 from crepa_cutoff_step on (0: never),
    and once the EMA of the alignment score reaches crepa_similarity_threshold: for good
    ('permanent') or while the EMA stays there ('recoverable')."""

    def __init__(self, options: dict[str, Any] | Any, total_steps: int) -> None:
        self.kind = str(options.get("crepa_scheduler") or "constant")
        self.base = float(options.get("crepa_lambda") or 0.0)
        self.warmup = int(options.get("crepa_warmup_steps") or 0)
        decay = int(options.get("crepa_decay_steps") or 0)
        self.decay_steps = decay if decay > 0 else int(total_steps)
        self.end = float(options.get("crepa_lambda_end") or 0.0)
        self.power = float(options.get("crepa_power") or 1.0)
        self.cutoff_step = int(options.get("crepa_cutoff_step") or 0)
        threshold = options.get("crepa_similarity_threshold")
        self.threshold = None if threshold is None else float(threshold)
        ema = options.get("crepa_similarity_ema_decay")
        self.ema_decay = 0.99 if ema is None else float(ema)
        self.mode = str(options.get("crepa_threshold_mode") or "permanent")
        self.ema: float | None = None
        self.triggered = False

    def scheduled(self, step: int) -> float:
        """The weight at ``step`` before any cutoff."""
        if self.warmup > 0 and step < self.warmup:
            return self.base * step / self.warmup
        if self.kind == "constant":
            return self.base
        progress = min((step - self.warmup) / max(self.decay_steps - self.warmup, 1), 1.0)
        if self.kind == "linear":
            return self.base + (self.end - self.base) * progress
        if self.kind == "cosine":
            return self.end + (self.base - self.end) * (1 + math.cos(math.pi * progress)) / 2
        if self.kind == "polynomial":
            return (self.base - self.end) * (1 - progress) ** self.power + self.end
        raise ValueError(
            f"crepa_scheduler {self.kind!r} is not one of constant, linear, cosine, polynomial"
        )

    def off_for_good(self, step: int) -> bool:
        """Whether the weight is 0 at ``step`` and every later step, whatever the similarity
        (the loss need not be computed at all)."""
        if self.cutoff_step > 0 and step >= self.cutoff_step:
            return True
        return self.triggered and self.mode == "permanent"

    def weight(self, step: int, alignment: float | None) -> float:
        """The weight at ``step`` after folding ``alignment`` into the similarity EMA."""
        if alignment is not None:
            self.ema = (
                alignment
                if self.ema is None
                else self.ema_decay * self.ema + (1 - self.ema_decay) * alignment
            )
        if self.triggered and self.mode == "permanent":
            return 0.0
        stepped_off = self.cutoff_step > 0 and step >= self.cutoff_step
        similar = self.threshold is not None and self.ema is not None and self.ema >= self.threshold
        if stepped_off or similar:
            if self.mode == "permanent":
                self.triggered = True
            return 0.0
        self.triggered = False
        return self.scheduled(step)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema, "triggered": self.triggered}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema, self.triggered = state["ema"], bool(state["triggered"])
