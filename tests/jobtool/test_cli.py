"""The CLI with a fake backend (what moto cannot show), the report rendering, boto3 optional."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from tests.support.keys import make_key
from upparat.jobtool import cli
from upparat.jobtool.backend import BackendError
from upparat.jobtool.model import FileFacts, FileSource, JobSpec
from upparat.jobtool.report import (
    ExecutionRow,
    ExecutionStatus,
    JobReport,
    render_table,
    to_json,
)

REPO = Path(__file__).resolve().parents[2]
SHA = "ab" * 32
S = ExecutionStatus


def row(thing: str, status: ExecutionStatus, **details: str) -> ExecutionRow:
    return ExecutionRow(
        thing=thing,
        status=status,
        status_details=tuple(sorted(details.items())),
        last_updated_at=1_764_224_239.0,
        execution_number=1,
    )


def report(
    *rows: ExecutionRow,
    job_status: str = "IN_PROGRESS",
    things: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
    continuous: bool = False,
) -> JobReport:
    return JobReport(
        job_id="upparat_x",
        job_status=job_status,
        continuous=continuous,
        thing_targets=things,
        group_targets=groups,
        executions=rows,
    )


class FakeBackend:
    """Answers `report` from a script; records what create/cancel were asked."""

    where = "the fake"

    def __init__(self, reports: list[JobReport] | None = None) -> None:
        self.reports = list(reports or [])
        self.created: list[tuple[JobSpec, str, tuple[str, ...]]] = []
        self.closed = False

    def file_facts(self, file: FileSource, spec: JobSpec) -> FileFacts:
        return FileFacts(sha256=spec.sha256 or SHA, size=spec.size or 7)

    def resolve_targets(self, spec: JobSpec) -> tuple[str, ...]:
        return tuple(f"arn:thing/{t}" for t in spec.things) + tuple(
            f"arn:thinggroup/{g}" for g in spec.groups
        )

    def create_job(self, spec: JobSpec, document: str, targets: tuple[str, ...]) -> str:
        self.created.append((spec, document, targets))
        return f"arn:job/{spec.job_id}"

    def report(self, job_id: str) -> JobReport:
        if not self.reports:
            raise BackendError(f"no job {job_id}")
        return self.reports.pop(0) if len(self.reports) > 1 else self.reports[0]

    def cancel(self, job_id: str, *, force: bool, comment: str | None) -> str:
        return f"canceled {job_id} force={force} comment={comment}"

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    backend = FakeBackend()
    monkeypatch.setattr(cli._Connection, "_open", lambda self: backend)
    return backend


def test_watch_json_prints_one_line_per_change_until_finished(
    fake: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    things = ("dev-1", "dev-2")
    fake.reports = [
        report(row("dev-1", S.QUEUED), things=things),
        report(row("dev-1", S.QUEUED), things=things),  # unchanged: not printed again
        report(row("dev-1", S.IN_PROGRESS, phase="install"), row("dev-2", S.QUEUED), things=things),
        report(
            row("dev-1", S.SUCCEEDED),
            row("dev-2", S.TIMED_OUT),
            things=things,
            job_status="COMPLETED",
        ),
    ]
    sleeps: list[float] = []
    assert (
        cli.main(
            ["status", "upparat_x", "--watch", "--json", "--interval", "7"], sleep=sleeps.append
        )
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["withoutExecution"] for line in lines] == [["dev-2"], [], []]
    assert [e["status"] for e in lines[-1]["executions"]] == ["SUCCEEDED", "TIMED_OUT"]
    assert lines[-1]["finished"] is True
    assert sleeps == [7.0, 7.0, 7.0]
    assert fake.closed


@pytest.mark.parametrize(
    ("case", "finished"),
    [
        (report(things=("d",)), False),  # no execution yet
        (report(row("d", S.SUCCEEDED), things=("d", "e")), False),  # e still missing
        (report(row("d", S.SUCCEEDED), things=("d",)), True),
        (report(row("d", S.IN_PROGRESS), things=("d",), job_status="CANCELED"), False),
        (report(row("d", S.CANCELED), things=("d",), job_status="CANCELED"), True),
        # a SNAPSHOT group job is over when AWS says so: more executions may come
        (report(row("d", S.SUCCEEDED), groups=("fleet",)), False),
        (report(row("d", S.SUCCEEDED), groups=("fleet",), job_status="COMPLETED"), True),
        # a CONTINUOUS job never completes: its current executions decide
        (report(row("d", S.FAILED), groups=("fleet",), continuous=True), True),
        (report(groups=("fleet",), continuous=True), False),
    ],
)
def test_finished(case: JobReport, finished: bool) -> None:
    assert case.finished is finished


def test_table_with_groups_missing_things_and_signed_urls_in_details() -> None:
    signed = "https://b.s3.amazonaws.com/f?X-Amz-Signature=secret"
    table = render_table(
        report(
            row("dev-10", S.FAILED, error=f"403 from {signed}"),
            row("dev-2", S.IN_PROGRESS, phase="download", progress="42"),
            things=("dev-10", "dev-2", "dev-3"),
            groups=("fleet", "lab"),
            continuous=True,
        )
    )
    assert table.splitlines() == [
        "job upparat_x: IN_PROGRESS (CONTINUOUS; targets: 3 things, 2 groups (fleet, lab))",
        "THING   STATUS       VERSION  UPDATED (UTC)        DETAILS",
        'dev-10  FAILED       -        2025-11-27 06:17:19  error="403 from https://b.s3.amazonaws.com/f?<redacted>"',
        "dev-2   IN_PROGRESS  -        2025-11-27 06:17:19  phase=download progress=42",
        "dev-3   -            -        -                    no execution yet",
        "3 targets: 0 succeeded, 1 failed, 0 rolled back, 1 in progress; 1 without an execution",
    ]
    assert "secret" not in table


def test_the_fleet_view_puts_the_running_version_beside_the_status() -> None:
    base = report(
        row("a", S.SUCCEEDED, state="complete_ready"),
        row("b", S.FAILED, state="rolled_back"),
        row("c", S.FAILED, state="installation_hook_failed"),
        row("d", S.TIMED_OUT),
        row("e", S.IN_PROGRESS, state="download_progress"),
        things=("a", "b", "c", "d", "e", "f"),
    )
    fleet = attrs.evolve(
        base,
        versions=(
            ("a", (("firmware", "2.0.0"),)),
            ("b", (("firmware", "1.0.0"),)),
            ("c", (("bootloader", "7"), ("firmware", "1.0.0"))),
            ("d", ()),
            ("e", None),
            ("f", (("firmware", "0.9"),)),
        ),
    )
    table = render_table(fleet).splitlines()
    assert [line.split()[:3] for line in table[2:8]] == [
        ["a", "SUCCEEDED", "2.0.0"],
        ["b", "FAILED", "1.0.0"],
        ["c", "FAILED", "bootloader=7,firmware=1.0.0"],
        ["d", "TIMED_OUT", "-"],
        ["e", "IN_PROGRESS", "-"],
        ["f", "-", "0.9"],
    ]
    assert table[-1] == (
        "6 targets: 1 succeeded, 1 failed, 1 rolled back, 1 in progress;"
        " 1 timed out, 1 without an execution"
    )
    assert render_table(fleet, "bootloader").splitlines()[4].split()[2] == "7"
    assert render_table(fleet, "bootloader").splitlines()[2].split()[2] == "-"
    summary = to_json(fleet)["summary"]
    assert isinstance(summary, dict)
    assert (summary["failed"], summary["rolledBack"], summary["timedOut"]) == (1, 1, 1)


def test_create_reads_things_from_a_file_and_stdin(
    fake: FakeBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = tmp_path / "fleet.txt"
    fleet.write_text("dev-1\n# rack 2\ndev-2\n")
    argv = [
        "create", "--file", "https://cdn.example.com/fw.raucb", "--version", "3.1",
        "--things-from", str(fleet), "--things-from", "-", "--thing", "dev-1", "--group", "g",
    ]  # fmt: skip
    assert cli.main(argv, stdin=io.StringIO("dev-3\n")) == 0
    ((spec, document, targets),) = fake.created
    assert spec.things == ("dev-1", "dev-2", "dev-3")
    assert targets == ("arn:thing/dev-1", "arn:thing/dev-2", "arn:thing/dev-3", "arn:thinggroup/g")
    assert json.loads(document)["file"] == "https://cdn.example.com/fw.raucb"
    out, err = capsys.readouterr()
    assert json.loads(out) == json.loads(document)
    assert f"created job {spec.job_id} for thing dev-1, thing dev-2, thing dev-3, group g" in err

    fleet.write_text("dev-1\nbad name\n")
    assert cli.main([*argv[:5], "--things-from", str(fleet)]) == 2
    assert f"--things-from {fleet} line 2: a thing name must be" in capsys.readouterr().err
    assert cli.main([*argv[:5], "--things-from", str(tmp_path / "nope")]) == 2
    assert "cannot read it" in capsys.readouterr().err


def test_usage_errors_exit_2_before_any_service_is_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_backend(self: object) -> FakeBackend:
        raise AssertionError("a backend was opened for bad input")

    monkeypatch.setattr(cli._Connection, "_open", no_backend)
    cases = [
        (["status", "bad id"], "JOB_ID must be 1-64"),
        (["status", "x", "--watch", "--interval", "0"], "--interval must be > 0"),
        (["cancel", "x", "--comment", "a\tb"], "--comment must be 1-2028"),
        (["status", "x", "--emulator", "nohost"], "--emulator must be HOST:PORT"),
        (["status", "x", "--emulator", "h:1", "--region", "eu-west-1"], "--region, --profile"),
        (
            ["status", "x", "--emulator", "h:1", "--iot-data-endpoint", "https://h"],
            "--iot-data-endpoint are for AWS",
        ),
        (
            ["create", "--file", "s3://b-b/k", "--version", "1", "--thing", "d"],
            "--role-arn is required",
        ),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err, err
        assert f"see upparat-job {argv[0]} --help" in err
    with pytest.raises(SystemExit) as exited:
        cli.main(["create", "--version", "1"])
    assert exited.value.code == 2
    assert "--file" in capsys.readouterr().err


def test_cancel_passes_force_and_comment(
    fake: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["cancel", "upparat_x", "--force", "--comment", "bad batch"]) == 0
    assert capsys.readouterr().out == "canceled upparat_x force=True comment=bad batch\n"


def test_without_boto3_the_aws_path_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` fail
    monkeypatch.delitem(sys.modules, "upparat.jobtool.aws", raising=False)
    assert cli.main(["status", "upparat_x"]) == 1
    assert "pip install 'upparat[cloud]'" in capsys.readouterr().err


def test_the_emulator_path_never_imports_boto3() -> None:
    code = (
        "import sys\n"
        "from upparat.jobtool.cli import main\n"
        "rc = main(['create', '--emulator', '127.0.0.1:1', '--file', 'http://h/f', '--version',"
        f" '1', '--thing', 'd', '--sha256', '{SHA}', '--size', '1', '--dry-run'])\n"
        "assert rc == 0, rc\n"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sha256"] == SHA


# --- signing --------------------------------------------------------------------------------


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, list[str]]:
    """A bundle and the create arguments naming it (its sha256 and size given, so the fake
    backend reports exactly those)."""
    path = tmp_path / "fw.raucb"
    path.write_bytes(b"firmware 3.1\n" * 999)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    argv = [
        "create", "--file", "https://cdn.example.com/fw.raucb", "--version", "3.1",
        "--thing", "dev-1", "--sha256", sha, "--size", str(path.stat().st_size),
    ]  # fmt: skip
    return path, argv


def test_sign_key_signs_the_bundles_sha256_as_openssl_would_check_it(
    fake: FakeBackend, bundle: tuple[Path, list[str]], tmp_path: Path
) -> None:
    path, argv = bundle
    key = make_key(tmp_path / "keys", "release")

    assert cli.main([*argv, "--sign-key", str(key.private)]) == 0

    ((_, document, _),) = fake.created
    sig = tmp_path / "sig.der"
    sig.write_bytes(base64.b64decode(json.loads(document)["signature"]))
    verify = ["openssl", "dgst", "-sha256", "-verify", str(key.public), "-signature", str(sig)]
    done = subprocess.run([*verify, str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_a_signature_made_elsewhere_is_checked_then_put_in_the_document(
    fake: FakeBackend,
    bundle: tuple[Path, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, argv = bundle
    key = make_key(tmp_path / "keys", "release")
    sig = tmp_path / "fw.sig"
    sig.write_bytes(key.sign(path))

    code = cli.main([*argv, "--signature", str(sig), "--trusted-keys", str(key.certificate())])

    assert code == 0
    ((_, document, _),) = fake.created
    assert base64.b64decode(json.loads(document)["signature"]) == sig.read_bytes()
    assert "--signature: signature verified with" in capsys.readouterr().err


def test_a_signature_the_devices_would_refuse_creates_no_job(
    fake: FakeBackend,
    bundle: tuple[Path, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, argv = bundle
    trusted = make_key(tmp_path / "keys", "release")
    other = make_key(tmp_path / "other", "other")
    sig = tmp_path / "fw.sig"
    sig.write_bytes(other.sign(path))

    for extra in (
        ["--signature", str(sig), "--trusted-keys", str(trusted.public)],
        ["--sign-key", str(other.private), "--trusted-keys", str(trusted.public)],
    ):
        assert cli.main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert "does not verify" in err
        assert "devices with these keys would refuse it" in err
    assert fake.created == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--signature", "{sig}"], "--signature needs --trusted-keys"),
        (["--signature", "{sig}", "--sign-key", "{key}"], "exclude each other"),
        (["--sign-key", "{pub}"], "--sign-key: not an unencrypted PEM private key"),
        (["--sign-key", "{key}", "--trusted-keys", "{key}"], "--trusted-keys: "),
        (["--trusted-keys", "{pub}"], "--trusted-keys checks --sign-key or --signature"),
        (["--signature", "{missing}", "--trusted-keys", "{pub}"], "No such file"),
    ],
)
def test_signing_usage_errors_exit_2_before_any_service_is_asked(
    monkeypatch: pytest.MonkeyPatch,
    bundle: tuple[Path, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    def no_backend(self: object) -> FakeBackend:
        raise AssertionError("a backend was opened for bad input")

    monkeypatch.setattr(cli._Connection, "_open", no_backend)
    path, argv = bundle
    key = make_key(tmp_path / "keys", "release")
    sig = tmp_path / "fw.sig"
    sig.write_bytes(key.sign(path))
    names = {"sig": sig, "key": key.private, "pub": key.public, "missing": tmp_path / "nope"}

    assert cli.main([*argv, *(e.format(**names) for e in extra)]) == 2

    assert message in capsys.readouterr().err
