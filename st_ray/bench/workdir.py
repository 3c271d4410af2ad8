"""What every benchmark's ``main`` does around its measurements: a work folder, the report,
the optional JSON copy of the figures."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_and_report(
    args: argparse.Namespace,
    prefix: str,
    run: Callable[[Path], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
) -> int:
    """``run(workdir)`` in ``--workdir`` or a fresh temp folder (removed unless ``--keep``),
    then print ``report(result)`` and save the result to ``--json`` when given."""
    own = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=prefix)) if own else args.workdir
    try:
        result = run(workdir)
    finally:
        if own and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif own:
            print(f"kept {workdir}")
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
