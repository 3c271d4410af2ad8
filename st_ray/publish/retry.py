"""Retrying uploads on transient failures (5xx, 429, connection errors) with backoff."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Backoff:
    attempts: int = 5
    first_wait_s: float = 2.0
    max_wait_s: float = 60.0

    def waits(self) -> list[float]:
        """The pauses between attempts: doubling from ``first_wait_s``, capped."""
        return [min(self.first_wait_s * 2**i, self.max_wait_s) for i in range(self.attempts - 1)]


# Five tries over about 30 s: rides out a Hub or S3 hiccup without holding a run for long.
DEFAULT_BACKOFF = Backoff()


def status_of(error: BaseException) -> int | None:
    """The HTTP status an error carries (huggingface_hub, botocore, azure, dropbox), if any."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status is None:  # dropbox's HttpError carries it itself
        status = getattr(error, "status_code", None)
    if status is None and isinstance(response, dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def is_transient(error: BaseException) -> bool:
    """Worth another try: a server-side or rate-limit status, or no answer at all."""
    status = status_of(error)
    if status is not None:
        return status in TRANSIENT_STATUS
    names = {cls.__name__ for cls in type(error).__mro__}
    if "OfflineModeIsEnabled" in names:  # HF_HUB_OFFLINE: no retry will change that
        return False
    # httpx's TransportError (connect/read/timeouts), botocore's endpoint/connection errors,
    # azure-core's request/response errors, requests' (dropbox's) ConnectionError and Timeout.
    transport = {
        "TransportError",
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ServiceRequestError",
        "ServiceResponseError",
        "ConnectionError",
        "Timeout",
    }
    return bool(names & transport) or isinstance(error, ConnectionError | TimeoutError)


def with_retries(
    action: Callable[[], T],
    what: str,
    backoff: Backoff,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``action``; on a transient failure wait and try again, up to ``backoff.attempts``."""
    waits = backoff.waits()
    for attempt in range(backoff.attempts):
        try:
            return action()
        except Exception as err:
            if attempt >= len(waits) or not is_transient(err):
                raise
            say(
                f"{what} failed ({short(err)}); retry {attempt + 1}/{len(waits)} "
                f"in {waits[attempt]:.0f} s"
            )
            sleep(waits[attempt])
    raise AssertionError("unreachable")


def short(error: BaseException) -> str:
    """The error's first line; a token-like word or a URL carrying credentials is redacted."""
    from st_ray.config.redact import redact

    lines = str(error).strip().splitlines()
    words = [redact(word.strip("'\"")) for word in (lines[0] if lines else "").split(" ")]
    return f"{type(error).__name__}: {' '.join(words)}"[:300]


def say(line: str) -> None:
    """One line to the job's log (stdout: Ray forwards a worker's stream to the driver)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
