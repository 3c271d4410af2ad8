"""``publishing_config`` provider ``dropbox``: Dropbox through the official ``dropbox`` SDK.

Keys: ``token`` (alias ``access_token``, as in SimpleTuner's reference) and ``base_path``.
Dropbox's access tokens now expire after a few hours, shorter than many runs, so st_ray also
accepts ``refresh_token`` with ``app_key`` (and ``app_secret`` unless the token came from PKCE):
the SDK then fetches a fresh access token when it needs one. Each file of the folder goes to
``/<base_path>/<folder name>/<relative path>``, overwriting; a file above ``chunk_size`` goes in
an upload session. The remote location is ``dropbox://<base_path>/<folder name>``, the
reference's form. The SDK's own retries are off: st_ray's backoff is the only one.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from st_ray.publish.retry import DEFAULT_BACKOFF, Backoff, with_retries
from st_ray.publish.uploads import failure, files_in, key_problems

PROVIDERS = ("dropbox",)
KEYS = frozenset(
    {
        "provider",
        "name",
        "token",
        "access_token",
        "refresh_token",
        "app_key",
        "app_secret",
        "base_path",
    }
)
# Dropbox takes up to 150 MB in one upload; sessions append in chunks (a multiple of 4 MiB).
CHUNK_SIZE = 8 * 2**20


def problems(entry: Mapping[str, Any], where: str) -> list[str]:
    """What is wrong with one dropbox entry, naming keys and never values."""
    found = key_problems(entry, KEYS, where)
    if entry.get("token") and entry.get("access_token"):
        found.append(f"{where}: set 'token' or its alias 'access_token', not both")
    if entry.get("refresh_token") and not entry.get("app_key"):
        found.append(f"{where}: 'refresh_token' needs 'app_key' (the app it was issued to)")
    if not (entry.get("token") or entry.get("access_token") or entry.get("refresh_token")):
        found.append(
            f"{where}: credentials are required: 'token' (an access token), or "
            "'refresh_token' with 'app_key' (and 'app_secret')"
        )
    return found


def dropbox_root(base_path: str | None) -> str:
    """``base_path`` as the absolute Dropbox folder it names ("" for the root)."""
    parts = [p for p in str(base_path or "").strip().split("/") if p]
    return "/" + "/".join(parts) if parts else ""


@dataclass(frozen=True)
class DropboxTarget:
    provider: str
    base_path: str = ""  # absolute ("/SimpleTuner/runs") or "" for the app's root
    token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    app_key: str | None = None
    app_secret: str | None = field(default=None, repr=False)
    chunk_size: int = CHUNK_SIZE
    # A requests.Session for the SDK (its public ``session`` argument); None: the SDK's own.
    session: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> DropboxTarget:
        return cls(
            provider=str(entry["provider"]),
            base_path=dropbox_root(entry.get("base_path")),
            token=entry.get("token") or entry.get("access_token") or None,
            refresh_token=entry.get("refresh_token") or None,
            app_key=entry.get("app_key") or None,
            app_secret=entry.get("app_secret") or None,
        )

    @property
    def name(self) -> str:
        return f"{self.provider} {self.base_path or '/'}"

    def remote_path(self, path_in_target: str, name: str = "") -> str:
        """The absolute Dropbox path of ``name`` inside ``path_in_target``."""
        return dropbox_root(posixpath.join(self.base_path, path_in_target, name))

    def push(
        self,
        folder: Path,
        path_in_target: str,
        files: Sequence[str] | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> str:
        """Upload ``folder`` (or only ``files`` in it); returns ``dropbox://<its path>``."""
        try:
            client = self._client()
            for name in files_in(folder, files):
                destination = self.remote_path(path_in_target, name)
                with_retries(
                    lambda name=name, to=destination: self._upload(client, folder / name, to),
                    f"uploading {name} to {self.name}",
                    backoff,
                )
        except Exception as err:
            raise failure(
                self.name, err, (self.token, self.refresh_token, self.app_secret)
            ) from None
        return "dropbox://" + self.remote_path(path_in_target).lstrip("/")

    def _client(self) -> Any:
        import dropbox

        return dropbox.Dropbox(
            oauth2_access_token=self.token,
            oauth2_refresh_token=self.refresh_token,
            app_key=self.app_key,
            app_secret=self.app_secret,
            session=self.session,
            max_retries_on_error=0,
            max_retries_on_rate_limit=0,
            user_agent="st_ray",
        )

    def _upload(self, client: Any, path: Path, destination: str) -> None:
        """One file, whole (a retry starts it again, in a new session if it needs one)."""
        from dropbox.files import CommitInfo, UploadSessionCursor, WriteMode

        size = path.stat().st_size
        with open(path, "rb") as handle:
            if size <= self.chunk_size:
                client.files_upload(handle.read(), destination, mode=WriteMode.overwrite)
                return
            session = client.files_upload_session_start(handle.read(self.chunk_size))
            cursor = UploadSessionCursor(session_id=session.session_id, offset=handle.tell())
            while size - handle.tell() > self.chunk_size:
                client.files_upload_session_append_v2(handle.read(self.chunk_size), cursor)
                cursor.offset = handle.tell()
            commit = CommitInfo(path=destination, mode=WriteMode.overwrite)
            client.files_upload_session_finish(handle.read(), cursor, commit)
