"""The journal on a real file system: round trips, atomicity, corrupt files set aside."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from upparat.core.model import JobId, JournalRecord, Phase
from upparat.io.journal import FORMAT_VERSION, Journal, JournalError

RECORD = JournalRecord(job_id=JobId("upparat_42"), phase=Phase.RESTARTING, restart_count=2)


def test_nothing_saved_loads_none(tmp_path: Path) -> None:
    assert Journal(tmp_path / "state").load() is None
    assert not (tmp_path / "state").exists()  # loading creates nothing


def test_save_then_load(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.save(RECORD)
    assert journal.load() == RECORD
    # A new process (a new Journal) sees the same.
    assert Journal(tmp_path).load() == RECORD


def test_the_previous_version_survives_and_older_journals_load_without_it(
    tmp_path: Path,
) -> None:
    record = JournalRecord(job_id=JobId("j"), phase=Phase.INSTALLING, previous_version="1.0")
    Journal(tmp_path).save(record)
    assert Journal(tmp_path).load() == record

    (tmp_path / "journal.json").write_text(
        '{"format": 1, "job_id": "j", "phase": "installing", "restart_count": 0}'
    )
    assert Journal(tmp_path).load() == JournalRecord(job_id=JobId("j"), phase=Phase.INSTALLING)


def test_the_execution_number_survives_and_older_journals_load_without_it(
    tmp_path: Path,
) -> None:
    record = JournalRecord(job_id=JobId("j"), phase=Phase.RESTARTING, execution_number=3)
    Journal(tmp_path).save(record)
    assert json.loads((tmp_path / "journal.json").read_text())["execution_number"] == 3
    assert Journal(tmp_path).load() == record

    (tmp_path / "journal.json").write_text(
        '{"format": 1, "job_id": "j", "phase": "restarting", "restart_count": 0}'
    )
    loaded = Journal(tmp_path).load()
    assert loaded is not None
    assert loaded.execution_number is None


def test_file_format(tmp_path: Path) -> None:
    Journal(tmp_path).save(RECORD)
    assert json.loads((tmp_path / "journal.json").read_text()) == {
        "format": FORMAT_VERSION,
        "job_id": "upparat_42",
        "phase": "restarting",
        "restart_count": 2,
    }
    assert FORMAT_VERSION == 1


def test_save_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.save(RECORD)
    later = JournalRecord(job_id=JobId("upparat_43"), phase=Phase.DOWNLOADING)
    journal.save(later)
    assert journal.load() == later
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.json"]


def test_save_none_clears(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.save(RECORD)
    journal.save(None)
    assert journal.load() is None
    assert list(tmp_path.iterdir()) == []
    journal.save(None)  # clearing twice is fine


def test_state_dir_is_created_private(tmp_path: Path) -> None:
    state = tmp_path / "var" / "lib" / "upparat"
    Journal(state).save(RECORD)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "journal.json").stat().st_mode) == 0o600


def test_an_existing_state_dir_keeps_its_mode(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    os.chmod(state, 0o750)
    Journal(state).save(RECORD)
    assert stat.S_IMODE(state.stat().st_mode) == 0o750


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe", "is not valid JSON"),
        (b"", "is not valid JSON"),
        (b"[]", "is not a JSON object"),
        (b'{"format": 2, "job_id": "a", "phase": "installing", "restart_count": 0}', "format 2"),
        (b'{"job_id": "a", "phase": "installing", "restart_count": 0}', "format None"),
        (b'{"format": 1, "job_id": "a/b", "phase": "installing", "restart_count": 0}', "job_id"),
        (b'{"format": 1, "job_id": "", "phase": "installing", "restart_count": 0}', "job_id"),
        (b'{"format": 1, "job_id": "a", "phase": "flying", "restart_count": 0}', "phase"),
        (b'{"format": 1, "job_id": "a", "phase": "installing", "restart_count": -1}', "restart"),
        (b'{"format": 1, "job_id": "a", "phase": "installing", "restart_count": true}', "restart"),
        (b'{"format": 1, "job_id": "a", "phase": "installing"}', "restart_count"),
        (
            b'{"format": 1, "job_id": "a", "phase": "installing", "restart_count": 0,'
            b' "previous_version": 1}',
            "previous_version",
        ),
        (
            b'{"format": 1, "job_id": "a", "phase": "installing", "restart_count": 0,'
            b' "execution_number": 0}',
            "execution_number",
        ),
        (
            b'{"format": 1, "job_id": "a", "phase": "installing", "restart_count": 0,'
            b' "execution_number": "2"}',
            "execution_number",
        ),
    ],
)
def test_corrupt_journal_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, reason: str
) -> None:
    (tmp_path / "journal.json").write_bytes(content)
    journal = Journal(tmp_path)
    with caplog.at_level(logging.WARNING, logger="upparat.io.journal"):
        assert journal.load() is None
    assert not (tmp_path / "journal.json").exists()
    assert (tmp_path / "journal.json.corrupt-1").read_bytes() == content
    (warning,) = caplog.records
    assert warning.levelno == logging.WARNING
    assert reason in warning.getMessage()
    assert "journal.json.corrupt-1" in warning.getMessage()
    # The next load starts clean, and saving works again.
    assert journal.load() is None
    journal.save(RECORD)
    assert journal.load() == RECORD


def test_corrupt_files_are_numbered(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for n in (1, 2, 3):
        (tmp_path / "journal.json").write_text(f"garbage {n}")
        assert journal.load() is None
    assert (tmp_path / "journal.json.corrupt-1").read_text() == "garbage 1"
    assert (tmp_path / "journal.json.corrupt-3").read_text() == "garbage 3"


def test_unreadable_journal_is_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A directory where the file should be: reading fails with an OSError (a chmod 000
    # file would not do: the tests may run as root).
    (tmp_path / "journal.json").mkdir()
    with caplog.at_level(logging.WARNING, logger="upparat.io.journal"):
        assert Journal(tmp_path).load() is None
    assert (tmp_path / "journal.json.corrupt-1").is_dir()
    assert "cannot be read" in caplog.text


def test_a_journal_that_cannot_be_set_aside_is_still_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "journal.json").write_text("garbage")
    # Every corrupt-<n> name taken by a non-empty directory: os.replace must fail.
    blocker = tmp_path / "journal.json.corrupt-1"
    blocker.mkdir()
    (blocker / "x").write_text("")
    original_exists = Path.exists

    def exists(self: Path) -> bool:
        if self.name.startswith("journal.json.corrupt-"):
            return False
        return original_exists(self)

    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.WARNING):
        mp.setattr(Path, "exists", exists)
        assert Journal(tmp_path).load() is None
    assert "cannot be moved aside" in caplog.text


def test_failed_save_keeps_the_old_journal(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.save(RECORD)

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", refuse)
        with pytest.raises(JournalError, match=r"^journal: cannot write .*No space left"):
            journal.save(JournalRecord(job_id=JobId("upparat_43"), phase=Phase.VERIFYING))
    assert journal.load() == RECORD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.json"]


def test_save_into_an_impossible_state_dir_raises(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(JournalError, match="journal: cannot write"):
        Journal(tmp_path / "file" / "state").save(RECORD)


@settings(max_examples=50)
@given(
    job_id=st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True),
    phase=st.sampled_from(Phase),
    restart_count=st.integers(min_value=0, max_value=10**6),
)
def test_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory, job_id: str, phase: Phase, restart_count: int
) -> None:
    record = JournalRecord(job_id=JobId(job_id), phase=phase, restart_count=restart_count)
    journal = Journal(tmp_path_factory.mktemp("state"))
    journal.save(record)
    assert journal.load() == record
