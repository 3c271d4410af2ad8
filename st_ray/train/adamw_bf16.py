"""``adamw_bf16``, st_ray's own optimizer: AdamW math in float32 with bf16 parameters and
moments written back by stochastic rounding (see ``st_ray.train.optimizer_specs``). With data
parallelism every rank must use the same ``seed`` so that the replicas round identically."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer


def stochastic_round_to_bf16(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """float32 ``x`` rounded to bfloat16 up or down at random, with E[result] = x.

    bfloat16 is the upper half of a float32: adding a uniform random 16-bit integer to the lower
    half before truncating rounds up with probability equal to the discarded fraction.
    """
    bits = x.to(torch.float32).contiguous().view(torch.int32)
    noise = torch.randint(
        0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=generator
    )
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


class AdamWBF16(Optimizer):
    """AdamW (decoupled weight decay, bias-corrected moments) computed in float32.

    For float32 parameters this is torch's AdamW. For bfloat16 parameters the moments are kept in
    bfloat16 too (6 bytes per parameter in all) and every write-back is stochastically rounded,
    so that the expected stored value is the exact float32 result; ``seed`` seeds one
    ``torch.Generator`` per device for that rounding.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 1e-2,
        seed: int = 0,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError("AdamWBF16: lr, eps and weight_decay must be >= 0")
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"AdamWBF16: betas must be two values in [0, 1), got {betas}")
        super().__init__(
            params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        )
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = float(group["lr"]), group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamWBF16 does not support sparse gradients")
                low = p.dtype == torch.bfloat16
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    moment_dtype = torch.bfloat16 if low else torch.float32
                    state["exp_avg"] = torch.zeros_like(p, dtype=moment_dtype)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=moment_dtype)
                state["step"] += 1
                t = state["step"]
                grad = p.grad.float()
                # .float() is the tensor itself when it already is float32: updated in place.
                m = state["exp_avg"].float().lerp_(grad, 1 - beta1)
                v = state["exp_avg_sq"].float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
                new_p = p.float().mul_(1 - lr * wd).addcdiv_(m, denom, value=-lr / (1 - beta1**t))
                for target, value in ((p, new_p), (state["exp_avg"], m), (state["exp_avg_sq"], v)):
                    if target.dtype == torch.bfloat16:
                        target.copy_(stochastic_round_to_bf16(value, self._generator(p.device)))
                    elif value is not target:
                        target.copy_(value)
        return loss
