"""attention_mechanism: which PyTorch SDPA kernel the denoiser's attention runs on.

Every family's diffusers attention calls ``torch.nn.functional.scaled_dot_product_attention``;
'diffusers' leaves PyTorch to pick the kernel, the native-* values and 'cudnn' pin one through
``torch.nn.attention.sdpa_kernel`` around the forward pass (training and validation), so the
choice is the same for every family. On CPU only the math and flash kernels exist:
native-efficient and cudnn need a CUDA GPU and are refused on a CPU-only run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch

# attention_mechanism -> torch.nn.attention.SDPBackend member (None: PyTorch decides).
SDPA_BACKENDS: dict[str, str | None] = {
    "diffusers": None,
    "native-math": "MATH",
    "native-flash": "FLASH_ATTENTION",
    "native-efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
}
CUDA_ONLY = ("native-efficient", "cudnn")


def check(mechanism: str | None, device: torch.device | str | None) -> None:
    """Refuse a kernel ``device`` does not have (None: not known yet, nothing to check)."""
    name = mechanism or "diffusers"
    if name not in SDPA_BACKENDS:
        raise ValueError(
            f"attention_mechanism {name!r} is not an SDPA kernel st_ray can select; accepted: "
            + ", ".join(SDPA_BACKENDS)
        )
    if device is not None and torch.device(device).type != "cuda" and name in CUDA_ONLY:
        raise ValueError(
            f"attention_mechanism {name!r} needs a CUDA GPU (PyTorch has no CPU kernel for "
            "it); use 'diffusers', 'native-math' or 'native-flash' on CPU"
        )


def context(options: Mapping[str, Any], device: torch.device) -> contextlib.AbstractContextManager:
    """The SDPA kernel restriction for one forward pass (a no-op for 'diffusers')."""
    name = options.get("attention_mechanism") or "diffusers"
    check(name, device)
    backend = SDPA_BACKENDS[name]
    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, backend)])
