"""The code's shape, checked: families live in st_ray/models + st_ray/zoo alone, and
st_ray.config depends on none of the components it configures."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from st_ray.models.family import FAMILIES, UNAVAILABLE_FAMILIES

PACKAGE = Path(__file__).resolve().parent.parent / "st_ray"
# Where a family may be named: its module and its zoo recipe.
FAMILY_HOMES = ("models", "zoo")
# What st_ray.config may import: itself (and the standard library / third-party packages).
COMPONENTS = ("train", "models", "tune", "placement", "data", "jobs", "plan", "bench", "zoo")


def _sources(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def test_no_family_name_outside_models_and_zoo() -> None:
    """grep -iw for every family name in st_ray and jobs (code, strings, comments and
    docstrings alike): a fact about one family belongs in its FamilySpec or module, so adding
    a family touches no other file."""
    names = sorted({*FAMILIES, *UNAVAILABLE_FAMILIES})
    # Whole words, as grep -w: flux_schedule_shift (a generic option) is not 'flux'.
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(names) + r")(?![A-Za-z0-9_])", re.I)
    found = []
    for path in [*_sources(PACKAGE), *_sources(PACKAGE.parent / "jobs")]:
        if path.is_relative_to(PACKAGE) and path.relative_to(PACKAGE).parts[0] in FAMILY_HOMES:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if match := pattern.search(line):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {match.group(0)}")
    assert not found, "family names outside st_ray/models and st_ray/zoo:\n" + "\n".join(found)


def _imports(path: Path) -> list[str]:
    """Every module an st_ray source file imports, wherever the import statement is
    (module level, inside functions, under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return names


def test_config_imports_no_component() -> None:
    forbidden = tuple(f"st_ray.{c}" for c in COMPONENTS)
    found = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in _sources(PACKAGE / "config")
        for name in _imports(path)
        if name == "st_ray" or name.startswith(tuple(f"{f}." for f in forbidden) + forbidden)
    ]
    assert not found, "\n".join(found)


def test_importing_config_loads_no_component() -> None:
    """In a fresh interpreter, every st_ray.config module imports without pulling in a
    component (nothing reaches them through a re-export either)."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import st_ray.config\n"
        "for m in pkgutil.walk_packages(st_ray.config.__path__, 'st_ray.config.'):\n"
        "    importlib.import_module(m.name)\n"
        f"print(sorted(m for m in sys.modules if m.startswith({COMPONENTS_PREFIXES!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


COMPONENTS_PREFIXES = tuple(f"st_ray.{c}" for c in COMPONENTS)


# The options catalog is one declaration per option: long by nature, split by group already.
LONG_ALLOWED = ("config/options",)
MAX_MODULE_LINES = 500


def test_no_module_over_500_lines() -> None:
    """Modules are split by concern before they grow past ~500 lines (issue 12), so each
    stays readable on its own; the options catalog (st_ray/config/options/*) is exempt."""
    found = [
        f"{path.relative_to(PACKAGE.parent)}: {count} lines"
        for path in _sources(PACKAGE)
        if not path.relative_to(PACKAGE).as_posix().startswith(tuple(f"{d}/" for d in LONG_ALLOWED))
        and (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not found, (
        f"modules over {MAX_MODULE_LINES} lines (split them by concern):\n" + "\n".join(found)
    )
