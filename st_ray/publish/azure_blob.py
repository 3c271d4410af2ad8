"""``publishing_config`` provider ``azure_blob`` (alias ``azure``): Azure Blob Storage through
the ``azure-storage-blob`` SDK, with the keys of SimpleTuner's reference.

Credentials are ``connection_string``, or ``account_url`` (or ``account_name``, meaning
``https://<name>.blob.core.windows.net``) with ``account_key``. Each file of the folder becomes
the blob ``base_path/<folder name>/<relative path>`` in ``container`` (created when missing);
the SDK sends small files in one Put Blob and large ones as blocks. The SDK's own retries are
off so that st_ray's backoff (the one every target uses) is the only one.
"""

from __future__ import annotations

import contextlib
import mimetypes
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from st_ray.publish.retry import DEFAULT_BACKOFF, Backoff, with_retries
from st_ray.publish.uploads import failure, files_in, key_problems

PROVIDERS = ("azure_blob", "azure")
KEYS = frozenset(
    {
        "provider",
        "name",
        "container",
        "container_name",
        "connection_string",
        "account_url",
        "account_name",
        "account_key",
        "base_path",
    }
)


def problems(entry: Mapping[str, Any], where: str) -> list[str]:
    """What is wrong with one azure entry, naming keys and never values."""
    found = key_problems(entry, KEYS, where)
    if not (entry.get("container") or entry.get("container_name")):
        found.append(f"{where}: 'container' (the blob container's name) is required")
    url = entry.get("account_url") or entry.get("account_name")
    if entry.get("account_url") and entry.get("account_name"):
        found.append(f"{where}: set 'account_url' or 'account_name', not both")
    if entry.get("connection_string"):
        if url or entry.get("account_key"):
            found.append(
                f"{where}: 'connection_string' holds the account and key; do not also set "
                "'account_url', 'account_name' or 'account_key'"
            )
    elif not (url and entry.get("account_key")):
        found.append(
            f"{where}: credentials are required: 'connection_string', or 'account_url' (or "
            "'account_name') with 'account_key'"
        )
    return found


@dataclass(frozen=True)
class AzureBlobTarget:
    provider: str
    container: str
    base_path: str = ""
    connection_string: str | None = field(default=None, repr=False)
    account_url: str | None = None
    account_key: str | None = field(default=None, repr=False)
    # Extra BlobServiceClient settings (the tests lower max_single_put_size to exercise blocks).
    client_options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> AzureBlobTarget:
        url = entry.get("account_url")
        if not url and entry.get("account_name"):
            url = f"https://{entry['account_name']}.blob.core.windows.net"
        return cls(
            provider=str(entry["provider"]),
            container=str(entry.get("container") or entry["container_name"]),
            base_path=str(entry.get("base_path") or "").strip("/"),
            connection_string=entry.get("connection_string") or None,
            account_url=url or None,
            account_key=entry.get("account_key") or None,
        )

    @property
    def name(self) -> str:
        return f"{self.provider} container {self.container}/{self.base_path}".rstrip("/")

    def push(
        self,
        folder: Path,
        path_in_target: str,
        files: Sequence[str] | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> str:
        """Upload ``folder`` (or only ``files`` in it); returns the URL of its blob prefix."""
        prefix = posixpath.join(self.base_path, path_in_target).strip("/")
        try:
            container = self._container_client()
            with_retries(
                lambda: _ensure_container(container), f"creating container of {self.name}", backoff
            )
            for name in files_in(folder, files):
                blob = f"{prefix}/{name}".lstrip("/")
                with_retries(
                    lambda name=name, blob=blob: _upload(container, folder / name, blob),
                    f"uploading {name} to {self.name}",
                    backoff,
                )
            # A SAS in the connection string would ride in the URL's query: never returned.
            return f"{container.url.split('?', 1)[0].rstrip('/')}/{prefix}".rstrip("/")
        except Exception as err:
            secrets = (self.connection_string, self.account_key)
            raise failure(self.name, err, secrets) from None

    def _container_client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        options = {"retry_total": 0, **self.client_options}
        if self.connection_string:
            service = BlobServiceClient.from_connection_string(self.connection_string, **options)
        else:
            service = BlobServiceClient(self.account_url, credential=self.account_key, **options)
        return service.get_container_client(self.container)


def _ensure_container(container: Any) -> None:
    from azure.core.exceptions import ResourceExistsError

    with contextlib.suppress(ResourceExistsError):  # an existing container is fine
        container.create_container()


def _upload(container: Any, path: Path, blob: str) -> None:
    from azure.storage.blob import ContentSettings

    kind, _ = mimetypes.guess_type(path.name)
    settings = ContentSettings(content_type=kind) if kind else None
    with open(path, "rb") as handle:
        container.upload_blob(blob, handle, overwrite=True, content_settings=settings)
