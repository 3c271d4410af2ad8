"""Training objectives and regularisers (issue 17): diff2flow, LayerSync and CREPA (whose maths
is tested in test_crepa.py).

Each method: its maths against a hand-computed case, its refusal at --dry-run (build_plan) for
the families it cannot apply to, and an in-process 2-step run on tiny families where turning it
on at the same seed changes the first step's loss by exactly what the method says."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from st_ray.config.errors import ConfigError
from st_ray.plan import build_plan
from st_ray.train import diff2flow, layersync
from st_ray.train.trainer import fit_in_process
from tests.test_config_errors import _base, _run
from tests.test_training_more import _plan, _setup

# ------------------------------------------------------------------------------- diff2flow


def test_diff2flow_converts_epsilon_and_v_predictions_by_hand() -> None:
    # ᾱ = 0.64 at timestep 1: sqrt(ᾱ) = 0.8, sqrt(1 - ᾱ) = 0.6; x0 = 1, ε = 2 -> x_t = 2.0.
    alphas = torch.tensor([0.25, 0.64])
    t = torch.tensor([1])
    x0, eps = torch.ones(1, 1), torch.full((1, 1), 2.0)
    noisy = torch.full((1, 1), 2.0)
    # A perfect epsilon prediction is the flow target ε - x0 = 1 exactly.
    assert diff2flow.prediction_to_flow(eps, noisy, t, alphas, "epsilon").item() == pytest.approx(1)
    # ε̂ = 3: x̂0 = 2/0.8 - 0.75·3 = 0.25, flow 2.75, squared error 1.75² = 3.0625.
    wrong = torch.full((1, 1), 3.0)
    assert diff2flow.flow_loss(
        wrong, noisy, t, alphas, "epsilon", target_flow=eps - x0
    ).item() == pytest.approx(3.0625)
    # v = 0.8·2 - 0.6·1 = 1; v̂ = 2: x̂0 = 1.6 - 1.2 = 0.4, ε̂ = 1.6 + 1.2 = 2.8, flow 2.4.
    v = torch.ones(1, 1)
    assert diff2flow.prediction_to_flow(v, noisy, t, alphas, "v_prediction").item() == (
        pytest.approx(1)
    )
    assert diff2flow.flow_loss(
        2 * v, noisy, t, alphas, "v_prediction", target_flow=eps - x0
    ).item() == pytest.approx(1.96)
    with pytest.raises(ValueError, match="epsilon or v_prediction"):
        diff2flow.prediction_to_flow(v, noisy, t, alphas, "sample")


def _refusals(tmp: Path, **changes) -> str:
    config, datasets = _base(tmp)
    config.update(changes)
    if config["model_family"] != "sd1x":
        config.pop("pretrained_model_name_or_path")
    with pytest.raises(ConfigError) as err:
        _run(tmp, config, datasets)
    return str(err.value)


def test_objectives_are_refused_where_they_cannot_apply(tmp_path: Path) -> None:
    message = _refusals(tmp_path, model_family="flux", diff2flow_enabled=True, diff2flow_loss=True)
    assert "diff2flow_loss: only applies to epsilon or v_prediction models" in message
    assert "flow-matching" in message
    message = _refusals(tmp_path, diff2flow_loss=True)
    assert "diff2flow_loss: needs diff2flow_enabled" in message
    message = _refusals(tmp_path, diff2flow_enabled=True, diff2flow_loss=True, loss_type="huber")
    assert "loss_type: 'huber' would be ignored" in message
    config, datasets = _base(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "diff2flow_enabled": True}))
    (tmp_path / "multidatabackend.json").write_text(json.dumps(datasets))
    notes = build_plan(tmp_path / "config.json", [], {}).notes
    assert any("diff2flow_enabled without diff2flow_loss changes nothing" in n for n in notes)
    message = _refusals(tmp_path, model_family="auraflow", layersync_enabled=True)
    assert "auraflow does not expose its denoiser's block list" in message
    assert "layersync_student_block: is required" in message
    message = _refusals(
        tmp_path, layersync_enabled=True, layersync_student_block=1, layersync_lambda=0
    )
    assert "layersync_lambda: must be greater than 0" in message


def test_feature_pairs_not_built_together_are_refused(tmp_path: Path) -> None:
    route = {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": 0}]}
    message = _refusals(tmp_path, model_family="flux", tread_config=route, crepa_enabled=True)
    assert "crepa_enabled: cannot be combined with tread_config yet" in message
    message = _refusals(tmp_path, model_family="flux", tread_config=route, dynamo_backend="eager")
    assert "dynamo_backend: cannot be combined with tread_config yet" in message


# ------------------------------------------------------------------------------- LayerSync


def test_layersync_term_by_hand() -> None:
    # Depths are 1-based (SimpleTuner / the paper); 0 stays the first block.
    assert [layersync.block_index(i) for i in (0, 1, 2, 5)] == [0, 0, 1, 4]
    # A UNet feature map (B=1, C=2, H=1, W=2) is 2 tokens of 2 channels: (1, 0) and (0, 1).
    student = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]], requires_grad=True)
    assert layersync.tokens(student).tolist() == [[[1.0, 0.0], [0.0, 1.0]]]
    teacher = torch.tensor([[[2.0, 0.0], [3.0, 0.0]]], requires_grad=True)
    # cos = 1 and 0: mean similarity 0.5, term -λ·0.5.
    term, similarity = layersync.alignment_loss(layersync.tokens(student), teacher, 0.4)
    assert similarity.item() == pytest.approx(0.5) and term.item() == pytest.approx(-0.2)
    term.backward()
    assert teacher.grad is None and student.grad is not None  # the teacher is detached


def test_layersync_rejects_a_block_the_denoiser_lacks() -> None:
    net = torch.nn.Module()
    net.transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2)] * 2)
    options = {"layersync_enabled": True, "layersync_student_block": 3, "layersync_lambda": 0.2}
    with pytest.raises(ValueError, match="block 3 .* has 2 blocks"):
        layersync.LayerSync.attach(options, net, (("transformer_blocks", 0),))


# ------------------------------------------------------------------- in-process, 2 steps

# sd2x: a tiny v-prediction UNet; its 2nd block (down block 2) and 3rd (mid block) share a
# shape. flux: a tiny DiT with one double and one single block.
FAMILIES = {"sd2x": ("2", "3"), "flux": ("1", "2")}


@pytest.fixture(scope="module")
def setups(tmp_path_factory, zoo_root, example_dataset, family_cache_root):
    made = {}

    def get(family: str):
        if family not in made:
            root = tmp_path_factory.mktemp(f"objectives-{family}")
            made[family] = _setup(
                root, zoo_root, example_dataset.images_dir, family, family_cache_root
            )
        return made[family]

    return get


def _first_steps(config: Path, out: Path, *extra: str) -> list[dict]:
    plan = _plan(config, out / "out", "--max_train_steps", "2", "--train_batch_size", "1", *extra)
    progress, reported = fit_in_process(plan, out / "ckpt")
    assert progress.global_step == 2
    return reported


@contextlib.contextmanager
def _unet_timesteps() -> Iterator[list[int]]:
    """The timestep of every training-mode UNet forward pass inside the block."""
    from diffusers import UNet2DConditionModel

    seen: list[int] = []

    def hook(module, args, kwargs, output):
        if isinstance(module, UNet2DConditionModel) and module.training:
            t = args[1] if len(args) > 1 else kwargs["timestep"]
            seen.append(int(torch.as_tensor(t).reshape(-1)[0]))

    handle = torch.nn.modules.module.register_module_forward_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def base_runs(setups, tmp_path_factory):
    """(reported metrics, UNet timesteps) of each family's plain 2-step run, run once."""
    made: dict[str, tuple[list[dict], list[int]]] = {}

    def get(family: str) -> tuple[list[dict], list[int]]:
        if family not in made:
            with _unet_timesteps() as seen:
                steps = _first_steps(setups(family)[1], tmp_path_factory.mktemp(f"base-{family}"))
            made[family] = (steps, seen)
        return made[family]

    return get


