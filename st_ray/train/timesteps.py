"""Which noise level each training sample gets.

DDPM families draw integer timesteps t in [0, T) (T = num_train_timesteps, 1000 for every
family st_ray ships), optionally biased (``timestep_bias_*``) and, by default, one per equal
segment of the schedule (SimpleTuner's segmented sampling). Flow-matching families draw a
continuous σ in [0, 1] (logit-normal by default, or uniform, or Beta), optionally shifted
towards the noisy end by a fixed or resolution-dependent shift.

The timestep a flow transformer is conditioned on is σ·T (σ·1000) — diffusers' convention:
some transformers take it as is, others σ·1000/1000 because their pipeline passes
``timestep / 1000`` and the model rescales internally; that division belongs to the family.

SimpleTuner sources matched: ``simpletuner/helpers/training/custom_schedule.py``
(``segmented_timestep_selection``, ``generate_timestep_weights``,
``apply_flow_schedule_shift``) and ``simpletuner/helpers/models/common.py``
(``sample_flow_sigmas``, and the DDPM branch of ``prepare_batch``).

Tensors come back on the device of the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

BIAS_STRATEGIES = ("earlier", "later", "range", "none")
FLOW_MODES = ("sigmoid", "uniform", "beta")

# Resolution-dependent shift defaults of diffusers' FlowMatchEulerDiscreteScheduler config, used when the model's scheduler config does not name its own.
AUTO_SHIFT_DEFAULTS = {
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}


# --- DDPM -------------------------------------------------------------------------------------


def timestep_bias_weights(
    strategy: str,
    multiplier: float,
    begin: int,
    end: int,
    portion: float,
    num_train_timesteps: int,
) -> torch.Tensor:
    """Normalised sampling weights over t = 0..T-1 for ``timestep_bias_strategy``.

    Every timestep starts at weight 1; the favoured ones are multiplied by ``multiplier``:
    'earlier' the first ``int(portion·T)`` timesteps (low t: little noise), 'later' the last
    ``int(portion·T)`` (high t: mostly noise), 'range' t in [begin, end). Timesteps outside
    the favoured set keep weight 1 — bias changes odds, it never excludes (SimpleTuner's
    ``generate_timestep_weights``). 'none' gives uniform weights.
    """
    weights = torch.ones(num_train_timesteps, dtype=torch.float64)
    if strategy not in BIAS_STRATEGIES:
        raise ValueError(
            f"timestep_bias_strategy {strategy!r} is not one of {', '.join(BIAS_STRATEGIES)}"
        )
    if strategy != "none":
        if multiplier <= 0:
            raise ValueError(
                f"timestep_bias_multiplier must be greater than 0 (got {multiplier}); to turn the "
                "bias off set timestep_bias_strategy to 'none'"
            )
        if strategy == "range":
            if not 0 <= begin < end <= num_train_timesteps:
                raise ValueError(
                    "timestep_bias_strategy 'range' needs 0 <= timestep_bias_begin < "
                    f"timestep_bias_end <= {num_train_timesteps} (got begin={begin}, end={end})"
                )
            favoured = slice(begin, end)
        else:
            if not 0 <= portion <= 1:
                raise ValueError(f"timestep_bias_portion must lie in [0, 1] (got {portion})")
            count = int(portion * num_train_timesteps)
            # count == 0 favours nothing (SimpleTuner's slice(-0, None) would favour everything,
            # which normalises to the same uniform weights).
            favoured = (
                slice(0, count)
                if strategy == "earlier"
                else slice(num_train_timesteps - count, None)
            )
        weights[favoured] *= multiplier
    return (weights / weights.sum()).to(torch.float32)


def sample_ddpm_timesteps(
    batch: int,
    num_train_timesteps: int,
    generator: torch.Generator,
    *,
    segmented: bool,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``batch`` integer timesteps (int64) in [0, T), drawn with probabilities ∝ ``weights``
    (uniform when None).

    Segmented (SimpleTuner's default, off with ``disable_segmented_timestep_sampling``): the
    schedule is cut into ``batch`` contiguous segments of T // batch timesteps, counted from the
    top, the lowest segment taking the remainder; sample i is drawn from segment i (so sample 0
    is the noisiest) with the weights renormalised inside the segment. This spreads every batch
    over the whole schedule; it also means a bias only reshapes odds within each segment.
    SimpleTuner's segments share their boundary timestep; these do not.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1 (got {batch})")
    device = generator.device
    if weights is None:
        weights = torch.ones(num_train_timesteps)
    weights = weights.to(device=device, dtype=torch.float32)
    if weights.shape != (num_train_timesteps,):
        raise ValueError(
            f"weights must have shape ({num_train_timesteps},), got {tuple(weights.shape)}"
        )
    if not segmented or batch == 1:
        return torch.multinomial(weights, batch, replacement=True, generator=generator)
    if batch > num_train_timesteps:
        raise ValueError(
            f"segmented timestep sampling needs batch <= num_train_timesteps "
            f"({batch} > {num_train_timesteps}); set disable_segmented_timestep_sampling"
        )
    lows, highs = segment_bounds(batch, num_train_timesteps)
    t = torch.arange(num_train_timesteps, device=device)
    inside = (t >= torch.tensor(lows, device=device)[:, None]) & (
        t < torch.tensor(highs, device=device)[:, None]
    )
    rows = weights * inside  # (batch, T): row i is segment i's weights; multinomial renormalises
    if bool((rows.sum(dim=1) <= 0).any()):
        raise ValueError("timestep weights are zero over a whole segment; cannot sample it")
    return torch.multinomial(rows, 1, generator=generator).squeeze(1)


def segment_bounds(batch: int, num_train_timesteps: int) -> tuple[list[int], list[int]]:
    """Half-open [low, high) of each segment of segmented sampling, segment 0 at the top."""
    size = max(num_train_timesteps // batch, 1)
    highs = [num_train_timesteps - i * size for i in range(batch)]
    lows = [h - size for h in highs[:-1]] + [0]
    return lows, highs


# --- flow matching ------------------------------------------------------------------------


def _sample_gamma(concentration: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """Gamma(concentration, 1) draws from ``generator`` (Marsaglia & Tsang 2000), float64.
    torch.distributions cannot take a generator, and the loop must be reproducible per seed."""
    device = generator.device
    boost = concentration < 1  # sample Gamma(a+1) and scale by U^(1/a)
    a = concentration + 1 if boost else concentration
    d = a - 1 / 3
    c = 1 / math.sqrt(9 * d)
    out = torch.empty(n, dtype=torch.float64, device=device)
    pending = torch.arange(n, device=device)
    while pending.numel():  # accepts > 95% per round
        x = torch.randn(pending.numel(), generator=generator, device=device, dtype=torch.float64)
        u = torch.rand(pending.numel(), generator=generator, device=device, dtype=torch.float64)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out[pending[ok]] = d * v[ok]
        pending = pending[~ok]
    if boost:
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        out = out * u ** (1 / concentration)
    return out


def sample_beta(alpha: float, beta: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """Beta(alpha, beta) draws (float32) as X / (X + Y), X ~ Gamma(alpha), Y ~ Gamma(beta)."""
    if alpha <= 0 or beta <= 0:
        raise ValueError(
            "flow_beta_schedule_alpha and flow_beta_schedule_beta must be greater than 0 "
            f"(got {alpha}, {beta})"
        )
    x = _sample_gamma(alpha, n, generator)
    y = _sample_gamma(beta, n, generator)
    return (x / (x + y)).to(torch.float32)


def sample_flow_sigmas(
    batch: int,
    generator: torch.Generator,
    *,
    mode: str = "sigmoid",
    sigmoid_scale: float = 1.0,
    beta_alpha: float = 2.0,
    beta_beta: float = 2.0,
) -> torch.Tensor:
    """``batch`` noise levels σ in [0, 1] (float32), before any shift.

    'sigmoid' (default): σ = sigmoid(sigmoid_scale · N(0,1)), the logit-normal of Esser et al. 2024
    with ``flow_sigmoid_scale`` as its spread; 'uniform' (``flow_use_uniform_schedule``):
    U[0,1); 'beta' (``flow_use_beta_schedule``): Beta(flow_beta_schedule_alpha, _beta).
    """
    device = generator.device
    if mode == "sigmoid":
        normal = torch.randn(batch, generator=generator, device=device)
        return torch.sigmoid(sigmoid_scale * normal)
    if mode == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    if mode == "beta":
        return sample_beta(beta_alpha, beta_beta, batch, generator)
    raise ValueError(f"flow sigma mode {mode!r} is not one of {', '.join(FLOW_MODES)}")


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """σ' = shift·σ / (1 + (shift-1)·σ): shift > 1 moves samples towards noise, < 1 towards the
    clean end; 0 and 1 stay fixed (Esser et al. 2024, §5.3.2; diffusers' exponential time shift with
    mu = log(shift))."""
    if shift <= 0:
        raise ValueError(f"a flow schedule shift must be greater than 0 (got {shift})")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def auto_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """The resolution-dependent shift of ``flow_schedule_auto_shift``: mu is linear in the
    token count through (base_seq_len, base_shift) and (max_seq_len, max_shift) — diffusers'
    ``calculate_shift`` of its flow pipelines, extrapolated beyond both points — and the shift is exp(mu)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    mu = base_shift + slope * (image_seq_len - base_seq_len)
    return math.exp(mu)


