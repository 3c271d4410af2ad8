"""Model families: one module per family, each registering a ``FamilySpec``."""

from st_ray.models.family import FAMILIES, FamilySpec, get_family

__all__ = ["FAMILIES", "FamilySpec", "get_family"]
