"""`upparat-job --emulator HOST:PORT`: the same commands against the local jobs emulator.

Talks to the emulator through `upparat.emulator.EmulatorControl` (MQTT on its broker) and
parses its JSON answers into the jobtool's types once, here. Things only: no groups.
"""

from __future__ import annotations

import json
from typing import assert_never

import attrs

from upparat.aws.shadow import PACKAGE_SHADOW, reported_versions
from upparat.emulator import EmulatorControl, EmulatorError
from upparat.emulator.presign import S3Location, object_url
from upparat.emulator.wire import JsonObject, JsonValue
from upparat.jobtool import fetch
from upparat.jobtool.backend import BackendError
from upparat.jobtool.model import FileFacts, FileSource, HttpFile, JobSpec, S3Object
from upparat.jobtool.report import ExecutionRow, ExecutionStatus, JobReport, PackageVersions

# The emulator has no regions; v2 placeholders it gets from us name this one.
EMULATOR_REGION = "us-east-1"


class EmulatorBackend:
    def __init__(self, host: str, port: int, *, timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._control: EmulatorControl | None = None

    @property
    def where(self) -> str:
        return f"the emulator at {self.host}:{self.port}"

    def _ctl(self) -> EmulatorControl:
        if self._control is None:
            control = EmulatorControl(self.host, self.port, timeout=self.timeout)
            try:
                control.connect()
            except ConnectionError as e:
                raise BackendError(str(e)) from None
            try:
                control.wait_ready(timeout=self.timeout)
            except TimeoutError as e:
                control.close()
                raise BackendError(str(e)) from None
            self._control = control
        return self._control

    def close(self) -> None:
        control, self._control = self._control, None
        if control is not None:
            control.close()

    def file_facts(self, file: FileSource, spec: JobSpec) -> FileFacts:
        match file:
            case HttpFile():
                return fetch.http_facts(file, spec)
            case S3Object(bucket=bucket, key=key):
                return fetch.http_facts(HttpFile(url=self._s3_url(bucket, key)), spec)
            case _:
                assert_never(file)

    def _s3_url(self, bucket: str, key: str) -> str:
        """Where the emulator serves the object from (its --s3-endpoint, told by ping)."""
        try:
            endpoint = self._ctl().call("ping")
        except (EmulatorError, TimeoutError) as e:
            raise BackendError(f"{self.where}: ping refused: {e}") from None
        found = endpoint.get("s3Endpoint") if isinstance(endpoint, dict) else None
        if not isinstance(found, str):
            raise BackendError(
                f"{self.where} serves no S3 objects: start it with --s3-endpoint URL (a file"
                " server with BUCKET/KEY under it), or pass an http(s) --file with --presign"
            )
        return object_url(S3Location(region=None, bucket=bucket, key=key), found)

    def s3_region(self, obj: S3Object) -> str:
        return EMULATOR_REGION

    def resolve_targets(self, spec: JobSpec) -> tuple[str, ...]:
        return tuple(spec.things)

    def create_job(self, spec: JobSpec, document: str, targets: tuple[str, ...]) -> str:
        doc = json.loads(document)
        assert isinstance(doc, dict)
        try:
            self._ctl().create_job(
                spec.job_id,
                doc,
                list(targets),
                presigned_expires_in=3600 if spec.presign is None else spec.presign.expires_in,
                in_progress_timeout_minutes=spec.in_progress_timeout,
            )
        except (EmulatorError, TimeoutError) as e:
            raise BackendError(f"{self.where}: create-job refused: {e}") from None
        return spec.job_id

    def report(self, job_id: str) -> JobReport:
        try:
            jobs = self._ctl().list_jobs()
        except (EmulatorError, TimeoutError) as e:
            raise BackendError(f"{self.where}: list refused: {e}") from None
        for job in jobs:
            if job.get("jobId") == job_id:
                found = _report(job)
                things = sorted({e.thing for e in found.executions} | set(found.thing_targets))
                return attrs.evolve(found, versions=self._versions(things))
        raise BackendError(f"{self.where}: no job {job_id}")

    def _versions(self, things: list[str]) -> tuple[tuple[str, PackageVersions | None], ...]:
        out: list[tuple[str, PackageVersions | None]] = []
        for thing in things:
            try:
                document = self._ctl().shadow(thing, PACKAGE_SHADOW)
            except (EmulatorError, TimeoutError) as e:
                raise BackendError(f"{self.where}: shadow-get refused: {e}") from None
            out.append((thing, None if document is None else reported_versions(document)))
        return tuple(out)

    def cancel(self, job_id: str, *, force: bool, comment: str | None) -> str:
        try:
            info = self._ctl().cancel_job(job_id, force=force)
        except (EmulatorError, TimeoutError) as e:
            raise BackendError(f"{self.where}: cancel-job refused: {e}") from None
        line = f"canceled job {job_id} on {self.where} (job status {info.get('status')})"
        if comment is not None:
            line += "; the emulator does not keep the --comment"
        return line


def _report(job: JsonObject) -> JobReport:
    rows = []
    for raw in _list(job.get("executions"), "executions"):
        e = _obj(raw, "execution")
        status_text = _str(e.get("status"), "execution.status")
        try:
            status = ExecutionStatus(status_text)
        except ValueError:
            raise BackendError(f"the emulator answered an unknown status {status_text!r}") from None
        details = _obj(e.get("statusDetails") or {}, "statusDetails")
        updated = e.get("lastUpdatedAt")
        number = e.get("executionNumber")
        rows.append(
            ExecutionRow(
                thing=_str(e.get("thingName"), "execution.thingName"),
                status=status,
                status_details=tuple(
                    sorted((k, _str(v, f"statusDetails.{k}")) for k, v in details.items())
                ),
                last_updated_at=float(updated) if isinstance(updated, int | float) else None,
                execution_number=number if isinstance(number, int) else None,
            )
        )
    return JobReport(
        job_id=_str(job.get("jobId"), "jobId"),
        job_status=_str(job.get("status"), "status"),
        continuous=False,
        thing_targets=tuple(_str(t, "targets") for t in _list(job.get("targets"), "targets")),
        group_targets=(),
        executions=tuple(sorted(rows, key=lambda r: r.thing)),
    )


def _obj(value: JsonValue, where: str) -> JsonObject:
    if not isinstance(value, dict):
        raise BackendError(f"the emulator answered a {type(value).__name__} for {where}")
    return value


def _list(value: JsonValue, where: str) -> list[JsonValue]:
    if not isinstance(value, list):
        raise BackendError(f"the emulator answered a {type(value).__name__} for {where}")
    return value


def _str(value: JsonValue, where: str) -> str:
    if not isinstance(value, str):
        raise BackendError(f"the emulator answered a {type(value).__name__} for {where}")
    return value
