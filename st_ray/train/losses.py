"""The training loss: per-element loss, Min-SNR weighting, loss masks and the batch mean.

One step's loss is built in three pieces, each a plain function:

1. ``elementwise_loss``: l2 (squared error), or SimpleTuner's pseudo-Huber ``huber``
   2c·(sqrt(d² + c²) - c) and ``smooth_l1`` 2·(sqrt(d² + c²) - c), with d = pred - target and a
   threshold c that ``huber_schedule`` may vary per sample (``scheduled_huber_c``).
2. per-sample weights: Min-SNR-γ for epsilon / v_prediction / sample models
   (``min_snr_weights``, optionally on SimpleTuner's soft SNR, ``soft_min_snr``), or the flat
   ``snr_weight`` when Min-SNR is off. Flow-matching models get no weights.
3. ``reduce_loss``: the mean over each sample (a loss mask multiplies first, ``masked_mean``),
   times the sample's weight, averaged over the batch.

SimpleTuner sources matched: ``simpletuner/helpers/models/common.py`` (``conditional_loss``,
``compute_scheduled_huber_c``, ``loss``), ``simpletuner/helpers/models/xm_mixin.py`` (where
``snr_weight`` applies) and ``simpletuner/helpers/training/min_snr_gamma.py`` (``compute_snr``,
whose ``use_soft_min`` branch is the soft SNR). Differences are noted where they occur.

Everything is computed in float32 whatever the model's dtype, as SimpleTuner does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

LOSS_TYPES = ("l2", "huber", "smooth_l1")
HUBER_SCHEDULES = ("snr", "exponential", "constant")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_matching")
MASK_KINDS = ("mask", "segmentation")

# Options that only shape the Min-SNR / snr_weight weighting of DDPM (non-flow) models.
_WEIGHTING_OPTIONS = ("snr_gamma", "snr_weight", "use_soft_min_snr", "soft_min_snr_sigma_data")


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) values shaped (B, 1, ..., 1) to broadcast over a (B, ...) tensor."""
    values = values.to(device=like.device, dtype=torch.float32).reshape(-1)
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def _required(value: torch.Tensor | None, name: str, why: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"{name} must be given: {why}")
    return value


# --- per-element loss ------------------------------------------------------------------------


