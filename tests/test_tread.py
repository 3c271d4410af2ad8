"""TREAD token routing (st_ray.train.tread): the router's maths, route validation, refusals.
The in-process training step with routing is in tests/test_objectives.py (it shares the tiny
flux caches there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from st_ray.config.errors import ConfigError
from st_ray.models.family import FAMILIES, TokenRouting
from st_ray.train import tread
from tests.test_config_errors import _base, _run

EXAMPLE = {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 2, "end_layer_idx": -2}]}


def test_keep_count_and_draws_follow_simpletuner() -> None:
    # SimpleTuner keeps S - round(S * selection_ratio) tokens.
    assert [tread.keep_count(10, r) for r in (0.0, 0.25, 0.5, 0.99)] == [10, 8, 5, 0]
    gen = torch.Generator().manual_seed(0)
    kept = tread.draw_kept(3, 16, 0.5, gen, shared=False)
    assert kept.shape == (3, 8)
    for row in kept.tolist():
        assert row == sorted(set(row)) and all(0 <= i < 16 for i in row)
    assert len({tuple(r) for r in kept.tolist()}) > 1  # a subset per sample
    shared = tread.draw_kept(3, 16, 0.5, gen, shared=True)
    assert all(row == shared[0].tolist() for row in shared.tolist())


def test_gather_and_restore_by_hand() -> None:
    full = torch.arange(12.0).reshape(1, 4, 3).requires_grad_()
    kept = torch.tensor([[1, 3]])
    routed = tread.gather(full, kept)
    assert routed.tolist() == [[[3.0, 4.0, 5.0], [9.0, 10.0, 11.0]]]
    back = tread.restore(full, routed * 10, kept)
    # Tokens 1 and 3 come back as the span computed them, 0 and 2 as they entered it.
    assert back[0, :, 0].tolist() == [0.0, 30.0, 6.0, 90.0]
    back.sum().backward()
    # Every token gets a gradient: 1 for the skipped ones, 10 through the routed ones.
    assert full.grad[0, :, 0].tolist() == [1.0, 10.0, 1.0, 10.0]


def test_rotary_tables_are_sliced_for_the_kept_image_tokens() -> None:
    table = torch.arange(5.0).reshape(5, 1)  # 2 text rows, then 3 image rows
    kept = torch.tensor([[0, 2], [0, 2]])
    cos, sin = tread.route_rotary((table, -table), "text_first", kept, text_tokens=2)
    assert cos.flatten().tolist() == [0.0, 1.0, 2.0, 4.0] and sin[-1].item() == -4.0
    image, text = tread.route_rotary((table, table[:1]), "image_first", kept, text_tokens=0)
    assert image.flatten().tolist() == [0.0, 2.0] and text is not None


def test_routes_resolve_negative_indices_and_sort() -> None:
    routes = tread.resolve(
        {
            "routes": [
                {"selection_ratio": 0.7, "start_layer_idx": -4, "end_layer_idx": -1},
                {"selection_ratio": 0.3, "start_layer_idx": 1, "end_layer_idx": 3},
            ]
        },
        12,
    )
    assert routes == [tread.Route(0.3, 1, 3), tread.Route(0.7, 8, 11)]
    assert tread.resolve(EXAMPLE, 8) == [tread.Route(0.5, 2, 6)]


@pytest.mark.parametrize(
    ("value", "blocks", "expected"),
    [
        ({"route": []}, 8, "needs a 'routes' list"),
        ({"routes": []}, 8, "'routes' is empty"),
        ({"routes": [{"selection_ratio": 0.5, "start_layer_idx": 1}]}, 8, "exactly the keys"),
        (
            {"routes": [{"selection_ratio": 1.0, "start_layer_idx": 1, "end_layer_idx": 2}]},
            8,
            "routes[0].selection_ratio is 1.0",
        ),
        (
            {"routes": [{"selection_ratio": -0.1, "start_layer_idx": 1, "end_layer_idx": 2}]},
            None,
            "selection_ratio is -0.1",
        ),
        (
            {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 1, "end_layer_idx": 8}]},
            8,
            "layer 8 does not exist; this denoiser has 8 blocks, accepted -8..7",
        ),
        (
            {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 5, "end_layer_idx": 2}]},
            None,
            "start_layer_idx comes after end_layer_idx",
        ),
        (
            {
                "routes": [
                    {"selection_ratio": 0.5, "start_layer_idx": 1, "end_layer_idx": 4},
                    {"selection_ratio": 0.5, "start_layer_idx": -5, "end_layer_idx": -1},
                ]
            },
            8,
            "routes[0] and routes[1] overlap",
        ),
    ],
)
def test_bad_routes_say_what_is_accepted(value, blocks, expected) -> None:
    problems = tread.route_problems(value, blocks)
    assert any(expected in p for p in problems), problems
    assert all("accepted" in p for p in problems)


def test_mixed_sign_routes_wait_for_the_block_count() -> None:
    # 2..-2 is fine on 8 blocks and wrong on 3 (block 2 comes after block 3 - 2 = 1).
    assert tread.route_problems(EXAMPLE, None) == []
    assert "comes after" in tread.route_problems(EXAMPLE, 3)[0]
    with pytest.raises(ValueError, match="tread_config: .*comes after"):
        tread.resolve(EXAMPLE, 3)


def test_hooks_route_only_training_forwards_with_gradients() -> None:
    """A stand-in DiT whose blocks take ``hidden_states`` and count the tokens they see."""

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)
            self.seen: list[int] = []

        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            self.seen.append(hidden_states.shape[1])
            return self.linear(hidden_states)

    net = torch.nn.Module()
    net.transformer_blocks = torch.nn.ModuleList(Block() for _ in range(4))
    spec = FAMILIES["sd3"]  # positions in the tokens: TokenRouting()
    assert spec.token_routing == TokenRouting()
    value = {"routes": [{"selection_ratio": 0.75, "start_layer_idx": 1, "end_layer_idx": -2}]}
    router = tread.Tread.attach({"tread_config": value}, net, spec)

    def run() -> torch.Tensor:
        x = torch.randn(2, 8, 2)
        for block in net.transformer_blocks:
            x = block(hidden_states=x)
        return x

    net.train()
    with router.routing():
        out = run()
        out.sum().backward()
    assert [b.seen for b in net.transformer_blocks] == [[8], [2], [2], [8]]
    assert out.shape == (2, 8, 2) and router.routed_tokens == [8]
    for block in net.transformer_blocks:
        block.seen.clear()
    run()  # outside the training step: not routed
    with router.routing(), torch.no_grad():
        run()  # no gradients (validation, rollouts): not routed
    net.eval()
    with router.routing():
        run()  # eval mode: not routed
    assert all(b.seen == [8, 8, 8] for b in net.transformer_blocks)


def _refusal(tmp: Path, **changes) -> str:
    config, datasets = _base(tmp)
    config.update(changes)
    config.pop("pretrained_model_name_or_path")
    with pytest.raises(ConfigError) as err:
        _run(tmp, config, datasets)
    return str(err.value)


def test_tread_is_refused_at_plan_time_with_the_reason(tmp_path: Path) -> None:
    message = _refusal(tmp_path, model_family="auraflow", tread_config=EXAMPLE)
    assert "tread_config: auraflow's single-stream blocks" in message
    message = _refusal(tmp_path, model_family="sana", tread_config=EXAMPLE)
    assert "tread_config: sana's blocks run a convolution" in message
    bad = {"routes": [{"selection_ratio": 2, "start_layer_idx": 0, "end_layer_idx": 0}]}
    message = _refusal(tmp_path, model_family="flux", tread_config=json.dumps(bad))
    assert "tread_config: routes[0].selection_ratio is 2; accepted:" in message
