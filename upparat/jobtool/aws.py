"""`upparat-job` against AWS: AWS IoT (CreateJob, DescribeJob, ListJobExecutionsForJob,
DescribeJobExecution, CancelJob, DescribeThing, DescribeThingGroup, DescribeEndpoint), the
IoT data plane (GetThingShadow of `$package`) and S3 (HeadObject, HeadBucket, GetObject)
through boto3.

Only the CLI's AWS path imports this module, so boto3 stays optional (the `cloud` extra).
Every boto3/botocore exception becomes a BackendError here, with the service's message
and never a credential.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, assert_never, cast

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    ProfileNotFound,
)

from upparat.aws.shadow import PACKAGE_SHADOW, reported_versions
from upparat.jobtool import fetch
from upparat.jobtool.backend import BackendError, InputError
from upparat.jobtool.model import (
    SHA256_RE,
    FileFacts,
    FileSource,
    HttpFile,
    JobSpec,
    S3Object,
    TargetSelection,
    check_facts,
    redact_text,
)
from upparat.jobtool.report import ExecutionRow, ExecutionStatus, JobReport, PackageVersions

if TYPE_CHECKING:
    from mypy_boto3_iot import IoTClient
    from mypy_boto3_iot.type_defs import CreateJobRequestTypeDef
    from mypy_boto3_s3 import S3Client

SHA256_METADATA_KEY = "sha256"  # x-amz-meta-sha256
MAX_SHADOW_BYTES = 64 * 1024  # a shadow holds 8 KB of state plus metadata


class _IotData(Protocol):
    """The part of boto3's iot-data client we use (no type stubs are installed for it)."""

    def get_thing_shadow(self, *, thingName: str, shadowName: str) -> Mapping[str, Any]: ...

    def close(self) -> None: ...


