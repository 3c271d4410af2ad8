"""Quantised base models on tiny zoo models: every base_model_precision that runs on CPU trains
a LoRA whose export loads over the unquantised base; the others fail with their needs; text
encoders quantised for caching; quantize_via pipeline; config-time refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from st_ray import zoo
from st_ray.config.errors import ConfigError
from st_ray.config.options import CANONICAL
from st_ray.models import FAMILIES, flux
from st_ray.models import quantize as q
from st_ray.plan import build_plan
from st_ray.train import adapters, lora_export

CPU_VALUES = [name for name, spec in q.SCHEMES.items() if spec.cpu]
GPU_ONLY = [name for name, spec in q.SCHEMES.items() if not spec.cpu]
DEFAULTS = {o.name: o.default for o in CANONICAL.values()}


@pytest.fixture(scope="module")
def flux_path(zoo_root: Path) -> Path:
    return zoo.ensure("flux", zoo_root)


def _transformer(path: Path):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(path, subfolder="transformer")


def _batch(model, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    latents = torch.randn(2, cfg.in_channels // 4, 8, 8, generator=g)
    batch = {
        "prompt_embeds": torch.randn(2, 8, cfg.joint_attention_dim, generator=g),
        "pooled_prompt_embeds": torch.randn(2, cfg.pooled_projection_dim, generator=g),
    }
    return latents, batch, torch.randn(latents.shape, generator=g)


def _predict(model, latents, batch) -> torch.Tensor:
    return flux.predict(
        model, latents, torch.tensor([300.0, 700.0]), batch, DEFAULTS
    ).output.float()


def test_every_precision_is_classified() -> None:
    choices = set(CANONICAL["base_model_precision"].choices) - {q.NO_CHANGE}
    assert choices == set(q.SCHEMES)
    assert GPU_ONLY == ["int4-torchao"]


@pytest.mark.parametrize("value", CPU_VALUES)
def test_lora_trains_on_quantised_flux_and_loads_over_the_unquantised_base(
    value: str, flux_path: Path, tmp_path: Path
) -> None:
    options = {**DEFAULTS, "base_model_precision": value, "lora_rank": 4}
    model = _transformer(flux_path)
    bf16_bytes = q.weight_bytes(_transformer(flux_path).to(torch.bfloat16))
    q.quantize_denoiser(model, options, torch.device("cpu"))
    assert q.weight_bytes(model) < 0.9 * bf16_bytes  # frozen weights take less memory
    assert next(model.parameters()).dtype == torch.bfloat16  # base_model_default_dtype

    adapters.add_lora(model, "flux", options)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    latents, batch, target = _batch(model)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(_predict(model, latents, batch), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]

    lora_export.save_lora(model, "flux", tmp_path)
    plain = _transformer(flux_path)
    before = _predict(plain, latents, batch)
    plain.load_lora_adapter(
        str(tmp_path / adapters.WEIGHT_NAME), prefix="transformer", adapter_name=adapters.ADAPTER
    )
    trained = {k: v.float() for k, v in adapters.lora_state_dict(model).items()}
    loaded = adapters.lora_state_dict(plain)
    assert set(loaded) == set(trained)
    for key, tensor in trained.items():
        torch.testing.assert_close(loaded[key].float(), tensor, rtol=1e-2, atol=1e-3)
    assert not torch.allclose(_predict(plain, latents, batch), before)


@pytest.mark.parametrize("value", GPU_ONLY)
def test_gpu_only_precisions_say_what_they_need(value: str, flux_path: Path) -> None:
    model = _transformer(flux_path)
    with pytest.raises(q.QuantizationUnavailable, match=f"base_model_precision '{value}'.*CUDA"):
        q.quantize_denoiser(model, {"base_model_precision": value}, torch.device("cpu"))


def test_fp8_torchao_needs_compute_capability_8_9(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(q.QuantizationUnavailable, match=r"fp8-torchao.*8\.9.*A100"):
        q.check_precision("base_model_precision", "fp8-torchao", "cuda")
    q.check_precision("base_model_precision", "int8-quanto", "cuda")  # no such limit


def test_quantize_via_pipeline_lets_diffusers_quantise(flux_path: Path) -> None:
    options = {
        **DEFAULTS,
        "base_model_precision": "int8-quanto",
        "quantize_via": "pipeline",
        "quantization_config": {"transformer": {"modules_to_not_convert": ["proj_out"]}},
    }
    model = q.load_denoiser_via_pipeline(
        FAMILIES["flux"], str(flux_path), device=torch.device("cpu"), options=options
    )
    assert model.hf_quantizer is not None
    assert type(model.transformer_blocks[0].attn.to_q).__name__ == "QLinear"
    assert type(model.proj_out).__name__ == "Linear"
    assert q.quantize_denoiser(model, options, torch.device("cpu")) is model  # not twice

    bad = {**options, "quantization_config": {"default": {"weights_bits": 3}}}
    with pytest.raises(ValueError, match="weights_bits.*QuantoConfig; it accepts"):
        q.load_denoiser_via_pipeline(
            FAMILIES["flux"], str(flux_path), device=torch.device("cpu"), options=bad
        )


def test_text_encoders_are_quantised_for_caching(zoo_root: Path) -> None:
    from st_ray.data.encoders import TextEncoder

    model = zoo.ensure("sdxl", zoo_root)
    captions = {"caption": ["a red fox", "a lighthouse"], "caption_hash": ["a", "b"]}
    plain = TextEncoder("sdxl", str(model), DEFAULTS)
    options = {**DEFAULTS, "text_encoder_1_precision": "int8-quanto"}
    options["text_encoder_2_precision"] = "nf4-bnb"
    quantised = TextEncoder("sdxl", str(model), options)
    layers = {
        name: {type(m).__name__ for n, m in model.named_modules() if n.endswith("mlp.fc1")}
        for name, model in quantised.encoders.models.items()
    }
    assert layers == {"text_encoder": {"QLinear"}, "text_encoder_2": {"Linear4bit"}}
    out, ref = quantised(captions), plain(captions)
    for key in ("prompt_embeds", "pooled_prompt_embeds"):
        got = [torch.frombuffer(bytearray(b), dtype=torch.float32) for b in out[key]]
        want = [torch.frombuffer(bytearray(b), dtype=torch.float32) for b in ref[key]]
        assert all(torch.isfinite(g).all() for g in got)
        assert np.array_equal(np.stack(out[f"{key}_shape"]), np.stack(ref[f"{key}_shape"]))
        assert not all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def _config(tmp_path: Path, images: Path, model: Path, **options) -> Path:
    datasets = [
        {"id": "photos", "type": "local", "instance_data_dir": str(images)},
        {"id": "text", "dataset_type": "text_embeds", "default": True, "type": "local"},
    ]
    (tmp_path / "datasets.json").write_text(json.dumps(datasets))
    config = {
        "model_family": "flux",
        "pretrained_model_name_or_path": str(model),
        "data_backend_config": str(tmp_path / "datasets.json"),
        "output_dir": str(tmp_path / "out"),
        "max_train_steps": 2,
        **options,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path / "config.json"


@pytest.mark.parametrize(
    ("options", "key", "message"),
    [
        (
            {"base_model_precision": "int4-torchao", "use_gpu": "false"},
            "base_model_precision",
            "needs a CUDA GPU",
        ),
        (
            {"text_encoder_2_precision": "int4-torchao", "use_gpu": "false"},
            "text_encoder_2_precision",
            "needs a CUDA GPU",
        ),
        (
            {"base_model_precision": "int8-quanto", "model_type": "full"},
            "base_model_precision",
            "cannot be trained",
        ),
        (
            {"base_model_precision": "nf4-bnb", "quantize_via": "pipeline", "use_gpu": "false"},
            "quantize_via",
            "needs a CUDA GPU",
        ),
        (
            {"attention_mechanism": "cudnn", "use_gpu": "false"},
            "attention_mechanism",
            "needs a CUDA GPU",
        ),
        (
            {"pretrained_transformer_model_name_or_path": "/models/flux1-dev-Q4_K_S.gguf"},
            "pretrained_transformer_model_name_or_path",
            "GGUF",
        ),
    ],
)
def test_refused_at_validation(
    tmp_path: Path, example_dataset, flux_path: Path, options: dict, key: str, message: str
) -> None:
    config = _config(tmp_path, example_dataset.images_dir, flux_path, **options)
    with pytest.raises(ConfigError) as err:
        build_plan(config, [], {})
    text = str(err.value)
    assert key in text and message in text


def test_cpu_precisions_pass_validation(tmp_path: Path, example_dataset, flux_path: Path) -> None:
    options = {"base_model_precision": "nf4-bnb", "text_encoder_1_precision": "int8-torchao"}
    config = _config(tmp_path, example_dataset.images_dir, flux_path, use_gpu="false", **options)
    plan = build_plan(config, [], {})
    assert plan.options["base_model_precision"] == "nf4-bnb"
