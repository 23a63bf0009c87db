"""`upparat-job --emulator`: the real jobs emulator on mosquitto, a device, a loopback file server.

The created job is checked at the emulator, and the document a device receives is run
through the daemon's own parser (upparat.aws.inbound), so the tool and the daemon agree.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from tests.emulator.device import Device
from tests.jobtool.conftest import BUNDLE, BUNDLE_SHA256, FileServer
from tests.support.procs import Mosquitto
from upparat.aws import inbound
from upparat.core.events import JobDescribed
from upparat.core.model import JobDocument, ThingName
from upparat.emulator import ExecutionStatus, JobsEmulator
from upparat.jobtool.cli import main


def where(broker: Mosquitto) -> list[str]:
    return ["--emulator", f"127.0.0.1:{broker.port}", "--emulator-timeout", "3"]


def described(device: Device, job_id: str) -> JobDescribed:
    """The job as the daemon would see it on this device."""
    device.accepted(f"{job_id}/get")
    (message,) = [m for m in device.messages(f"{job_id}/get/accepted")]
    event = inbound.parse(ThingName(device.thing), message.topic, json.dumps(message.body).encode())
    assert isinstance(event, JobDescribed), event
    return event


def test_create_streams_the_file_once_and_the_daemon_accepts_the_document(
    mosquitto: Mosquitto,
    emulator: JobsEmulator,
    files: FileServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = files.url("/fw-1.2.raucb")
    rc = main(
        [
            "create",
            *where(mosquitto),
            "--file",
            url,
            "--version",
            "1.2",
            "--thing",
            "dev-1",
            "--thing",
            "dev-2",
            "--meta",
            "channel=beta",
            "--job-id",
            "fw12",
            "--in-progress-timeout",
            "30",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert files.gets["/fw-1.2.raucb"] == 1
    expected = {
        "file": url,
        "version": "1.2",
        "force": False,
        "meta": "channel=beta",
        "sha256": BUNDLE_SHA256,
        "size": len(BUNDLE),
    }
    assert json.loads(out) == expected
    job = emulator.job("upparat_fw12")
    assert json.loads(job.document) == expected
    assert job.targets == ("dev-1", "dev-2")
    assert job.in_progress_timeout_minutes == 30

    with Device(mosquitto.port, "dev-2") as device:
        execution = described(device, "upparat_fw12").execution
    assert execution.document == JobDocument(
        file=url,
        version="1.2",
        force=False,
        meta="channel=beta",
        sha256=BUNDLE_SHA256,
        size=len(BUNDLE),
    )


def test_presign_lets_the_emulator_sign_and_given_digest_skips_the_download(
    mosquitto: Mosquitto,
    emulator: JobsEmulator,
    files: FileServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = files.url("/fw-1.2.raucb")
    rc = main(
        [
            "create",
            *where(mosquitto),
            "--file",
            url,
            "--version",
            "1.2",
            "--thing",
            "dev-1",
            "--presign",
            "--expires",
            "120",
            "--sha256",
            BUNDLE_SHA256,
            "--size",
            str(len(BUNDLE)),
            "--job-id",
            "signed",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert files.gets["/fw-1.2.raucb"] == 0
    job = emulator.job("upparat_signed")
    assert json.loads(job.document)["file"] == f"${{aws:iot:s3-presigned-url:{url}}}"
    assert job.presigned_expires_in == 120
    with Device(mosquitto.port, "dev-1") as device:
        document = described(device, "upparat_signed").execution.document
    assert isinstance(document, JobDocument)
    signed = urllib.parse.urlsplit(document.file)
    assert document.file.startswith(url + "?")
    assert urllib.parse.parse_qs(signed.query)["X-Amz-Expires"] == ["120"]


def test_status_watch_and_cancel(
    mosquitto: Mosquitto,
    emulator: JobsEmulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id = "upparat_w"
    create = [
        "create",
        *where(mosquitto),
        "--file",
        "http://127.0.0.1:9/fw.raucb",
        "--version",
        "2.0",
        "--thing",
        "dev-1",
        "--thing",
        "dev-2",
        "--sha256",
        BUNDLE_SHA256,
        "--size",
        "10",
        "--job-id",
        "w",
    ]
    assert main(create) == 0
    with Device(mosquitto.port, "dev-1") as dev1, Device(mosquitto.port, "dev-2") as dev2:
        dev1.accepted(
            f"{job_id}/update", {"status": "IN_PROGRESS", "statusDetails": {"phase": "download"}}
        )
        capsys.readouterr()

        assert main(["status", job_id, *where(mosquitto), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert [
            (e["thingName"], e["status"], e["statusDetails"]) for e in report["executions"]
        ] == [
            ("dev-1", "IN_PROGRESS", {"phase": "download"}),
            ("dev-2", "QUEUED", {}),
        ]
        assert (report["jobStatus"], report["finished"]) == ("IN_PROGRESS", False)

        def devices_finish(seconds: float) -> None:
            # The watch loop sleeps between refreshes: the devices finish meanwhile.
            assert seconds == 0.2
            dev1.accepted(
                f"{job_id}/update", {"status": "SUCCEEDED", "statusDetails": {"phase": "ready"}}
            )
            dev2.accepted(
                f"{job_id}/update", {"status": "REJECTED", "statusDetails": {"reason": "version"}}
            )

        rc = main(
            ["status", job_id, *where(mosquitto), "--watch", "--interval", "0.2"],
            sleep=devices_finish,
        )
        out = capsys.readouterr().out
    assert rc == 0
    first, second = out.split("\n\n")
    assert first.splitlines()[-1] == (
        "2 targets: 0 succeeded, 0 failed, 0 rolled back, 1 in progress; 1 queued"
    )
    assert second.splitlines()[0] == f"job {job_id}: COMPLETED (SNAPSHOT; targets: 2 things)"
    assert "phase=ready" in second
    assert "reason=version" in second
    assert second.splitlines()[-1] == (
        "2 targets: 1 succeeded, 0 failed, 0 rolled back, 0 in progress; 1 rejected; finished"
    )

    # cancel: a new job, one execution IN_PROGRESS needs --force
    assert main([*create[:-1], "c"]) == 0
    with Device(mosquitto.port, "dev-1") as dev1:
        dev1.accepted("upparat_c/update", {"status": "IN_PROGRESS"})
    assert main(["cancel", "upparat_c", *where(mosquitto)]) == 0
    assert emulator.describe("upparat_c", "dev-1").status is ExecutionStatus.IN_PROGRESS
    assert emulator.describe("upparat_c", "dev-2").status is ExecutionStatus.CANCELED
    assert main(["cancel", "upparat_c", *where(mosquitto), "--force", "--comment", "oops"]) == 0
    assert emulator.describe("upparat_c", "dev-1").status is ExecutionStatus.CANCELED
    assert "does not keep the --comment" in capsys.readouterr().out


def test_emulator_errors(
    mosquitto: Mosquitto,
    emulator: JobsEmulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["status", "upparat_nope", *where(mosquitto)]) == 1
    assert "no job upparat_nope" in capsys.readouterr().err

    assert main(["cancel", "upparat_nope", *where(mosquitto)]) == 1
    assert "cancel-job refused" in capsys.readouterr().err

    base = ["create", *where(mosquitto), "--version", "1", "--sha256", "ab" * 32, "--size", "1"]
    assert main([*base, "--file", "http://h/f", "--group", "fleet"]) == 2
    assert "--group cannot be used with --emulator" in capsys.readouterr().err
    assert main([*base, "--file", "s3://bucket/key", "--thing", "d"]) == 1
    assert "serves no S3 objects: start it with --s3-endpoint" in capsys.readouterr().err
    assert main([*base, "--file", "http://h/f", "--thing", "d", "--placeholder", "v2"]) == 2
    assert "--placeholder v2 names an S3 object" in capsys.readouterr().err
    assert emulator.list_jobs() == []


def test_no_emulator_on_the_broker(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "status",
            "upparat_x",
            "--emulator",
            f"127.0.0.1:{mosquitto.port}",
            "--emulator-timeout",
            "0.5",
        ]
    )
    assert rc == 1
    assert "no jobs emulator answered" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("key", "form", "placeholder"),
    [
        (
            "bundles/fw 1.2+rc.raucb",
            [],
            "${aws:iot:s3-presigned-url-v2:https://s3.us-east-1.amazonaws.com/upparat-fw/bundles/fw%201.2%2Brc.raucb}",
        ),
        (
            "bundles/fw-1.2.raucb",
            ["--placeholder", "v1"],
            "${aws:iot:s3-presigned-url:https://upparat-fw.s3.amazonaws.com/bundles/fw-1.2.raucb}",
        ),
    ],
)
def test_s3_files_come_from_the_emulators_s3_endpoint_in_both_placeholder_forms(
    mosquitto: Mosquitto,
    files: FileServer,
    capsys: pytest.CaptureFixture[str],
    key: str,
    form: list[str],
    placeholder: str,
) -> None:
    files.files[f"/upparat-fw/{key}"] = BUNDLE
    with (
        JobsEmulator(
            "127.0.0.1", mosquitto.port, tick_interval=None, s3_endpoint=files.url("")
        ) as em,
        Device(mosquitto.port, "dev-1") as dev,
    ):
        rc = main(
            [
                "create",
                *where(mosquitto),
                "--file",
                f"s3://upparat-fw/{key}",
                "--version",
                "1.2",
                "--thing",
                "dev-1",
                "--job-id",
                "s3",
                "--expires",
                "120",
                *form,
            ]
        )
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert json.loads(out)["file"] == placeholder
        assert json.loads(out)["sha256"] == BUNDLE_SHA256  # streamed from the endpoint
        assert json.loads(em.job("upparat_s3").document)["file"] == placeholder

        event = described(dev, "upparat_s3")
        document = event.execution.document
        assert isinstance(document, JobDocument), document
        signed = urllib.parse.urlsplit(document.file)
        endpoint = urllib.parse.urlsplit(files.url(""))
        assert (signed.scheme, signed.netloc) == (endpoint.scheme, endpoint.netloc)
        assert urllib.parse.unquote(signed.path) == f"/upparat-fw/{key}"
        assert "X-Amz-Expires=120" in signed.query
        with urllib.request.urlopen(document.file, timeout=5) as response:
            assert response.read() == BUNDLE


def test_v1_refuses_an_s3_key_it_cannot_name_and_v2_takes_it(
    mosquitto: Mosquitto, emulator: JobsEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["create", *where(mosquitto), "--version", "1", "--thing", "d", "--dry-run"]
    base += ["--file", "s3://upparat-fw/fw 1+2.raucb", "--sha256", "ab" * 32, "--size", "1"]
    assert main([*base, "--placeholder", "v1"]) == 2
    assert "with --placeholder v1 the S3 key may only use" in capsys.readouterr().err


def test_status_shows_each_things_package_version_and_the_fleet_summary(
    mosquitto: Mosquitto, emulator: JobsEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    things = ["--thing", "dev-1", "--thing", "dev-2", "--thing", "dev-3", "--thing", "dev-4"]
    create = ["create", *where(mosquitto), "--file", "http://h/fw.raucb", "--version", "2.0.0"]
    create += [*things, "--sha256", BUNDLE_SHA256, "--size", "10", "--job-id", "fleet"]
    assert main(create) == 0
    job = "upparat_fleet"
    outcomes = {
        "dev-1": ("SUCCEEDED", "complete_ready", "2.0.0"),
        "dev-2": ("FAILED", "rolled_back", "1.0.0"),
        "dev-3": ("IN_PROGRESS", "download_progress", None),
    }
    for thing, (status, state, running) in outcomes.items():
        with Device(mosquitto.port, thing) as dev:
            dev.accepted(f"{job}/update", {"status": status, "statusDetails": {"state": state}})
        if running is not None:
            with Device(mosquitto.port, thing, shadow="$package") as pkg:
                body = {"state": {"reported": {"firmware": {"version": running}}}}
                pkg.accepted("update", body)
    capsys.readouterr()

    assert main(["status", job, *where(mosquitto)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in table[2:6]] == [
        ["dev-1", "SUCCEEDED", "2.0.0"],
        ["dev-2", "FAILED", "1.0.0"],
        ["dev-3", "IN_PROGRESS", "-"],
        ["dev-4", "QUEUED", "-"],
    ]
    assert table[6] == "4 targets: 1 succeeded, 0 failed, 1 rolled back, 1 in progress; 1 queued"

    assert main(["status", job, *where(mosquitto), "--json", "--package", "firmware"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["packageVersions"] == {
        "dev-1": {"firmware": "2.0.0"},
        "dev-2": {"firmware": "1.0.0"},
        "dev-3": None,
        "dev-4": None,
    }
    assert (report["summary"]["succeeded"], report["summary"]["rolledBack"]) == (1, 1)