class AwsBackend:
    def __init__(
        self,
        *,
        region: str | None = None,
        profile: str | None = None,
        data_endpoint: str | None = None,
    ) -> None:
        with _errors("AWS session"):
            session = boto3.session.Session(profile_name=profile, region_name=region)
        if not session.region_name:
            raise BackendError(
                "no AWS region: pass --region or set AWS_REGION (or a region in the profile)"
            )
        self.region = session.region_name
        with _errors("AWS session"):
            self._iot: IoTClient = session.client("iot")
            self._s3: S3Client = session.client("s3")
        self._session = session
        self._data_endpoint = data_endpoint
        self._data: _IotData | None = None
        # Details of terminal executions never change: `status --watch` asks once.
        self._terminal: dict[tuple[str, str, int | None], ExecutionRow] = {}

    @property
    def where(self) -> str:
        return f"AWS IoT in {self.region}"

    def close(self) -> None:
        self._iot.close()
        self._s3.close()
        if self._data is not None:
            self._data.close()

    # ---- create ----------------------------------------------------------------------

    def file_facts(self, file: FileSource, spec: JobSpec) -> FileFacts:
        match file:
            case HttpFile():
                return fetch.http_facts(file, spec)
            case S3Object():
                return self._s3_facts(file, spec)
            case _:
                assert_never(file)

    def _s3_facts(self, obj: S3Object, spec: JobSpec) -> FileFacts:
        """Size from HeadObject; sha256 from --sha256, the `sha256` user metadata or a
        full-object SHA256 checksum, else by streaming the object once."""
        with _errors(f"S3 HeadObject {obj}", not_found=f"{obj}: no such object"):
            head = self._s3.head_object(Bucket=obj.bucket, Key=obj.key, ChecksumMode="ENABLED")
        size = head["ContentLength"]
        known: list[tuple[str, str]] = []  # (sha256, where it came from)
        meta = head.get("Metadata", {}).get(SHA256_METADATA_KEY)
        if meta is not None:
            if not SHA256_RE.fullmatch(meta.strip()):
                raise BackendError(
                    f"{obj}: its x-amz-meta-{SHA256_METADATA_KEY} metadata is not 64 hexadecimal"
                    f" characters ({meta[:80]!r}); fix the metadata or pass --sha256"
                )
            known.append((meta.strip().lower(), f"x-amz-meta-{SHA256_METADATA_KEY} of {obj}"))
        checksum = _full_object_sha256(head.get("ChecksumSHA256"), head.get("ChecksumType"))
        if checksum is not None:
            known.append((checksum, f"the ChecksumSHA256 of {obj}"))
        if len({sha for sha, _ in known}) > 1:
            raise BackendError(
                f"{obj}: {known[0][1]} ({known[0][0]}) differs from {known[1][1]} ({known[1][0]});"
                " the metadata is wrong: fix it or pass --sha256"
            )
        if known:
            found = FileFacts(sha256=known[0][0], size=size)
            source = known[0][1]
        elif spec.sha256 is not None:
            found = FileFacts(sha256=spec.sha256, size=size)
            source = f"{obj}"
        else:
            found = self._stream(obj)
            source = f"streamed from {obj}"
            if found.size != size:
                raise BackendError(f"{obj}: read {found.size} bytes, HeadObject said {size}")
        problems = check_facts(found, spec, source)
        if problems:
            raise InputError(problems)
        return found

    def s3_region(self, obj: S3Object) -> str:
        """HeadBucket's BucketRegion (S3 answers it even across regions); else ours."""
        try:
            with _errors(f"S3 HeadBucket {obj.bucket}"):
                head = self._s3.head_bucket(Bucket=obj.bucket)
        except BackendError:
            return self.region
        region = head.get("BucketRegion") or head.get("ResponseMetadata", {}).get(
            "HTTPHeaders", {}
        ).get("x-amz-bucket-region")
        return region if isinstance(region, str) and region else self.region

    def _stream(self, obj: S3Object) -> FileFacts:
        with _errors(f"S3 GetObject {obj}", not_found=f"{obj}: no such object"):
            body = self._s3.get_object(Bucket=obj.bucket, Key=obj.key)["Body"]
            try:
                return fetch.digest(body.iter_chunks(fetch.CHUNK))
            finally:
                body.close()

    def resolve_targets(self, spec: JobSpec) -> tuple[str, ...]:
        """Thing and group ARNs (DescribeThing / DescribeThingGroup); every unknown one at once."""
        arns: list[str] = []
        unknown: list[str] = []
        for thing in spec.things:
            try:
                with _errors(f"DescribeThing {thing}"):
                    arns.append(self._iot.describe_thing(thingName=thing)["thingArn"])
            except _NotFound:
                unknown.append(f"--thing {thing}: no such thing in {self.where}")
        for group in spec.groups:
            try:
                with _errors(f"DescribeThingGroup {group}"):
                    arns.append(
                        self._iot.describe_thing_group(thingGroupName=group)["thingGroupArn"]
                    )
            except _NotFound:
                unknown.append(f"--group {group}: no such thing group in {self.where}")
        if unknown:
            raise BackendError("; ".join(unknown))
        return tuple(arns)

    def create_job(self, spec: JobSpec, document: str, targets: tuple[str, ...]) -> str:
        request: CreateJobRequestTypeDef = {
            "jobId": spec.job_id,
            "targets": list(targets),
            "document": document,
            "description": spec.description,
            "targetSelection": spec.target_selection.value,
        }
        if spec.presign is not None and spec.presign.role_arn is not None:
            request["presignedUrlConfig"] = {
                "roleArn": spec.presign.role_arn,
                "expiresInSec": spec.presign.expires_in,
            }
        if spec.in_progress_timeout is not None:
            request["timeoutConfig"] = {"inProgressTimeoutInMinutes": spec.in_progress_timeout}
        with _errors("CreateJob"):
            return self._iot.create_job(**request)["jobArn"]

    # ---- status, cancel ----------------------------------------------------------------

    def report(self, job_id: str) -> JobReport:
        with _errors("DescribeJob", not_found=f"no job {job_id} in {self.where}"):
            job = self._iot.describe_job(jobId=job_id)["job"]
        targets = job.get("targets", [])
        rows: list[ExecutionRow] = []
        with _errors("ListJobExecutionsForJob"):
            pages = self._iot.get_paginator("list_job_executions_for_job").paginate(jobId=job_id)
            summaries = [s for page in pages for s in page.get("executionSummaries", [])]
        for summary in summaries:
            thing = _name_from_arn(summary.get("thingArn", ""))
            found = summary.get("jobExecutionSummary", {})
            status = _status(found.get("status", ""))
            number = found.get("executionNumber")
            updated = found.get("lastUpdatedAt")
            row = ExecutionRow(
                thing=thing,
                status=status,
                last_updated_at=None if updated is None else _epoch(updated),
                execution_number=number,
            )
            cached = self._terminal.get((job_id, thing, number))
            if cached is not None:
                row = cached
            elif status is not ExecutionStatus.QUEUED:
                # Only the device sets statusDetails, so a QUEUED execution has none.
                row = self._with_details(job_id, row)
                if status.terminal:
                    self._terminal[(job_id, thing, number)] = row
            rows.append(row)
        thing_targets = tuple(_name_from_arn(a) for a in targets if ":thing/" in a)
        things = sorted({r.thing for r in rows} | set(thing_targets))
        versions, note = self._versions(things)
        return JobReport(
            job_id=job_id,
            job_status=job.get("status", "UNKNOWN"),
            continuous=job.get("targetSelection") == TargetSelection.CONTINUOUS.value,
            thing_targets=thing_targets,
            group_targets=tuple(_name_from_arn(a) for a in targets if ":thinggroup/" in a),
            executions=tuple(sorted(rows, key=lambda r: r.thing)),
            versions=versions,
            versions_note=note,
        )

    def _versions(
        self, things: list[str]
    ) -> tuple[tuple[tuple[str, PackageVersions | None], ...], str | None]:
        """GetThingShadow of `$package` per thing; the first failure that is not a missing
        shadow stops asking (it would fail for every thing) and becomes the note."""
        found: list[tuple[str, PackageVersions | None]] = []
        for thing in things:
            try:
                with _errors(f"GetThingShadow {thing} {PACKAGE_SHADOW}"):
                    data = self._data_client()
                    try:
                        answer = data.get_thing_shadow(thingName=thing, shadowName=PACKAGE_SHADOW)
                    except ClientError as e:
                        # Only this code means "no such shadow"; a bare 404 is a wrong endpoint.
                        if e.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                            found.append((thing, None))
                            continue
                        raise
                    body = answer["payload"].read(MAX_SHADOW_BYTES + 1)
            except BackendError as e:
                return tuple(found), f"not read: {e}"
            try:
                document = json.loads(body)
            except (ValueError, RecursionError):
                document = None
            found.append((thing, reported_versions(document)))
        return tuple(found), None

    def _data_client(self) -> _IotData:
        """The IoT data plane client, on the account's endpoint (DescribeEndpoint
        iot:Data-ATS) unless --iot-data-endpoint names one."""
        if self._data is None:
            endpoint = self._data_endpoint
            if endpoint is None:
                with _errors("DescribeEndpoint iot:Data-ATS"):
                    address = self._iot.describe_endpoint(endpointType="iot:Data-ATS")[
                        "endpointAddress"
                    ]
                endpoint = f"https://{address}"
            with _errors("AWS session"):
                self._data = cast(
                    "_IotData", self._session.client("iot-data", endpoint_url=endpoint)
                )
        return self._data

    def _with_details(self, job_id: str, row: ExecutionRow) -> ExecutionRow:
        try:
            with _errors(f"DescribeJobExecution {job_id} {row.thing}"):
                execution = self._iot.describe_job_execution(jobId=job_id, thingName=row.thing)[
                    "execution"
                ]
        except _NotFound:
            return row  # deleted between the list and now
        details = execution.get("statusDetails", {}).get("detailsMap", {})
        updated = execution.get("lastUpdatedAt")
        return ExecutionRow(
            thing=row.thing,
            status=_status(execution.get("status", row.status.value)),
            status_details=tuple(sorted(details.items())),
            last_updated_at=row.last_updated_at if updated is None else _epoch(updated),
            execution_number=execution.get("executionNumber", row.execution_number),
        )

    def cancel(self, job_id: str, *, force: bool, comment: str | None) -> str:
        with _errors("CancelJob", not_found=f"no job {job_id} in {self.where}"):
            if comment is None:
                self._iot.cancel_job(jobId=job_id, force=force)
            else:
                self._iot.cancel_job(jobId=job_id, force=force, comment=comment)
        if force:
            return f"canceled job {job_id} in {self.where}, executions IN_PROGRESS included"
        return (
            f"canceled job {job_id} in {self.where}: queued executions are canceled, those"
            " IN_PROGRESS run to their end (cancel them too with --force)"
        )


