"""Optional error reporting to Sentry (the `sentry` extra), with secrets scrubbed.

Owns the one sentry-sdk client of the process: set up, job failure events, flush.
Every event passes `before_send`, which strips URL query strings and pre-signed URL
signatures from every string: a pre-signed URL is a bearer credential.
"""

from __future__ import annotations

import enum
import logging
import re
from typing import TYPE_CHECKING, Final, cast

from upparat.core.model import JobId

if TYPE_CHECKING:
    from sentry_sdk.types import Event, Hint

__all__ = ["close_sentry", "flush_sentry", "init_sentry", "report_job_failure", "scrub_text"]

logger = logging.getLogger(__name__)

_REDACTED: Final = "<redacted>"

_URL_QUERY: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s?#'\"<>]*)\?[^\s#'\"<>]*")
"""A URL with a query string; group 1 is everything before the "?"."""

# Names of query parameters that carry (part of) a signature or a credential in
# pre-signed URLs: AWS SigV4 and SigV2, CloudFront, Google Cloud Storage, Azure SAS.
_SECRET_NAMES: Final = (
    r"X-Amz-[A-Za-z-]+|AWSAccessKeyId|Signature|Key-Pair-Id|Policy|Expires"
    r"|X-Goog-[A-Za-z-]+|GoogleAccessId|sig|token|access_token"
)
_SECRET_PARAM: Final = re.compile(rf"(?i)\b({_SECRET_NAMES})(=|%3D)[^\s&'\"<>]*")
"""`name=value` outside a URL (or URL-encoded inside another one)."""
_SECRET_ITEM: Final = re.compile(rf"(?i)(['\"](?:{_SECRET_NAMES})['\"]\s*:\s*)(['\"])[^'\"]*\2")
"""`'name': 'value'` as in a logged dict or JSON."""
_SECRET_KEY: Final = re.compile(rf"(?i)({_SECRET_NAMES})")
"""A mapping key whose value is secret whatever it looks like."""
_AWS_ACCESS_KEY: Final = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")

_state = {"active": False}


def scrub_text(text: str) -> str:
    """`text` without URL query strings, signature parameters or AWS access key ids."""
    text = _URL_QUERY.sub(rf"\1?{_REDACTED}", text)
    text = _SECRET_PARAM.sub(rf"\1\2{_REDACTED}", text)
    text = _SECRET_ITEM.sub(rf"\1\2{_REDACTED}\2", text)
    return _AWS_ACCESS_KEY.sub(_REDACTED, text)


def _scrub(value: object) -> object:
    match value:
        case str():
            return scrub_text(value)
        case dict():
            return {
                (scrub_text(k) if isinstance(k, str) else k): (
                    _REDACTED if isinstance(k, str) and _SECRET_KEY.fullmatch(k) else _scrub(v)
                )
                for k, v in value.items()
            }
        case list() | tuple():
            return [_scrub(v) for v in value]
        case _:
            return value


def _before_send(event: Event, hint: Hint) -> Event | None:
    # Walks the whole event: message, logentry, exception values, breadcrumbs, extra,
    # tags, contexts. Structure keys are plain words and come through unchanged.
    scrubbed = cast("Event", _scrub(event))
    logentry = scrubbed.get("logentry")
    if isinstance(logentry, dict):
        # The arguments of a log call are bare values ("%s" of a signature looks like
        # any word), so only the formatted, scrubbed message is sent.
        logentry.pop("params", None)
    return scrubbed


def init_sentry(dsn: str | None, *, thing_name: str, release: str) -> bool:
    """Start reporting to `dsn`; True when reporting is on.

    False, with a warning, when sentry-sdk is not installed (`pip install
    upparat[sentry]`); False without one when `dsn` is None. Events carry the tag
    `thing`. Local variables are never sent (they may hold URLs or key paths), nor is
    personal data (sentry-sdk's default).
    """
    if not dsn:
        return False
    try:
        import sentry_sdk
    except ImportError:
        logger.warning(
            "sentry_dsn is set but sentry-sdk is not installed (pip install 'upparat[sentry]');"
            " error reporting is off"
        )
        return False
    sentry_sdk.init(
        dsn=dsn,
        release=release,
        before_send=_before_send,
        include_local_variables=False,
        # Only the default integrations (logging, excepthook, threading, ...): no
        # patching of whatever other library happens to be importable.
        auto_enabling_integrations=False,
    )
    sentry_sdk.get_global_scope().set_tag("thing", thing_name)
    _state["active"] = True
    return True


def report_job_failure(job_id: JobId, state: str | enum.Enum, message: str) -> bool:
    """Send one error event for a failed job, tagged thing/job_id/state.

    `state` is where the job failed (a `Phase`, a `JobStatus` or a plain word).
    True when an event was handed to Sentry; False when reporting is off.
    """
    if not _state["active"]:
        return False
    import sentry_sdk

    state_text = str(state.value) if isinstance(state, enum.Enum) else state
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("job_id", job_id)
        scope.set_tag("state", state_text)
        scope.capture_message(message, level="error")
    return True


def flush_sentry(timeout: float = 2.0) -> None:
    """Wait up to `timeout` seconds for queued events to be sent (call before exit)."""
    if not _state["active"]:
        return
    import sentry_sdk

    sentry_sdk.flush(timeout=timeout)


def close_sentry(timeout: float = 2.0) -> None:
    """Flush, then stop reporting and forget the client, its tags and breadcrumbs."""
    if not _state["active"]:
        return
    import sentry_sdk

    _state["active"] = False
    sentry_sdk.get_client().close(timeout=timeout)
    global_scope = sentry_sdk.get_global_scope()
    global_scope.remove_tag("thing")
    global_scope.set_client(None)
    sentry_sdk.get_isolation_scope().clear_breadcrumbs()