def scheduled_huber_c(
    schedule: str,
    huber_c: float,
    *,
    timesteps: torch.Tensor | None = None,
    num_train_timesteps: int = 1000,
    snr: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Huber / smooth-L1 threshold of each sample, shape (B,) (a 0-d tensor for 'constant').

    The scheduled pseudo-Huber loss wants a large threshold (≈1, nearly quadratic) where there
    is little noise and ``huber_c`` (robust, nearly linear) where the input is mostly noise:

    - 'constant': ``huber_c`` everywhere.
    - 'exponential': ``huber_c ** (t / T)`` — SimpleTuner's exp(-α·t) with α = -ln(huber_c)/T:
      1 at t = 0, ``huber_c`` at t = T.
    - 'snr': ``(1 - huber_c) / (1 + σ)² + huber_c`` with σ = 1/sqrt(SNR) (for DDPM models
      SimpleTuner's sqrt((1-ᾱ)/ᾱ)): 1 at SNR = ∞, ``huber_c`` at SNR = 0. See
      ``flow_matching_huber_snr`` for the SNR SimpleTuner uses with flow-matching models.
    """
    if schedule == "constant":
        return torch.tensor(float(huber_c))
    if schedule == "exponential":
        t = _required(timesteps, "timesteps", "the 'exponential' Huber schedule follows them")
        return float(huber_c) ** (t.to(torch.float32) / float(num_train_timesteps))
    if schedule == "snr":
        s = _required(snr, "snr", "the 'snr' Huber schedule follows it").to(torch.float32)
        sigma = s.rsqrt()  # SNR 0 -> inf -> threshold huber_c; SNR inf -> 0 -> threshold 1
        return (1.0 - huber_c) / (1.0 + sigma) ** 2 + huber_c
    raise ValueError(f"huber_schedule {schedule!r} is not one of {', '.join(HUBER_SCHEDULES)}")


def flow_matching_huber_snr(
    timesteps: torch.Tensor, num_train_timesteps: int = 1000
) -> torch.Tensor:
    """The SNR the 'snr' Huber schedule follows for flow-matching models, as SimpleTuner has it.

    SimpleTuner's flow branch sets σ = sqrt((1 - s) / (s + 1e-4)) with s = t / T (the flow σ),
    i.e. SNR = (s + 1e-4) / (1 - s). Note that this runs the other way from the DDPM branch:
    the threshold is ``huber_c`` near clean inputs and grows to 1 towards pure noise. Kept as is
    so a SimpleTuner config trains the same loss.
    """
    s = timesteps.to(torch.float32) / float(num_train_timesteps)
    return (s + 1e-4) / (1.0 - s)  # s = 1 -> inf -> threshold 1, as in SimpleTuner


def elementwise_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    loss_type: str = "l2",
    *,
    huber_c: float = 0.1,
    huber_schedule: str = "constant",
    timesteps: torch.Tensor | None = None,
    num_train_timesteps: int = 1000,
    snr: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-element loss in float32, same shape as ``pred``.

    'l2': d². 'huber': 2c·(sqrt(d² + c²) - c), the pseudo-Huber loss scaled so it matches d²
    for |d| ≪ c and grows like 2c·|d| beyond. 'smooth_l1': 2·(sqrt(d² + c²) - c), i.e. the
    same curve divided by c (≈ d²/c near 0, ≈ 2|d| beyond). c comes from ``scheduled_huber_c``;
    ``timesteps`` / ``snr`` hold one value per sample and are only needed by the schedules
    that use them.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
    diff = pred.float() - target.float()
    if loss_type == "l2":
        return diff * diff
    c = scheduled_huber_c(
        huber_schedule,
        huber_c,
        timesteps=timesteps,
        num_train_timesteps=num_train_timesteps,
        snr=snr,
    )
    c = _per_sample(c, diff) if c.ndim else c.to(diff.device)
    # sqrt(d² + c²) - c written as d² / (sqrt(d² + c²) + c): equal, without the float32
    # cancellation that makes the plain form inexact for |d| << c.
    sq = diff * diff
    smooth = sq / (torch.sqrt(sq + c * c) + c)
    return 2.0 * c * smooth if loss_type == "huber" else 2.0 * smooth


# --- per-sample weights ----------------------------------------------------------------------


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023), one per sample, in float32.

    The loss of each parameterisation is rescaled to that of an x0 loss weighted by
    min(SNR, γ): epsilon min(SNR, γ)/SNR, v_prediction min(SNR, γ)/(SNR + 1), sample
    min(SNR, γ) (diffusers' train_text_to_image; SimpleTuner has no 'sample' loss). At SNR = 0
    (the last step of a zero-terminal-SNR schedule) epsilon takes its limit 1 instead of 0/0.
    """
    snr = snr.to(torch.float32)
    capped = torch.clamp(snr, max=float(gamma))
    if prediction_type == "epsilon":
        return torch.where(snr > 0, capped / snr, torch.ones_like(snr))
    if prediction_type == "v_prediction":
        return capped / (snr + 1.0)
    if prediction_type == "sample":
        return capped
    raise ValueError(
        f"Min-SNR weighting applies to epsilon, v_prediction and sample models, not "
        f"{prediction_type!r}"
    )


def soft_min_snr(snr: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """SimpleTuner's soft SNR for ``use_soft_min_snr``: (σ·σ_d)² / (σ² + σ_d²)² with
    σ² = 1 - ᾱ = 1 / (1 + SNR), used in place of the SNR in ``min_snr_weights``.

    From SimpleTuner's ``compute_snr(use_soft_min=True)`` (``min_snr_gamma.py``, added for
    pixel-space models after HDiT's soft-min-SNR weighting). It never exceeds 1/4, so with γ ≥ 1/4 the
    epsilon weight is 1 and the v_prediction weight s/(s + 1). SimpleTuner's trainer stopped
    calling this branch in 2024 (the option is now only echoed in its model cards); st_ray
    applies it as the option describes.
    """
    sigma2 = 1.0 / (1.0 + snr.to(torch.float32))
    data2 = float(sigma_data) ** 2
    return sigma2 * data2 / (sigma2 + data2) ** 2


# --- masks and reduction ---------------------------------------------------------------------


def loss_mask_from_conditioning(
    pixels: torch.Tensor, size: Sequence[int], kind: str
) -> torch.Tensor:
    """A (B, 1, *size) loss mask in [0, 1] from conditioning images in [-1, 1], shape (B, C, ...).

    'mask' datasets: channel 0, area-resized to the latent ``size``, mapped to [0, 1] (white
    trains, black is ignored, grey is in between). 'segmentation' datasets: the channel mean,
    area-resized, and 1 wherever any colour is present (only pure black is ignored). As
    SimpleTuner's ``loss`` builds them; for 'segmentation' SimpleTuner applies the mask only in
    a ``masked_loss_probability`` share of batches, which the caller decides.
    """
    if kind == "mask":
        gray = pixels[:, :1]
    elif kind == "segmentation":
        gray = pixels.mean(dim=1, keepdim=True)
    else:
        raise ValueError(f"loss mask kind {kind!r} is not one of {', '.join(MASK_KINDS)}")
    resized = F.interpolate(gray.float(), size=tuple(size), mode="area") / 2 + 0.5
    return (resized > 0).float() if kind == "segmentation" else resized


def masked_mean(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of ``loss * mask`` over every non-batch element, shape (B,).

    ``mask`` is (B, *spatial) or (B, 1 or C, *spatial) at the loss's resolution and is
    broadcast over channels. Masked-out elements count as zeros in the mean — SimpleTuner's
    rule (multiply, then average over all positions), so a half-masked image contributes half
    the loss of an unmasked one and an all-zero mask gives 0, never NaN.
    """
    if mask.ndim == loss.ndim - 1:
        mask = mask.unsqueeze(1)
    if (
        mask.ndim != loss.ndim
        or mask.shape[0] != loss.shape[0]
        or mask.shape[2:] != loss.shape[2:]
        or mask.shape[1] not in (1, loss.shape[1])
    ):
        raise ValueError(
            f"loss mask of shape {tuple(mask.shape)} does not fit a loss of shape "
            f"{tuple(loss.shape)}; expected (B, 1, *spatial) or (B, *spatial) at the latent size"
        )
    weighted = loss * mask.to(device=loss.device, dtype=loss.dtype)
    return weighted.reshape(loss.shape[0], -1).mean(dim=1)


def reduce_loss(
    elementwise: torch.Tensor,
    weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The scalar training loss: each sample's (masked) mean, times its weight, averaged
    over the batch."""
    if mask is not None:
        per_sample = masked_mean(elementwise, mask)
    else:
        per_sample = elementwise.reshape(elementwise.shape[0], -1).mean(dim=1)
    if weights is not None:
        per_sample = per_sample * weights.to(device=per_sample.device, dtype=per_sample.dtype)
    return per_sample.mean()


# --- the options, together -------------------------------------------------------------------


@dataclass(frozen=True)
class LossConfig:
    """The loss options that apply to one model.

    ``ignored`` names the options that were set but change nothing for this model — for the
    loop to report, since SimpleTuner ignores them silently.
    """

    loss_type: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    snr_gamma: float | None = None
    snr_weight: float = 1.0
    use_soft_min_snr: bool = False
    soft_min_snr_sigma_data: float = 1.0
    ignored: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
        if self.huber_schedule not in HUBER_SCHEDULES:
            raise ValueError(
                f"huber_schedule {self.huber_schedule!r} is not one of {', '.join(HUBER_SCHEDULES)}"
            )
        if self.loss_type != "l2" and not self.huber_c > 0:
            # c = 0 makes 'huber' identically 0 and the exponential schedule undefined.
            raise ValueError(
                f"huber_c must be greater than 0 for loss_type {self.loss_type!r} "
                f"(got {self.huber_c})"
            )
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ValueError(f"snr_gamma must be greater than 0, or unset (got {self.snr_gamma})")
        if self.snr_weight < 0:
            raise ValueError(f"snr_weight must be at least 0 (got {self.snr_weight})")
        if self.use_soft_min_snr and not self.soft_min_snr_sigma_data > 0:
            raise ValueError(
                "soft_min_snr_sigma_data must be greater than 0 with use_soft_min_snr "
                f"(got {self.soft_min_snr_sigma_data})"
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, flow_matching: bool = False) -> LossConfig:
        """The loss of a model from the option mapping.

        Flow-matching models: SimpleTuner computes their loss without Min-SNR and without
        ``snr_weight`` and does not reject those options, so they are accepted, dropped and
        listed in ``ignored``. Likewise ``use_soft_min_snr`` without ``snr_gamma``,
        ``soft_min_snr_sigma_data`` without ``use_soft_min_snr``, and ``snr_weight`` with
        ``snr_gamma`` (SimpleTuner applies ``snr_weight`` only when Min-SNR is off).
        """
        gamma = options["snr_gamma"]
        gamma = float(gamma) if gamma else None  # unset or 0 turns Min-SNR off
        weight = float(options["snr_weight"])
        soft = bool(options["use_soft_min_snr"])
        sigma_data = options["soft_min_snr_sigma_data"]
        set_options = {
            "snr_gamma": gamma is not None,
            "snr_weight": weight != 1.0,
            "use_soft_min_snr": soft,
            "soft_min_snr_sigma_data": sigma_data is not None,
        }
        if flow_matching:
            applies = dict.fromkeys(_WEIGHTING_OPTIONS, False)
        else:
            applies = {
                "snr_gamma": True,
                "snr_weight": gamma is None,
                "use_soft_min_snr": gamma is not None,
                "soft_min_snr_sigma_data": soft and gamma is not None,
            }
        ignored = tuple(n for n in _WEIGHTING_OPTIONS if set_options[n] and not applies[n])
        return cls(
            loss_type=str(options["loss_type"]),
            huber_schedule=str(options["huber_schedule"]),
            huber_c=float(options["huber_c"]),
            snr_gamma=gamma if applies["snr_gamma"] else None,
            snr_weight=weight if applies["snr_weight"] else 1.0,
            use_soft_min_snr=soft and applies["use_soft_min_snr"],
            # SimpleTuner's trainer passed sigma_data = 1.0 when the option was unset.
            soft_min_snr_sigma_data=1.0 if sigma_data is None else float(sigma_data),
            ignored=ignored,
        )


def configured_elementwise_loss(
    config: LossConfig,
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    timesteps: torch.Tensor,
    snr: torch.Tensor | None,
    flow: bool,
    num_train_timesteps: int = 1000,
) -> torch.Tensor:
    """``elementwise_loss`` with the run's loss settings; the 'snr' Huber schedule follows
    the flow-matching SNR for flow models and ``snr`` (required then) for DDPM models."""
    huber_snr = None
    if config.loss_type != "l2" and config.huber_schedule == "snr":
        if flow:
            huber_snr = flow_matching_huber_snr(timesteps, num_train_timesteps)
        else:
            huber_snr = _required(snr, "snr", "huber_schedule 'snr' follows it")
    return elementwise_loss(
        pred,
        target,
        config.loss_type,
        huber_c=config.huber_c,
        huber_schedule=config.huber_schedule,
        timesteps=timesteps,
        num_train_timesteps=num_train_timesteps,
        snr=huber_snr,
    )


def compute_loss(
    config: LossConfig,
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    timesteps: torch.Tensor,
    snr: torch.Tensor | None,
    prediction_type: str,
    mask: torch.Tensor | None = None,
    num_train_timesteps: int = 1000,
) -> torch.Tensor:
    """The scalar loss of one batch, as SimpleTuner's ``loss`` computes it.

    ``timesteps``: one per sample (integers for DDPM models, σ·T for flow matching).
    ``snr``: one per sample (``st_ray.train.noise.snr``) for DDPM models; needed when Min-SNR
    or the 'snr' Huber schedule is on, unused for flow matching (may be None).
    ``mask``: a loss mask at the latent resolution (``loss_mask_from_conditioning``).
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}"
        )
    flow = prediction_type == "flow_matching"
    elementwise = configured_elementwise_loss(
        config,
        pred,
        target,
        timesteps=timesteps,
        snr=snr,
        flow=flow,
        num_train_timesteps=num_train_timesteps,
    )
    weights = None
    if not flow and config.snr_gamma is not None:
        s = _required(snr, "snr", "snr_gamma (Min-SNR weighting) follows it")
        if config.use_soft_min_snr:
            s = soft_min_snr(s, config.soft_min_snr_sigma_data)
        weights = min_snr_weights(s, config.snr_gamma, prediction_type)
    elif not flow and config.snr_weight != 1.0:
        weights = torch.full((pred.shape[0],), config.snr_weight)
    return reduce_loss(elementwise, weights, mask)
