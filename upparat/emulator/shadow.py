"""Every rule of the emulated AWS IoT Device Shadow service, for named shadows such as `$package`.

Owns the named shadows of every thing (state.desired/reported, metadata timestamps,
version numbers) and what get, update and delete requests do to them, and renders the
exact AWS answers as `Publish` values. It does no I/O and reads no clock (callers pass
`now`, epoch seconds); a bad request becomes a rejected answer, never an exception.

Topics and payloads follow the AWS IoT developer guide:
  https://docs.aws.amazon.com/iot/latest/developerguide/device-shadow-mqtt.html (topics)
  https://docs.aws.amazon.com/iot/latest/developerguide/device-shadow-document.html (documents,
    delta, versioning, client tokens, empty properties)
  https://docs.aws.amazon.com/iot/latest/developerguide/device-shadow-error-messages.html (codes)
  https://docs.aws.amazon.com/iot/latest/developerguide/diagnosing-shadows.html (8 KB of state)
  https://docs.aws.amazon.com/iot/latest/developerguide/preparing-to-use-software-package-catalog.html
    (the reserved named shadow `$package`: state.reported.<package>.version and .attributes)
"""

from __future__ import annotations

import copy
import enum
import json
import re
from collections.abc import Mapping
from typing import TypeAlias, assert_never

import attrs

from upparat.emulator.model import Publish
from upparat.emulator.wire import MAX_PAYLOAD_BYTES, THING_NAME_RE, JsonObject, JsonValue

PACKAGE_SHADOW = "$package"
# Named shadows: [a-zA-Z0-9:_-]{1,64}; `$package` is the one reserved name with a `$`.
SHADOW_NAME_RE = re.compile(r"[a-zA-Z0-9:_-]{1,64}|\$package")
MAX_STATE_BYTES = 8 * 1024  # desired + reported; metadata does not count
MAX_DEPTH = 6  # levels of nesting in desired or reported
MAX_CLIENT_TOKEN_BYTES = 64

# Exact filters, not `.../#`: the emulator must not hear its own answers.
# What a test may inject: the service's own trouble, which a device should retry.
FAULT_CODES = {429: "Too Many Requests", 500: "Internal service failure"}

SHADOW_FILTERS = tuple(f"$aws/things/+/shadow/name/+/{op}" for op in ("get", "update", "delete"))

_TOPIC = re.compile(r"\$aws/things/([^/]+)/shadow/name/([^/]+)/(get|update|delete)")

ShadowKey: TypeAlias = tuple[str, str]  # (thing, shadow name)


class ShadowOp(enum.Enum):
    GET = "get"
    UPDATE = "update"
    DELETE = "delete"


@attrs.frozen(kw_only=True)
class ShadowRequest:
    thing: str
    name: str
    op: ShadowOp
    topic: str


@attrs.frozen(kw_only=True)
class ShadowResult:
    """What one request came to: the HTTP-style code (None: accepted) and what was published."""

    request: ShadowRequest
    code: int | None
    message: str | None
    publishes: tuple[Publish, ...]
    version: int | None  # the shadow's version after the request (None: there is none)
    client_token: str | None = None


