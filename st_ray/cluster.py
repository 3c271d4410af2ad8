"""Connecting to Ray: join the cluster a job was submitted to, else start a local one."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def connect(options: Mapping[str, Any]) -> None:
    """``ray_address`` when set; else RAY_ADDRESS (set by ``ray job submit``); else a local
    Ray instance on this machine."""
    import ray

    if ray.is_initialized():
        return
    address = options.get("ray_address") or os.environ.get("RAY_ADDRESS")
    ray.init(
        address=address, include_dashboard=False, configure_logging=True, logging_level="WARNING"
    )