@pytest.mark.parametrize("family", list(FAMILIES))
def test_layersync_adds_exactly_its_term(family: str, setups, base_runs, tmp_path: Path) -> None:
    _, config = setups(family)
    student, teacher = FAMILIES[family]
    base, _ = base_runs(family)
    synced = _first_steps(
        config,
        tmp_path,
        *("--layersync_enabled", "--layersync_lambda", "0.5"),
        *("--layersync_student_block", student, "--layersync_teacher_block", teacher),
    )
    assert all("layersync_loss" in step for step in synced)
    assert not any("layersync_loss" in step for step in base)
    first = synced[0]
    # Same seed, same weights at step 1: the loss differs by -λ·similarity, nothing else.
    assert first["layersync_loss"] == pytest.approx(-0.5 * first["layersync_similarity"])
    assert first["loss"] - base[0]["loss"] == pytest.approx(first["layersync_loss"], abs=1e-5)
    assert -1 <= first["layersync_similarity"] < 1


def test_crepa_trains_logs_its_term_and_resumes_exactly(
    setups, base_runs, zoo_root: Path, tmp_path: Path
) -> None:
    """CREPA on the tiny Flux with the tiny DINOv2: the term is logged and finite, it is all the
    first step's loss gained at the same seed, the head is in the checkpoints and trains, and a
    resume from step 1 repeats step 2 exactly (head, schedule state, optimizer)."""
    from st_ray import zoo
    from st_ray.train import checkpoints

    _, config = setups("flux")
    base, _ = base_runs("flux")
    crepa_args = (
        *("--crepa_enabled", "--crepa_block_index", "1", "--crepa_lambda", "0.5"),
        *("--crepa_model", str(zoo.ensure("dinov2", zoo_root))),
        *("--crepa_encoder_image_size", "64", "--checkpoint_step_interval", "1"),
    )
    steps = _first_steps(config, tmp_path / "crepa", *crepa_args)
    assert all("crepa_loss" in s for s in steps) and not any("crepa_loss" in s for s in base)
    first = steps[0]
    assert math.isfinite(first["crepa_loss"]) and first["crepa_loss"] != 0
    assert first["crepa_weight"] == 0.5 and -1 <= first["crepa_similarity_self"] <= 1
    # One frame: the term is -λ·self-similarity, and it is all the step's loss gained.
    assert first["crepa_loss"] == pytest.approx(-0.5 * first["crepa_similarity_self"], rel=1e-5)
    assert first["loss"] - base[0]["loss"] == pytest.approx(first["crepa_loss"], abs=1e-5)

    # The head (LayerNorm + Linear, transformer width -> DINOv2 width) is in the checkpoint.
    saved = tmp_path / "crepa" / "ckpt"
    head = checkpoints.load_state(saved / "checkpoint-2")["crepa"]
    earlier = checkpoints.load_state(saved / "checkpoint-1")["crepa"]
    assert head["head"]["1.weight"].shape == (32, 32) and head["schedule"]["ema"] is not None
    assert not torch.equal(earlier["head"]["1.weight"], head["head"]["1.weight"])  # it trains

    # Resume from step 1: step 2 repeats exactly.
    plan = _plan(
        config,
        tmp_path / "resumed" / "out",
        *("--max_train_steps", "2", "--train_batch_size", "1", *crepa_args),
    )
    _, resumed = fit_in_process(plan, tmp_path / "resumed" / "ckpt", saved / "checkpoint-1")
    again = checkpoints.load_state(tmp_path / "resumed" / "ckpt" / "checkpoint-2")["crepa"]
    assert resumed[-1]["crepa_loss"] == pytest.approx(steps[-1]["crepa_loss"], rel=1e-6)
    assert resumed[-1]["loss"] == pytest.approx(steps[-1]["loss"], rel=1e-6)
    assert torch.allclose(again["head"]["1.weight"], head["head"]["1.weight"])