def image_seq_len(latent_shape: Sequence[int], patch_size: int = 2) -> int:
    """Transformer tokens of one latent: frames · (H // p) · (W // p) for (B, C, H, W) images or
    (B, C, F, H, W) videos — what SimpleTuner feeds ``calculate_shift`` (p from the scheduler
    config's ``patch_size``, default 2)."""
    frames = latent_shape[-3] if len(latent_shape) == 5 else 1
    return frames * (latent_shape[-2] // patch_size) * (latent_shape[-1] // patch_size)


def flow_timesteps(sigmas: torch.Tensor, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The conditioning timestep of a flow transformer: σ · T (float)."""
    return sigmas * num_train_timesteps


# --- the loop's entry point -------------------------------------------------------------------


class TimestepDraw(NamedTuple):
    """One batch's noise levels: integer ``timesteps`` (DDPM; ``sigmas`` None) or σ in
    ``sigmas`` with ``timesteps`` = σ·T (flow matching)."""

    timesteps: torch.Tensor
    sigmas: torch.Tensor | None


@dataclass(frozen=True)
class TimestepSampler:
    """Timestep sampling configured from the options, so the loop calls one method."""

    flow_matching: bool
    num_train_timesteps: int = 1000
    # DDPM
    segmented: bool = True
    weights: torch.Tensor | None = None
    # flow matching
    mode: str = "sigmoid"
    sigmoid_scale: float = 1.0
    beta_alpha: float = 2.0
    beta_beta: float = 2.0
    shift: float | None = None  # fixed shift; None: none, or automatic when auto_shift is on
    auto_shift: bool = False
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    base_shift: float = 0.5
    max_shift: float = 1.15
    patch_size: int = 2

    @classmethod
    def from_options(
        cls,
        options: Mapping[str, Any],
        *,
        flow_matching: bool,
        num_train_timesteps: int,
        scheduler_config: Mapping[str, Any] | None = None,
    ) -> TimestepSampler:
        """``scheduler_config`` (the model's scheduler_config.json) supplies the auto-shift
        line (base/max_image_seq_len, base/max_shift) and ``patch_size`` when it has them."""
        if not flow_matching:
            # Bias options apply to DDPM families only, as in SimpleTuner.
            strategy = options["timestep_bias_strategy"] or "none"
            weights = None
            if strategy != "none":
                weights = timestep_bias_weights(
                    strategy,
                    float(options["timestep_bias_multiplier"]),
                    int(options["timestep_bias_begin"]),
                    int(options["timestep_bias_end"]),
                    float(options["timestep_bias_portion"]),
                    num_train_timesteps,
                )
            return cls(
                flow_matching=False,
                num_train_timesteps=num_train_timesteps,
                segmented=not options["disable_segmented_timestep_sampling"],
                weights=weights,
            )
        # SimpleTuner's precedence: uniform wins over beta when both are set.
        if options["flow_use_uniform_schedule"]:
            mode = "uniform"
        elif options["flow_use_beta_schedule"]:
            mode = "beta"
        else:
            mode = "sigmoid"
        fixed = options["flow_schedule_shift"]
        # A positive flow_schedule_shift wins; auto shift only applies when it is 0/unset.
        shift = float(fixed) if fixed is not None and fixed > 0 else None
        line = {**AUTO_SHIFT_DEFAULTS, "patch_size": 2}
        for key in line:
            value = (scheduler_config or {}).get(key)
            if value is not None and value > 0:
                line[key] = value
        return cls(
            flow_matching=True,
            num_train_timesteps=num_train_timesteps,
            mode=mode,
            sigmoid_scale=float(options["flow_sigmoid_scale"]),
            beta_alpha=float(options["flow_beta_schedule_alpha"]),
            beta_beta=float(options["flow_beta_schedule_beta"]),
            shift=shift,
            auto_shift=shift is None and bool(options["flow_schedule_auto_shift"]),
            base_image_seq_len=int(line["base_image_seq_len"]),
            max_image_seq_len=int(line["max_image_seq_len"]),
            base_shift=float(line["base_shift"]),
            max_shift=float(line["max_shift"]),
            patch_size=int(line["patch_size"]),
        )

    def shift_for(self, image_seq_len: int | None) -> float | None:
        """The shift applied to a batch of ``image_seq_len`` tokens per sample (None: none)."""
        if self.shift is not None:
            return self.shift
        if not self.auto_shift:
            return None
        if image_seq_len is None:
            raise ValueError("flow_schedule_auto_shift needs the batch's image_seq_len")
        return auto_shift(
            image_seq_len,
            self.base_image_seq_len,
            self.max_image_seq_len,
            self.base_shift,
            self.max_shift,
        )

    def sample(
        self, batch: int, generator: torch.Generator, *, image_seq_len: int | None = None
    ) -> TimestepDraw:
        """Noise levels for a batch of ``batch`` samples; ``image_seq_len`` (tokens per sample,
        see ``image_seq_len()``) is needed only for the automatic flow shift."""
        if not self.flow_matching:
            timesteps = sample_ddpm_timesteps(
                batch,
                self.num_train_timesteps,
                generator,
                segmented=self.segmented,
                weights=self.weights,
            )
            return TimestepDraw(timesteps, None)
        sigmas = sample_flow_sigmas(
            batch,
            generator,
            mode=self.mode,
            sigmoid_scale=self.sigmoid_scale,
            beta_alpha=self.beta_alpha,
            beta_beta=self.beta_beta,
        )
        shift = self.shift_for(image_seq_len)
        if shift is not None:
            sigmas = shift_sigmas(sigmas, shift)
        return TimestepDraw(flow_timesteps(sigmas, self.num_train_timesteps), sigmas)
