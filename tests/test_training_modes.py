"""Training modes (issue 18): gradient checkpointing every N blocks and its CPU-offload
backend, torch.compile of the denoiser, and text-encoder training; plus the combinations the
plan refuses before any work."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from st_ray import zoo
from st_ray.config.errors import ConfigError
from st_ray.models import checkpointing
from tests.test_config_errors import _base, _run

# ------------------------------------------------------------------ gradient checkpointing


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage alive, and their peak, counted op by op (CPU has no allocator
    statistics): the memory a forward pass keeps for backward is what checkpointing saves."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size and key not in self.seen:
                self.seen.add(key)
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key, size)
        return out


def _unet_inputs(model: torch.nn.Module) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 7, model.config.cross_attention_dim, generator=g)
    return (x, torch.tensor([10, 500]), text)


def _dit_inputs(model: torch.nn.Module) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    c = model.config
    return {
        "hidden_states": torch.randn(2, c.in_channels, 8, 8, generator=g),
        "encoder_hidden_states": torch.randn(2, 7, c.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(2, c.pooled_projection_dim, generator=g),
        "timestep": torch.tensor([10, 500]),
    }


DENOISERS = {  # family -> (diffusers class, subfolder, config changes, inputs)
    "sd1x": ("UNet2DConditionModel", "unet", {}, _unet_inputs),
    # the zoo's DiTs have one block: four, to checkpoint every second one
    "sd3": ("SD3Transformer2DModel", "transformer", {"num_layers": 4}, _dit_inputs),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is fastest, and the shared CI machine is not oversubscribed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gradients(family: str, zoo_root: Path, options: dict) -> tuple[list, int, int | None]:
    """(gradients, bytes held at the end of the forward pass, blocks checkpointed)."""
    import diffusers

    name, subfolder, changes, inputs = DENOISERS[family]
    cls = getattr(diffusers, name)
    torch.manual_seed(0)
    config = cls.load_config(zoo.ensure(family, zoo_root), subfolder=subfolder)
    model = cls.from_config({**config, **changes})
    func = checkpointing.enable(model, options)
    args = inputs(model)
    with LiveBytes() as memory:
        out = model(**args).sample if isinstance(args, dict) else model(*args).sample
        held = memory.live
        out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    return grads, held, None if func is None else func.checkpointed


@pytest.mark.parametrize("family", sorted(DENOISERS))
def test_checkpointing_every_nth_block(family: str, zoo_root: Path) -> None:
    """Gradients equal the unchecked ones; memory held for backward falls from none through
    every 2nd block to every block; the offload backend checkpoints the same blocks."""
    on = {"gradient_checkpointing": True}
    plain, plain_held, _ = _gradients(family, zoo_root, {})
    full, full_held, full_count = _gradients(family, zoo_root, on)
    half, half_held, half_count = _gradients(
        family, zoo_root, {**on, "gradient_checkpointing_interval": 2}
    )
    offload, _, offload_count = _gradients(
        family, zoo_root, {**on, "gradient_checkpointing_backend": "unsloth"}
    )
    assert full_count and half_count == full_count // 2 and offload_count == full_count
    for grads in (full, half, offload):
        for a, b in zip(plain, grads, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert full_held < half_held < plain_held


# ------------------------------------------------------------------ torch.compile


def _lora_steps(family: str, zoo_root: Path, options: dict, steps: int = 2) -> list[float]:
    """Losses of ``steps`` optimizer steps of a LoRA on ``family``'s tiny denoiser (a DiT
    with four blocks) compiled as ``options`` say."""
    from st_ray.train import adapters, compiling
    from tests.test_adapters import BASE_OPTIONS

    name, subfolder, changes, inputs = DENOISERS[family]
    import diffusers

    cls = getattr(diffusers, name)
    torch.manual_seed(0)
    model = cls.from_config(
        {**cls.load_config(zoo.ensure(family, zoo_root), subfolder=subfolder), **changes}
    )
    model.requires_grad_(False)
    adapters.add_lora(model, family, BASE_OPTIONS)
    with torch.no_grad():  # LoRA B starts at zero: make the adapter matter from step one
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.1)
    compiling.compile_denoiser(model, options)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    args = inputs(model)
    losses = []
    for _ in range(steps):
        out = model(**args).sample if isinstance(args, dict) else model(*args).sample
        loss = out.square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("regional", [True], ids=["regional-dit"])
def test_compiled_lora_steps_match_eager(regional: bool, zoo_root: Path) -> None:
    """A PEFT LoRA on the compiled denoiser (here its repeated blocks: one compile serves the
    four) takes the same steps as eager. Backend aot_eager: dynamo's tracing and AOTAutograd's
    joint graph as with inductor, without inductor's C++ compile (minutes on this CPU; the
    whole-model compile of the UNet costs ~50 s here, so the suite tests one DiT)."""
    family = "sd3"
    import torch._dynamo

    torch._dynamo.reset()
    options = {"dynamo_backend": "aot_eager", "dynamo_use_regional_compilation": regional}
    eager = _lora_steps(family, zoo_root, {})
    with torch._dynamo.config.patch(error_on_recompile=False):
        counters = torch._dynamo.utils.counters
        counters.clear()
        compiled = _lora_steps(family, zoo_root, options)
        assert counters["stats"]["unique_graphs"] > 0  # dynamo really compiled something
    assert eager[0] != eager[1]  # the first step changed the LoRA
    np.testing.assert_allclose(compiled, eager, rtol=1e-5)


# ------------------------------------------------------------------ text-encoder training


def test_freeze_strategies_and_limit() -> None:
    from st_ray.train.text_training import layer_frozen, limit_reached

    name = "text_model.encoder.layers.{}.self_attn.q_proj.weight"
    frozen = {
        strategy: [i for i in range(6) if layer_frozen(name.format(i), strategy, 2, 3)]
        for strategy in ("before", "between", "after")
    }
    assert frozen == {"before": [0, 1], "between": [2, 3], "after": [4, 5]}
    assert not layer_frozen("text_model.embeddings.token_embedding.weight", "before", 2, 3)
    # text_encoder_limit: a percentage of the run, frozen once exceeded (SimpleTuner)
    assert [limit_reached(s, 10, 25) for s in (2, 3)] == [False, True]
    assert not limit_reached(10, 10, 100)


@pytest.fixture(scope="module")
def sd1x_te_config(tmp_path_factory, zoo_root, example_dataset, family_cache_root):
    from st_ray.data.pipeline import build_caches
    from st_ray.plan import build_plan
    from tests.test_training import _write_config

    root = tmp_path_factory.mktemp("te-sd1x")
    model = zoo.ensure("sd1x", zoo_root)
    config = _write_config(
        root,
        model,
        example_dataset.images_dir,
        "sd1x",
        family_cache_root,
        train_text_encoder=True,
        text_encoder_lr=1e-2,
        max_train_steps=2,
        checkpoint_step_interval=1,
    )
    build_caches(build_plan(config, [], {}))
    return model, config


def _te_plan(config: Path, out: Path, *extra: str):
    from st_ray.plan import build_plan

    return build_plan(config, ["--output_dir", str(out), *extra], {})


def _render(pipe) -> np.ndarray:
    return pipe(
        "a red square",
        num_inference_steps=2,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


@pytest.mark.usefixtures("ray_local")
def test_text_encoder_lora_trains_loads_and_resumes(sd1x_te_config, tmp_path: Path) -> None:
    """Captions encoded in the loop train a text-encoder LoRA beside the UNet's: its keys are
    in the LoRA file load_lora_weights reads and they change the image; resume is exact."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file, save_file

    from st_ray.train.trainer import fit_in_process

    model, config = sd1x_te_config
    # Run a validates after step 1 with the trained encoders, and must still train on as b.
    validation = ["--validation_prompt", "a red square", "--validation_resolution", "32"]
    validation += ["--num_validation_images", "1", "--validation_num_inference_steps", "1"]
    validation += ["--validation_step_interval", "1", "--validation_guidance", "1.0"]
    straight, reported = fit_in_process(
        _te_plan(config, tmp_path / "a", *validation), tmp_path / "ck-a"
    )
    assert list((tmp_path / "a" / "validation" / "step-1").glob("*.png"))
    assert straight.global_step == 2 and all(np.isfinite(r["loss"]) for r in reported)
    weights = tmp_path / "a" / "pytorch_lora_weights.safetensors"
    tensors = load_file(weights)
    te_keys = [k for k in tensors if k.startswith("text_encoder.")]
    assert te_keys and any(k.startswith("unet.") for k in tensors)
    assert any(".lora_B." in k and tensors[k].abs().max() > 0 for k in te_keys)  # it trained

    # The same UNet LoRA without the text-encoder part renders another image.
    unet_only = tmp_path / "unet-only"
    unet_only.mkdir()
    save_file(
        {k: v for k, v in tensors.items() if k.startswith("unet.")},
        unet_only / "pytorch_lora_weights.safetensors",
    )
    pipe = StableDiffusionPipeline.from_pretrained(model)
    pipe.load_lora_weights(tmp_path / "a")
    assert "default_0" in str(pipe.text_encoder.peft_config)  # the encoder took its LoRA
    with_te = _render(pipe)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(unet_only)
    assert np.abs(_render(pipe) - with_te).max() > 1e-4

    resumed, tail = fit_in_process(
        _te_plan(config, tmp_path / "b"),
        tmp_path / "ck-b",
        resume_from=tmp_path / "ck-a" / "checkpoint-1",
    )
    assert resumed.global_step == 2
    assert [r["loss"] for r in tail] == [r["loss"] for r in reported[1:]]
    again = load_file(tmp_path / "b" / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(tensors[k], again[k]) for k in tensors)


