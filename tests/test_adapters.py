"""LoRA adapters: presets on the tiny zoo models, freezing, export loaded back by diffusers'
own loaders, the ComfyUI layout, init_lora, DoRA and PiSSA."""

from __future__ import annotations

import json
import re
from pathlib import Path

import diffusers
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from st_ray import zoo
from st_ray.models import FAMILIES, cosmos2image
from st_ray.models.family import get_family_module
from st_ray.train import adapters, lora_export, lora_targets

FAMILY_NAMES = tuple(zoo.FAMILIES)

# Options as the plan gives them (the catalog defaults, small rank; dropout off so the
# forward passes compare exactly).
BASE_OPTIONS = {
    "lora_type": "standard",
    "lora_format": "diffusers",
    "peft_lora_mode": "standard",
    "lora_rank": 4,
    "lora_alpha": 2.0,  # != rank: the export must carry the scale
    "lora_dropout": 0.0,
    "lora_init_type": "default",
    "use_dora": False,
    "flux_lora_target": "all",
    "peft_lora_target_modules": None,
    "init_lora": None,
}

# Modules each preset adapts in the tiny zoo models, counted by hand from the zoo recipes:
# sd1x/sd2x: 4 attentions (1 down, 2 up, 1 mid) x 1 block x (attn1 + attn2) x 4 projections;
# sdxl: transformer_layers_per_block (1, 2) gives 2 + 4 + 2 blocks x 2 attns x 4 projections;
# flux: one double block (to_q/k/v/out.0, add_q/k/v_proj, to_add_out) and one single block
# (to_q/k/v, no to_out); sd3: one context_pre_only block; pixart: attn1 + attn2 of one block.
# qwen_image: one dual-stream block (to_q/k/v, to_out.0); deepfloyd: 4 added-KV attentions
# (1 down, 1 mid, 2 up) x 4 projections.
# sana: self- and cross-attention of one block; lumina2: the attention of one noise-refiner,
# one context-refiner and one main block; auraflow: one joint block (image and text
# projections) and one single block.
PRESET_COUNTS = {
    "sd1x": 32,
    "sd2x": 32,
    "sdxl": 64,
    "flux": 11,
    "sd3": 4,
    "pixart_sigma": 8,
    "kolors": 64,  # the SDXL UNet layout
    # one double block (q/k/v/out of image and text streams) + one single block (q/k/v/out)
    "hidream": 12,
    "qwen_image": 4,
    "deepfloyd": 16,
    "sana": 8,
    "lumina2": 12,
    "auraflow": 12,
    "cosmos2image": 8,  # attn1 + attn2 of one block
    "omnigen": 8,  # two Phi-3 layers x q/k/v/out
    "wan": 16,  # two blocks x (self + cross attention) x q/k/v/out
}
FLUX_PRESET_COUNTS = {
    "mmdit": 7,  # 4 double-block + 3 single-block attention projections
    "context": 4,  # add_q/k/v_proj, to_add_out
    "context+ffs": 6,  # + ff_context.net.0.proj, ff_context.net.2
    "all": 11,
    "all+ffs": 18,  # + ff.net.0.proj, ff.net.2, ff_context x2, proj_mlp, proj_out x2 (block + final)
    "all+ffs+embedder": 19,  # + x_embedder
    "ai-toolkit": 21,  # all+ffs + norm1.linear, norm1_context.linear, single norm.linear
}


def _options(**changes):
    return {**BASE_OPTIONS, **changes}


def _base(family: str, zoo_root: Path) -> Path:
    return zoo.ensure(family, zoo_root)


def _denoiser_class(family: str, base: Path):
    config = json.loads((base / FAMILIES[family].denoiser / "config.json").read_text())
    return getattr(diffusers, config["_class_name"]), config


def _denoiser(family: str, zoo_root: Path, **config_changes):
    base = _base(family, zoo_root)
    cls, config = _denoiser_class(family, base)
    if config_changes:
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        return cls.from_config({**config, **config_changes}).eval()
    return cls.from_pretrained(base / FAMILIES[family].denoiser).eval()


