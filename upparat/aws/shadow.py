"""The device side of the reserved `$package` named shadow: topics, the report payload, replies.

Owns the topic names under `$aws/things/<thing>/shadow/name/$package/`, the rules a
reported package version must meet, the update payload (`state.reported.<package>` with
`version` and `attributes`) and the parsing of get/update accepted/rejected answers into
typed values (the core's events: `upparat.core.package` decides what to do with them).
Pure: no I/O, no clock, no logging; a bad reply is a `ShadowReplyIgnored`, never an
exception. The MQTT driver is its caller when `[service] package_name` is set.

References (AWS IoT developer guide):
  https://docs.aws.amazon.com/iot/latest/developerguide/device-shadow-mqtt.html
  https://docs.aws.amazon.com/iot/latest/developerguide/device-shadow-document.html
  https://docs.aws.amazon.com/iot/latest/developerguide/device-shadow-error-messages.html
  https://docs.aws.amazon.com/iot/latest/developerguide/preparing-to-use-software-package-catalog.html
  https://docs.aws.amazon.com/iot/latest/apireference/API_CreatePackageVersion.html (name rules)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import assert_never

import attrs

from upparat.aws.topics import is_thing_name
from upparat.core.commands import GetPackageShadow, UpdatePackageShadow
from upparat.core.events import (
    PackageShadowMissing,
    PackageShadowRead,
    PackageShadowUpdated,
    ShadowRejected,
)
from upparat.core.model import (
    ClientToken,
    ReportedPackage,
    ShadowOperation,
    ShadowRejectReason,
    ThingName,
)
from upparat.core.package import clean_attributes, needs_report

__all__ = [
    "PACKAGE_SHADOW",
    "PackageShadowMissing",
    "PackageShadowRead",
    "PackageShadowUpdated",
    "ReportedPackage",
    "ShadowOperation",
    "ShadowRejectReason",
    "ShadowRejected",
    "ShadowReply",
    "ShadowReplyIgnored",
    "Unreportable",
    "build",
    "get_request",
    "needs_report",
    "parse",
    "report",
    "reported_versions",
    "subscription_filters",
    "update_request",
]

PACKAGE_SHADOW = "$package"
MAX_PAYLOAD_BYTES = 128 * 1024
MAX_STATE_BYTES = 8 * 1024
"""The Device Shadow service keeps at most 8 KB of desired + reported state."""
MAX_CLIENT_TOKEN_BYTES = 64

# Software Package Catalog: packageName [a-zA-Z0-9-_.]{1,128}, versionName [a-zA-Z0-9-_.]{1,64}.
PACKAGE_NAME_RE = re.compile(r"[a-zA-Z0-9._-]{1,128}")
VERSION_NAME_RE = re.compile(r"[a-zA-Z0-9._-]{1,64}")
# The attributes' rules live in upparat.core.package (the core drops bad ones before it
# reports; `report` refuses them, for any other caller).

_CLIENT_TOKEN = re.compile(r"[\x21-\x7e]{1,64}")


# ---- topics --------------------------------------------------------------------------------


def prefix(thing: ThingName) -> str:
    """`$aws/things/<thing>/shadow/name/$package`, without a trailing slash."""
    return f"$aws/things/{thing}/shadow/name/{PACKAGE_SHADOW}"


def get_topic(thing: ThingName) -> str:
    return prefix(thing) + "/get"


def update_topic(thing: ThingName) -> str:
    return prefix(thing) + "/update"


def subscription_filters(thing: ThingName) -> tuple[str, ...]:
    """The four answer topics the device needs (not update/documents or delta: the device
    reports, it is not told what to run through this shadow). Four filters fit one SUBSCRIBE."""
    p = prefix(thing)
    return (
        p + "/get/accepted",
        p + "/get/rejected",
        p + "/update/accepted",
        p + "/update/rejected",
    )


# ---- values --------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Unreportable:
    """A version or attribute the shadow cannot carry: log it once, report nothing."""

    reason: str


@attrs.frozen(kw_only=True)
class ShadowReplyIgnored:
    """A message on our answer topics that is not a usable answer (says why)."""

    topic: str
    reason: str


ShadowReply = (
    PackageShadowRead
    | PackageShadowUpdated
    | PackageShadowMissing
    | ShadowRejected
    | ShadowReplyIgnored
)


# ---- outbound ----------------------------------------------------------------------------


def report(
    version: str, attributes: Mapping[str, str] | Iterable[tuple[str, str]] = ()
) -> ReportedPackage | Unreportable:
    """The running version as the shadow will carry it, checked against the catalog's rules."""
    if not VERSION_NAME_RE.fullmatch(version):
        return Unreportable(
            reason=f"version {version[:80]!r} cannot be a Software Package Catalog version:"
            " it must be 1-64 of a-z A-Z 0-9 . _ - (let the version hook print it that way)"
        )
    pairs = attributes.items() if isinstance(attributes, Mapping) else attributes
    kept, problems = clean_attributes(pairs)
    if problems:
        return Unreportable(reason=problems[0])
    return ReportedPackage(version=version, attributes=kept)