@pytest.mark.usefixtures("ray_local")
def test_full_text_encoder_is_saved_with_save_text_encoder(sd1x_te_config, tmp_path: Path) -> None:
    """model_type full: the trained encoder lands in text_encoder/ (save_text_encoder), loads
    with transformers and differs from the base; its text_encoder_lr group moved it."""
    from transformers import CLIPTextModel

    from st_ray.train.trainer import fit_in_process

    model, config = sd1x_te_config
    extra = ["--model_type", "full", "--save_text_encoder", "true", "--max_train_steps", "1"]
    fit_in_process(_te_plan(config, tmp_path / "out", *extra), tmp_path / "ck")
    trained = CLIPTextModel.from_pretrained(tmp_path / "out" / "text_encoder")
    base = CLIPTextModel.from_pretrained(model, subfolder="text_encoder")
    moved = [
        n
        for (n, a), b in zip(trained.named_parameters(), base.parameters(), strict=True)
        if not torch.equal(a, b)
    ]
    assert any("layers.0.self_attn" in n for n in moved)
    assert (tmp_path / "out" / "unet" / "config.json").exists()


# ------------------------------------------------------------------ refused combinations

REFUSED = [
    (
        {"dynamo_backend": "inductor", "dynamo_mode": "reduce-overhead", "use_gpu": "false"},
        ("dynamo_mode 'reduce-overhead' captures CUDA graphs and needs a CUDA GPU",),
    ),
    (
        {"dynamo_backend": "cudagraphs", "use_gpu": "false"},
        ("dynamo_backend 'cudagraphs' needs a CUDA GPU",),
    ),
    (
        {"dynamo_backend": "aot_eager", "dynamo_mode": "max-autotune-no-cudagraphs"},
        ("is an inductor setting",),
    ),
    ({"dynamo_use_regional_compilation": True}, ("needs dynamo_backend",)),
    ({"save_text_encoder": True}, ("save_text_encoder needs train_text_encoder",)),
    (
        {"train_text_encoder": True, "model_family": "sd3", "model_type": "full"},
        ("train_text_encoder trains CLIP text encoders", "sd1x"),
    ),
    (
        {"train_text_encoder": True, "text_encoder_1_precision": "int8-quanto"},
        ("text_encoder_1_precision 'int8-quanto' quantises a text encoder",),
    ),
    ({"train_text_encoder": True, "lora_format": "comfyui"}, ("use lora_format 'diffusers'",)),
    (
        {"gradient_checkpointing": False, "gradient_checkpointing_interval": 2},
        ("gradient_checkpointing_interval", "gradient checkpointing, which is off"),
    ),
]


@pytest.mark.parametrize("changes,fragments", REFUSED)
def test_refused_combinations(tmp_path: Path, changes: dict, fragments: tuple[str, ...]) -> None:
    config, datasets = _base(tmp_path)
    config.update(changes)
    with pytest.raises(ConfigError) as caught:
        _run(tmp_path, config, datasets)
    for fragment in fragments:
        assert fragment in str(caught.value)
