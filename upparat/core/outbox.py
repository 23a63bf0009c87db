"""The outbox of job updates: sent one at a time, in order, resent until answered.

Pure values and functions on them; when to send (the link, client tokens, timers) is the
machine's. Owns the supersede rule and which updates a shutdown or a cancellation keeps.
"""

from __future__ import annotations

import attrs

from upparat.core.model import ClientToken, JobId, JobStatus

MAX_TOKENS_KEPT = 4
"""Client tokens of one update remembered for matching late replies to earlier sends."""


@attrs.frozen(kw_only=True)
class Update:
    job_id: JobId
    status: JobStatus
    details: tuple[tuple[str, str], ...]

    @property
    def terminal(self) -> bool:
        return self.status is not JobStatus.IN_PROGRESS


@attrs.frozen(kw_only=True)
class Sent:
    """The head update was published; waiting for accepted / rejected (or UPDATE_RETRY)."""

    update: Update
    tokens: tuple[ClientToken, ...]
    timer: int
    attempt: int = 1


@attrs.frozen(kw_only=True)
class Throttled:
    """The head update was throttled; UPDATE_RETRY `timer` sends it again."""

    update: Update
    tokens: tuple[ClientToken, ...]
    timer: int
    attempt: int


@attrs.frozen(kw_only=True)
class Outbox:
    """Job updates, sent one at a time and in order, so the cloud never sees them reordered."""

    queue: tuple[Update, ...] = ()
    head: Sent | Throttled | None = None


def queued(outbox: Outbox, update: Update) -> Outbox:
    """`update` at the end of the queue; it replaces a progress report of the same job
    that was not sent yet (the newer report says more)."""
    queue = outbox.queue
    if (
        not update.terminal
        and queue
        and not queue[-1].terminal
        and queue[-1].job_id == update.job_id
    ):
        queue = queue[:-1]
    return attrs.evolve(outbox, queue=(*queue, update))


def next_update(outbox: Outbox) -> Update | None:
    """The update to send now: the first queued one, unless one waits for its answer."""
    if outbox.head is not None or not outbox.queue:
        return None
    return outbox.queue[0]


def sending(outbox: Outbox, token: ClientToken, timer: int) -> Outbox:
    """The first queued update was published with `token`; UPDATE_RETRY `timer` resends it."""
    update, rest = outbox.queue[0], outbox.queue[1:]
    return Outbox(queue=rest, head=Sent(update=update, tokens=(token,), timer=timer))


def resending(outbox: Outbox, head: Sent | Throttled, token: ClientToken, timer: int) -> Outbox:
    """The head was published again with a new `token`; replies to the last few sends
    still settle it."""
    tokens = (*head.tokens, token)[-MAX_TOKENS_KEPT:]
    sent = Sent(update=head.update, tokens=tokens, timer=timer, attempt=head.attempt)
    return attrs.evolve(outbox, head=sent)


def throttling(outbox: Outbox, head: Sent | Throttled, timer: int) -> Outbox:
    """The head was refused as throttled: UPDATE_RETRY `timer` sends it again."""
    retry = Throttled(update=head.update, tokens=head.tokens, timer=timer, attempt=head.attempt + 1)
    return attrs.evolve(outbox, head=retry)


def settled(outbox: Outbox) -> Outbox:
    """The head was answered (accepted, or rejected for good)."""
    return attrs.evolve(outbox, head=None)


def requeued(outbox: Outbox) -> Outbox:
    """The link went down: the head goes back to the queue, to be sent after reconnect."""
    head = outbox.head
    if head is None:
        return outbox
    return Outbox(queue=(head.update, *outbox.queue), head=None)


def answers_head(outbox: Outbox, job_id: JobId | None, token: ClientToken | None) -> bool:
    """Does a reply with `token` (about `job_id`, when it says) answer the head?"""
    head = outbox.head
    if head is None or token is None or token not in head.tokens:
        return False
    return job_id is None or job_id == head.update.job_id


def finals_only(outbox: Outbox) -> Outbox:
    """Shutdown: progress reports can go; final reports must reach the cloud if possible."""
    return attrs.evolve(outbox, queue=tuple(u for u in outbox.queue if u.terminal))


def without_progress_of(outbox: Outbox, job_id: JobId) -> Outbox:
    """The job ended in the cloud: its queued progress reports are not sent."""
    return attrs.evolve(
        outbox, queue=tuple(u for u in outbox.queue if u.terminal or u.job_id != job_id)
    )


def terminal_pending(outbox: Outbox) -> bool:
    """A final report is queued or waiting for its answer."""
    head = outbox.head
    return any(u.terminal for u in outbox.queue) or (head is not None and head.update.terminal)


def pending_for(outbox: Outbox, job_id: JobId) -> bool:
    """An update of `job_id` is queued or waiting for its answer."""
    head = outbox.head
    return any(u.job_id == job_id for u in outbox.queue) or (
        head is not None and head.update.job_id == job_id
    )
