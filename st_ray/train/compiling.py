"""torch.compile of the denoiser: dynamo_backend, dynamo_mode, dynamo_fullgraph,
dynamo_dynamic and dynamo_use_regional_compilation for the training loop, and
validation_torch_compile for the validation pipeline's denoiser.

The training denoiser is compiled in place (``nn.Module.compile``), after its LoRA / LyCORIS
layers are attached and before DDP wraps it, so its parameter names, state dict and saved
weights stay those of the plain model. Regional compilation compiles each repeated block
(diffusers' ``_repeated_blocks``) instead of the whole model: one compile serves every block.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

BACKENDS = ("inductor", "aot_eager", "cudagraphs", "eager")
# Modes that capture CUDA graphs (inductor's 'reduce-overhead' and 'max-autotune').
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def enabled(options: Mapping[str, Any]) -> bool:
    return str(options.get("dynamo_backend") or "no") != "no"


def compile_kwargs(options: Mapping[str, Any], *, backend: str | None = None) -> dict[str, Any]:
    """torch.compile's arguments from the dynamo_* options."""
    kwargs: dict[str, Any] = {
        "backend": backend or str(options.get("dynamo_backend")),
        "fullgraph": bool(options.get("dynamo_fullgraph")),
        # False pins static shapes; None (the default) lets dynamo decide after a recompile.
        "dynamic": True if options.get("dynamo_dynamic") else None,
    }
    mode = options.get("dynamo_mode")
    if mode and mode != "default":
        kwargs["mode"] = mode
    return kwargs


def option_problems(values: Mapping[str, Any], *, cpu_only: bool) -> list[tuple[str, str]]:
    """(key, message) for dynamo settings that cannot run (CUDA graphs on a CPU-only run,
    a mode without inductor, compile knobs without a backend)."""
    found: list[tuple[str, str]] = []
    backend = str(values.get("dynamo_backend") or "no")
    mode = values.get("dynamo_mode")
    if backend == "no":
        for key in ("dynamo_mode", "dynamo_fullgraph", "dynamo_dynamic"):
            if values.get(key) and not values.get("validation_torch_compile"):
                found.append((key, f"{key} needs dynamo_backend (torch.compile is off)"))
        if values.get("dynamo_use_regional_compilation"):
            found.append(
                (
                    "dynamo_use_regional_compilation",
                    "dynamo_use_regional_compilation needs dynamo_backend (torch.compile is off)",
                )
            )
    if mode and mode != "default" and backend not in ("no", "inductor"):
        found.append(
            (
                "dynamo_mode",
                f"dynamo_mode {mode!r} is an inductor setting; dynamo_backend is {backend!r} "
                "(use dynamo_backend: inductor, or leave dynamo_mode unset)",
            )
        )
    if cpu_only:
        if backend == "cudagraphs":
            found.append(
                (
                    "dynamo_backend",
                    "dynamo_backend 'cudagraphs' needs a CUDA GPU; this run is CPU-only",
                )
            )
        if mode in CUDA_GRAPH_MODES:
            found.append(
                (
                    "dynamo_mode",
                    f"dynamo_mode {mode!r} captures CUDA graphs and needs a CUDA GPU; this run is "
                    "CPU-only (use 'default' or 'max-autotune-no-cudagraphs')",
                )
            )
    return found


def check_device(options: Mapping[str, Any], device: torch.device) -> None:
    """Refuse CUDA-graph settings on a CPU worker (a config check cannot always know)."""
    if device.type == "cuda":
        return
    problems = option_problems(options, cpu_only=True)
    if problems:
        raise ValueError("; ".join(message for _, message in problems))


def compile_denoiser(core: torch.nn.Module, options: Mapping[str, Any]) -> None:
    """Compile ``core`` in place as the dynamo_* options say (nothing when dynamo_backend is
    'no')."""
    if not enabled(options):
        return
    kwargs = compile_kwargs(options)
    if options.get("dynamo_use_regional_compilation"):
        blocks = repeated_blocks(core)
        if not blocks:
            raise ValueError(
                f"dynamo_use_regional_compilation: {type(core).__name__} declares no repeated "
                "blocks to compile; compile the whole model (leave the option off)"
            )
        for block in blocks:
            block.compile(**kwargs)
        return
    core.compile(**kwargs)


def repeated_blocks(core: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of the classes diffusers lists in ``_repeated_blocks`` (the UNet's
    transformer blocks, a DiT's double- and single-stream blocks...); for a model that lists none
    (some DiTs), the entries of its top-level block lists (``transformer_blocks``...)."""
    names = set(getattr(core, "_repeated_blocks", None) or ())
    if names:
        return [m for m in core.modules() if type(m).__name__ in names]
    lists = [m for m in core.children() if isinstance(m, torch.nn.ModuleList)]
    return [block for blocks in lists for block in blocks]


def for_validation(denoiser: torch.nn.Module, options: Mapping[str, Any]) -> torch.nn.Module:
    """validation_torch_compile: a compiled view of ``denoiser`` for the pipeline (sharing its
    weights; the training module itself is left as it is), with torch.compile's default
    backend (inductor) and the dynamo_mode / fullgraph / dynamic options. A denoiser compiled
    for training (dynamo_backend) renders as it is."""
    if not options.get("validation_torch_compile") or enabled(options):
        return denoiser  # off, or already compiled for training (the same module renders)
    return torch.compile(denoiser, **compile_kwargs(options, backend="inductor"))
