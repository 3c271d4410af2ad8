"""Webhook targets (``webhook_config``): Discord and raw JSON endpoints that receive events.

The config is SimpleTuner's: one object or a list of them, inline or in a JSON file::

    {"webhook_type": "discord", "webhook_url": "https://discord.com/api/webhooks/...",
     "message_prefix": "my-run", "log_level": "info"}
    {"webhook_type": "raw", "callback_url": "https://example.com/hook", "log_level": "info",
     "ssl_no_verify": false}

A Discord target gets a chat line (``content``) with validation images attached; a raw target
gets the event as a JSON object. Events are queued and posted by one background thread with a
timeout and a few retries, so a slow or dead endpoint never slows or stops training. A URL is a
secret: messages name a target by its number, type and host only.
"""

from __future__ import annotations

import base64
import json
import queue
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TYPES = ("discord", "raw")
LOG_LEVELS = {"critical": 0, "error": 1, "warning": 2, "info": 3, "debug": 4}
_URL_KEY = {"discord": "webhook_url", "raw": "callback_url"}
_KNOWN_KEYS = {"webhook_type", "webhook_url", "callback_url", "message_prefix", "log_level"}
_KNOWN_KEYS |= {"ssl_no_verify"}
DISCORD_MAX_CHARS = 2000  # Discord refuses longer messages
DISCORD_MAX_FILES = 10  # and more attachments per message


@dataclass(frozen=True)
class WebhookTarget:
    index: int
    kind: str  # "discord" or "raw"
    url: str  # secret: never printed
    message_prefix: str | None = None
    log_level: int = LOG_LEVELS["info"]
    verify_ssl: bool = True

    @property
    def label(self) -> str:
        """How messages name this target: its number, type and host (the URL is a secret)."""
        parts = urlsplit(self.url)
        return f"webhook {self.index} ({self.kind}, {parts.scheme}://{parts.hostname})"

    def wants(self, event: Event) -> bool:
        if event.raw_only and self.kind != "raw":
            return False
        return LOG_LEVELS.get(event.severity, LOG_LEVELS["info"]) <= self.log_level


@dataclass
class Event:
    """One thing that happened. ``type``: training.started, training.progress,
    validation.images, training.checkpoint, training.error, training.finished."""

    type: str
    message: str  # the human line (Discord's content)
    severity: str = "info"
    data: dict[str, Any] = field(default_factory=dict)
    images: Sequence[Path] = ()
    raw_only: bool = False  # progress: raw targets only (as SimpleTuner; Discord would flood)


def load_config(value: Any, base_dir: Path | None = None) -> list[dict[str, Any]]:
    """The config's target objects: inline object/list, or a path to a JSON file holding one."""
    if isinstance(value, str):
        path = Path(value).expanduser()
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = base_dir / path
        # The value is not echoed: a URL given where a file was expected is a secret.
        try:
            value = json.loads(path.read_text())
        except OSError:
            raise ValueError("the webhook config file cannot be read") from None
        except ValueError as err:
            raise ValueError(f"the webhook config file is not valid JSON ({err})") from None
    entries = value if isinstance(value, list) else [value]
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise ValueError("expected a JSON object or a list of objects, one per webhook target")
    return entries


def parse_targets(value: Any, base_dir: Path | None = None) -> list[WebhookTarget]:
    """Every target of ``webhook_config``; ValueError naming the entry and field otherwise."""
    targets = []
    for index, entry in enumerate(load_config(value, base_dir)):
        where = f"target {index}"
        kind = entry.get("webhook_type")
        if kind not in TYPES:
            raise ValueError(f"{where}: webhook_type {kind!r} is not one of {', '.join(TYPES)}")
        url = entry.get(_URL_KEY[kind]) or entry.get("webhook_url") or entry.get("callback_url")
        if not isinstance(url, str) or not url:
            raise ValueError(f"{where}: a {kind} webhook needs '{_URL_KEY[kind]}'")
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ValueError(f"{where}: '{_URL_KEY[kind]}' must be an http(s) URL")
        level = str(entry.get("log_level") or "info").lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"{where}: log_level {level!r} is not one of {', '.join(LOG_LEVELS)}")
        unknown = sorted(set(entry) - _KNOWN_KEYS)
        if unknown:
            raise ValueError(
                f"{where}: unknown field(s) {', '.join(unknown)}; accepted: "
                + ", ".join(sorted(_KNOWN_KEYS))
            )
        prefix = entry.get("message_prefix")
        targets.append(
            WebhookTarget(
                index=index,
                kind=kind,
                url=url,
                message_prefix=str(prefix) if prefix is not None else None,
                log_level=LOG_LEVELS[level],
                verify_ssl=not entry.get("ssl_no_verify", False),
            )
        )
    return targets


# ---------------------------------------------------------------------------- requests


def raw_payload(event: Event, *, job_id: str | None, run_name: str) -> dict[str, Any]:
    return {
        "type": event.type,
        "severity": event.severity,
        "message": event.message,
        "job_id": job_id,
        "run_name": run_name,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": event.data,
        "images": [
            {"name": p.name, "png_base64": base64.b64encode(p.read_bytes()).decode()}
            for p in event.images
        ],
    }


