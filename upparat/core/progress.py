"""The throttle of IN_PROGRESS progress reports (download and install progress).

At most one report per `progress_interval`, none for less than 1 % more; a report held
back goes out when PROGRESS_FLUSH fires. Pure: the machine owns the timer and the outbox.
"""

from __future__ import annotations

import enum

import attrs


@attrs.frozen(kw_only=True)
class Deferred:
    """A progress report held back by the throttle until PROGRESS_FLUSH `timer` fires."""

    details: tuple[tuple[str, str], ...]
    percent: int | None
    timer: int


@attrs.frozen(kw_only=True)
class Reporter:
    """Throttle of IN_PROGRESS progress reports (phase changes bypass it and reset it)."""

    last_sent_at: float | None = None
    last_percent: int | None = None
    deferred: Deferred | None = None


class Verdict(enum.Enum):
    SEND = "send"
    """Report it now."""
    HOLD = "hold"
    """Keep it (the latest only) until PROGRESS_FLUSH."""
    DROP = "drop"
    """Less than 1 % more than the last report: not worth a message."""


def phase_reported(now: float) -> Reporter:
    """A phase change was reported at `now`: the throttle starts again."""
    return Reporter(last_sent_at=now)


def judge(reporter: Reporter, percent: int | None, now: float, interval: float) -> Verdict:
    last = reporter.last_percent
    if percent is not None and last is not None and percent - last < 1:
        return Verdict.DROP
    sent_at = reporter.last_sent_at
    if sent_at is None or now - sent_at >= interval:
        return Verdict.SEND
    return Verdict.HOLD


def sent(reporter: Reporter, percent: int | None, now: float) -> Reporter:
    """A progress report (at `percent`, if known) was sent at `now`."""
    last = reporter.last_percent if percent is None else percent
    return Reporter(last_sent_at=now, last_percent=last)


def flush_delay(reporter: Reporter, now: float, interval: float) -> float:
    """How long until a held report may go (PROGRESS_FLUSH)."""
    sent_at = now if reporter.last_sent_at is None else reporter.last_sent_at
    return max(0.0, sent_at + interval - now)


def held(
    reporter: Reporter, details: tuple[tuple[str, str], ...], percent: int | None, timer: int
) -> Reporter:
    """Hold `details` back; `timer` is the PROGRESS_FLUSH of the first report held."""
    deferred = reporter.deferred
    if deferred is None:
        deferred = Deferred(details=details, percent=percent, timer=timer)
    else:
        deferred = attrs.evolve(deferred, details=details, percent=percent)
    return attrs.evolve(reporter, deferred=deferred)