@attrs.define(kw_only=True)
class Shadow:
    """One shadow document. Sections are absent from answers while empty."""

    desired: JsonObject = attrs.field(factory=dict)
    reported: JsonObject = attrs.field(factory=dict)
    meta_desired: JsonObject = attrs.field(factory=dict)
    meta_reported: JsonObject = attrs.field(factory=dict)
    version: int = 0
    exists: bool = True  # False after delete: the version number is kept for the next create

    def state(self) -> JsonObject:
        out: JsonObject = {}
        if self.desired:
            out["desired"] = copy.deepcopy(self.desired)
        if self.reported:
            out["reported"] = copy.deepcopy(self.reported)
        return out

    def metadata(self) -> JsonObject:
        out: JsonObject = {}
        if self.meta_desired:
            out["desired"] = copy.deepcopy(self.meta_desired)
        if self.meta_reported:
            out["reported"] = copy.deepcopy(self.meta_reported)
        return out

    def delta(self) -> JsonObject:
        return _delta(self.desired, self.reported)

    def document(self) -> JsonObject:
        """state, metadata, version: as in get/accepted and update/documents."""
        return {"state": self.state(), "metadata": self.metadata(), "version": self.version}

    def to_json(self) -> JsonObject:
        return {
            "desired": self.desired,
            "reported": self.reported,
            "metaDesired": self.meta_desired,
            "metaReported": self.meta_reported,
            "version": self.version,
            "exists": self.exists,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, JsonValue]) -> Shadow:
        version = data["version"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise TypeError(f"shadow version must be an integer, got {version!r}")
        return cls(
            desired=_obj(data.get("desired")),
            reported=_obj(data.get("reported")),
            meta_desired=_obj(data.get("metaDesired")),
            meta_reported=_obj(data.get("metaReported")),
            version=version,
            exists=bool(data.get("exists", True)),
        )


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_topic(topic: str) -> ShadowRequest | None:
    """A request topic of a named shadow, or None (not one, or names no valid thing/shadow)."""
    found = _TOPIC.fullmatch(topic)
    if found is None:
        return None
    thing, name, op = found.groups()
    if not THING_NAME_RE.fullmatch(thing) or not SHADOW_NAME_RE.fullmatch(name):
        return None
    return ShadowRequest(thing=thing, name=name, op=ShadowOp(op), topic=topic)


@attrs.define
class ShadowStore:
    """Every thing's named shadows."""

    shadows: dict[ShadowKey, Shadow] = attrs.field(factory=dict)

    def get(self, thing: str, name: str) -> Shadow | None:
        found = self.shadows.get((thing, name))
        return found if found is not None and found.exists else None

    def handle(self, request: ShadowRequest, payload: bytes, now: float) -> ShadowResult:
        token: str | None = None
        try:
            body = _body(payload)
            token = _client_token(body)
            match request.op:
                case ShadowOp.GET:
                    return self._get(request, token, now)
                case ShadowOp.UPDATE:
                    return self._update(request, body, token, now)
                case ShadowOp.DELETE:
                    return self._delete(request, token, now)
                case _:
                    assert_never(request.op)
        except _Refused as refused:
            return _reject(request, refused.code, refused.message, token, now)

    # ---- requests ----------------------------------------------------------------------

    def _get(self, request: ShadowRequest, token: str | None, now: float) -> ShadowResult:
        found = self._existing(request)
        body = found.document()
        delta = found.delta()
        if delta:
            state = body["state"]
            assert isinstance(state, dict)
            state["delta"] = delta
        return _accept(request, "get/accepted", body, found.version, token, now)

    def _delete(self, request: ShadowRequest, token: str | None, now: float) -> ShadowResult:
        found = self._existing(request)
        # AWS keeps counting versions after a delete (device-shadow-document, "Versioning").
        self.shadows[(request.thing, request.name)] = Shadow(version=found.version, exists=False)
        return _accept(
            request, "delete/accepted", {"version": found.version}, found.version, token, now
        )

    def _update(
        self, request: ShadowRequest, body: JsonObject, token: str | None, now: float
    ) -> ShadowResult:
        if "state" not in body:
            raise _Refused(400, "Missing required node: state")
        state = body["state"]
        if not isinstance(state, dict):
            raise _Refused(400, "State node must be an object")
        for section in state:
            if section not in ("desired", "reported"):
                raise _Refused(400, "State contains an invalid node")
        sections: dict[str, JsonObject | None] = {}
        for section, label in (("desired", "Desired"), ("reported", "Reported")):
            if section not in state:
                continue
            value = state[section]
            if value is not None and not isinstance(value, dict):
                raise _Refused(400, f"{label} node must be an object")
            if value is not None and _depth(value) > MAX_DEPTH:
                raise _Refused(
                    400, f"JSON contains too many levels of nesting; maximum is {MAX_DEPTH}"
                )
            sections[section] = value
        version = body.get("version")
        if version is not None and (
            not isinstance(version, int) or isinstance(version, bool) or version < 0
        ):
            raise _Refused(400, "Invalid version")

        key = (request.thing, request.name)
        old = self.shadows.get(key)
        existed = old is not None and old.exists
        current = old.version if old is not None else 0
        if version is not None and version != current:
            raise _Refused(409, "Version conflict")

        new = copy.deepcopy(old) if old is not None and old.exists else Shadow(version=current)
        for section, patch in sections.items():
            target = new.desired if section == "desired" else new.reported
            meta = new.meta_desired if section == "desired" else new.meta_reported
            if patch is None:  # "desired": null clears the section
                target.clear()
                meta.clear()
            else:
                _merge(target, meta, patch, int(now))
        size = len(json.dumps(new.state(), separators=(",", ":")).encode())
        if size > MAX_STATE_BYTES:
            raise _Refused(413, "The payload exceeds the maximum size allowed")
        new.version = current + 1
        new.exists = True
        self.shadows[key] = new

        accepted: JsonObject = {
            "state": {s: copy.deepcopy(p) for s, p in sections.items()},
            "metadata": {s: _meta_of(p, int(now)) for s, p in sections.items()},
            "version": new.version,
        }
        result = _accept(request, "update/accepted", accepted, new.version, token, now)
        publishes = list(result.publishes)
        delta = new.delta()
        if "desired" in sections and delta:
            body_delta: JsonObject = {
                "version": new.version,
                "timestamp": int(now),
                "state": delta,
                "metadata": _pick(new.meta_desired, delta),
            }
            if token is not None:
                body_delta["clientToken"] = token
            publishes.append(_publish(f"{_prefix(request)}/update/delta", body_delta))
        documents: JsonObject = {}
        if existed and old is not None:
            documents["previous"] = old.document()
        documents["current"] = new.document()
        documents["timestamp"] = int(now)
        if token is not None:
            documents["clientToken"] = token
        publishes.append(_publish(f"{_prefix(request)}/update/documents", documents))
        return attrs.evolve(result, publishes=tuple(publishes))

    def _existing(self, request: ShadowRequest) -> Shadow:
        found = self.get(request.thing, request.name)
        if found is None:
            raise _Refused(404, f"No shadow exists with name: {request.name}")
        return found

    # ---- persistence -------------------------------------------------------------------

    def to_json(self) -> list[JsonValue]:
        return [
            {"thing": thing, "name": name, "shadow": shadow.to_json()}
            for (thing, name), shadow in sorted(self.shadows.items())
        ]

    def load_json(self, data: JsonValue) -> None:
        if data is None:
            return
        if not isinstance(data, list):
            raise TypeError("shadows must be a list")
        shadows: dict[ShadowKey, Shadow] = {}
        for raw in data:
            item = _obj(raw)
            thing, name = item.get("thing"), item.get("name")
            if not isinstance(thing, str) or not isinstance(name, str):
                raise TypeError(f"a shadow needs a thing and a name, got {item!r}")
            shadows[(thing, name)] = Shadow.from_json(_obj(item.get("shadow")))
        self.shadows = shadows


# ---- helpers -----------------------------------------------------------------------------


def _body(payload: bytes) -> JsonObject:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise _Refused(413, "The payload exceeds the maximum size allowed")
    if not payload.strip():
        return {}
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused(
            415, "Unsupported documented encoding; supported encoding is UTF-8"
        ) from None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise _Refused(400, "Invalid JSON") from None
    if not isinstance(value, dict):
        raise _Refused(400, "Invalid JSON")
    return value


def _client_token(body: JsonObject) -> str | None:
    token = body.get("clientToken")
    if token is None:
        return None
    if not isinstance(token, str) or not token or len(token.encode()) > MAX_CLIENT_TOKEN_BYTES:
        raise _Refused(400, "Invalid clientToken")
    return token


def _prefix(request: ShadowRequest) -> str:
    return f"$aws/things/{request.thing}/shadow/name/{request.name}"


def _publish(topic: str, body: JsonObject) -> Publish:
    return Publish(topic=topic, body=json.dumps(body, separators=(",", ":")))


def _accept(
    request: ShadowRequest,
    suffix: str,
    body: JsonObject,
    version: int,
    token: str | None,
    now: float,
) -> ShadowResult:
    body["timestamp"] = int(now)
    if token is not None:
        body["clientToken"] = token
    return ShadowResult(
        request=request,
        code=None,
        message=None,
        publishes=(_publish(f"{_prefix(request)}/{suffix}", body),),
        version=version,
        client_token=token,
    )


def reject(
    request: ShadowRequest, payload: bytes, code: int, message: str, now: float
) -> ShadowResult:
    """Answer `request` on its /rejected topic without touching any shadow (injected faults)."""
    try:
        token = _client_token(_body(payload))
    except _Refused:
        token = None
    return _reject(request, code, message, token, now)


def _reject(
    request: ShadowRequest, code: int, message: str, token: str | None, now: float
) -> ShadowResult:
    # Error response document: {code, message, timestamp, clientToken?}.
    body: JsonObject = {"code": code, "message": message, "timestamp": int(now)}
    if token is not None:
        body["clientToken"] = token
    return ShadowResult(
        request=request,
        code=code,
        message=message,
        publishes=(_publish(f"{_prefix(request)}/{request.op.value}/rejected", body),),
        version=None,
        client_token=token,
    )


def _merge(target: JsonObject, meta: JsonObject, patch: JsonObject, now: int) -> None:
    """AWS update semantics: objects merge, null deletes, anything else (arrays too) replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
            meta.pop(key, None)
        elif isinstance(value, dict):
            sub = target.get(key)
            sub_meta = meta.get(key)
            if not isinstance(sub, dict):
                sub = {}
                target[key] = sub
            if not isinstance(sub_meta, dict):
                sub_meta = {}
                meta[key] = sub_meta
            _merge(sub, sub_meta, value, now)
            if not sub and value:  # every key deleted: the node goes too
                del target[key]
                del meta[key]
        else:
            target[key] = copy.deepcopy(value)
            meta[key] = _meta_of(value, now)


def _meta_of(value: JsonValue, now: int) -> JsonValue:
    """Metadata mirrors the state: a timestamp per leaf (and per array element)."""
    if isinstance(value, dict):
        return {k: _meta_of(v, now) for k, v in value.items()}
    if isinstance(value, list):
        return [_meta_of(v, now) for v in value]
    return {"timestamp": now}


def _delta(desired: JsonObject, reported: JsonObject) -> JsonObject:
    """Desired state that reported does not match (objects compared key by key)."""
    out: JsonObject = {}
    for key, want in desired.items():
        have = reported.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = _delta(want, have)
            if sub:
                out[key] = sub
        elif want != have:
            out[key] = copy.deepcopy(want)
    return out


def _pick(meta: JsonObject, shape: JsonObject) -> JsonObject:
    out: JsonObject = {}
    for key, value in shape.items():
        found = meta.get(key)
        if isinstance(value, dict) and isinstance(found, dict):
            out[key] = _pick(found, value)
        elif found is not None:
            out[key] = copy.deepcopy(found)
    return out


def _depth(value: JsonValue) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max((_depth(v) for v in value), default=0)
    return 0


def _obj(value: JsonValue) -> JsonObject:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {value!r}")
    return value