def test_diff2flow_rescales_the_v_prediction_loss_by_its_flow_factor(
    setups, base_runs, tmp_path: Path
) -> None:
    """For v-prediction the flow error is (v̂ - v)·(sqrt(ᾱ) + sqrt(1-ᾱ)): at the same seed the
    first step's diff2flow loss is the native one times that factor squared, at the timestep
    the UNet was called with."""
    from st_ray.models.family import get_family_module
    from st_ray.train import noise

    _, config = setups("sd2x")
    native, native_t = base_runs("sd2x")
    with _unet_timesteps() as seen:
        bridged = _first_steps(config, tmp_path, "--diff2flow_enabled", "--diff2flow_loss")
    t = seen[0]
    assert native_t[0] == t  # the same draw at the same seed
    plan = _plan(config, tmp_path / "plan")
    scheduler = get_family_module("sd2x").noise_scheduler_config(plan.model, plan.options)
    alpha = float(noise.alphas_cumprod_from_config(scheduler)[t])
    factor = (math.sqrt(alpha) + math.sqrt(1 - alpha)) ** 2
    assert bridged[0]["loss"] == pytest.approx(native[0]["loss"] * factor, rel=1e-4)
    assert factor > 1.01  # the check can tell the two losses apart


# --------------------------------------------------------------------------- caption_shuffle


