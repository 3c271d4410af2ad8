"""CLI: ``python -m st_ray.zoo list`` / ``python -m st_ray.zoo build --family F --out DIR``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import EXTRAS, FAMILIES, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m st_ray.zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the available diffusion families")
    b = sub.add_parser("build", help="write a tiny pipeline folder")
    # "all" means every diffusion family; extras (the captioner) are built by name.
    b.add_argument("--family", required=True, choices=(*FAMILIES, *EXTRAS, "all"))
    b.add_argument("--out", required=True, type=Path, help="pipeline folder (DIR/<family> for all)")
    b.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "list":
        print("\n".join(FAMILIES))
        return 0
    families = FAMILIES if args.family == "all" else (args.family,)
    for family in families:
        out = args.out / family if args.family == "all" else args.out
        start = time.perf_counter()
        path = build(family, out, seed=args.seed)
        print(f"{family}: {path} ({time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