def get_request(thing: ThingName, client_token: ClientToken) -> tuple[str, bytes]:
    """Topic and payload of a get of the `$package` shadow."""
    return get_topic(thing), _dumps({"clientToken": _token(client_token)})


def update_request(
    thing: ThingName,
    package: str,
    running: ReportedPackage,
    client_token: ClientToken,
    *,
    held: ReportedPackage | None = None,
    expected_version: int | None = None,
) -> tuple[str, bytes] | Unreportable:
    """Topic and payload that make `state.reported.<package>` say `running`.

    `held` is what the shadow held before (from a get): its attributes that `running`
    no longer has are sent as null, since an update merges and null is how a key goes
    (device-shadow-document). `expected_version` makes the service refuse the update
    with a 409 if the shadow changed since that version was read.
    Raises ValueError only for a thing name or client token no correct caller produces.
    """
    if not is_thing_name(thing):
        raise ValueError(f"thing name {thing!r} is not [a-zA-Z0-9:_-]{{1,128}}")
    if not PACKAGE_NAME_RE.fullmatch(package):
        return Unreportable(
            reason=f"package name {package[:80]!r} must be 1-128 of a-z A-Z 0-9 . _ -"
        )
    attributes: dict[str, str | None] = dict(running.attributes)
    if held is not None:
        for key, _ in held.attributes:
            attributes.setdefault(key, None)
    entry: dict[str, object] = {"version": running.version, "attributes": attributes}
    body: dict[str, object] = {
        "state": {"reported": {package: entry}},
        "clientToken": _token(client_token),
    }
    if expected_version is not None:
        if expected_version < 0:
            raise ValueError(f"expected_version must be >= 0, got {expected_version}")
        body["version"] = expected_version
    payload = _dumps(body)
    state_size = len(_dumps({"reported": {package: entry}}))
    if state_size > MAX_STATE_BYTES:
        return Unreportable(
            reason=f"the report would be {state_size} bytes of shadow state, the limit is"
            f" {MAX_STATE_BYTES}: report fewer or shorter attributes"
        )
    return update_topic(thing), payload


def build(
    thing: ThingName, package: str, command: GetPackageShadow | UpdatePackageShadow
) -> tuple[str, bytes] | Unreportable:
    """Topic and payload of a shadow command of the core (the MQTT driver publishes them)."""
    match command:
        case GetPackageShadow(client_token=token):
            return get_request(thing, token)
        case UpdatePackageShadow():
            checked = report(command.running.version, command.running.attributes)
            if isinstance(checked, Unreportable):
                return checked
            return update_request(
                thing,
                package,
                checked,
                command.client_token,
                held=command.held,
                expected_version=command.expected_version,
            )
        case _:
            assert_never(command)


# ---- inbound -----------------------------------------------------------------------------


