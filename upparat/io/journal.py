"""The journal: the job in flight, on disk, so a crash or reboot resumes it.

Owns `<state_dir>/journal.json` and nothing else in that directory but its temp and
`.corrupt-<n>` files. Writes are atomic; a journal that cannot be read is set aside,
never fatal. It does not decide what to write: the core's `Persist` command does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Final

from upparat.aws.topics import JOB_ID_RE as _JOB_ID_RE
from upparat.core.model import JobId, JournalRecord, Phase

__all__ = ["FORMAT_VERSION", "Journal", "JournalError"]

logger = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
"""Bumped when the file's meaning changes; an unknown version is set aside like a corrupt file."""

_FILE_NAME: Final = "journal.json"


class JournalError(Exception):
    """The journal could not be written; the message names the file and the cause."""


class _Corrupt(Exception):
    pass


class Journal:
    """`load()` once at start-up, `save()` on every `Persist` command."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir
        self.path = state_dir / _FILE_NAME

    def load(self) -> JournalRecord | None:
        """The saved record, or None when there is none or it cannot be used.

        A journal that cannot be read or parsed is renamed to `journal.json.corrupt-<n>`
        (kept for a post-mortem) with a warning: the device then starts as if no job was
        in flight, and the cloud's job list tells it what to resume.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            self._set_aside(f"cannot be read ({e})")
            return None
        try:
            return _decode(data)
        except _Corrupt as e:
            self._set_aside(str(e))
            return None

    def save(self, record: JournalRecord | None) -> None:
        """Write `record` atomically and durably; None removes the journal.

        Raises `JournalError` when the disk refuses; the previous journal is then intact.
        """
        try:
            if record is None:
                self._remove()
            else:
                self._write(_encode(record))
        except OSError as e:
            raise JournalError(f"journal: cannot write {self.path}: {e}") from e

    def _write(self, data: bytes) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Temp file in the same directory so os.replace is a rename within one file
        # system: readers see the old or the new journal, never a torn one.
        fd, tmp_name = tempfile.mkstemp(dir=self._dir, prefix=f".{_FILE_NAME}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        # The rename is durable only once the directory entry is on disk.
        _fsync_dir(self._dir)

    def _remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        _fsync_dir(self._dir)

    def _set_aside(self, reason: str) -> None:
        n = 1
        while (aside := self.path.with_name(f"{_FILE_NAME}.corrupt-{n}")).exists():
            n += 1
        try:
            os.replace(self.path, aside)
        except OSError as e:
            logger.warning(
                "journal %s %s and cannot be moved aside (%s); starting without it",
                self.path,
                reason,
                e,
            )
            return
        with contextlib.suppress(OSError):
            _fsync_dir(self._dir)
        logger.warning(
            "journal %s %s; moved to %s, starting without it", self.path, reason, aside.name
        )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(record: JournalRecord) -> bytes:
    doc = {
        "format": FORMAT_VERSION,
        "job_id": record.job_id,
        "phase": record.phase.value,
        "restart_count": record.restart_count,
    }
    if record.previous_version is not None:
        doc["previous_version"] = record.previous_version
    if record.execution_number is not None:
        doc["execution_number"] = record.execution_number
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _decode(data: bytes) -> JournalRecord:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _Corrupt(f"is not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise _Corrupt("is not a JSON object")
    version = doc.get("format")
    if version != FORMAT_VERSION:
        raise _Corrupt(f"has format {version!r}; this upparat reads format {FORMAT_VERSION}")
    job_id = doc.get("job_id")
    if not isinstance(job_id, str) or not _JOB_ID_RE.fullmatch(job_id):
        raise _Corrupt(f"has an invalid job_id {job_id!r}")
    try:
        phase = Phase(doc.get("phase"))
    except ValueError:
        raise _Corrupt(f"has an unknown phase {doc.get('phase')!r}") from None
    restart_count = doc.get("restart_count")
    if type(restart_count) is not int or restart_count < 0:
        raise _Corrupt(f"has an invalid restart_count {restart_count!r}")
    previous_version = doc.get("previous_version")
    if previous_version is not None and not isinstance(previous_version, str):
        raise _Corrupt(f"has an invalid previous_version {previous_version!r}")
    execution_number = doc.get("execution_number")
    if execution_number is not None and (type(execution_number) is not int or execution_number < 1):
        raise _Corrupt(f"has an invalid execution_number {execution_number!r}")
    return JournalRecord(
        job_id=JobId(job_id),
        phase=phase,
        restart_count=restart_count,
        previous_version=previous_version,
        execution_number=execution_number,
    )