def _inputs(family: str, config, generator: torch.Generator) -> dict:
    """Random inputs of the shapes the tiny zoo denoisers take (64 px, 5 text tokens)."""

    def r(*shape):
        return torch.randn(*shape, generator=generator)

    if family in ("sd1x", "sd2x", "sdxl", "kolors", "deepfloyd"):
        # Kolors' and IF's UNets project the text encoder width (encoder_hid_dim) themselves.
        width = config.encoder_hid_dim or config.cross_attention_dim
        kw = dict(
            sample=r(1, config.in_channels, 8, 8),
            timestep=torch.tensor([10]),
            encoder_hidden_states=r(1, 5, width),
        )
        if family in ("sdxl", "kolors"):
            pooled = (
                config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
            )
            kw["added_cond_kwargs"] = {"text_embeds": r(1, pooled), "time_ids": r(1, 6)}
        return kw
    if family == "hidream":
        t5, llama = config.caption_channels
        return dict(
            hidden_states=r(1, config.in_channels, 8, 8),
            timesteps=torch.tensor([500.0]),
            encoder_hidden_states_t5=r(1, 5, t5),
            encoder_hidden_states_llama3=r(len(config.llama_layers), 1, 5, llama),
            pooled_embeds=r(1, config.text_emb_dim),
        )
    if family == "omnigen":
        from st_ray.models.omnigen import attention_inputs

        mask, positions = attention_inputs(torch.ones(1, 5, dtype=torch.int64), 16)
        return dict(
            hidden_states=r(1, config.in_channels, 8, 8),
            timestep=torch.tensor([0.5]),
            input_ids=torch.randint(config.vocab_size, (1, 5), generator=generator),
            input_img_latents=[],
            input_image_sizes={},
            attention_mask=mask,
            position_ids=positions,
        )
    if family == "flux":
        return dict(
            hidden_states=r(1, 16, config.in_channels),
            encoder_hidden_states=r(1, 5, config.joint_attention_dim),
            pooled_projections=r(1, config.pooled_projection_dim),
            timestep=torch.tensor([0.5]),
            img_ids=torch.zeros(16, 3),
            txt_ids=torch.zeros(5, 3),
            guidance=torch.tensor([3.5]),
        )
    if family == "cosmos2image":
        cosmos2image.ensure_padding_mask_resize()  # torchvision's resize, when it is absent
        return dict(
            hidden_states=r(1, config.in_channels, 1, 8, 8),
            timestep=torch.tensor([0.5]),
            encoder_hidden_states=r(1, 5, config.text_embed_dim),
            padding_mask=torch.zeros(1, 1, 8, 8),
        )
    if family == "qwen_image":
        return dict(
            hidden_states=r(1, 16, config.in_channels),
            encoder_hidden_states=r(1, 5, config.joint_attention_dim),
            encoder_hidden_states_mask=torch.ones(1, 5, dtype=torch.long),
            timestep=torch.tensor([0.5]),
            img_shapes=[[(1, 4, 4)]],
        )
    if family == "sd3":
        return dict(
            hidden_states=r(1, config.in_channels, 8, 8),
            encoder_hidden_states=r(1, 5, config.joint_attention_dim),
            pooled_projections=r(1, config.pooled_projection_dim),
            timestep=torch.tensor([500.0]),
        )
    if family == "auraflow":
        return dict(
            hidden_states=r(1, config.in_channels, 8, 8),
            encoder_hidden_states=r(1, 5, config.joint_attention_dim),
            timestep=torch.tensor([0.5]),
        )
    if family == "lumina2":
        return dict(
            hidden_states=r(1, config.in_channels, 8, 8),
            encoder_hidden_states=r(1, 5, config.cap_feat_dim),
            encoder_attention_mask=torch.ones(1, 5, dtype=torch.int64),
            timestep=torch.tensor([0.5]),
        )
    if family == "wan":  # one latent frame
        return dict(
            hidden_states=r(1, config.in_channels, 1, 8, 8),
            encoder_hidden_states=r(1, 5, config.text_dim),
            timestep=torch.tensor([500.0]),
        )
    if family == "sana":
        return dict(
            hidden_states=r(1, config.in_channels, 2, 2),
            encoder_hidden_states=r(1, 5, config.caption_channels),
            timestep=torch.tensor([500.0]),
        )
    return dict(
        hidden_states=r(1, config.in_channels, 8, 8),
        encoder_hidden_states=r(1, 5, config.caption_channels),
        timestep=torch.tensor([10]),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )


