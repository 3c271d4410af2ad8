"""The model families' checks of a run's options, registered by the composition root
(``st_ray.plan``): the family exists, its flavour and prediction type, the bucket alignment
its latent tokens need, each family's own ``option_problems``, and the options a family owns
left at their defaults by every other family."""

from __future__ import annotations

from st_ray.config.errors import ProblemList
from st_ray.config.loader import LoadedConfig, default_value
from st_ray.config.options import CANONICAL
from st_ray.models import family as registry


def owners() -> dict[str, list[str]]:
    """Option name -> the families that declare it."""
    owned: dict[str, list[str]] = {}
    for spec in registry.FAMILIES.values():
        for option in spec.options:
            owned.setdefault(option.name, []).append(spec.name)
    return owned


def check_family(loaded: LoadedConfig, problems: ProblemList) -> None:
    values = loaded.values
    family_name = values["model_family"]
    if family_name is None or family_name in registry.UNAVAILABLE_FAMILIES:
        return  # reported as required / as an unsupported value
    if family_name not in registry.FAMILIES:
        problems.add(
            loaded.provenance["model_family"],
            "model_family",
            f"family '{family_name}' is not available in st_ray yet; available: "
            + ", ".join(registry.FAMILIES),
        )
        return
    family = registry.FAMILIES[family_name]
    flavour = values.get("model_flavour")
    if flavour is not None and flavour in family.refused_flavours:
        problems.add(
            loaded.provenance["model_flavour"],
            "model_flavour",
            f"'{flavour}' of {family_name} is not supported by st_ray: "
            f"{family.refused_flavours[flavour]}; supported: " + ", ".join(family.flavours),
        )
    elif flavour is not None and flavour not in family.flavours:
        problems.add(
            loaded.provenance["model_flavour"],
            "model_flavour",
            f"unknown flavour '{flavour}' for {family_name}; accepted: "
            + ", ".join(family.flavours),
        )
    prediction = values.get("prediction_type")
    if prediction is not None and prediction not in family.prediction_types:
        problems.add(
            loaded.provenance["prediction_type"],
            "prediction_type",
            f"'{prediction}' does not apply to {family_name}; accepted: "
            + ", ".join(family.prediction_types),
        )
    alignment = values.get("aspect_bucket_alignment")
    if alignment and alignment % family.pixel_granularity:
        problems.add(
            loaded.provenance["aspect_bucket_alignment"],
            "aspect_bucket_alignment",
            f"{alignment} is not a multiple of {family.pixel_granularity}, the pixel "
            f"size of one {family_name} latent token; use a multiple of it",
        )
    for key, message in registry.get_family_module(family_name).option_problems(values):
        problems.add(loaded.provenance.get(key, "configuration"), key, message)
    check_owned_options(loaded, problems, family_name)


def check_owned_options(loaded: LoadedConfig, problems: ProblemList, family_name: str) -> None:
    """An option a family owns, set away from its default for another family, would be
    silently ignored: refused instead."""
    for name, families in owners().items():
        if family_name in families or loaded.provenance.get(name, "default") == "default":
            continue
        if loaded.values.get(name) == default_value(CANONICAL[name]):
            continue
        problems.add(
            loaded.provenance[name],
            name,
            "only applies to model_family "
            + " or ".join(f"'{f}'" for f in families)
            + f", not '{family_name}'",
        )
