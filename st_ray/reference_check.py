"""Check the option catalog against a SimpleTuner option reference (the text of its docs with
the English ``--help`` output at the end).

    python -m st_ray.reference_check path/to/OPTIONS.md

Prints the options the reference names that st_ray does not know, and the choices that
differ; exits 1 if any option is missing. Used by maintainers when SimpleTuner adds options;
st_ray itself never reads the reference at run time.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# The complete catalog: st_ray.plan (the composition root) adds the families' options.
import st_ray.plan  # noqa: F401
from st_ray.config.options import REGISTRY

_HELP_LINE = re.compile(r"^  --([a-z0-9_]+)(?: \{([^}]*)\})?")
_HEADING = re.compile(r"^#+ `--([a-z0-9_]+)")


def reference_options(text: str) -> tuple[dict[str, list[str] | None], set[str]]:
    """Options of the ``--help`` section (with their choices) and of the prose headings."""
    start = text.find("\noptions:\n")
    help_part, prose = (text[start:], text[:start]) if start >= 0 else ("", text)
    in_help: dict[str, list[str] | None] = {}
    for line in help_part.splitlines():
        match = _HELP_LINE.match(line)
        if match and match.group(1) != "help":
            choices = match.group(2)
            in_help[match.group(1)] = choices.split(",") if choices else None
    in_prose = {m.group(1) for m in map(_HEADING.match, prose.splitlines()) if m}
    return in_help, in_prose


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    in_help, in_prose = reference_options(Path(argv[0]).read_text(encoding="utf-8"))
    missing = sorted(n for n in set(in_help) | in_prose if n not in REGISTRY)
    choice_diffs = []
    for name, choices in in_help.items():
        option = REGISTRY.get(name)
        if option is None or choices is None or option.choices is None:
            continue
        ours = {str(c) for c in option.choices if c is not None}
        if not set(choices) <= ours:
            choice_diffs.append(f"{name}: reference has {sorted(set(choices) - ours)} not in ours")
    print(
        f"reference: {len(in_help)} options in --help, {len(in_prose)} prose headings; "
        f"st_ray knows {len(set(in_help) | in_prose) - len(missing)} of "
        f"{len(set(in_help) | in_prose)}"
    )
    for name in missing:
        print(f"missing: {name}")
    for line in choice_diffs:
        print(f"choices: {line}")
    return 1 if missing or choice_diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
