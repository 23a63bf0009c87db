"""AWS job retries: a new executionNumber is a new attempt, never the old one resumed.

AWS IoT retries a failed or timed-out execution (the job's retry config) as a new
execution of the same job id with the next `executionNumber`. A journal written for
another execution of that job says nothing about the retry: it is dropped (with its
partial file) and the retry starts from the version check with fresh counters.
"""

from __future__ import annotations

import attrs

from tests.core.playbook import JOB, Playbook, execution, like, summary
from upparat.core import machine
from upparat.core.commands import CallHook, DiscardDownload, Persist
from upparat.core.events import HookSuccess
from upparat.core.model import HookKind, JobStatus, JournalRecord, Phase

IN_PROGRESS = JobStatus.IN_PROGRESS
FIRST = JournalRecord(
    job_id=JOB, phase=Phase.RESTARTING, restart_count=2, previous_version="1.0", execution_number=1
)


def test_a_listed_retry_drops_the_journal_of_the_failed_attempt() -> None:
    p = Playbook()
    p.boot(FIRST)

    out = p.list_jobs(queued=[attrs.evolve(summary(), execution_number=2)])

    assert Persist(record=None) in out
    assert DiscardDownload(job_id=JOB) in out
    assert any("journal is of execution 1" in log.message for log in p.logs), p.logs
    out = p.describe(attrs.evolve(execution(), execution_number=2))
    # From the start: the version check of a new attempt, journaled with its number.
    assert (
        Persist(record=JournalRecord(job_id=JOB, phase=Phase.CHECKING_VERSION, execution_number=2))
        in out
    )
    assert like(CallHook, hook=HookKind.VERSION) in out
    stage = p.stage
    assert isinstance(stage, machine.CheckingVersion)
    assert not stage.after_install


def test_a_described_retry_drops_a_journal_the_list_did_not_number() -> None:
    # The list said nothing about numbers (kept, as before numbers existed); the
    # description of execution 2 shows the journal is of another attempt.
    p = Playbook()
    p.boot(attrs.evolve(FIRST, phase=Phase.INSTALLING))
    assert Persist(record=None) not in p.list_jobs(queued=[summary()])

    out = p.describe(attrs.evolve(execution(), execution_number=2))

    assert out[:2] == [Persist(record=None), DiscardDownload(job_id=JOB)]
    assert any("execution 2 is a retry" in log.message for log in p.logs), p.logs
    stage = p.stage
    assert isinstance(stage, machine.CheckingVersion)
    # Not an interrupted install of this attempt: no "after_install" verification.
    assert not stage.after_install


def test_a_retry_that_reached_reboot_start_counts_its_own_boots() -> None:
    p = Playbook()
    p.boot(FIRST)
    p.list_jobs(in_progress=[attrs.evolve(summary(), execution_number=2)])
    p.describe(
        attrs.evolve(execution(status=IN_PROGRESS, state="reboot_start"), execution_number=2)
    )

    verifying = p.last(Persist).record
    # The first attempt's two restarts do not count against the retry's boot-loop limit,
    # and its previous version is unknown to this attempt.
    assert verifying == JournalRecord(
        job_id=JOB, phase=Phase.VERIFYING, restart_count=1, execution_number=2
    )


def test_the_same_execution_keeps_its_journal() -> None:
    p = Playbook()
    p.boot(FIRST)
    out = p.list_jobs(in_progress=[attrs.evolve(summary(), execution_number=1)])
    assert Persist(record=None) not in out

    p.describe(
        attrs.evolve(execution(status=IN_PROGRESS, state="reboot_start"), execution_number=1)
    )

    assert p.last(Persist).record == attrs.evolve(FIRST, phase=Phase.VERIFYING, restart_count=3)


def test_a_journal_without_a_number_is_taken_for_the_listed_attempt() -> None:
    # Written by an older upparat: nothing says it is of another attempt.
    p = Playbook()
    p.boot(attrs.evolve(FIRST, execution_number=None))
    p.list_jobs(in_progress=[attrs.evolve(summary(), execution_number=2)])
    p.describe(
        attrs.evolve(execution(status=IN_PROGRESS, state="reboot_start"), execution_number=2)
    )

    assert p.last(Persist).record == JournalRecord(
        job_id=JOB,
        phase=Phase.VERIFYING,
        restart_count=3,
        previous_version="1.0",
        execution_number=2,
    )


def test_every_phase_is_journaled_with_the_execution_number() -> None:
    p = Playbook()
    p.take(attrs.evolve(execution(), execution_number=4))
    p.answer(HookSuccess(value="1.0"))  # version
    p.answer(HookSuccess())  # download allowed
    p.downloaded()
    records = [c.record for c in p.all(Persist) if c.record is not None]
    assert [r.phase for r in records] == [
        Phase.CHECKING_VERSION,
        Phase.DOWNLOADING,
        Phase.INSTALLING,
    ]
    assert all(r.execution_number == 4 for r in records), records
