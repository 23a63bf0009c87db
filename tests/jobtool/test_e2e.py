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