class _Bad(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse(thing: ThingName, package: str, topic: str, payload: bytes) -> ShadowReply | None:
    """A message on the `$package` answer topics as a typed reply; None when `topic` is not one
    (so a caller can hand it to the jobs parser instead)."""
    p = prefix(thing)
    if not topic.startswith(p + "/"):
        return None
    suffix = topic[len(p) + 1 :]
    kinds = {
        "get/accepted": (ShadowOperation.GET, True),
        "get/rejected": (ShadowOperation.GET, False),
        "update/accepted": (ShadowOperation.UPDATE, True),
        "update/rejected": (ShadowOperation.UPDATE, False),
    }
    kind = kinds.get(suffix)
    if kind is None:
        return ShadowReplyIgnored(topic=topic, reason=f"not an answer topic ({suffix})")
    operation, accepted = kind
    try:
        body = _load(payload)
        token = _reply_token(body)
        if not accepted:
            return _rejected(body, token, operation)
        version = body.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise _Bad("version must be a non-negative integer")
        timestamp = body.get("timestamp")
        stamp = (
            timestamp if isinstance(timestamp, int) and not isinstance(timestamp, bool) else None
        )
        reported = _reported(body, package)
    except _Bad as bad:
        return ShadowReplyIgnored(topic=topic, reason=bad.reason)
    if operation is ShadowOperation.GET:
        return PackageShadowRead(
            client_token=token, shadow_version=version, reported=reported, timestamp=stamp
        )
    return PackageShadowUpdated(
        client_token=token, shadow_version=version, reported=reported, timestamp=stamp
    )


def reported_versions(document: object) -> tuple[tuple[str, str], ...]:
    """Every `state.reported.<package>.version` of a `$package` shadow document (as
    GetThingShadow or get/accepted return it), sorted by package; entries without a
    string version are left out."""
    state = document.get("state") if isinstance(document, dict) else None
    reported = state.get("reported") if isinstance(state, dict) else None
    if not isinstance(reported, dict):
        return ()
    found = [
        (name, entry["version"])
        for name, entry in reported.items()
        if isinstance(entry, dict) and isinstance(entry.get("version"), str)
    ]
    return tuple(sorted(found))


def _rejected(
    body: dict[str, object], token: ClientToken | None, operation: ShadowOperation
) -> PackageShadowMissing | ShadowRejected:
    code = body.get("code")
    if not isinstance(code, int) or isinstance(code, bool):
        raise _Bad("a rejection needs an integer code")
    message = body.get("message")
    text = message if isinstance(message, str) else ""
    try:
        reason = ShadowRejectReason(code)
    except ValueError:
        reason = ShadowRejectReason.UNKNOWN
    if operation is ShadowOperation.GET and reason is ShadowRejectReason.NOT_FOUND:
        return PackageShadowMissing(client_token=token)
    return ShadowRejected(
        client_token=token,
        operation=operation,
        reason=reason,
        code=code,
        message=text[:1024],
    )


def _reported(body: dict[str, object], package: str) -> ReportedPackage | None:
    """`state.reported.<package>`, or None when the shadow holds nothing usable for it."""
    state = body.get("state")
    if state is None:
        return None
    if not isinstance(state, dict):
        raise _Bad("state must be an object")
    reported = state.get("reported")
    if not isinstance(reported, dict):
        return None  # no reported section (or null in an update answer: cleared)
    entry = reported.get(package)
    if not isinstance(entry, dict):
        return None
    version = entry.get("version")
    if not isinstance(version, str):
        return None  # something else wrote it: report ours over it
    raw = entry.get("attributes")
    attributes = tuple(
        sorted(
            (k, v) for k, v in (raw.items() if isinstance(raw, dict) else ()) if isinstance(v, str)
        )
    )
    return ReportedPackage(version=version, attributes=attributes)


def _load(payload: bytes) -> dict[str, object]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise _Bad(f"payload of {len(payload)} bytes is over the broker's limit")
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        raise _Bad("payload is not JSON") from None
    if not isinstance(value, dict):
        raise _Bad("payload is not a JSON object")
    return value


def _reply_token(body: dict[str, object]) -> ClientToken | None:
    token = body.get("clientToken")
    return ClientToken(token) if isinstance(token, str) and _CLIENT_TOKEN.fullmatch(token) else None


def _token(token: ClientToken) -> str:
    if not _CLIENT_TOKEN.fullmatch(token):
        raise ValueError(f"client token {token!r} is not 1-64 printable ASCII characters")
    return token


def _dumps(body: Mapping[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