def test_caption_shuffle_makes_deterministic_tag_variants() -> None:
    from st_ray.data.captions import resolve_captions, shuffled_variants

    on = {"enable": True, "count": 4}
    # Two movable tags have two orders: the original first, each order once.
    assert shuffled_variants("cat, dog", on, 0) in (["cat, dog"], ["cat, dog", "dog, cat"])
    many = shuffled_variants("a, b, c, d, e", on, 7)
    assert many[0] == "a, b, c, d, e" and len(many) == len(set(many)) > 1
    assert all(sorted(v.split(", ")) == list("abcde") for v in many)
    assert shuffled_variants("a, b, c, d, e", on, 7) == many  # same caption and seed
    assert shuffled_variants("a, b, c, d, e", {**on, "seed": 7}, 99) == many  # block seed wins
    assert shuffled_variants("a, b, c, d, e", on, 8) != many
    # position_start keeps the leading tags; period splitting joins with '. '.
    kept = shuffled_variants("x. y. z. w", {**on, "split_on": "period", "position_start": 2}, 1)
    assert all(v.startswith("x. y. ") for v in kept)
    without = shuffled_variants("a, b, c, d", {**on, "include_original": False}, 3)
    assert "a, b, c, d" not in without and without
    assert shuffled_variants("solo", on, 0) == ["solo"]  # nothing to shuffle
    assert shuffled_variants("a, b", {"enable": False, "count": 3}, 0) == ["a, b"]
    # Variants are made before the instance prompt is prepended (SimpleTuner's order).
    captions = resolve_captions(
        "textfile",
        image_id="img",
        sidecar_text="red, round, shiny",
        meta_caption=None,
        meta_fallback=None,
        entry_fields={
            "instance_prompt": "sks",
            "prepend_instance_prompt": True,
            "caption_shuffle": {"enable": True, "count": 3},
        },
        seed=5,
    )
    assert captions[0] == "sks red, round, shiny" and len(captions) > 1
    assert all(c.startswith("sks ") for c in captions)


