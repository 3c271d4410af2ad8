"""An exponential moving average (EMA) of the trained parameters, LoRA or full.

After optimizer step s (counted from 1, as ``global_step``), when s is a multiple of
``ema_update_interval``, every shadow tensor moves towards its live parameter:

    shadow <- decay_s · shadow + (1 - decay_s) · param

with SimpleTuner's warm-up of the decay (``EMAModel.get_decay``, diffusers' schedule):
decay_s = min(ema_decay, (1 + n) / (10 + n)) with n = s - 1, and 0 at s = 1, so the first update
copies the weights and the average only slowly reaches its configured memory. The step count is
the optimizer's, not the number of EMA updates, even with an update interval (as SimpleTuner).

Placement: ``ema_device='accelerator'`` keeps each shadow on its parameter's device;
``'cpu'`` keeps them in host memory and, unless ``ema_cpu_only``, moves them to the parameters'
device for the update and back (SimpleTuner's round trip); ``ema_cpu_only`` (which implies
'cpu', as SimpleTuner's config loader sets it) updates on the CPU from host copies of the
parameters. Shadows are float32 whatever the parameters' dtype: with a decay near 1 the
per-update change is far below bf16's resolution and a bf16 average would stall. Updates use
``torch._foreach_lerp_`` unless ``ema_foreach_disable``.

SimpleTuner sources matched: ``simpletuner/helpers/training/ema.py`` (``should_update_ema``,
``EMAModel.get_decay``, ``step``, ``copy_to``, ``store``/``restore``) and ``trainer.py``
(``init_ema_model``, ``_place_ema_model``) and ``configuration/cmd_args.py`` (``ema_cpu_only``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """The decay used by the update after optimizer step ``step`` (1-based)."""
    if not warmup:
        return decay
    n = step - 1
    if n <= 0:
        return 0.0
    return min(decay, (1 + n) / (10 + n))


def trainable_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters an optimizer trains (LoRA adapters, or everything in a full fine-tune)."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


class EMAModel:
    """Shadow copies of the trained parameters, updated every ``update_interval`` optimizer steps.

    ``params`` maps names (e.g. ``trainable_parameters(model)``) to the live parameters, or is a
    sequence of them (named by position then, so keep the order stable across resumes). The
    EMA keeps references to them for ``step``, ``copy_to`` and ``swapped_in``.
    """

    def __init__(
        self,
        params: Mapping[str, torch.Tensor] | Iterable[torch.Tensor],
        *,
        decay: float,
        update_interval: int = 1,
        device: str = "cpu",
        cpu_only: bool = False,
        foreach: bool = True,
        warmup: bool = True,
        accelerator: torch.device | None = None,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema_decay must be within [0, 1], got {decay}")
        if update_interval < 1:
            raise ValueError(f"ema_update_interval must be >= 1, got {update_interval}")
        if device not in ("cpu", "accelerator"):
            raise ValueError(f"ema_device must be 'cpu' or 'accelerator', got {device!r}")
        if isinstance(params, Mapping):
            self.params = dict(params)
        else:
            self.params = {str(i): p for i, p in enumerate(params)}
        self.decay = decay
        self.update_interval = update_interval
        self.device = "cpu" if cpu_only else device
        self.cpu_only = cpu_only
        self.foreach = foreach
        self.warmup = warmup
        self.accelerator = accelerator
        self.last_step = 0  # optimizer step of the latest update
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().to(device=self._home(p), dtype=torch.float32, copy=True)
            for name, p in self.params.items()
        }

    @classmethod
    def from_options(
        cls,
        params: Mapping[str, torch.Tensor] | Iterable[torch.Tensor],
        options: Mapping[str, Any],
        accelerator: torch.device | None = None,
    ) -> EMAModel:
        return cls(
            params,
            accelerator=accelerator,
            decay=options["ema_decay"],
            update_interval=options["ema_update_interval"],
            device=options["ema_device"],
            cpu_only=options["ema_cpu_only"],
            foreach=not options["ema_foreach_disable"],
        )

    def _accelerator_for(self, param: torch.Tensor) -> torch.device:
        return self.accelerator if self.accelerator is not None else param.device

    def _home(self, param: torch.Tensor) -> torch.device:
        """Where a parameter's shadow lives between updates."""
        return torch.device("cpu") if self.device == "cpu" else self._accelerator_for(param)

    def should_update(self, step: int) -> bool:
        return step % self.update_interval == 0

    @torch.no_grad()
    def step(self, step: int) -> bool:
        """Fold the live parameters in after optimizer step ``step``, if it is an update step."""
        if not self.should_update(step):
            return False
        weight = 1.0 - ema_decay_at(step, self.decay, self.warmup)
        names = list(self.params)
        # Where the arithmetic happens: the accelerator, unless the EMA stays on the CPU.
        cpu = torch.device("cpu")
        work = [cpu if self.cpu_only else self._accelerator_for(self.params[n]) for n in names]
        shadows = [
            self.shadow[n].to(d, non_blocking=True) for n, d in zip(names, work, strict=True)
        ]
        targets = [
            self.params[n].detach().to(device=d, dtype=torch.float32)
            for n, d in zip(names, work, strict=True)
        ]
        # foreach kernels need one device across the lists.
        if self.foreach and len({s.device for s in shadows}) <= 1:
            torch._foreach_lerp_(shadows, targets, weight)
        else:
            for s, t in zip(shadows, targets, strict=True):
                s.lerp_(t, weight)
        for n, s in zip(names, shadows, strict=True):
            if s is not self.shadow[n]:
                self.shadow[n].copy_(s)
        self.last_step = step
        return True

    @torch.no_grad()
    def copy_to(self, params: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write the averaged weights into ``params`` (default: the tracked parameters)."""
        targets = self.params if params is None else params
        missing = sorted(set(self.shadow) - set(targets))
        if missing:
            raise KeyError(f"EMAModel.copy_to: no parameter named {missing[0]!r} to copy into")
        for name, shadow in self.shadow.items():
            targets[name].copy_(shadow.to(device=targets[name].device, dtype=targets[name].dtype))

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The EMA weights in the live parameters for the block (validation), then the trained
        ones back bit for bit; the trained weights wait in host memory meanwhile."""
        with torch.no_grad():
            stash = {n: p.detach().to("cpu", copy=True) for n, p in self.params.items()}
        try:
            self.copy_to()
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(stash[name].to(p.device))

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "update_interval": self.update_interval,
            "last_step": self.last_step,
            "shadow": {n: s.detach().to("cpu", copy=True) for n, s in self.shadow.items()},
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore shadows saved by ``state_dict``; they keep this EMA's placement. The decay
        and interval stay as configured now, so a resumed run may change them."""
        saved: Mapping[str, torch.Tensor] = state["shadow"]
        if set(saved) != set(self.shadow):
            extra, missing = (
                sorted(set(saved) - set(self.shadow)),
                sorted(set(self.shadow) - set(saved)),
            )
            raise ValueError(
                f"EMA state does not match the trained parameters: unexpected {extra[:5]}, "
                f"missing {missing[:5]}"
            )
        for name, tensor in saved.items():
            if tensor.shape != self.shadow[name].shape:
                raise ValueError(
                    f"EMA state for {name!r} has shape {tuple(tensor.shape)}, the parameter "
                    f"{tuple(self.shadow[name].shape)}"
                )
            self.shadow[name].copy_(tensor)
        self.last_step = int(state.get("last_step", 0))

    def named_tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        """(name, averaged weight) pairs, e.g. to save the EMA adapter or model."""
        return self.shadow.items()