def discord_requests(event: Event, prefix: str) -> list[tuple[bytes, str]]:
    """(body, content type) per message: the line, and at most 10 images per message."""
    content = f"`({prefix})` {event.message}"[:DISCORD_MAX_CHARS]
    images = list(event.images)
    chunks = [images[i : i + DISCORD_MAX_FILES] for i in range(0, len(images), DISCORD_MAX_FILES)]
    bodies = []
    for chunk in chunks or [[]]:
        if not chunk:
            bodies.append((json.dumps({"content": content}).encode(), "application/json"))
            continue
        boundary = uuid.uuid4().hex
        parts = [_form_part(boundary, "payload_json", json.dumps({"content": content}).encode())]
        for n, path in enumerate(chunk):
            parts.append(_form_part(boundary, f"files[{n}]", path.read_bytes(), path.name))
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        bodies.append((body, f"multipart/form-data; boundary={boundary}"))
    return bodies


def _form_part(boundary: str, name: str, data: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    kind = "image/png" if filename else "application/json"
    head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {kind}\r\n\r\n"
    return head.encode() + data + b"\r\n"


def post(target: WebhookTarget, body: bytes, content_type: str, timeout: float) -> None:
    """One POST; raises ``DeliveryError`` with a reason that never holds the URL."""
    request = urllib.request.Request(
        target.url,
        data=body,
        method="POST",
        headers={"Content-Type": content_type, "User-Agent": "st_ray-webhooks"},
    )
    context = None
    if not target.verify_ssl:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            response.read()
    except urllib.error.HTTPError as err:
        raise DeliveryError(f"HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise DeliveryError(f"cannot connect ({err.reason})") from None
    except TimeoutError:
        raise DeliveryError(f"no answer within {timeout:g} s") from None
    except OSError as err:
        raise DeliveryError(f"connection failed ({type(err).__name__}: {err.strerror})") from None


class DeliveryError(Exception):
    """A webhook POST that failed; its message never holds the URL."""


# ---------------------------------------------------------------------------- the sender


class WebhookSender:
    """Posts events to every target from one daemon thread. ``send`` never blocks; a target's
    first undelivered event is reported once (``log``), later ones are counted and summed up
    at ``close``. A target that failed gets one try per event until it answers again."""

    def __init__(
        self,
        targets: Sequence[WebhookTarget],
        *,
        job_id: str | None,
        run_name: str,
        log: Callable[[str], None],
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 1.0,
        max_pending: int = 256,
    ):
        self.targets = list(targets)
        self.job_id = job_id
        self.run_name = run_name
        self.log = log
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.failed: dict[int, int] = {}  # target index -> undelivered events
        self.delivered: dict[int, int] = {t.index: 0 for t in self.targets}
        self._down: set[int] = set()
        self._dropped = 0
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._work, name="st_ray-webhooks", daemon=True)
        self._thread.start()

    def send(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            if not self._dropped:
                self.log(
                    "webhooks: the endpoints fall behind; events are dropped until they catch up"
                )
            self._dropped += 1

    def close(self, wait_s: float = 30.0) -> None:
        """Deliver what is queued within ``wait_s`` seconds, then stop; sum up the failures."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
                break
            except queue.Full:
                break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self.log(f"webhooks: gave up on {self._queue.qsize()} undelivered events at the end")
        for target in self.targets:
            if self.failed.get(target.index):
                self.log(
                    f"{target.label}: {self.failed[target.index]} event(s) not delivered, "
                    f"{self.delivered[target.index]} delivered"
                )

    def _work(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            for target in self.targets:
                if target.wants(event):
                    self._deliver(target, event)

    def _deliver(self, target: WebhookTarget, event: Event) -> None:
        try:
            if target.kind == "raw":
                payload = raw_payload(event, job_id=self.job_id, run_name=self.run_name)
                bodies = [(json.dumps(payload, default=str).encode(), "application/json")]
            else:
                bodies = discord_requests(event, target.message_prefix or self.run_name)
        except OSError as err:  # an image that vanished
            bodies = []
            self.log(f"{target.label}: {event.type} sent without its images ({err.strerror})")
        tries = 1 if target.index in self._down else self.retries
        for body, content_type in bodies:
            for attempt in range(tries):
                try:
                    post(target, body, content_type, self.timeout)
                    break
                except DeliveryError as err:
                    if attempt + 1 < tries:
                        time.sleep(self.backoff * 2**attempt)
                        continue
                    self._failed(target, event, str(err), tries)
                    return
        self.delivered[target.index] += 1
        self._down.discard(target.index)

    def _failed(self, target: WebhookTarget, event: Event, reason: str, tries: int) -> None:
        self._down.add(target.index)
        count = self.failed.get(target.index, 0)
        self.failed[target.index] = count + 1
        if count == 0:  # once per target; the rest is summed up at close
            self.log(
                f"{target.label}: event {event.type} not delivered after {tries} "
                f"tr{'y' if tries == 1 else 'ies'}: {reason}. Training goes on; later "
                "failures of this target are counted, not repeated"
            )
