"""The model card: ``README.md`` beside the final weights, in the Hugging Face card format.

Everything in it comes from the redacted view of the plan (``Plan.to_dict`` and the options
passed through ``redact``), so a secret in the config can never reach the card.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_ray.config.redact import redact

if TYPE_CHECKING:
    from st_ray.plan import Plan

CARD = "README.md"

_NSFW_WARNING = (
    "This model was trained without content filtering and may produce images that are not "
    "suitable for all audiences. Review outputs before sharing them."
)


def write_model_card(
    output_dir: Path,
    plan: Plan,
    *,
    steps: int,
    final_loss: float | None,
    validation_images: Sequence[Path] = (),
    image_counts: Mapping[str, int] | None = None,
    license: str | None = None,
    derived: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``output_dir/README.md`` and return its path.

    ``image_counts`` maps dataset id to its number of training images (the loop knows them);
    ``validation_images`` are referenced relative to ``output_dir``; ``derived`` are the
    run's derived values (st_ray.train.settings.Derived.as_dict): the learning rate, schedule
    and batch that ran, where they differ from the options.
    """
    from st_ray.plan import SECRET_OPTIONS

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    public = plan.to_dict()
    options = redact(dict(plan.options), SECRET_OPTIONS)
    lora = options.get("model_type") == "lora"
    family = public["family"]
    base = str(public["model"])

    tags = ["st_ray", "diffusers", "lora" if lora else "full", family, "text-to-image"]
    if not options.get("model_card_safe_for_work"):
        tags.append("not-for-all-audiences")
    front = [
        "---",
        f"base_model: {_yaml(base)}",
        f"license: {_yaml(license or 'unknown')}",
        "library_name: diffusers",
        "tags:",
        *[f"- {_yaml(t)}" for t in tags],
        "---",
    ]
    title = str(options.get("hub_model_id") or options.get("tracker_run_name") or "")
    title = title or f"{family} {'LoRA' if lora else 'fine-tune'}"
    lines = [*front, "", f"# {title}", ""]
    if options.get("model_card_note"):
        lines += [str(options["model_card_note"]), ""]
    kind = "a LoRA adapter" if lora else "a full fine-tune of the denoiser"
    lines += [
        f"{kind[0].upper()}{kind[1:]} for `{base}` (model family `{family}`), trained with "
        f"st_ray for {steps} optimizer steps"
        + (f"; final training loss {final_loss:.4g}." if final_loss is not None else "."),
        "",
    ]
    if not options.get("model_card_safe_for_work"):
        lines += [f"> {_NSFW_WARNING}", ""]
    lines += [
        "## Training settings",
        "",
        *_settings(options, family, lora, steps, derived or {}),
        "",
    ]
    lines += ["## Datasets", "", *_datasets(public["datasets"], image_counts or {}), ""]
    lines += ["## Usage", "", *_usage(options, family, base, output_dir, lora), ""]
    if validation_images:
        lines += ["## Validation images", ""]
        for image in validation_images:
            rel = Path(os.path.relpath(Path(image), output_dir)).as_posix()
            lines.append(f"![{Path(image).stem}]({rel})")
        lines.append("")
    path = output_dir / CARD
    path.write_text("\n".join(lines))
    return path


