"""`upparat-job` drives a real upparat daemon: broker, emulator, file server, hook server and
daemon as processes (upparat.devstack.Stack), no hooks configured.

The daemon checks the document's sha256 and size, so a job the tool builds from the
served bytes succeeds, and one built from a wrong --sha256 fails on the device.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.keys import make_key
from upparat.devstack.stack import Stack
from upparat.jobtool.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with Stack(tmp_path, thing="dev-1") as s:
        s.start()
        yield s


def test_jobs_created_by_the_tool_run_on_the_daemon(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    url, sha = stack.publish_file("fw-2.0.raucb", 300_000)
    where = ["--emulator", f"127.0.0.1:{stack.broker.port}"]
    create = ["create", *where, "--file", url, "--version", "2.0", "--thing", "dev-1", "--presign"]
    watch = ["--watch", "--interval", "0.2", "--json"]

    assert main([*create, "--job-id", "good"]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == sha
    assert main(["status", "upparat_good", *where, *watch]) == 0
    final = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [e["status"] for e in final["executions"]] == ["SUCCEEDED"]

    wrong = "0" * 64
    assert main([*create, "--job-id", "bad", "--sha256", wrong, "--size", "300000"]) == 0
    assert main(["status", "upparat_bad", *where, *watch]) == 0
    final = json.loads(capsys.readouterr().out.splitlines()[-1])
    (execution,) = final["executions"]
    assert execution["status"] == "FAILED"
    assert execution["statusDetails"] == {
        "state": "download_verification_failed",
        "message": f"sha256: expected {wrong}, got {sha}",
    }


def test_a_job_the_tool_signs_runs_on_a_daemon_that_requires_signatures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = make_key(tmp_path / "keys", "release")
    trust = {"service": {"trusted_keys": str(key.public), "require_signature": "true"}}
    with Stack(tmp_path / "stack", thing="dev-1", config=trust) as stack:
        stack.start()
        url, _ = stack.publish_file("fw-3.0.raucb", 200_000)
        where = ["--emulator", f"127.0.0.1:{stack.broker.port}"]
        create = ["create", *where, "--file", url, "--version", "3.0", "--thing", "dev-1"]
        watch = ["--watch", "--interval", "0.2", "--json"]

        signed = [*create, "--presign", "--sign-key", str(key.private)]
        assert main([*signed, "--job-id", "signed"]) == 0
        assert "signature" in json.loads(capsys.readouterr().out)
        assert main([*create, "--presign", "--job-id", "unsigned"]) == 0
        capsys.readouterr()
        for job, status in (("signed", "SUCCEEDED"), ("unsigned", "REJECTED")):
            assert main(["status", f"upparat_{job}", *where, *watch]) == 0
            final = json.loads(capsys.readouterr().out.splitlines()[-1])
            assert [e["status"] for e in final["executions"]] == [status], final


@pytest.mark.parametrize(
    ("key", "form"),
    [("bundles/fw 2.0+rc.raucb", "v2"), ("bundles/fw-2.0.raucb", "v1")],
)
def test_both_placeholder_forms_end_in_a_download_on_the_daemon(
    stack: Stack, capsys: pytest.CaptureFixture[str], key: str, form: str
) -> None:
    """s3:// through the emulator's --s3-endpoint (the stack's file server): the tool
    writes the placeholder, the emulator signs it, the daemon downloads and checks it."""
    sha = stack.s3_object("upparat-fw", key, 250_000)
    where = ["--emulator", f"127.0.0.1:{stack.broker.port}"]
    create = ["create", *where, "--file", f"s3://upparat-fw/{key}", "--version", "2.0"]
    assert main([*create, "--thing", "dev-1", "--job-id", form, "--placeholder", form]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["sha256"] == sha
    assert document["file"].startswith(
        "${aws:iot:s3-presigned-url-v2:https://s3.us-east-1.amazonaws.com/upparat-fw/"
        if form == "v2"
        else "${aws:iot:s3-presigned-url:https://upparat-fw.s3.amazonaws.com/"
    )
    watch = ["--watch", "--interval", "0.2", "--json"]
    assert main(["status", f"upparat_{form}", *where, *watch]) == 0
    final = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [e["status"] for e in final["executions"]] == ["SUCCEEDED"], final
    # The daemon fetched the object's bytes from where the emulator pointed it (the tool
    # read them once before, to learn the sha256).
    assert stack.files.served[f"upparat-fw/{key}"] == 2 * 250_000
    assert "X-Amz-Signature=" not in stack.daemon_log()
