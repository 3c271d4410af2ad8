"""Memory options: the SDPA kernel of attention_mechanism is really pinned, CUDA-only kernels
are refused on CPU, and optimizer_release_gradients steps during backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from st_ray.train import attention
from st_ray.train.optimizers import build_optimizer


def _sdpa() -> torch.Tensor:
    q = torch.randn(1, 2, 8, 4, generator=torch.Generator().manual_seed(0))
    return F.scaled_dot_product_attention(q, q, q)


@pytest.mark.parametrize("name", ["diffusers", "native-math", "native-flash"])
def test_cpu_kernels_run_and_agree(name: str) -> None:
    with attention.context({"attention_mechanism": name}, torch.device("cpu")):
        out = _sdpa()
    torch.testing.assert_close(out, _sdpa(), rtol=1e-5, atol=1e-5)


def _enabled_kernels() -> dict[str, bool]:
    """The SDPA kernels PyTorch's dispatcher may choose from right now."""
    cuda = torch.backends.cuda
    return {
        "math": cuda.math_sdp_enabled(),
        "flash": cuda.flash_sdp_enabled(),
        "efficient": cuda.mem_efficient_sdp_enabled(),
        "cudnn": cuda.cudnn_sdp_enabled(),
    }


@pytest.mark.parametrize(("name", "kernel"), [("native-math", "math"), ("native-flash", "flash")])
def test_the_kernel_is_really_pinned(name: str, kernel: str) -> None:
    """attention.context leaves the dispatcher only the chosen kernel, then restores it."""
    before = _enabled_kernels()
    assert sum(before.values()) > 1  # PyTorch's default: it picks among several
    with attention.context({"attention_mechanism": name}, torch.device("cpu")):
        assert _enabled_kernels() == {k: k == kernel for k in before}
    assert _enabled_kernels() == before
    with attention.context({"attention_mechanism": "diffusers"}, torch.device("cpu")):
        assert _enabled_kernels() == before  # 'diffusers': PyTorch decides


@pytest.mark.parametrize("name", attention.CUDA_ONLY)
def test_cuda_only_kernels_are_refused_on_cpu(name: str) -> None:
    with pytest.raises(ValueError, match=f"attention_mechanism '{name}' needs a CUDA GPU"):
        attention.context({"attention_mechanism": name}, torch.device("cpu"))
    attention.check(name, None)  # device unknown (validation of a GPU cluster): accepted


def test_release_gradients_steps_each_parameter_during_backward() -> None:
    import optimi

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    options = {"optimizer": "optimi-adamw", "optimizer_release_gradients": True}
    optimizer = build_optimizer(model.parameters(), {**options, "learning_rate": 1e-2})
    optimi.prepare_for_gradient_release(model, optimizer)  # what build_run does
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(16, 4)).pow(2).mean().backward()
    assert all(p.grad is None for p in model.parameters())  # freed right after the update
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    after = [p.detach().clone() for p in model.parameters()]
    optimizer.step()  # the loop's call is a no-op now
    assert all(torch.equal(a, p) for a, p in zip(after, model.parameters(), strict=True))
