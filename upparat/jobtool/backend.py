"""The seam between the CLI and a jobs service: AWS IoT (`aws.py`) or the emulator (`emulator.py`).

Owns the protocol and the two error kinds the CLI turns into exit codes. No service code here.
"""

from __future__ import annotations

from typing import Protocol

from upparat.jobtool.model import FileFacts, FileSource, JobSpec, Problem, S3Object
from upparat.jobtool.report import JobReport


class BackendError(Exception):
    """The service (or the way to it) failed; exit 1. The message is safe to print."""


class InputError(Exception):
    """What the user gave turned out wrong once a service was asked; exit 2."""

    def __init__(self, problems: tuple[Problem, ...]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


class Backend(Protocol):
    @property
    def where(self) -> str:
        """For messages: "AWS IoT in eu-west-1", "the emulator at 127.0.0.1:1883"."""
        ...

    def file_facts(self, file: FileSource, spec: JobSpec) -> FileFacts:
        """sha256 and size of the file (metadata, --sha256/--size, or streaming it once)."""
        ...

    def s3_region(self, obj: S3Object) -> str:
        """The bucket's region, for a v2 placeholder URL (https://s3.<region>.amazonaws.com/...)."""
        ...

    def resolve_targets(self, spec: JobSpec) -> tuple[str, ...]:
        """The job's targets as the service names them (ARNs on AWS, thing names locally)."""
        ...

    def create_job(self, spec: JobSpec, document: str, targets: tuple[str, ...]) -> str:
        """Create the job; returns how the service names it (ARN or job id)."""
        ...

    def report(self, job_id: str) -> JobReport: ...

    def cancel(self, job_id: str, *, force: bool, comment: str | None) -> str:
        """Cancel the job; returns a line for the operator."""
        ...

    def close(self) -> None: ...
