"""The daemon's side of the hook contract without gRPC or protobuf: the endpoint's gRPC
target, hooks.proto's text limits, and a GetInfo answer turned into `HookServerInfo` /
`HookInfoFailed` (with its log lines).

Imports neither grpc nor protobuf: the daemon loads this module (the hook worker's ledger
cleans the text of what it answers for a lost call) and never those (issue 16).
"""

from __future__ import annotations

import logging
import re
import unicodedata

import attrs

from upparat.core.events import HookInfoFailed, HookServerInfo
from upparat.core.model import HookKind

log = logging.getLogger("upparat.hooks")

INFO_TIMEOUT = 5.0
"""Seconds one GetInfo may take."""
MAX_LINE_CHARS = 1024
"""HookResult.message and InstallProgress.line are cut to this many characters."""
MAX_DETAIL_BYTES = 16 * 1024
"""HookResult.detail is cut to this many UTF-8 bytes."""
MAX_REASON_CHARS = 64

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_NOT_REASON = re.compile(r"[^A-Z0-9_]+")


def channel_target(endpoint: str) -> str:
    """The gRPC target of an endpoint: `unix:///abs` and `unix:/abs` become `unix:///abs`;
    `host:port` (and any other gRPC target) stays as it is."""
    endpoint = endpoint.strip()
    if not endpoint:
        raise ValueError("hook server endpoint is empty")
    if endpoint.startswith("unix:"):
        path = endpoint.removeprefix("unix:")
        if path.startswith("//"):
            path = path[2:]
            if not path.startswith("/"):
                raise ValueError(f"unix endpoint must be unix:///absolute/path, got {endpoint!r}")
        if not path.startswith("/"):
            return f"unix:{path}"  # relative to the working directory, as gRPC reads it
        return f"unix://{'/' + path.lstrip('/')}"
    if endpoint.startswith("/"):
        return f"unix://{endpoint}"
    return endpoint


def clean_line(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """One printable line: escape sequences and control/format characters removed."""
    text = _ANSI_ESCAPE.sub("", text)
    text = "".join(
        " " if ch in "\t\n\r" else ch for ch in text if ch in "\t\n\r" or not _invisible(ch)
    )
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clean_detail(text: str, limit: int = MAX_DETAIL_BYTES) -> str:
    """Multi-line text (newlines and tabs kept), cut to `limit` UTF-8 bytes."""
    text = _ANSI_ESCAPE.sub("", text)
    text = "".join(ch for ch in text if ch in "\t\n" or not _invisible(ch)).strip()
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "…"


def clean_reason(text: str) -> str:
    """UPPER_SNAKE_CASE, as hooks.proto asks of HookResult.reason."""
    return _NOT_REASON.sub("_", text.upper()).strip("_")[:MAX_REASON_CHARS]


def _invisible(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co")


# --- GetInfo ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class InfoReply:
    """A GetInfoResponse, as sent (hooks newer than this daemon already left out)."""

    server_name: str
    server_version: str
    api_versions: tuple[str, ...]
    hooks: frozenset[HookKind]


@attrs.frozen(kw_only=True)
class InfoError:
    """GetInfo ended with a gRPC status other than OK."""

    code: str
    """The grpc.StatusCode's name, e.g. UNAVAILABLE."""
    details: str


def info_event(answer: InfoReply | InfoError, target: str) -> HookServerInfo | HookInfoFailed:
    """The core's event for one GetInfo answer; logs what an operator needs to see."""
    match answer:
        case InfoError(code=code, details=details):
            log.debug("GetInfo at %s failed: %s: %s", target, code, details)
            return HookInfoFailed(
                detail=clean_line(f"{code}: {details}", 256),
                unimplemented=code == "UNIMPLEMENTED",
            )
        case InfoReply():
            info = HookServerInfo(
                hooks=answer.hooks,
                server_name=clean_line(answer.server_name, 128),
                server_version=clean_line(answer.server_version, 128),
            )
            log.info(
                "hook server %s %s at %s: hooks %s",
                info.server_name or "(unnamed)",
                info.server_version or "(no version)",
                target,
                ", ".join(sorted(h.value for h in answer.hooks)) or "none",
            )
            if "v1" not in answer.api_versions:
                log.warning(
                    "hook server lists api versions %s, not v1",
                    ", ".join(answer.api_versions) or "none",
                )
            return info
