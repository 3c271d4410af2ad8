"""The optimizer factory: every catalog choice trains a small regression, option precedence,
optimizer_config parsing, schedule-free mode switching and the bf16 stochastic rounding."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from st_ray.config.options import CANONICAL
from st_ray.train.adamw_bf16 import AdamWBF16, stochastic_round_to_bf16
from st_ray.train.optimizer_specs import SPECS, OptimizerUnavailable
from st_ray.train.optimizers import (
    build_optimizer,
    check_available,
    optimizer_kwargs,
    parse_optimizer_config,
    set_train_mode,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def eager_torchao(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchao compiles its step on every new shape (tens of seconds on two CPU cores); eager
    runs the same arithmetic (same losses to the last digit on CPU), so the tests use it. The
    compiled path runs in the GPU test below."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)


def _regression(dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(0)
    # 64 x 64 = 4096 weights: the smallest tensor whose torchao state is actually quantised.
    x = torch.randn(128, 64, generator=g)
    y = x @ torch.randn(64, 64, generator=g)
    w = torch.nn.Parameter(torch.zeros(64, 64, dtype=dtype))

    def loss() -> torch.Tensor:
        return ((x.to(dtype) @ w).float() - y).pow(2).sum(dim=1).mean()

    return w, loss


def _train(optimizer: torch.optim.Optimizer, loss, steps: int = 20) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()


def test_every_catalog_choice_has_a_spec() -> None:
    assert set(SPECS) == set(CANONICAL["optimizer"].choices)


@pytest.mark.usefixtures("eager_torchao")
@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_optimizer_reduces_a_regression_loss(name: str) -> None:
    w, loss = _regression()
    # Prodigy starts from a step size of d0 = 1e-6 and needs far more than 20 steps to grow it.
    config = "d0=0.01" if name == "prodigy" else None
    optimizer = build_optimizer(
        [w], {"optimizer": name, "learning_rate": 0.05, "optimizer_config": config}
    )
    initial = loss().item()
    _train(optimizer, loss)
    if name.startswith("ao-"):
        assert type(optimizer.state[w]["exp_avg"]) is not torch.Tensor  # a low-bit subclass
    set_train_mode(optimizer, False)  # schedule-free: evaluate at the averaged weights x
    assert loss().item() < 0.9 * initial


def test_adamw_bf16_matches_torch_adamw_on_float32() -> None:
    w_ours, loss_ours = _regression()
    w_ref, loss_ref = _regression()
    kwargs = dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    _train(AdamWBF16([w_ours], **kwargs), loss_ours, steps=10)
    _train(torch.optim.AdamW([w_ref], foreach=False, **kwargs), loss_ref, steps=10)
    torch.testing.assert_close(w_ours, w_ref, rtol=1e-6, atol=1e-7)


def test_adamw_bf16_trains_bf16_weights() -> None:
    w, loss = _regression(torch.bfloat16)
    optimizer = build_optimizer([w], {"optimizer": "adamw_bf16", "learning_rate": 0.05})
    initial = loss().item()
    _train(optimizer, loss)
    assert w.dtype == torch.bfloat16
    assert optimizer.state[w]["exp_avg"].dtype == torch.bfloat16
    assert loss().item() < 0.9 * initial


def test_stochastic_rounding_is_unbiased_and_seeded() -> None:
    lo, hi = 1.0, 1.0 + 2.0**-7  # neighbouring bf16 values
    x = torch.full((20000,), lo + 0.25 * (hi - lo))
    rounded = stochastic_round_to_bf16(x, torch.Generator().manual_seed(1)).float()
    assert set(rounded.unique().tolist()) == {lo, hi}
    assert abs((rounded == hi).float().mean().item() - 0.25) < 0.02
    again = stochastic_round_to_bf16(x, torch.Generator().manual_seed(1)).float()
    assert torch.equal(rounded, again)
    exact = torch.tensor([0.0, -2.0, 1.5, 3.0 * 2.0**-20])
    g = torch.Generator().manual_seed(0)
    assert torch.equal(stochastic_round_to_bf16(exact, g).float(), exact)


def test_bf16_updates_below_resolution_still_move_the_weights() -> None:
    # A constant gradient makes each Adam step ~lr = 1e-3, an eighth of bf16's spacing at 1.0:
    # round-to-nearest would never move the weights; stochastic rounding moves them on average.
    p16 = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    p32 = torch.nn.Parameter(torch.ones(4096))
    opts = [
        AdamWBF16([p16], lr=1e-3, weight_decay=0.0),
        AdamWBF16([p32], lr=1e-3, weight_decay=0.0),
    ]
    for _ in range(50):
        for p, opt in zip((p16, p32), opts, strict=True):
            p.grad = torch.ones_like(p)
            opt.step()
    assert p32.mean().item() == pytest.approx(0.95, abs=1e-3)
    assert p16.float().mean().item() == pytest.approx(p32.mean().item(), abs=2e-3)


# --- optimizer_config ----------------------------------------------------------------------------


def test_optimizer_config_values_are_typed() -> None:
    parsed = parse_optimizer_config(
        " d_coef=0.1, d0=1e-6,k=6,use_speed=TRUE,x=false,beta3=none,fmt=channels_last,"
    )
    assert parsed == {
        "d_coef": 0.1,
        "d0": 1e-6,
        "k": 6,
        "use_speed": True,
        "x": False,
        "beta3": None,
        "fmt": "channels_last",
    }
    assert type(parsed["k"]) is int and type(parsed["d0"]) is float
    assert parse_optimizer_config(None) == {} and parse_optimizer_config("") == {}
    assert parse_optimizer_config("a=-3,b=+.5,c=2E3") == {"a": -3, "b": 0.5, "c": 2000.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("d_coef", "'d_coef' is not key=value"),
        ("=3", "'=3' is not key=value"),
        ("a=1,a=2", "'a' is given twice"),
    ],
)
def test_optimizer_config_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_optimizer_config(text)


def test_unknown_optimizer_config_key_names_it_and_the_accepted_ones() -> None:
    options = {"optimizer": "optimi-adamw", "optimizer_config": "d_coef=0.1"}
    with pytest.raises(ValueError) as excinfo:
        check_available(options)
    message = str(excinfo.value)
    assert "'d_coef' is not a setting of optimizer 'optimi-adamw'" in message
    assert (
        "it accepts: betas, decouple_lr, eps, foreach, gradient_release, kahan_sum, lr" in message
    )


def test_simpletuner_spellings_of_soap_keys_are_accepted() -> None:
    _, kwargs = optimizer_kwargs(
        {
            "optimizer": "soap",
            "optimizer_config": "max_precond_dim=512,normalize_grads=true,shampoo_beta=-1",
        }
    )
    assert kwargs["max_precondition_dim"] == 512
    assert kwargs["normalize_gradient"] is True
    assert kwargs["shampoo_beta"] is None


# --- precedence of the options ---------------------------------------------------------------


def test_simpletuner_defaults_apply_when_nothing_is_set() -> None:
    _, kwargs = optimizer_kwargs({"optimizer": "optimi-adamw", "learning_rate": 3e-4})
    assert kwargs["lr"] == 3e-4
    assert (
        kwargs["betas"] == (0.9, 0.99) and kwargs["eps"] == 1e-6 and kwargs["weight_decay"] == 0.0
    )
    _, kwargs = optimizer_kwargs(
        {"optimizer": "adamw_schedulefree+aggressive", "lr_warmup_steps": 7}
    )
    assert kwargs["weight_decay"] == 1e-3 and kwargs["eps"] == 1e-6 and kwargs["warmup_steps"] == 7


def test_adam_options_then_optimizer_config_then_optimizer_betas() -> None:
    options = {
        "optimizer": "optimi-adamw",
        "adam_beta1": 0.8,
        "adam_beta2": 0.95,
        "adam_epsilon": 1e-7,
        "adam_weight_decay": 0.05,
        "optimizer_config": "eps=1e-5",
        "optimizer_beta2": 0.9,
    }
    _, kwargs = optimizer_kwargs(options)
    assert kwargs["betas"] == (0.8, 0.9)  # adam_beta1, then optimizer_beta2 over adam_beta2
    assert kwargs["eps"] == 1e-5  # optimizer_config over adam_epsilon
    assert kwargs["weight_decay"] == 0.05


def test_adam_options_do_not_reach_non_adam_optimizers() -> None:
    _, kwargs = optimizer_kwargs(
        {"optimizer": "optimi-lion", "adam_beta1": 0.5, "adam_weight_decay": 0.3}
    )
    assert kwargs["betas"] == (0.9, 0.99) and kwargs["weight_decay"] == 0.0


def test_optimizer_betas_keep_a_third_beta_and_need_betas() -> None:
    _, kwargs = optimizer_kwargs({"optimizer": "optimi-adan", "optimizer_beta1": 0.9})
    assert kwargs["betas"] == (0.9, 0.92, 0.999)
    with pytest.raises(ValueError, match="optimizer 'optimi-sgd' has no betas"):
        check_available({"optimizer": "optimi-sgd", "optimizer_beta1": 0.9})


def test_prodigy_lr_and_steps() -> None:
    _, kwargs = optimizer_kwargs(
        {"optimizer": "prodigy", "learning_rate": 1e-4, "prodigy_steps": 25}
    )
    assert kwargs["lr"] == 1.0  # SimpleTuner's default_settings win over learning_rate
    assert kwargs["prodigy_steps"] == 25
    _, kwargs = optimizer_kwargs({"optimizer": "prodigy", "optimizer_config": "lr=0.5,d_coef=2"})
    assert kwargs["lr"] == 0.5 and kwargs["d_coef"] == 2 and kwargs["prodigy_steps"] == 0


def test_release_gradients() -> None:
    _, kwargs = optimizer_kwargs({"optimizer": "optimi-adamw", "optimizer_release_gradients": True})
    assert kwargs["gradient_release"] is True
    with pytest.raises(ValueError, match="optimi-\\* optimizers only, not 'adamw_bf16'"):
        check_available({"optimizer": "adamw_bf16", "optimizer_release_gradients": True})
    with pytest.raises(ValueError, match="gradient_accumulation_steps > 1"):
        check_available(
            {
                "optimizer": "optimi-adam",
                "optimizer_release_gradients": True,
                "gradient_accumulation_steps": 2,
            }
        )


def test_adamw_bf16_seed_comes_from_the_options() -> None:
    assert optimizer_kwargs({"seed": 42})[1]["seed"] == 42
    assert optimizer_kwargs({"seed": None})[1]["seed"] == 0


# --- availability --------------------------------------------------------------------------------


def test_defaults_are_available() -> None:
    check_available({})


def test_missing_package_is_reported_early(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in [m for m in sys.modules if m == "optimi" or m.startswith("optimi.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "optimi", None)  # makes `import optimi` fail
    with pytest.raises(
        OptimizerUnavailable,
        match="optimizer 'optimi-adamw' needs the Python package 'torch-optimi'",
    ):
        check_available({"optimizer": "optimi-adamw"})
    with pytest.raises(OptimizerUnavailable, match="optimi-lion"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], {"optimizer": "optimi-lion"})


# --- schedule-free mode switching, state ------------------------------------------------------------


def test_schedule_free_optimizers_swap_between_y_and_x() -> None:
    w, loss = _regression()
    optimizer = build_optimizer([w], {"optimizer": "adamw_schedulefree", "learning_rate": 0.05})
    _train(optimizer, loss, steps=5)
    y = w.detach().clone()
    set_train_mode(optimizer, False)
    x = w.detach().clone()
    assert not torch.allclose(x, y)
    set_train_mode(optimizer, False)  # idempotent
    torch.testing.assert_close(w.detach(), x)
    set_train_mode(optimizer, True)
    torch.testing.assert_close(w.detach(), y)
    assert SPECS["adamw_schedulefree"].replaces_lr_scheduler
    assert SPECS["prodigy"].schedule_free and not SPECS["prodigy"].replaces_lr_scheduler


def test_set_train_mode_is_a_noop_elsewhere() -> None:
    w, loss = _regression()
    optimizer = build_optimizer([w], {"optimizer": "optimi-adamw", "learning_rate": 0.05})
    _train(optimizer, loss, steps=3)
    before = w.detach().clone()
    set_train_mode(optimizer, False)
    set_train_mode(optimizer, True)
    assert torch.equal(w.detach(), before)


@pytest.mark.parametrize("name", ["adamw_bf16", "adamw_schedulefree", "optimi-adamw"])
def test_state_dict_round_trip_resumes_identically(name: str) -> None:
    options = {"optimizer": name, "learning_rate": 0.05}
    w_a, loss_a = _regression()
    opt_a = build_optimizer([w_a], options)
    _train(opt_a, loss_a, steps=5)
    # state_dict() holds references to the live state tensors: copy before training on.
    saved_weights, saved_state = w_a.detach().clone(), copy.deepcopy(opt_a.state_dict())
    _train(opt_a, loss_a, steps=5)

    w_b, loss_b = _regression()
    with torch.no_grad():
        w_b.copy_(saved_weights)
    opt_b = build_optimizer([w_b], options)
    opt_b.load_state_dict(saved_state)
    _train(opt_b, loss_b, steps=5)
    assert torch.equal(w_a, w_b)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ao-adamw8bit", "ao-adamw4bit", "ao-adamfp8", "ao-adamwfp8"])
def test_torchao_optimizers_compiled_on_cuda(name: str) -> None:
    if name in ("ao-adamfp8", "ao-adamwfp8") and torch.cuda.get_device_capability() < (8, 9):
        with pytest.raises(OptimizerUnavailable, match="compute capability 8.9"):
            build_optimizer(
                [torch.nn.Parameter(torch.zeros(4, device="cuda"))], {"optimizer": name}
            )
        return
    w = torch.nn.Parameter(torch.zeros(64, 64, device="cuda"))
    target = torch.randn(64, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    optimizer = build_optimizer([w], {"optimizer": name, "learning_rate": 0.01})
    initial = (w - target).pow(2).mean().item()
    for _ in range(20):
        optimizer.zero_grad()
        (w - target).pow(2).mean().backward()
        optimizer.step()
    assert (w - target).pow(2).mean().item() < initial
