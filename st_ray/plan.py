"""The resolved plan of a run: every check that can fail before Ray starts, in one place.

This is st_ray's composition root. ``st_ray.config`` knows options, loaders, dataset entries
and the generic rules, and nothing of the components; importing this module adds to it what
the components declare: the model families' own options and the model_family names (from the
discovered families), and the checks of the families, the training builders (optimizer, LR
schedule, adapters, quantisation, attention) and placement.

``build_plan`` loads the options, applies the rules between them, resolves the model and
the dataset file, and raises one ``ConfigError`` listing every problem it found.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from st_ray.config import options as catalog
from st_ray.config import rules
from st_ray.config.datasets import DatasetEntry, load_datasets, resolve_local
from st_ray.config.errors import ConfigError, ProblemList
from st_ray.config.loader import LoadedConfig, load_config
from st_ray.config.options import OPTIONS
from st_ray.config.redact import redact
from st_ray.config.rules import check_rules
from st_ray.config.schema import Json, Option
from st_ray.config.sources import read_json
from st_ray.models import family_rules
from st_ray.models.family import FAMILIES, UNAVAILABLE_FAMILIES, FamilySpec
from st_ray.notify.checks import check_notify_options
from st_ray.publish.checks import check_publishing
from st_ray.train import config_checks
from st_ray.train.controlnet_checks import check_controlnet


def _check_placement(loaded: LoadedConfig, problems: ProblemList) -> None:
    from st_ray.placement import check_options

    for key, problem in check_options(loaded.values):
        problems.add(loaded.provenance.get(key, "configuration"), key, problem)


def _family_options() -> dict[str, Option]:
    """Every option a family owns, once (families may share one declaration)."""
    owned: dict[str, Option] = {}
    for spec in FAMILIES.values():
        for option in spec.options:
            if owned.setdefault(option.name, option) != option:
                raise RuntimeError(
                    f"option {option.name!r} of family {spec.name!r} is declared differently "
                    "by another family"
                )
    return owned


def compose() -> None:
    """Complete the option catalog and the rules with what the components declare (runs once,
    on import)."""
    catalog.contribute("model families", _family_options().values(), "Model family options")
    catalog.set_choices("model_family", [*FAMILIES, *UNAVAILABLE_FAMILIES], UNAVAILABLE_FAMILIES)
    rules.register(
        family_rules.check_family,
        config_checks.check_training_setup,
        config_checks.check_hardware,
        config_checks.check_objectives,
        config_checks.check_training_modes,
        check_notify_options,
        _check_placement,
        check_publishing,
    )
    catalog.mark_complete()


compose()

SECRET_OPTIONS = tuple(o.name for o in OPTIONS if o.secret)
# Options that name a file or folder which must exist when set.
PATH_OPTIONS = ("lycoris_config", "init_lora", "user_prompt_library")
MODEL_PATH_OPTIONS = (
    "pretrained_model_name_or_path",
    "pretrained_vae_model_name_or_path",
    "pretrained_unet_model_name_or_path",
    "pretrained_transformer_model_name_or_path",
    "pretrained_t5_model_name_or_path",
    "pretrained_gemma_model_name_or_path",
)


@dataclass
class Plan:
    config: LoadedConfig
    family: FamilySpec
    model: str  # local folder or Hub id of the base pipeline
    model_is_local: bool
    dataset_config: Path
    datasets: list[DatasetEntry]
    output_dir: Path
    run_storage: str
    tracking_uri: str
    notes: list[str] = field(default_factory=list)

    @property
    def options(self) -> dict[str, Any]:
        return self.config.values

    def to_dict(self) -> dict[str, Any]:
        """Everything a log, MLflow or a saved config may hold: secrets redacted."""
        from st_ray.config.dataset_fields import FIELDS

        dataset_secrets = [f.name for f in FIELDS if f.secret]
        return {
            "family": self.family.name,
            "model": redact(self.model),
            "dataset_config": str(self.dataset_config),
            "output_dir": str(self.output_dir),
            "run_storage": redact(self.run_storage),
            "tracking_uri": redact(self.tracking_uri),
            "options": redact(self.config.explicit(), SECRET_OPTIONS),
            "datasets": [redact(d.fields, dataset_secrets) for d in self.datasets],
            "notes": list(self.notes),
        }


def looks_local(value: str) -> bool:
    """Hub ids look like 'org/name'; anything absolute, relative-dotted or existing is local."""
    return value.startswith(("/", "./", "../", "~")) or Path(value).expanduser().exists()


def build_plan(
    config: str | Path | None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Plan:
    problems = ProblemList()
    loaded = load_config(config, overrides, environ, problems)
    check_rules(loaded, problems)
    values = loaded.values
    base_dir = loaded.config_path.parent if loaded.config_path else None

    family = FAMILIES.get(values["model_family"])
    _check_paths(loaded, problems, base_dir)
    model = values.get("pretrained_model_name_or_path")
    if model is None and family is not None:
        model = family.flavours.get(values.get("model_flavour") or family.default_flavour)
    model_is_local = bool(model) and looks_local(str(model))

    dataset_config, datasets = _load_dataset_config(loaded, problems, base_dir)
    _check_eval(loaded, datasets, problems)
    _check_captions(dataset_config, datasets, problems)
    _check_regularisation(loaded, datasets, problems)
    control_notes = check_controlnet(values, family, datasets, problems)
    if family is not None:
        _check_video(loaded, family, datasets, problems)

    output_dir = Path(str(values["output_dir"])).expanduser()
    if "://" in str(values["output_dir"]):
        problems.add(
            loaded.provenance["output_dir"],
            "output_dir",
            "must be a local folder (final weights, model card, images); put "
            "checkpoints on object storage with run_storage_path: s3://...",
        )
    elif output_dir.exists() and not output_dir.is_dir():
        problems.add(
            loaded.provenance["output_dir"],
            "output_dir",
            f"'{output_dir}' exists and is not a folder",
        )
    problems.raise_if_any()
    assert family is not None and model is not None

    run_storage = values.get("run_storage_path") or str((output_dir / "ray_runs").resolve())
    # MLflow's default local store: a SQLite file beside the outputs (its file store is
    # deprecated), with artifacts in <output_dir>/mlartifacts.
    tracking_uri = values.get("mlflow_tracking_uri") or (
        f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"
    )
    notes = [*loaded.notes, *problems.notes, *control_notes]
    if not any(d.dataset_type == "text_embeds" for d in datasets):
        notes.append(
            "no text_embeds dataset given: text embeddings are cached under "
            "cache_dir_text (or <output_dir>/cache/text)"
        )
    return Plan(
        loaded,
        family,
        str(model),
        model_is_local,
        dataset_config,
        datasets,
        output_dir,
        run_storage,
        tracking_uri,
        notes,
    )


def _load_dataset_config(
    loaded: LoadedConfig, problems: ProblemList, base_dir: Path | None
) -> tuple[Path, list[DatasetEntry]]:
    """multidatabackend.json by path, or given inline as a JSON list."""
    raw = loaded.values.get("data_backend_config")
    source = loaded.provenance["data_backend_config"]
    if raw is None:
        return Path(), []  # already reported as required
    if isinstance(raw, list):
        path = Path(f"{source} (inline data_backend_config)")
        try:
            return path, load_datasets(raw, loaded.values, loaded.env, problems, base_dir, path)
        except ConfigError as err:
            problems.items.extend(err.problems)
            return path, []
    if not isinstance(raw, str):
        problems.add(
            source,
            "data_backend_config",
            "expected a path to a multidatabackend JSON file or an inline JSON list",
        )
        return Path(), []
    path = resolve_local(raw, base_dir)
    if not path.is_file():
        problems.add(source, "data_backend_config", f"dataset config '{raw}' does not exist")
        return path, []
    try:
        return path, load_datasets(path, loaded.values, loaded.env, problems, base_dir)
    except ConfigError as err:  # unreadable or malformed file
        problems.items.extend(err.problems)
        return path, []


def _check_captions(source: Path, datasets: list[DatasetEntry], problems: ProblemList) -> None:
    from st_ray.data.captions import caption_shuffle_problems

    for entry in datasets:
        for key, message in caption_shuffle_problems(entry.fields.get("caption_shuffle")):
            problems.add(f"{source} [entry {entry.index}] (id '{entry.id}')", key, message)


EVAL_SCHEDULE_OPTIONS = ("eval_steps_interval", "eval_epoch_interval", "eval_dataset_id")


def _check_eval(loaded: LoadedConfig, datasets: list[DatasetEntry], problems: ProblemList) -> None:
    """Eval-loss options need a dataset with "dataset_type": "eval" to measure on."""
    if not datasets:
        return  # the dataset file itself is already reported
    values = loaded.values
    eval_ids = sorted(d.id for d in datasets if d.dataset_type == "eval")
    wanted = values.get("eval_dataset_id")
    if wanted and wanted not in eval_ids:
        problems.add(
            loaded.provenance["eval_dataset_id"],
            "eval_dataset_id",
            f'\'{wanted}\' is not an enabled dataset with "dataset_type": "eval"; '
            f"eval datasets: {', '.join(eval_ids) or 'none'}",
        )
    clip = str(values.get("evaluation_type") or "none").lower() == "clip"
    for name in EVAL_SCHEDULE_OPTIONS[:2]:
        if values.get(name) and not eval_ids and not values.get("eval_loss_disable") and not clip:
            # SimpleTuner runs such a config; the evaluation loss is then simply not computed.
            problems.note(
                f"{loaded.provenance[name]}: {name} schedules the evaluation loss, but no "
                'dataset has "dataset_type": "eval", so none is computed; add one to the '
                "dataset config to measure it (its images are cached, never trained on)"
            )


def _check_video(
    loaded: LoadedConfig, family: FamilySpec, datasets: list[DatasetEntry], problems: ProblemList
) -> None:
    """Video datasets need a video family, frame counts its VAE takes, and an I2V flavour
    for is_i2v (st_ray.data.video_settings)."""
    from st_ray.data.video_settings import video_problems

    flavour = loaded.values.get("model_flavour") or family.default_flavour
    for entry in [d for d in datasets if d.is_video]:
        found = video_problems(
            entry.fields.get("video"),
            family=family.name,
            frame_step=family.frame_step,
            i2v_flavour=flavour in family.i2v_flavours,
        )
        for key, message in found:
            problems.add(f"{entry.id} (dataset)", key, message)
        if entry.fields.get("conditioning_data"):
            problems.add(
                f"{entry.id} (dataset)",
                "conditioning_data",
                "conditioning is paired with image datasets only; video datasets take none yet",
            )
    if family.frame_step > 0 and str(loaded.values.get("evaluation_type") or "").lower() == "clip":
        problems.add(
            loaded.provenance.get("evaluation_type", "configuration"),
            "evaluation_type",
            f"'clip' scores still images; model_family '{family.name}' renders video clips "
            "(accepted: none)",
        )


def _check_regularisation(
    loaded: LoadedConfig, datasets: list[DatasetEntry], problems: ProblemList
) -> None:
    """Regularisation data trains towards the base model's prediction, which is the denoiser
    with its adapter switched off: a full fine-tune has no adapter to switch off."""
    if loaded.values.get("model_type") == "lora":
        return
    for entry in datasets:
        if entry.holds_images and entry.fields.get("is_regularisation_data"):
            problems.add(
                f"{entry.id} (dataset)",
                "is_regularisation_data",
                "needs model_type 'lora' (its target is the denoiser's prediction with the "
                f"adapter switched off); model_type is '{loaded.values.get('model_type')}'",
            )


def _check_paths(loaded: LoadedConfig, problems: ProblemList, base_dir: Path | None) -> None:
    values = loaded.values
    for name in MODEL_PATH_OPTIONS:
        value = values.get(name)
        if value and looks_local(str(value)) and not resolve_local(value, base_dir).exists():
            problems.add(
                loaded.provenance[name],
                name,
                f"local model path '{value}' does not "
                "exist (give an existing folder, or a Hub id like 'org/name')",
            )
    model = values.get("pretrained_model_name_or_path")
    if model and looks_local(str(model)):
        folder = resolve_local(model, base_dir)
        if folder.is_dir() and not (folder / "model_index.json").is_file():
            problems.add(
                loaded.provenance["pretrained_model_name_or_path"],
                "pretrained_model_name_or_path",
                f"'{model}' has no model_index.json; expected a diffusers pipeline "
                "folder (as saved by save_pretrained)",
            )
    for name in PATH_OPTIONS:
        value = values.get(name)
        if loaded.provenance[name] == "default":
            continue  # a default path (e.g. lycoris_config) matters only once it is used
        remote = str(value).startswith(("s3://", "hf://"))
        if value and not remote and not resolve_local(value, base_dir).exists():
            problems.add(loaded.provenance[name], name, f"file '{value}' does not exist")
    for option in OPTIONS:
        value = values.get(option.name)
        if option.name == "data_backend_config" or option.name in PATH_OPTIONS:
            continue
        if option.type is Json and isinstance(value, str) and value:
            path = resolve_local(value, base_dir)
            if not path.is_file():
                problems.add(
                    loaded.provenance[option.name],
                    option.name,
                    f"{_shown(option, value)} is neither inline JSON nor an existing JSON file",
                )
            else:
                try:
                    read_json(path)
                except ConfigError as err:
                    problems.items.extend(err.problems)


def _shown(option, value: str) -> str:
    return "the value (not shown: it may be secret)" if option.secret else f"'{value}'"


def _cpus_shown(value: Any) -> str:
    if str(value).strip().lower() == "auto":
        return "auto (the node's CPUs / its workers; resolved when training starts)"
    return str(value)


def describe_recovery(values: Mapping[str, Any]) -> str:
    """What happens when a worker dies: the restart budget and where a restart resumes."""
    failures = int(values.get("max_failures") or 0)
    if failures == 0:
        return "none (max_failures 0: the first worker failure ends the run)"
    budget = "unlimited restarts" if failures < 0 else f"up to {failures} restart(s)"
    interval = values.get("checkpoint_step_interval")
    since = f"every {interval} steps" if interval else "none by step interval"
    return f"{budget} from the latest checkpoint (checkpoints: {since}; none yet: from step 0)"


def describe_validation(values: Mapping[str, Any]) -> str:
    """validation_mode as the plan states it (the cluster decides 'auto' at start)."""
    from st_ray.train.validation_mode import async_blocker

    mode = values.get("validation_mode") or "auto"
    if values.get("validation_disable"):
        return "off (validation_disable)"
    if mode == "sync":
        return "synchronous on rank 0 (validation_mode sync)"
    blocker = async_blocker(values)
    if blocker:
        return f"synchronous on rank 0 ({blocker})"
    if mode == "async":
        return "asynchronous on a validation actor while training goes on (validation_mode async)"
    return (
        "auto: asynchronous on a validation actor when the Ray cluster has a spare GPU, else "
        "synchronous on rank 0 (decided when training starts; in-process runs: synchronous)"
    )


def format_plan(plan: Plan) -> str:
    """A short human summary of what the run will do (secrets redacted)."""
    values = plan.options
    steps = values.get("max_train_steps")
    length = f"{steps} steps" if steps else f"{values.get('num_train_epochs')} epoch(s)"
    adapter = f", {values['lora_type']}" if values.get("model_type") == "lora" else ""
    source = "local folder" if plan.model_is_local else "Hub id"
    lines = [
        "st_ray run plan",
        f"  family        {plan.family.name} ({plan.family.denoiser}, "
        f"{values.get('model_type')}{adapter})",
        f"  base model    {redact(plan.model)} ({source})",
        f"  workers       {values['num_processes']} Ray Train worker(s), gpu: {values['use_gpu']}, "
        f"cpus each: {_cpus_shown(values.get('cpus_per_worker'))}",
        f"  training      {length}, batch {values.get('train_batch_size')}, "
        f"lr {values.get('learning_rate'):g}, optimizer {values.get('optimizer')}",
        f"  output_dir    {plan.output_dir}",
        f"  run storage   {redact(plan.run_storage)}",
        f"  recovery      {describe_recovery(values)}",
        f"  validation    {describe_validation(values)}",
        f"  MLflow        {redact(plan.tracking_uri)}",
        f"  datasets      {plan.dataset_config}",
    ]
    for entry in plan.datasets:
        where = entry.fields.get("instance_data_dir") or entry.fields.get("aws_bucket_name") or ""
        if entry.holds_images:
            kind = " (eval only)" if entry.dataset_type == "eval" else ""
            lines.append(
                f"    - {entry.id}{kind}: {entry.backend} {where} resolution {entry['resolution']:g} "
                f"({entry['resolution_type']}), captions: {entry['caption_strategy']}, "
                f"repeats {entry['repeats']}"
            )
        elif entry.dataset_type == "conditioning":
            kind = entry.fields.get("conditioning_type") or "controlnet"
            lines.append(f"    - {entry.id}: conditioning ({kind}) {entry.backend} {where}")
        else:
            lines.append(f"    - {entry.id}: {entry.dataset_type} cache {entry['cache_dir'] or ''}")
    lines.append(f"  options set   {len(plan.config.explicit())} (the rest use defaults)")
    lines += [f"  note: {note}" for note in plan.notes]
    return "\n".join(lines)