def test_caption_shuffle_settings_are_checked_and_keyed(tmp_path: Path) -> None:
    from st_ray.data import listing
    from st_ray.data.captions import caption_shuffle_problems, with_shuffle_seed

    assert caption_shuffle_problems({"enable": True, "split_on": "tab", "count": 0}) == [
        ("caption_shuffle.split_on", "'tab' is not accepted; accepted: comma, space, period"),
        ("caption_shuffle.count", "must be an integer >= 1, not 0"),
    ]
    config, datasets = _base(tmp_path)
    datasets[0]["caption_shuffle"] = {"enable": True, "position_start": -1}
    with pytest.raises(ConfigError, match=r"\(id 'images'\): caption_shuffle.position_start"):
        _run(tmp_path, config, datasets)
    fields = {"caption_shuffle": {"enable": True}}
    # The run's seed picks the variants, so it is part of the cached listing's definition.
    assert listing.fingerprint(with_shuffle_seed(fields, 1), ()) != listing.fingerprint(
        with_shuffle_seed(fields, 2), ()
    )


# ------------------------------------------------------------------------------------ TREAD


@contextlib.contextmanager
def _dit_block_tokens() -> Iterator[list[tuple[str, int]]]:
    """(block class, image tokens it returned) of every training forward inside the block; a
    global hook runs before the router restores the tokens at the end of a route."""
    seen: list[tuple[str, int]] = []

    def hook(module, args, output):
        name = type(module).__name__
        if name.endswith("TransformerBlock") and module.training and torch.is_grad_enabled():
            seen.append((name, output[1].shape[1]))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def test_tread_routes_half_the_image_tokens_past_the_first_block(setups, tmp_path: Path) -> None:
    """Tiny flux (one double, one single block): route 0..0 at 0.5 drops half the image
    tokens from the double block only; with gradient checkpointing, so the backward's
    recomputation routes the same tokens (a different draw would fail the recompute)."""
    _, config = setups("flux")
    route = {"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": -2}
    with _dit_block_tokens() as seen:
        steps = _first_steps(
            config,
            tmp_path,
            *("--tread_config", json.dumps({"routes": [route]}), "--gradient_checkpointing"),
        )
    assert all(math.isfinite(step["loss"]) for step in steps)
    double = [n for name, n in seen if name == "FluxTransformerBlock"]
    single = [n for name, n in seen if name == "FluxSingleTransformerBlock"]
    assert single and double and len(set(single)) == 1
    assert all(n == single[0] // 2 for n in double)  # half the image tokens, every pass


def test_tread_block_indices_are_checked_against_a_local_model_at_plan_time(
    setups, tmp_path: Path
) -> None:
    _, config = setups("flux")
    route = {"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": 2}
    with pytest.raises(ConfigError, match="layer 2 does not exist; this denoiser has 2 blocks"):
        _plan(config, tmp_path, "--tread_config", json.dumps({"routes": [route]}))


# ----------------------------------------------------------------------- scheduled sampling


def test_scheduled_sampling_rolls_out_and_reflexflow_adds_its_anti_drift_term(
    setups, base_runs, tmp_path: Path
) -> None:
    """Tiny flux, batch 1, the rollout probability ramping from 0 at step 0 to 1 at step 1.
    Step 0 rolls nothing out, so ReflexFlow's frequency weight is 1 (clean == biased) and the
    loss is the plain one plus β1 x anti-drift, at the same seed; step 1 rolls its sample out
    (biased_late: 1 to 3 timesteps here) and its loss stays finite."""
    _, config = setups("flux")
    base, _ = base_runs("flux")
    steps = _first_steps(
        config,
        tmp_path,
        *("--scheduled_sampling_max_step_offset", "3", "--scheduled_sampling_strategy"),
        *("biased_late", "--scheduled_sampling_ramp_steps", "1"),
        *("--scheduled_sampling_prob_end", "1", "--scheduled_sampling_reflexflow_beta1", "4"),
    )
    first, second = steps
    assert first["scheduled_sampling_rollouts"] == 0
    assert first["loss"] - base[0]["loss"] == pytest.approx(
        4 * first["reflexflow_anti_drift"], rel=1e-4, abs=1e-6
    )
    assert 0 < first["reflexflow_anti_drift"] <= 4
    assert second["scheduled_sampling_rollouts"] == 1
    assert math.isfinite(second["loss"]) and second["reflexflow_anti_drift"] > 0
