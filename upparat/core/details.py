"""statusDetails as the core reports them: 1.12's `state` and `message`, plus `progress`,
`bytes` and a hook's `reason` where known. Pure; the AWS edge sanitises further.
"""

from __future__ import annotations

from upparat.core.model import ReportedState

MAX_DETAIL_CHARS = 1024
"""AWS limit of one statusDetails value; the edge counts UTF-16 units and trims further."""

Details = tuple[tuple[str, str], ...]
"""Sorted (key, value) pairs."""


def status_details(
    reported: ReportedState,
    message: str,
    *,
    progress: int | None = None,
    bytes_done: int | None = None,
    reason: str = "",
) -> Details:
    """statusDetails as 1.12 wrote them (`state`, `message`) plus what we know more."""
    pairs = {"state": reported.value, "message": clip(message) or "none"}
    if progress is not None:
        pairs["progress"] = str(progress)
    if bytes_done is not None:
        pairs["bytes"] = str(bytes_done)
    if reason:
        pairs["reason"] = clip(reason)
    return tuple(sorted(pairs.items()))


def clip(text: str) -> str:
    """One value: stripped, at most MAX_DETAIL_CHARS characters (a cut one ends in …)."""
    text = text.strip()
    if len(text) <= MAX_DETAIL_CHARS:
        return text
    return text[: MAX_DETAIL_CHARS - 1] + "…"
