"""A family st_ray does not ship, added as a plugin: one module (spec + encode_prompts +
predict) in a package named by ST_RAY_FAMILY_PACKAGES, plus its zoo recipe, and nothing else.
In a fresh process (as a user would run it, with its own Ray) the config validates with the
family's own option, the caches build and two training steps run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

FAMILY_MODULE = '''
"""A tiny plugin family: a UNet on KL latents, conditioned on one CLIP encoder."""

from st_ray.config.schema import opt
from st_ray.models import text_encoders as te
from st_ray.models.family import FamilySpec, Prediction, conditioning, unwrap

SLOTS = (te.Slot("text_encoder", "tokenizer", "CLIPTextModel"),)
OPTIONS = (
    opt("plugfam_caption_prefix", str, "", "Text put before every caption.", caches=("text",)),
)
SPEC = FamilySpec(
    name="plugfam",
    denoiser="unet",
    denoiser_class="UNet2DConditionModel",
    prediction_types=("epsilon",),
    flavours={"tiny": "example/plugfam-tiny"},
    pixel_granularity=8,
    text_encoders=1,
    pipeline_class="StableDiffusionPipeline",
    text_slots=SLOTS,
    options=OPTIONS,
    zoo_recipe="plugfam_zoo",
)


def encode_prompts(encoders, prompts, *, options):
    prefix = options.get("plugfam_caption_prefix") or ""
    with te.inference_mode():
        out = te.clip_encode(encoders, "text_encoder", [prefix + p for p in prompts])
        return {"prompt_embeds": te.to_numpy(out.last_hidden_state)}


def predict(denoiser, noisy_latents, timesteps, batch, options, *, generator=None):
    dtype = unwrap(denoiser).dtype
    out = denoiser(
        noisy_latents.to(dtype),
        timesteps.to(noisy_latents.device),
        encoder_hidden_states=conditioning(batch, "prompt_embeds", noisy_latents, dtype),
        return_dict=False,
    )[0]
    return Prediction(out.to(noisy_latents.dtype))
'''

ZOO_RECIPE = '''
"""The plugin family's tiny test model: an SD-1.x-layout pipeline from st_ray's zoo parts."""

from st_ray.zoo import sd1x


def build(out_dir, seed):
    sd1x.build(out_dir, seed)
'''

SCRIPT = """
import json, sys
from pathlib import Path

import ray

from st_ray import zoo
from st_ray.config.errors import ConfigError
from st_ray.data.pipeline import build_caches
from st_ray.plan import build_plan
from st_ray.train.trainer import fit_in_process

root, images = Path(sys.argv[1]), sys.argv[2]
model = zoo.ensure("plugfam", root / "zoo")
datasets = [
    {"id": "photos", "type": "local", "instance_data_dir": images, "caption_strategy": "textfile",
     "resolution": 64, "resolution_type": "pixel_area", "minimum_image_size": 32,
     "cache_dir_vae": str(root / "cache" / "vae")},
    {"id": "text", "dataset_type": "text_embeds", "default": True, "type": "local",
     "cache_dir": str(root / "cache" / "text")},
]
(root / "datasets.json").write_text(json.dumps(datasets))
config = root / "config.json"
config.write_text(json.dumps({
    "model_family": "plugfam", "pretrained_model_name_or_path": str(model),
    "data_backend_config": str(root / "datasets.json"), "output_dir": str(root / "out"),
    "plugfam_caption_prefix": "a photo: ", "train_batch_size": 2, "max_train_steps": 2,
    "learning_rate": 1e-3, "lr_scheduler": "constant", "lora_rank": 4, "seed": 3,
    "optimizer": "adamw_bf16", "mixed_precision": "no", "checkpoint_step_interval": 2,
}))
result = {}
try:
    build_plan(config, ["--model_family", "sd1x"], {})
except ConfigError as err:
    result["other_family"] = str(err)
plan = build_plan(config, [], {})
ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
report = build_caches(plan)
result["caches"] = {"encoded": report.datasets[0].encoded,
                    "captions_encoded": report.captions_encoded}
ray.shutdown()
progress, reported = fit_in_process(plan, root / "checkpoints")
result["steps"] = progress.global_step
result["losses"] = [r["loss"] for r in reported]
result["lora"] = (root / "out" / "pytorch_lora_weights.safetensors").is_file()
print("RESULT " + json.dumps(result))
"""


def test_plugin_family_validates_caches_and_trains(tmp_path: Path, example_dataset) -> None:
    plugins = tmp_path / "plugins"
    (plugins / "plugfam_families").mkdir(parents=True)
    (plugins / "plugfam_families" / "__init__.py").write_text("")
    (plugins / "plugfam_families" / "plugfam.py").write_text(textwrap.dedent(FAMILY_MODULE))
    (plugins / "plugfam_zoo.py").write_text(textwrap.dedent(ZOO_RECIPE))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(plugins)]),
        "ST_RAY_FAMILY_PACKAGES": "plugfam_families",
    }
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "run"), str(example_dataset.images_dir)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stdout[-3000:] + out.stderr[-5000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    # The family's own option is refused for another family (a derived rule).
    assert (
        "plugfam_caption_prefix: only applies to model_family 'plugfam'" in result["other_family"]
    )
    assert result["caches"]["encoded"] > 0 and result["caches"]["captions_encoded"] > 0
    assert result["steps"] == 2 and len(result["losses"]) == 2 and result["lora"]
