"""``publishing_config``: upload targets besides the Hub, as SimpleTuner's reference defines them.

The value is a JSON object, a list of them, inline JSON or a path to a JSON file; each entry
names its ``provider``. S3-compatible stores (``s3``, and ``backblaze_b2`` through B2's S3 API:
the same code with B2's ``endpoint_url``) are uploaded with s3fs; ``azure_blob`` (alias
``azure``) with the azure-storage-blob SDK (``azure_blob.py``); ``dropbox`` with the dropbox SDK
(``dropbox_target.py``). Entries may hold credentials: the option is declared secret, so they
are redacted wherever a config is printed, saved or logged; nothing here prints an entry, and a
target's failure message has its own secrets masked.
"""

from __future__ import annotations

import importlib.util
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from st_ray.publish import azure_blob, dropbox_target
from st_ray.publish.retry import DEFAULT_BACKOFF, Backoff, with_retries
from st_ray.publish.uploads import failure, files_in
from st_ray.storage import DEFAULT_REGION, S3Settings, filesystem

S3_PROVIDERS = ("s3", "backblaze_b2")
S3_KEYS = frozenset(
    {
        "provider",
        "name",
        "bucket",
        "region",
        "access_key",
        "secret_key",
        "base_path",
        "endpoint_url",
        "public_base_url",
    }
)
# Providers whose SDK st_ray imports: provider -> (module, pip name, its entry checks).
SDK_PROVIDERS = {
    **{p: ("azure.storage.blob", "azure-storage-blob", azure_blob) for p in azure_blob.PROVIDERS},
    **{p: ("dropbox", "dropbox", dropbox_target) for p in dropbox_target.PROVIDERS},
}


def entries_of(value: Any, base_dir: Path | None = None) -> list[Any]:
    """The config's entries as a list (a single object becomes a one-entry list); a string
    is a JSON file's path, relative to ``base_dir``."""
    if value in (None, "", [], {}):
        return []
    if isinstance(value, str):
        from st_ray.config.sources import read_json

        path = Path(value).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        value = read_json(path, "publishing_config file")
    return list(value) if isinstance(value, list) else [value]


def problems_of(entries: Sequence[Any]) -> list[str]:
    """What is wrong with each entry, as messages naming the entry and key (never a value)."""
    found = []
    for i, entry in enumerate(entries):
        where = f"entry {i + 1}"
        if not isinstance(entry, Mapping):
            found.append(f"{where}: expected an object with a 'provider' key")
            continue
        provider = entry.get("provider")
        if provider in SDK_PROVIDERS:
            module, package, checks = SDK_PROVIDERS[provider]
            if importlib.util.find_spec(module.split(".")[0]) is None:
                found.append(
                    f"{where}: provider '{provider}' needs the '{package}' package (pip install "
                    f"{package}); it is one of st_ray's dependencies, so reinstalling st_ray "
                    "brings it"
                )
            else:
                found.extend(checks.problems(entry, where))
        elif provider not in S3_PROVIDERS:
            accepted = ", ".join((*S3_PROVIDERS, *SDK_PROVIDERS))
            found.append(f"{where}: unknown provider {provider!r}; accepted: {accepted}")
        else:
            unknown = sorted(set(entry) - S3_KEYS)
            if unknown:
                found.append(
                    f"{where}: unknown key(s) {', '.join(unknown)}; accepted: "
                    f"{', '.join(sorted(S3_KEYS))}"
                )
            if not isinstance(entry.get("bucket"), str) or not entry["bucket"]:
                found.append(f"{where}: 'bucket' (the bucket name) is required")
            for key in ("access_key", "secret_key"):
                if key in entry and not isinstance(entry[key], str):
                    found.append(f"{where}: '{key}' must be a string")
            if bool(entry.get("access_key")) != bool(entry.get("secret_key")):
                found.append(f"{where}: set both 'access_key' and 'secret_key', or neither")
    return found


@dataclass(frozen=True)
class S3Target:
    """One S3-compatible destination; uploads land under ``s3://bucket/base_path/<name>``."""

    provider: str
    bucket: str
    base_path: str = ""
    public_base_url: str | None = None
    settings: S3Settings = field(default_factory=S3Settings)

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> S3Target:
        endpoint = entry.get("endpoint_url")
        return cls(
            provider=str(entry["provider"]),
            bucket=str(entry["bucket"]),
            base_path=str(entry.get("base_path") or "").strip("/"),
            public_base_url=entry.get("public_base_url") or None,
            settings=S3Settings(
                endpoint_url=endpoint,
                region=entry.get("region") or (DEFAULT_REGION if endpoint else None),
                key=entry.get("access_key") or None,
                secret=entry.get("secret_key") or None,
            ),
        )

    @property
    def name(self) -> str:
        return f"{self.provider} s3://{self.bucket}/{self.base_path}".rstrip("/")

    def push(
        self,
        folder: Path,
        path_in_target: str,
        files: Sequence[str] | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> str:
        """Upload ``folder`` (or only ``files`` in it); returns where it landed (the public
        URL when ``public_base_url`` is set, else the s3:// URI)."""
        key = posixpath.join(self.base_path, path_in_target).strip("/")
        uri = f"s3://{self.bucket}/{key}"
        try:
            fs, _ = filesystem(uri, self.settings)
            for name in files_in(folder, files):
                with_retries(
                    lambda name=name: fs.put_file(
                        str(folder / name), f"{self.bucket}/{key}/{name}"
                    ),
                    f"uploading {name} to {self.name}",
                    backoff,
                )
        except Exception as err:
            raise failure(self.name, err, (self.settings.key, self.settings.secret)) from None
        if self.public_base_url:
            return f"{self.public_base_url.rstrip('/')}/{key}"
        return uri


def targets_of(entries: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The upload targets of checked entries (``problems_of`` found nothing)."""
    targets: list[Any] = []
    for entry in entries:
        provider = entry.get("provider")
        if provider in azure_blob.PROVIDERS:
            targets.append(azure_blob.AzureBlobTarget.from_entry(entry))
        elif provider in dropbox_target.PROVIDERS:
            targets.append(dropbox_target.DropboxTarget.from_entry(entry))
        else:
            targets.append(S3Target.from_entry(entry))
    return targets
