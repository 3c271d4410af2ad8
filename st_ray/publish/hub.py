"""Pushing a folder to a Hugging Face Hub model repository with ``HfApi``.

The token comes from the environment (``HF_TOKEN``, or the older
``HUGGING_FACE_HUB_TOKEN``) and never from the config, so it cannot reach a saved config or
MLflow. ``HF_ENDPOINT`` is read when the push starts (huggingface_hub reads it only once, at
import), so a private Hub mirror or the tests' loopback Hub is honoured.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from st_ray.publish.retry import DEFAULT_BACKOFF, Backoff, short, with_retries

DEFAULT_ENDPOINT = "https://huggingface.co"
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class PublishError(RuntimeError):
    """An upload that failed for good; the local files are left as they were."""


@dataclass(frozen=True)
class HubRepo:
    repo_id: str
    private: bool = True
    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_options(
        cls, options: Mapping[str, object], environ: Mapping[str, str] | None = None
    ) -> HubRepo:
        env = os.environ if environ is None else environ
        token = next((env[v] for v in TOKEN_VARIABLES if env.get(v)), None)
        return cls(
            repo_id=str(options["hub_model_id"]),
            private=bool(options.get("model_card_private", True)),
            endpoint=(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
            token=token,
        )

    def url(self, path_in_repo: str = "") -> str:
        base = f"{self.endpoint}/{self.repo_id}"
        return f"{base}/tree/main/{path_in_repo}" if path_in_repo else base

    def push_folder(
        self,
        folder: Path,
        path_in_repo: str = "",
        message: str = "",
        allow: Sequence[str] | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> str:
        """Create the repo if needed and upload ``folder`` (only ``allow`` patterns when given)
        in one commit; returns the remote URL. Transient failures are retried; a final one is a
        ``PublishError`` naming the repo."""
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=self.token)
        where = f"Hub repo '{self.repo_id}' at {self.endpoint}"
        try:
            with_retries(
                lambda: api.create_repo(self.repo_id, private=self.private, exist_ok=True),
                f"creating {where}",
                backoff,
            )
            with_retries(
                lambda: api.upload_folder(
                    repo_id=self.repo_id,
                    folder_path=folder,
                    path_in_repo=path_in_repo or None,
                    commit_message=message or f"Upload {path_in_repo or 'model'}",
                    allow_patterns=list(allow) if allow else None,
                ),
                f"uploading {folder} to {where}",
                backoff,
            )
        except Exception as err:
            hint = "" if self.token else " (no HF_TOKEN in the environment)"
            raise PublishError(
                f"upload of {folder} to {where} failed{hint}: {short(err)}; "
                f"the local files are intact in {folder}"
            ) from err
        return self.url(path_in_repo)
