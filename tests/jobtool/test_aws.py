"""`upparat-job` against AWS, faked by moto (IoT and S3), through the CLI's `main`.

moto gaps (see the report): no device side, so execution progress is set in moto's
backend directly; moto's CancelJob leaves executions QUEUED; a thing-group target gets a
fake execution named after the group. The watch loop and group rows are tested with a
fake backend in test_cli.py.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import boto3
import pytest
from moto import mock_aws
from moto.iot.models import iot_backends

from tests.jobtool.conftest import BUNDLE, BUNDLE_SHA256, REGION, FileServer
from upparat.jobtool.cli import main

if TYPE_CHECKING:
    from mypy_boto3_iot import IoTClient
    from mypy_boto3_s3 import S3Client

ACCOUNT = "123456789012"  # moto's default account
ROLE = f"arn:aws:iam::{ACCOUNT}:role/upparat-download"
BUCKET = "upparat-fw"
META_SHA = "ab" * 32  # deliberately not the bundle's: proves the metadata is used as is


@pytest.fixture
def aws(fake_aws_env: None) -> Iterator[tuple[IoTClient, S3Client]]:
    with mock_aws():
        iot = boto3.client("iot", region_name=REGION)
        s3 = boto3.client("s3", region_name=REGION)
        for thing in ("dev-1", "dev-2", "dev-3"):
            iot.create_thing(thingName=thing)
        iot.create_thing_group(thingGroupName="fleet")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_object(
            Bucket=BUCKET, Key="with-meta.raucb", Body=BUNDLE, Metadata={"sha256": META_SHA}
        )
        s3.put_object(Bucket=BUCKET, Key="plain.raucb", Body=BUNDLE)
        s3.put_object(Bucket=BUCKET, Key="checksum.raucb", Body=BUNDLE, ChecksumAlgorithm="SHA256")
        s3.put_object(
            Bucket=BUCKET,
            Key="conflict.raucb",
            Body=BUNDLE,
            ChecksumAlgorithm="SHA256",
            Metadata={"sha256": META_SHA},
        )
        yield iot, s3


def create(*extra: str, file: str = f"s3://{BUCKET}/with-meta.raucb") -> list[str]:
    return ["create", "--file", file, "--version", "1.2", *extra]


def placeholder(key: str) -> str:
    return f"${{aws:iot:s3-presigned-url-v2:https://s3.{REGION}.amazonaws.com/{BUCKET}/{key}}}"


def arn(kind: str, name: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT}:{kind}/{name}"


def test_dry_run_prints_the_document_and_creates_nothing(
    aws: tuple[IoTClient, S3Client], capsys: pytest.CaptureFixture[str]
) -> None:
    iot, _ = aws
    rc = main(create("--thing", "dev-1", "--role-arn", ROLE, "--meta", "stable", "--dry-run"))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads(out) == {
        "file": placeholder("with-meta.raucb"),
        "version": "1.2",
        "force": False,
        "meta": "stable",
        "sha256": META_SHA,
        "size": len(BUNDLE),
    }
    assert "dry run" in err
    assert iot.list_jobs()["jobs"] == []


def test_create_sends_document_targets_presign_and_timeout(
    aws: tuple[IoTClient, S3Client], capsys: pytest.CaptureFixture[str]
) -> None:
    iot, _ = aws
    rc = main(
        create(
            "--thing",
            "dev-1",
            "--thing",
            "dev-2",
            "--group",
            "fleet",
            "--role-arn",
            ROLE,
            "--expires",
            "600",
            "--in-progress-timeout",
            "90",
            "--target-selection",
            "CONTINUOUS",
            "--force",
            "--job-id",
            "fw-1_2",
        )
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    job = iot.describe_job(jobId="upparat_fw-1_2")["job"]
    assert job["targets"] == [
        arn("thing", "dev-1"),
        arn("thing", "dev-2"),
        arn("thinggroup", "fleet"),
    ]
    assert job["presignedUrlConfig"] == {"roleArn": ROLE, "expiresInSec": 600}
    assert job["timeoutConfig"] == {"inProgressTimeoutInMinutes": 90}
    assert job["targetSelection"] == "CONTINUOUS"
    assert job["description"] == "upparat update to 1.2"
    document = iot.get_job_document(jobId="upparat_fw-1_2")["document"]
    assert json.loads(document) == {
        "file": placeholder("with-meta.raucb"),
        "version": "1.2",
        "force": True,
        "sha256": META_SHA,
        "size": len(BUNDLE),
    }
    assert json.loads(out) == json.loads(document)
    assert "created job upparat_fw-1_2" in err


def test_generated_job_id_and_defaults(
    aws: tuple[IoTClient, S3Client], capsys: pytest.CaptureFixture[str]
) -> None:
    iot, _ = aws
    assert main(create("--group", "fleet", "--role-arn", ROLE)) == 0
    (summary,) = iot.list_jobs()["jobs"]
    assert summary["jobId"].startswith("upparat_1-2_")
    job = iot.describe_job(jobId=summary["jobId"])["job"]
    assert job["presignedUrlConfig"] == {"roleArn": ROLE, "expiresInSec": 3600}
    assert job["targetSelection"] == "SNAPSHOT"
    assert "timeoutConfig" not in job or not job["timeoutConfig"]


@pytest.mark.parametrize(
    ("key", "sha256"),
    [
        ("plain.raucb", BUNDLE_SHA256),  # streamed once
        ("checksum.raucb", BUNDLE_SHA256),  # ChecksumSHA256, base64 -> hex
    ],
)
def test_sha256_from_checksum_or_streaming(
    aws: tuple[IoTClient, S3Client],
    capsys: pytest.CaptureFixture[str],
    key: str,
    sha256: str,
) -> None:
    _, s3 = aws
    if key == "checksum.raucb":
        head = s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
        assert base64.b64decode(head["ChecksumSHA256"]).hex() == BUNDLE_SHA256
    rc = main(
        create("--thing", "dev-1", "--role-arn", ROLE, "--dry-run", file=f"s3://{BUCKET}/{key}")
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads(out)["sha256"] == sha256
    assert json.loads(out)["size"] == len(BUNDLE)


def test_metadata_that_contradicts_the_checksum_is_an_error(
    aws: tuple[IoTClient, S3Client], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(create("--thing", "dev-1", "--role-arn", ROLE, file=f"s3://{BUCKET}/conflict.raucb"))
    _, err = capsys.readouterr()
    assert rc == 1
    assert "x-amz-meta-sha256" in err
    assert "differs from the ChecksumSHA256" in err


def test_given_sha256_must_match_the_object(
    aws: tuple[IoTClient, S3Client], capsys: pytest.CaptureFixture[str]
) -> None:
    iot, _ = aws
    rc = main(create("--thing", "dev-1", "--role-arn", ROLE, "--sha256", "cd" * 32))
    _, err = capsys.readouterr()
    assert rc == 2
    assert f"--sha256 {'cd' * 32} differs from the file's sha256 {META_SHA}" in err
    assert iot.list_jobs()["jobs"] == []
    # --sha256 and --size that agree with a plain object: no streaming needed, size checked
    rc = main(
        create(
            "--thing", "dev-1", "--role-arn", ROLE, "--sha256", "cd" * 32, "--size", "3",
            file=f"s3://{BUCKET}/plain.raucb",
        )
    )  # fmt: skip
    _, err = capsys.readouterr()
    assert rc == 2
    assert f"--size 3 differs from the file's size {len(BUNDLE)}" in err


def test_service_errors_exit_1_with_the_service_message(
    aws: tuple[IoTClient, S3Client], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(create("--thing", "dev-1", "--role-arn", ROLE, file=f"s3://{BUCKET}/missing.raucb"))
    assert rc == 1
    assert f"s3://{BUCKET}/missing.raucb: no such object" in capsys.readouterr().err

    rc = main(create("--thing", "dev-9", "--group", "nope", "--role-arn", ROLE))
    err = capsys.readouterr().err
    assert rc == 1
    assert "--thing dev-9: no such thing in AWS IoT in eu-west-1" in err
    assert "--group nope: no such thing group" in err

    assert main(["status", "upparat_nope"]) == 1
    assert "no job upparat_nope in AWS IoT in eu-west-1" in capsys.readouterr().err


def test_https_file_is_streamed_and_not_presigned(
    aws: tuple[IoTClient, S3Client], files: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    iot, _ = aws
    url = files.url("/fw-1.2.raucb")
    assert main(create("--thing", "dev-1", "--job-id", "web", file=url)) == 0
    _, err = capsys.readouterr()
    assert "allow_http" in err  # plain http is a warning, not an error
    assert files.gets["/fw-1.2.raucb"] == 1
    job = iot.describe_job(jobId="upparat_web")["job"]
    assert "presignedUrlConfig" not in job or not job["presignedUrlConfig"]
    document = json.loads(iot.get_job_document(jobId="upparat_web")["document"])
    assert document["file"] == url
    assert (document["sha256"], document["size"]) == (BUNDLE_SHA256, len(BUNDLE))


def set_execution(job_id: str, thing: str, status: str, details: dict[str, str]) -> None:
    """What a device would do through the jobs data plane, which moto does not offer."""
    execution = iot_backends[ACCOUNT][REGION].job_executions[(job_id, thing)]
    execution.status = status
    execution.status_details_map = details


DATA = ["--iot-data-endpoint", f"https://data-ats.iot.{REGION}.amazonaws.com"]


def put_shadow(thing: str, reported: dict[str, object]) -> None:
    """What a device reports into its `$package` shadow (moto's IoT data plane)."""
    data = boto3.client("iot-data", region_name=REGION, endpoint_url=DATA[1])
    body = {"state": {"reported": reported}}
    data.update_thing_shadow(thingName=thing, shadowName="$package", payload=json.dumps(body))


def test_status_table_and_json_from_moto_executions(
    aws: tuple[IoTClient, S3Client], capsys: pytest.CaptureFixture[str]
) -> None:
    things = ["--thing", "dev-1", "--thing", "dev-2", "--thing", "dev-3"]
    assert main(create(*things, "--role-arn", ROLE, "--job-id", "st")) == 0
    set_execution("upparat_st", "dev-1", "IN_PROGRESS", {"phase": "download", "progress": "42"})
    set_execution(
        "upparat_st", "dev-2", "FAILED", {"state": "rolled_back", "message": "2.0 -> 1.0"}
    )
    put_shadow("dev-1", {"firmware": {"version": "1.0.0", "attributes": {"slot": "A"}}})
    put_shadow("dev-2", {"firmware": {"version": "1.0.0"}, "bootloader": {"version": "7"}})
    capsys.readouterr()

    assert main(["status", "upparat_st", *DATA]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("job upparat_st: ")
    assert table[1].split() == ["THING", "STATUS", "VERSION", "UPDATED", "(UTC)", "DETAILS"]
    assert table[2].split()[:3] == ["dev-1", "IN_PROGRESS", "1.0.0"]
    assert table[2].endswith("phase=download progress=42")
    assert table[3].split()[:3] == ["dev-2", "FAILED", "bootloader=7,firmware=1.0.0"]
    assert table[3].endswith('message="2.0 -> 1.0" state=rolled_back')
    assert table[4].split()[:3] == ["dev-3", "QUEUED", "-"]  # no $package shadow
    assert table[5] == "3 targets: 0 succeeded, 0 failed, 1 rolled back, 1 in progress; 1 queued"

    assert main(["status", "upparat_st", *DATA, "--package", "firmware"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[3].split()[:3] == ["dev-2", "FAILED", "1.0.0"]

    assert main(["status", "upparat_st", *DATA, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(e["thingName"], e["status"], e["statusDetails"]) for e in report["executions"]] == [
        ("dev-1", "IN_PROGRESS", {"phase": "download", "progress": "42"}),
        ("dev-2", "FAILED", {"state": "rolled_back", "message": "2.0 -> 1.0"}),
        ("dev-3", "QUEUED", {}),
    ]
    assert report["packageVersions"] == {
        "dev-1": {"firmware": "1.0.0"},
        "dev-2": {"bootloader": "7", "firmware": "1.0.0"},
        "dev-3": None,
    }
    assert [e["packageVersions"] for e in report["executions"]] == [
        {"firmware": "1.0.0"},
        {"bootloader": "7", "firmware": "1.0.0"},
        None,
    ]
    assert report["summary"] == {
        "targets": 3,
        "succeeded": 0,
        "failed": 0,
        "rolledBack": 1,
        "inProgress": 1,
        "queued": 1,
        "rejected": 0,
        "timedOut": 0,
        "canceled": 0,
        "removed": 0,
        "withoutExecution": 0,
    }
    assert report["versionsNote"] is None
    assert report["finished"] is False
    assert report["things"] == ["dev-1", "dev-2", "dev-3"]


def test_status_without_shadow_access_still_shows_the_jobs(
    aws: tuple[IoTClient, S3Client],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A role without iot:GetThingShadow gets the job table and a note, not an error."""
    from botocore.exceptions import ClientError

    from upparat.jobtool import aws as aws_backend

    class Denied:
        calls = 0

        def get_thing_shadow(self, *, thingName: str, shadowName: str) -> dict[str, object]:
            Denied.calls += 1
            error = {"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}}
            raise ClientError(error, "GetThingShadow")  # type: ignore[arg-type]  # reason: a minimal error body

        def close(self) -> None:
            pass

    monkeypatch.setattr(aws_backend.AwsBackend, "_data_client", lambda self: Denied())
    assert (
        main(create("--thing", "dev-1", "--thing", "dev-2", "--role-arn", ROLE, "--job-id", "d"))
        == 0
    )
    capsys.readouterr()
    assert main(["status", "upparat_d"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[-2] == (
        "VERSION: not read: GetThingShadow dev-1 $package: AccessDeniedException: not allowed"
    )
    assert table[-1] == "2 targets: 0 succeeded, 0 failed, 0 rolled back, 0 in progress; 2 queued"
    assert Denied.calls == 1  # asked once, not once per thing


def test_cancel_with_force_and_comment(
    aws: tuple[IoTClient, S3Client], capsys: pytest.CaptureFixture[str]
) -> None:
    iot, _ = aws
    assert main(create("--thing", "dev-1", "--role-arn", ROLE, "--job-id", "c")) == 0
    capsys.readouterr()
    assert main(["cancel", "upparat_c", "--force", "--comment", "bad batch"]) == 0
    assert "canceled job upparat_c" in capsys.readouterr().out
    job = iot.describe_job(jobId="upparat_c")["job"]
    assert (job["status"], job["comment"], job["forceCanceled"]) == ("CANCELED", "bad batch", True)


def test_no_region_is_a_clear_error(
    fake_aws_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with mock_aws():
        assert main(["status", "upparat_x"]) == 1
    assert "no AWS region: pass --region" in capsys.readouterr().err
