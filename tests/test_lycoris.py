"""LyCORIS adapters on tiny zoo models: LoKr/LoHa/LoCon/full train and their saved weights load
with the lycoris library onto a fresh diffusers model; presets, init_lokr_norm, strength;
int8-quanto + LoKr + adamw_bf16 end to end (flux through jobs/train.py on Ray, sdxl in-process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from st_ray import zoo
from st_ray.config.options import CANONICAL
from st_ray.data.pipeline import build_caches
from st_ray.models import flux
from st_ray.plan import build_plan
from st_ray.train import lycoris_adapter as ly
from st_ray.train.trainer import fit_in_process

REPO = Path(__file__).resolve().parent.parent
DEFAULTS = {o.name: o.default for o in CANONICAL.values()}
LOKR = {
    "algo": "lokr",
    "multiplier": 1.0,
    "linear_dim": 10000,
    "linear_alpha": 1,
    "factor": 4,
    "apply_preset": {
        "target_module": ["Attention", "FeedForward"],
        "module_algo_map": {"Attention": {"factor": 4}, "FeedForward": {"factor": 2}},
    },
}


@pytest.fixture(scope="module")
def flux_path(zoo_root: Path) -> Path:
    return zoo.ensure("flux", zoo_root)


def _transformer(path: Path):
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_pretrained(path, subfolder="transformer")
    return model.requires_grad_(False)


def _options(tmp_path: Path, config: dict, **extra) -> dict:
    path = tmp_path / "lycoris_config.json"
    path.write_text(json.dumps(config))
    return {**DEFAULTS, "lora_type": "lycoris", "lycoris_config": str(path), **extra}


def _inputs(model):
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    latents = torch.randn(2, cfg.in_channels // 4, 8, 8, generator=g)
    batch = {
        "prompt_embeds": torch.randn(2, 8, cfg.joint_attention_dim, generator=g),
        "pooled_prompt_embeds": torch.randn(2, cfg.pooled_projection_dim, generator=g),
    }
    return latents, batch, torch.randn(latents.shape, generator=g)


def _predict(model, latents, batch) -> torch.Tensor:
    return flux.predict(model, latents, torch.tensor([300.0, 700.0]), batch, DEFAULTS).output


@pytest.mark.parametrize(
    "config",
    [
        LOKR,
        {"algo": "lokr", "linear_dim": 4, "linear_alpha": 2, "factor": 8, "decompose_both": True},
        {"algo": "loha", "linear_dim": 4, "linear_alpha": 2},
        {"algo": "locon", "linear_dim": 4, "linear_alpha": 4, "conv_dim": 2},
        {"algo": "full"},
    ],
    ids=["lokr-full-rank", "lokr-factored", "loha", "locon", "full"],
)
def test_trains_and_loads_with_the_lycoris_library(
    config: dict, flux_path: Path, tmp_path: Path
) -> None:
    from lycoris import create_lycoris_from_weights

    model = _transformer(flux_path)
    network = ly.add_lycoris(model, _options(tmp_path, config))
    assert model.lycoris is network and network.loras
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(any(p is q for q in network.parameters()) for p in trainable)
    latents, batch, target = _inputs(model)
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(_predict(model, latents, batch), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    trained = _predict(model, latents, batch).detach()

    names = ly.save(model, tmp_path / "out", {"modelspec.comment": "hi"})
    assert names == [ly.WEIGHT_NAME, ly.CONFIG_NAME]
    assert json.loads((tmp_path / "out" / ly.CONFIG_NAME).read_text()) == config
    with safe_open(str(tmp_path / "out" / ly.WEIGHT_NAME), "pt") as handle:
        assert json.loads(handle.metadata()["lycoris_config"]) == config
        assert handle.metadata()["modelspec.comment"] == "hi"
        assert all(k.startswith("lycoris_") for k in handle.keys())  # noqa: SIM118

    fresh = _transformer(flux_path)
    base = _predict(fresh, latents, batch)
    loaded, _ = create_lycoris_from_weights(1.0, str(tmp_path / "out" / ly.WEIGHT_NAME), fresh)
    assert len(loaded.loras) == len(network.loras)
    loaded.apply_to()  # the library's forward hooks: exactly the trained function
    applied = _predict(fresh, latents, batch)
    assert not torch.allclose(applied, base)
    torch.testing.assert_close(applied, trained, rtol=1e-4, atol=1e-5)


def test_strength_scales_the_network_and_state_round_trips(flux_path: Path, tmp_path: Path) -> None:
    model = _transformer(flux_path)
    base = _predict(model, *_inputs(model)[:2])
    ly.add_lycoris(model, _options(tmp_path, LOKR, init_lokr_norm=1e-2))
    latents, batch, _ = _inputs(model)
    full = _predict(model, latents, batch)
    assert not torch.allclose(full, base)  # init_lokr_norm starts away from the base model
    with ly.strength(model, 0.0):
        torch.testing.assert_close(_predict(model, latents, batch), base)
    torch.testing.assert_close(_predict(model, latents, batch), full)

    state = ly.state_dict(model)
    other = _transformer(flux_path)
    ly.add_lycoris(other, _options(tmp_path, LOKR))
    ly.load_state_dict(other, state)
    torch.testing.assert_close(_predict(other, latents, batch), full)


def test_init_lokr_norm_draws_w2_from_the_base_weights(flux_path: Path, tmp_path: Path) -> None:
    model = _transformer(flux_path)
    network = ly.add_lycoris(model, _options(tmp_path, LOKR, init_lokr_norm=1e-3))
    for module in network.loras:
        assert torch.equal(module.lokr_w1, torch.ones_like(module.lokr_w1))
        expected = module.org_weight.float().std() * 1e-3
        assert module.lokr_w2.std().item() == pytest.approx(float(expected), rel=0.1)
    factored = {"algo": "lokr", "linear_dim": 2, "factor": 4, "decompose_both": True}
    with pytest.raises(ValueError, match="init_lokr_norm needs LoKr modules with unfactored"):
        ly.add_lycoris(_transformer(flux_path), _options(tmp_path, factored, init_lokr_norm=1e-3))


def test_presets_do_not_leak_between_networks(flux_path: Path, tmp_path: Path) -> None:
    ly.add_lycoris(_transformer(flux_path), _options(tmp_path, LOKR))
    ff_only = {**LOKR, "apply_preset": {"target_module": ["FeedForward"]}}
    network = ly.add_lycoris(_transformer(flux_path), _options(tmp_path, ff_only))
    assert network.loras and all("_ff_" in m.lora_name for m in network.loras)
    no_preset = ly.add_lycoris(_transformer(flux_path), _options(tmp_path, {"algo": "lokr"}))
    # The library's default targets: every Linear, Conv and norm layer.
    assert len(no_preset.loras) > len(network.loras)


@pytest.mark.parametrize(
    ("config", "extra", "message"),
    [
        (None, {}, "does not exist"),
        ({"algo": "nope"}, {}, "algo 'nope' is not a LyCORIS algorithm"),
        ({"algo": "lokr", "apply_preset": {"targets": []}}, {}, "apply_preset keys targets"),
        ({"algo": "loha"}, {"init_lokr_norm": 1e-3}, "init_lokr_norm initialises LoKr"),
        ({"algo": "lokr"}, {"lora_format": "comfyui"}, "lora_format 'comfyui'"),
        ({"algo": "lokr", "apply_preset": {"target_module": ["Nothing"]}}, {}, "match no module"),
    ],
)
def test_bad_settings_are_refused(
    config, extra: dict, message: str, flux_path: Path, tmp_path: Path
) -> None:
    options = _options(tmp_path, config or {}, **extra)
    if config is None:
        options["lycoris_config"] = str(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=message):
        ly.add_lycoris(_transformer(flux_path), options)


# ------------------------------------------------------------------ end to end (done-when)


def _write_run(root: Path, family: str, model: Path, images: Path) -> Path:
    (root / "lycoris_config.json").write_text(json.dumps(LOKR))
    datasets = [
        {
            "id": "photos",
            "type": "local",
            "instance_data_dir": str(images),
            "caption_strategy": "textfile",
            "resolution": 64,
            "resolution_type": "pixel_area",
            "minimum_image_size": 32,
            "cache_dir_vae": str(root / "cache" / "vae"),
        },
        {
            "id": "text",
            "dataset_type": "text_embeds",
            "default": True,
            "type": "local",
            "cache_dir": str(root / "cache" / "text"),
        },
    ]
    (root / "multidatabackend.json").write_text(json.dumps(datasets))
    config = {
        "model_family": family,
        "pretrained_model_name_or_path": str(model),
        "data_backend_config": "multidatabackend.json",
        "output_dir": str(root / "out"),
        "train_batch_size": 2,
        "max_train_steps": 4,
        "learning_rate": 1e-3,
        "lr_scheduler": "constant",
        "seed": 3,
        "mixed_precision": "no",
        "use_gpu": "false",
        "checkpoint_step_interval": 2,
        "base_model_precision": "int8-quanto",
        "text_encoder_1_precision": "int8-quanto",
        "lora_type": "lycoris",
        "lycoris_config": "lycoris_config.json",  # relative: next to config.json
        "optimizer": "adamw_bf16",
        "validation_prompt": "a photo",
        "validation_step_interval": 4,
        "validation_num_inference_steps": 2,
        "validation_resolution": "64",
        "validation_lycoris_strength": 0.5,
    }
    (root / "config.json").write_text(json.dumps(config))
    return root / "config.json"


def _loads_for_inference(family: str, model: Path, out: Path) -> None:
    import diffusers
    from lycoris import create_lycoris_from_weights

    pipeline_class = {"flux": "FluxPipeline", "sdxl": "StableDiffusionXLPipeline"}[family]
    pipeline = getattr(diffusers, pipeline_class).from_pretrained(model)
    denoiser = pipeline.transformer if family == "flux" else pipeline.unet

    def render():
        return pipeline(
            "a photo",
            num_inference_steps=2,
            height=64,
            width=64,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images[0]

    base = render()
    network, _ = create_lycoris_from_weights(1.0, str(out / ly.WEIGHT_NAME), denoiser)
    assert network.loras
    network.merge_to()
    image = render()
    assert image.shape == (64, 64, 3)
    # The trained network, merged into the denoiser, changes what the pipeline renders.
    assert abs(image - base).max() > 1e-4
    assert (out / ly.CONFIG_NAME).is_file()


@pytest.mark.slow
def test_flux_int8_quanto_lokr_adamw_bf16_through_jobs_train(
    tmp_path: Path, example_dataset, flux_path: Path
) -> None:
    config = _write_run(tmp_path, "flux", flux_path, example_dataset.images_dir)
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "train.py"), "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "step 4/4" in result.stdout + result.stderr
    out = tmp_path / "out"
    assert list((out / "validation" / "step-4").glob("*.png"))
    _loads_for_inference("flux", flux_path, out)


@pytest.mark.usefixtures("ray_local")
def test_sdxl_int8_quanto_lokr_adamw_bf16_trains_and_resumes(
    tmp_path: Path, example_dataset, zoo_root: Path
) -> None:
    model = zoo.ensure("sdxl", zoo_root)
    config = _write_run(tmp_path, "sdxl", model, example_dataset.images_dir)
    plan = build_plan(config, ["--validation_disable"], {})
    build_caches(plan)
    progress, reported = fit_in_process(plan, tmp_path / "ckpt")
    losses = [r["loss"] for r in reported]
    assert progress.global_step == 4 and all(torch.isfinite(torch.tensor(losses)))
    checkpoint = tmp_path / "ckpt" / "checkpoint-2"
    assert {ly.WEIGHT_NAME, ly.CONFIG_NAME} <= {p.name for p in checkpoint.iterdir()}
    _loads_for_inference("sdxl", model, tmp_path / "out")

    # Resuming from step 2 reproduces the uninterrupted run's final weights.
    final = (tmp_path / "out" / ly.WEIGHT_NAME).read_bytes()
    again = build_plan(config, ["--validation_disable", "--output_dir", str(tmp_path / "b")], {})
    fit_in_process(again, tmp_path / "ckpt-b", resume_from=checkpoint)
    assert (tmp_path / "b" / ly.WEIGHT_NAME).read_bytes() == final