class _NotFound(BackendError):
    pass


@contextlib.contextmanager
def _errors(operation: str, *, not_found: str | None = None) -> Iterator[None]:
    """boto3/botocore exceptions -> BackendError with the service's code and message."""
    try:
        yield
    except ClientError as e:
        error = e.response.get("Error", {})
        code = str(error.get("Code", "error"))
        message = redact_text(str(error.get("Message", "")))
        if code in ("ResourceNotFoundException", "404", "NoSuchKey", "NotFound"):
            raise _NotFound(not_found or f"{operation}: {code}: {message}") from None
        if code in ("403", "AccessDenied", "Forbidden"):
            message = message or "access denied (check the IAM permissions of these credentials)"
        raise BackendError(f"{operation}: {code}: {message}".rstrip(": ")) from None
    except NoCredentialsError:
        raise BackendError(
            f"{operation}: no AWS credentials found (use --profile, AWS_PROFILE, or the usual"
            " AWS_ACCESS_KEY_ID / instance role)"
        ) from None
    except NoRegionError:
        raise BackendError(f"{operation}: no AWS region: pass --region or set AWS_REGION") from None
    except ProfileNotFound as e:
        raise BackendError(f"{operation}: {e}") from None
    except BotoCoreError as e:
        raise BackendError(f"{operation}: {redact_text(str(e))}") from None


def _full_object_sha256(checksum: str | None, checksum_type: str | None) -> str | None:
    """The hex sha256 of the whole object from S3's ChecksumSHA256 (base64), if it is one.

    A multipart upload's COMPOSITE checksum ("<base64>-<parts>") is a checksum of the
    part checksums, not of the bytes a device downloads, so it does not count.
    """
    if checksum is None or checksum_type == "COMPOSITE" or "-" in checksum:
        return None
    try:
        raw = base64.b64decode(checksum, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def _name_from_arn(arn: str) -> str:
    # arn:aws:iot:<region>:<account>:thing/<name> (or thinggroup/<name>)
    return arn.rsplit("/", 1)[-1]


def _status(text: str) -> ExecutionStatus:
    try:
        return ExecutionStatus(text)
    except ValueError:
        raise BackendError(f"AWS IoT answered an unknown execution status {text!r}") from None


def _epoch(value: datetime.datetime) -> float:
    return value.timestamp()