@torch.no_grad()
def _forward(denoiser, inputs) -> torch.Tensor:
    return denoiser(**inputs, return_dict=False)[0]


@torch.no_grad()
def _perturb(denoiser, seed: int = 1) -> None:
    """Random LoRA B (and A) so the adapter is non-zero, as after some training."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in denoiser.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def _assert_same_state(left: dict, right: dict) -> None:
    assert sorted(left) == sorted(right)
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=0, atol=0, msg=key)


# --- targets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_family_preset_matches_the_tiny_model(family, zoo_root):
    targets = lora_targets.lora_target_modules(family, BASE_OPTIONS)
    expected = ["to_k", "to_q", "to_v", "to_out.0"]
    if family == "flux":  # flux_lora_target 'all'
        expected += ["to_qkv", "add_k_proj", "add_q_proj", "add_v_proj", "add_qkv_proj"]
        expected += ["to_add_out"]
    if family == "hidream":  # plain Linear outputs; text-stream projections end in _t
        expected = ["to_q", "to_k", "to_v", "to_out", "to_q_t", "to_k_t", "to_v_t", "to_out_t"]
    if family == "lumina2":  # SimpleTuner's preset, for fused projections too
        expected += ["to_qkv"]
    if family == "auraflow":
        expected += ["add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "to_qkv"]
    assert sorted(targets) == sorted(expected)
    matched = lora_targets.matching_modules(_denoiser(family, zoo_root), targets)
    assert len(matched) == PRESET_COUNTS[family]


@pytest.mark.parametrize("preset", sorted(FLUX_PRESET_COUNTS))
def test_flux_presets_match_the_tiny_model(preset, zoo_root):
    targets = lora_targets.lora_target_modules("flux", _options(flux_lora_target=preset))
    assert targets == list(get_family_module("flux").spec.lora_presets[preset])
    matched = lora_targets.matching_modules(_denoiser("flux", zoo_root), targets)
    assert len(matched) == FLUX_PRESET_COUNTS[preset]


def test_flux_tiny_and_nano_target_single_blocks_7_and_20(zoo_root):
    # The zoo model has one single block; these presets need the real model's depth.
    deep = _denoiser("flux", zoo_root, num_single_layers=21)
    tiny = lora_targets.lora_target_modules("flux", _options(flux_lora_target="tiny"))
    nano = lora_targets.lora_target_modules("flux", _options(flux_lora_target="nano"))
    assert lora_targets.matching_modules(deep, tiny) == [
        "single_transformer_blocks.7.proj_out",
        "single_transformer_blocks.20.proj_out",
    ]
    assert lora_targets.matching_modules(deep, nano) == ["single_transformer_blocks.7.proj_out"]
    with pytest.raises(ValueError, match=r"flux_lora_target 'tiny'.*matches no module"):
        adapters.add_lora(_denoiser("flux", zoo_root), "flux", _options(flux_lora_target="tiny"))


def test_override_as_list_json_string_or_file(tmp_path):
    wanted = ["proj_in", "ff.net.2"]
    as_file = tmp_path / "targets.json"
    as_file.write_text(json.dumps(wanted))
    for value in (wanted, json.dumps(wanted), str(as_file)):
        options = _options(peft_lora_target_modules=value, flux_lora_target="tiny")
        assert lora_targets.lora_target_modules("flux", options) == wanted
        assert lora_targets.lora_target_modules("sdxl", options) == wanted


def test_override_matching_nothing_names_the_option_and_real_modules(zoo_root):
    unet = _denoiser("sd1x", zoo_root)
    with pytest.raises(ValueError) as err:
        adapters.add_lora(unet, "sd1x", _options(peft_lora_target_modules=["q_proj", "k_proj"]))
    message = str(err.value)
    assert "peft_lora_target_modules" in message and "q_proj" in message
    assert "to_q" in message and "to_out.0" in message  # names that do exist
    assert not any(p.requires_grad is False for p in unet.parameters())  # untouched


def test_override_adapts_exactly_those_modules(zoo_root):
    unet = _denoiser("sd1x", zoo_root)
    adapters.add_lora(unet, "sd1x", _options(peft_lora_target_modules=["proj_in", "ff.net.2"]))
    adapted = {k.rsplit(".lora_", 1)[0] for k in adapters.lora_state_dict(unet)}
    # 4 transformer models (1 down, 2 up, 1 mid), each with one proj_in and one ff.net.2.
    assert len(adapted) == 8
    assert all(name.endswith(("proj_in", "ff.net.2")) for name in adapted)


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("init_type", "expected"),
    [("default", True), ("gaussian", "gaussian"), ("olora", "olora"), ("pissa", "pissa")],
)
def test_lora_config_maps_the_options(init_type, expected):
    config = adapters.lora_config("sd1x", _options(lora_init_type=init_type, lora_dropout=0.1))
    assert config.init_lora_weights == expected
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 2.0, 0.1)
    assert set(config.target_modules) == {"to_k", "to_q", "to_v", "to_out.0"}
    unset_alpha = adapters.lora_config("sd1x", _options(lora_alpha=None, lora_rank=8))
    assert unset_alpha.lora_alpha == 8  # alpha defaults to the rank: scale 1


def test_loftq_gets_a_loftq_config():
    config = adapters.lora_config("flux", _options(lora_init_type="loftq"))
    assert config.init_lora_weights == "loftq"
    assert config.loftq_config["loftq_bits"] == 4


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"lora_type": "lycoris", "lycoris_config": "/nonexistent.json"}, "does not exist"),
        ({"peft_lora_mode": "singlora"}, "no maintained package provides SingLoRA"),
        ({"use_dora": True, "lora_init_type": "pissa"}, "use_dora cannot be combined"),
        ({"init_lora": "x.safetensors", "lora_init_type": "olora"}, "init_lora starts from"),
        ({"use_dora": True, "lora_format": "comfyui"}, "lora_format 'comfyui'"),
    ],
)
def test_unsupported_combinations_are_refused(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        adapters.check_lora_options(_options(**changes))


# --- adding, exporting and loading back ------------------------------------------------------


def _load_into_pipeline(family: str, base: Path, out_dir: Path):
    """The denoiser as diffusers loads it with the exported LoRA: the pipeline's own
    ``load_lora_weights``; PixArt-Sigma has none, so diffusers' ``load_lora_adapter`` on its
    transformer class given the PEFT mixin (what SimpleTuner's PixArt class does). OmniGen
    has no loader either (and its pipeline needs torchvision to be built)."""
    spec = FAMILIES[family]
    extra = get_family_module(family).validation_components({})  # Cosmos' safety checker
    pipe = None
    if family != "omnigen":
        pipe = getattr(diffusers, spec.pipeline_class).from_pretrained(base, **extra)
    if hasattr(pipe, "load_lora_weights"):
        pipe.load_lora_weights(out_dir)
        return getattr(pipe, spec.denoiser)
    cls, _ = _denoiser_class(family, base)
    with_peft = type(f"{cls.__name__}WithPeft", (cls, diffusers.loaders.PeftAdapterMixin), {})
    transformer = with_peft.from_pretrained(base / spec.denoiser).eval()
    transformer.load_lora_adapter(out_dir, prefix="transformer", weight_name=adapters.WEIGHT_NAME)
    return transformer


def _loaded_state(denoiser) -> dict:
    """The adapter diffusers loaded (it names it ``default_0``)."""
    from peft.utils import get_peft_model_state_dict

    (name,) = denoiser.peft_config
    return get_peft_model_state_dict(denoiser, adapter_name=name)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_lora_trains_only_adapters_and_diffusers_loads_the_export(family, zoo_root, tmp_path):
    base = _base(family, zoo_root)
    denoiser = _denoiser(family, zoo_root)
    inputs = _inputs(family, denoiser.config, torch.Generator().manual_seed(0))
    base_out = _forward(denoiser, inputs)

    adapters.add_lora(denoiser, family, BASE_OPTIONS)
    trainable = [n for n, p in denoiser.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * PRESET_COUNTS[family]  # one A and one B per module
    assert all(re.search(r"\.lora_[AB]\.default\.weight$", n) for n in trainable)
    # B starts at zero: the adapted model computes exactly the base model's output.
    torch.testing.assert_close(_forward(denoiser, inputs), base_out, rtol=0, atol=0)

    _perturb(denoiser)
    ours = _forward(denoiser, inputs)
    # AuraFlow's gated, normalised residual stream damps a random adapter at random init; its
    # effect stays 30x above the 1e-5 tolerance the loaded model is compared with below.
    assert (ours - base_out).abs().max() > (1e-4 if family == "auraflow" else 1e-3)
    path = lora_export.save_lora(denoiser, family, tmp_path)
    assert path == tmp_path / "pytorch_lora_weights.safetensors"
    component = FAMILIES[family].denoiser
    assert all(k.startswith(f"{component}.") for k in load_file(path))

    loaded = _load_into_pipeline(family, base, tmp_path)
    # Same adapter tensors (nothing missing or unexpected) and the same output as ours, so
    # the scale alpha / rank = 0.5 came through the file's metadata.
    _assert_same_state(_loaded_state(loaded), adapters.lora_state_dict(denoiser))
    torch.testing.assert_close(_forward(loaded, inputs), ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_comfyui_layout_and_init_lora_round_trip(family, zoo_root, tmp_path):
    denoiser = _denoiser(family, zoo_root)
    adapters.add_lora(denoiser, family, BASE_OPTIONS)
    _perturb(denoiser)
    path = lora_export.save_lora(denoiser, family, tmp_path, lora_format="comfyui")
    tensors = load_file(path)
    modules = {k.rsplit(".lora_", 1)[0] for k in adapters.lora_state_dict(denoiser)}
    if family in ("sd1x", "sd2x", "sdxl", "kolors", "deepfloyd"):
        names = {"lora_unet_" + m.replace(".", "_") for m in modules}
        suffixes = (".lora_down.weight", ".lora_up.weight", ".alpha")
    else:
        names = {f"transformer.{m}" for m in modules}
        suffixes = (".lora_A.weight", ".lora_B.weight", ".alpha")
    assert set(tensors) == {name + suffix for name in names for suffix in suffixes}
    for name in names:
        assert tensors[name + ".alpha"].dtype == torch.float32
        assert tensors[name + ".alpha"].item() == 2.0  # lora_alpha, not the rank

    # init_lora reads the ComfyUI layout back (Kohya names resolved against the model).
    fresh = _denoiser(family, zoo_root)
    adapters.add_lora(fresh, family, _options(init_lora=str(path), lora_rank=16, lora_alpha=None))
    _assert_same_state(adapters.lora_state_dict(fresh), adapters.lora_state_dict(denoiser))
    some_layer = next(m for m in fresh.modules() if hasattr(m, "scaling") and m.scaling)
    assert some_layer.scaling["default"] == 0.5  # rank 4 and alpha 2 from the file


def test_init_lora_from_a_diffusers_file_keeps_rank_and_alpha(zoo_root, tmp_path):
    family = "sd3"
    trained = _denoiser(family, zoo_root)
    adapters.add_lora(trained, family, _options(lora_rank=2, lora_alpha=6.0))
    _perturb(trained)
    path = lora_export.save_lora(trained, family, tmp_path)

    resumed = _denoiser(family, zoo_root)
    adapters.add_lora(resumed, family, _options(init_lora=str(path)))  # options say rank 4
    _assert_same_state(adapters.lora_state_dict(resumed), adapters.lora_state_dict(trained))
    assert resumed.peft_config["default"].r == 2
    assert resumed.peft_config["default"].lora_alpha == 6.0
    inputs = _inputs(family, trained.config, torch.Generator().manual_seed(0))
    torch.testing.assert_close(_forward(resumed, inputs), _forward(trained, inputs))


def test_init_lora_that_does_not_fit_is_reported(zoo_root, tmp_path):
    trained = _denoiser("sd1x", zoo_root)
    adapters.add_lora(trained, "sd1x", _options(peft_lora_target_modules=["to_q", "proj_in"]))
    path = lora_export.save_lora(trained, "sd1x", tmp_path)
    fresh = _denoiser("sd1x", zoo_root)
    with pytest.raises(ValueError) as err:
        adapters.add_lora(fresh, "sd1x", _options(init_lora=str(path)))
    message = str(err.value)
    assert str(path) in message
    # Missing: to_k/to_v/to_out.0 of 8 attentions, A and B = 48 tensors; extra: 4 proj_in x 2.
    assert "48 adapter tensors missing" in message and "to_k.lora_A.weight" in message
    assert "8 unexpected tensors" in message and "proj_in.lora_A.weight" in message


def test_state_dict_resume_restores_the_adapter(zoo_root):
    family = "pixart_sigma"
    trained = _denoiser(family, zoo_root)
    adapters.add_lora(trained, family, BASE_OPTIONS)
    _perturb(trained)
    state = {k: v.clone() for k, v in adapters.lora_state_dict(trained).items()}
    assert all(".lora_A.weight" in k or ".lora_B.weight" in k for k in state)

    resumed = _denoiser(family, zoo_root)
    adapters.add_lora(resumed, family, BASE_OPTIONS)
    adapters.load_lora_state_dict(resumed, state)
    _assert_same_state(adapters.lora_state_dict(resumed), state)
    bad = dict(state)
    bad.pop(next(iter(bad)))
    with pytest.raises(ValueError, match="1 adapter tensors missing"):
        adapters.load_lora_state_dict(resumed, bad)


def test_dora_adds_trainable_magnitudes_equal_to_weight_row_norms(zoo_root, tmp_path):
    family = "flux"
    base = _base(family, zoo_root)
    denoiser = _denoiser(family, zoo_root)
    weight = denoiser.transformer_blocks[0].attn.to_q.weight.detach().clone()
    inputs = _inputs(family, denoiser.config, torch.Generator().manual_seed(0))
    adapters.add_lora(denoiser, family, _options(use_dora=True))

    magnitudes = [n for n, p in denoiser.named_parameters() if "lora_magnitude_vector" in n]
    assert len(magnitudes) == PRESET_COUNTS[family]
    assert all(p.requires_grad for n, p in denoiser.named_parameters() if n in magnitudes)
    # DoRA starts with m = ||W|| per output row (B = 0, so W + BA = W).
    magnitude = adapters.lora_state_dict(denoiser)[
        "transformer_blocks.0.attn.to_q.lora_magnitude_vector"
    ]
    torch.testing.assert_close(magnitude, weight.norm(dim=1))

    _perturb(denoiser)
    path = lora_export.save_lora(denoiser, family, tmp_path)
    assert "transformer.transformer_blocks.0.attn.to_q.lora_magnitude_vector" in load_file(path)
    loaded = _load_into_pipeline(family, base, tmp_path)
    torch.testing.assert_close(_forward(loaded, inputs), _forward(denoiser, inputs))
    with pytest.raises(ValueError, match="DoRA"):
        lora_export.save_lora(denoiser, family, tmp_path / "c", lora_format="comfyui")


@pytest.mark.parametrize("init_type", ["pissa", "olora"])
def test_base_mutating_init_exports_a_plain_lora_on_the_original_base(
    init_type, zoo_root, tmp_path
):
    family = "flux"
    base = _base(family, zoo_root)
    denoiser = _denoiser(family, zoo_root)
    inputs = _inputs(family, denoiser.config, torch.Generator().manual_seed(0))
    base_out = _forward(denoiser, inputs)
    adapters.add_lora(denoiser, family, _options(lora_init_type=init_type))
    # W_res + B0 A0 = W: the start computes the base output (up to rounding).
    torch.testing.assert_close(_forward(denoiser, inputs), base_out, rtol=1e-4, atol=1e-4)
    _perturb(denoiser)
    ours = _forward(denoiser, inputs)

    path = lora_export.save_lora(denoiser, family, tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert (meta["transformer.r"], meta["transformer.lora_alpha"]) == (8, 4.0)  # doubled
    assert meta["transformer.init_lora_weights"] is True
    loaded = _load_into_pipeline(family, base, tmp_path)  # the untouched base weights
    torch.testing.assert_close(_forward(loaded, inputs), ours, rtol=1e-4, atol=1e-4)


def test_save_adds_metadata_and_checks_arguments(zoo_root, tmp_path):
    denoiser = _denoiser("sd3", zoo_root)
    with pytest.raises(ValueError, match="has no LoRA adapter"):
        lora_export.save_lora(denoiser, "sd3", tmp_path)
    adapters.add_lora(denoiser, "sd3", BASE_OPTIONS)
    with pytest.raises(ValueError, match="already carries a LoRA adapter"):
        adapters.add_lora(denoiser, "sd3", BASE_OPTIONS)
    with pytest.raises(ValueError, match="lora_format 'kohya'"):
        lora_export.save_lora(denoiser, "sd3", tmp_path, lora_format="kohya")
    path = lora_export.save_lora(
        denoiser, "sd3", tmp_path, metadata={"st_ray_run": "r1", "steps": 3}
    )
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    assert header["st_ray_run"] == "r1" and header["steps"] == "3"
    assert json.loads(header["lora_adapter_metadata"])["transformer.lora_alpha"] == 2.0


def test_init_lora_with_mixed_ranks_and_alphas_and_no_metadata(zoo_root, tmp_path):
    """A hand-written PEFT file (no header): per-module ranks from the shapes, alphas from
    ``.alpha`` tensors where given, else the rank (scale 1, diffusers' convention)."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    prefix = "transformer_blocks.0.attn."
    ranks = {"to_q": 2, "to_k": 4, "to_v": 4, "to_out.0": 4}
    tensors = {}
    for name, rank in ranks.items():
        tensors[f"{prefix}{name}.lora_A.weight"] = torch.randn(rank, 32, generator=generator)
        tensors[f"{prefix}{name}.lora_B.weight"] = torch.randn(32, rank, generator=generator)
    tensors[f"{prefix}to_k.alpha"] = torch.tensor(1.0)
    path = tmp_path / "hand.safetensors"
    save_file(tensors, path)

    denoiser = _denoiser("sd3", zoo_root)
    adapters.add_lora(denoiser, "sd3", _options(init_lora=str(path), lora_rank=8))
    attn = denoiser.transformer_blocks[0].attn
    assert (attn.to_q.r["default"], attn.to_k.r["default"], attn.to_v.r["default"]) == (2, 4, 4)
    assert attn.to_q.scaling["default"] == 1.0  # alpha = rank 2
    assert attn.to_k.scaling["default"] == 0.25  # alpha 1 / rank 4
    assert attn.to_v.scaling["default"] == 1.0
    without_alpha = {k: v for k, v in tensors.items() if not k.endswith(".alpha")}
    _assert_same_state(adapters.lora_state_dict(denoiser), without_alpha)