def _settings(
    options: Mapping[str, Any],
    family: str,
    lora: bool,
    steps: int,
    derived: Mapping[str, Any],
) -> list[str]:
    workers = int(derived.get("world_size") or options.get("num_processes") or 1)
    batch = int(options.get("train_batch_size") or 1)
    accum = int(options.get("gradient_accumulation_steps") or 1)
    configured_lr = float(options.get("learning_rate") or 0)
    lr = float(derived.get("learning_rate", configured_lr))
    scheduler = derived.get("lr_scheduler", options.get("lr_scheduler"))
    warmup = derived.get("lr_warmup_steps", options.get("lr_warmup_steps") or 0)
    rows = [("Model type", "LoRA" if lora else "full fine-tune")]
    if lora:
        from st_ray.train.lora_targets import lora_target_modules

        rank = int(options.get("lora_rank") or 16)
        alpha = options.get("lora_alpha")
        rows += [
            ("LoRA rank", str(rank)),
            ("LoRA alpha", f"{float(rank if alpha is None else alpha):g}"),
            ("LoRA targets", ", ".join(f"`{t}`" for t in lora_target_modules(family, options))),
        ]
        if options.get("use_dora"):
            rows.append(("DoRA", "yes"))
    rows += [
        ("Steps", str(steps)),
        (
            "Batch size",
            f"{batch} per worker x {accum} accumulation x {workers} worker(s) = "
            f"{batch * accum * workers}",
        ),
        (
            "Learning rate",
            f"{lr:g}"
            + (f" (learning_rate {configured_lr:g}, lr_scale)" if lr != configured_lr else ""),
        ),
        ("Optimizer", str(options.get("optimizer"))),
        ("LR scheduler", f"{scheduler} (warmup {warmup} steps)"),
        (
            "Default resolution",
            f"{float(options.get('resolution') or 0):g} ({options.get('resolution_type')})",
        ),
        ("Mixed precision", str(options.get("mixed_precision"))),
        ("Prediction type", str(options.get("prediction_type") or "family default")),
    ]
    if options.get("use_ema"):
        rows.append(("EMA", f"decay {options.get('ema_decay')}"))
    if options.get("seed") is not None:
        rows.append(("Seed", str(options["seed"])))
    return ["| Setting | Value |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in rows]]


def _datasets(datasets: Sequence[Mapping[str, Any]], counts: Mapping[str, int]) -> list[str]:
    images = [d for d in datasets if d.get("dataset_type", "image") == "image"]
    if not images:
        return ["No image datasets recorded."]
    rows = ["| Dataset | Backend | Resolution | Captions | Repeats | Images |"]
    rows.append("| --- | --- | --- | --- | --- | --- |")
    for d in images:
        resolution = d.get("resolution")
        shown = f"{float(resolution):g} ({d.get('resolution_type')})" if resolution else ""
        count = counts.get(str(d.get("id")))
        rows.append(
            f"| {d.get('id')} | {d.get('type', '')} | {shown} | {d.get('caption_strategy', '')} "
            f"| {d.get('repeats') or 0} | {'' if count is None else count} |"
        )
    return rows


def _usage(
    options: Mapping[str, Any], family: str, base: str, output_dir: Path, lora: bool
) -> list[str]:
    from st_ray.models.family import get_family

    spec = get_family(family)
    weights = json.dumps(str(output_dir))
    prompt = json.dumps(str(options.get("validation_prompt") or "a photo of a cat"))
    steps = int(options.get("validation_num_inference_steps") or 30)
    guidance = float(options.get("validation_guidance") or 0)
    code = ["```python", "import torch", ""]
    if lora:
        code += [
            f"from diffusers import {spec.pipeline_class}",
            "",
            f"pipeline = {spec.pipeline_class}.from_pretrained(",
            f"    {json.dumps(base)}, torch_dtype=torch.bfloat16",
            ")",
            f"pipeline.load_lora_weights({weights})",
        ]
    else:
        code += [
            f"from diffusers import AutoModel, {spec.pipeline_class}",
            "",
            f"{spec.denoiser} = AutoModel.from_pretrained(",
            f"    {weights}, subfolder={json.dumps(spec.denoiser)}, torch_dtype=torch.bfloat16",
            ")",
            f"pipeline = {spec.pipeline_class}.from_pretrained(",
            f"    {json.dumps(base)}, {spec.denoiser}={spec.denoiser}, torch_dtype=torch.bfloat16",
            ")",
        ]
    code += [
        'pipeline.to("cuda")',
        "image = pipeline(",
        f"    {prompt}, num_inference_steps={steps}, guidance_scale={guidance:g}",
        ").images[0]",
        'image.save("output.png")',
        "```",
    ]
    return code


def _yaml(value: str) -> str:
    """A YAML scalar: JSON quoting is valid YAML and safe for any text."""
    return json.dumps(str(value))
