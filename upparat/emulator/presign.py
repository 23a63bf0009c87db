"""Pre-signed URL placeholders in job documents and the signers that fill them.

AWS replaces `${aws:iot:s3-presigned-url:<url>}` in a job document's string values
with a freshly signed URL on every document request (jobs-configurations-details,
"Presigned URLs"). This module owns that substitution; it never reads the document
store and never logs a signed URL.
"""

from __future__ import annotations

import datetime
import re
import secrets
import urllib.parse
from collections.abc import Callable

from upparat.emulator.clock import Clock, SystemClock
from upparat.emulator.wire import JsonValue

#: (url, expires_in_seconds) -> signed url
Signer = Callable[[str, int], str]

PLACEHOLDER = re.compile(r"\$\{aws:iot:s3-presigned-url:([^}]+)\}")

MIN_EXPIRES_IN = 60
MAX_EXPIRES_IN = 3600


class DefaultSigner:
    """Appends an S3-looking SigV4 query (date, expiry, random signature) to the URL.

    The signature is random, so two document requests never see the same URL, like AWS.
    An HTTP test server can honour expiry from X-Amz-Date + X-Amz-Expires.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock if clock is not None else SystemClock()

    def __call__(self, url: str, expires_in: int) -> str:
        date = datetime.datetime.fromtimestamp(self._clock.now(), tz=datetime.UTC)
        query = (
            "X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Date={date.strftime('%Y%m%dT%H%M%SZ')}"
            f"&X-Amz-Expires={expires_in}"
            "&X-Amz-SignedHeaders=host"
            f"&X-Amz-Signature={secrets.token_hex(32)}"
        )
        return f"{url}{'&' if '?' in url else '?'}{query}"


def expires_at(url: str) -> float | None:
    """When a URL from DefaultSigner expires (epoch seconds); None if it carries no expiry.

    For test HTTP servers that answer an expired URL like S3 does (403 AccessDenied,
    "Request has expired").
    """
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    try:
        date = datetime.datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
        lifetime = int(query["X-Amz-Expires"][0])
    except (KeyError, IndexError, ValueError):
        return None
    return date.replace(tzinfo=datetime.UTC).timestamp() + lifetime


def substitute(value: JsonValue, sign: Signer, expires_in: int) -> JsonValue:
    """A copy of `value` with every placeholder in every string value signed."""
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda m: sign(m.group(1), expires_in), value)
    if isinstance(value, list):
        return [substitute(v, sign, expires_in) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, sign, expires_in) for k, v in value.items()}
    return value
