"""Signed artifacts through the whole stack: both processes read `trusted_keys` and
`require_signature` from the one config; the daemon checks the signature on the sha256 it
computes while downloading, and root checks the file again before the install script runs.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.e2e.conftest import StackFactory
from tests.e2e.device import (
    NEW,
    Device,
    MiB,
    details,
    download_path,
    finished,
    outcome,
    presigned,
    publish_bundle,
    wait_until,
)
from tests.support.keys import SigningKey, make_key
from upparat.devstack.faults import LogWatch
from upparat.devstack.stack import Stack

pytestmark = pytest.mark.slow


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return make_key(tmp_path / "keys", "release")


def signing_config(key: SigningKey) -> dict[str, dict[str, str]]:
    return {"service": {"trusted_keys": str(key.public), "require_signature": "true"}}


def create_signed(
    stack: Stack, job_id: str, signer: SigningKey | None, **document: object
) -> tuple[str, str]:
    """Publish a bundle and create its job, signed by `signer` (None: unsigned)."""
    name = f"{job_id}.bundle"
    url, sha = publish_bundle(stack, name, NEW, MiB)
    doc: dict[str, object] = {
        "file": presigned(url),
        "version": NEW,
        "sha256": sha,
        "size": MiB,
        **document,
    }
    if signer is not None:
        signature = signer.sign(stack.workdir / "files" / name)
        doc["signature"] = base64.b64encode(signature).decode()
    stack.control.create_job(job_id, doc, [stack.thing])
    return url, sha


def test_a_signed_job_succeeds(device: Device, make_stack: StackFactory, key: SigningKey) -> None:
    stack = make_stack(device, config=signing_config(key))

    create_signed(stack, "upparat_signed", key)

    done = finished(stack, "upparat_signed")
    assert outcome(done) == ("SUCCEEDED", "complete_ready"), stack.daemon_log()[-3000:]
    assert device.version == NEW
    assert "signature verified with" in stack.daemon_log()
    hookserver_log = (stack.workdir / "hookserver.log").read_text()
    assert "install job=upparat_signed:" in hookserver_log
    assert "signature verified with" in hookserver_log


def test_an_unsigned_job_is_rejected_without_any_http_request(
    device: Device, make_stack: StackFactory, key: SigningKey
) -> None:
    stack = make_stack(device, config=signing_config(key))

    create_signed(stack, "upparat_unsigned", None)

    done = finished(stack, "upparat_unsigned")
    assert outcome(done) == ("REJECTED", "invalid_job_document")
    assert "field 'signature'" in details(done)["message"]
    assert stack.files.requests == []
    assert device.calls() == []


def test_a_job_signed_by_another_key_fails_before_install_and_its_file_is_gone(
    device: Device, make_stack: StackFactory, key: SigningKey, tmp_path: Path
) -> None:
    stack = make_stack(device, config=signing_config(key))
    attacker = make_key(tmp_path / "attacker", "attacker")

    url, _ = create_signed(stack, "upparat_forged", attacker)

    done = finished(stack, "upparat_forged")
    assert outcome(done) == ("FAILED", "download_verification_failed")
    message = details(done)["message"]
    assert message.startswith("signature: does not verify")
    assert url.split("//", 1)[1].split("/", 1)[0] not in message  # never the URL
    assert device.calls("install") == []
    assert device.version != NEW
    wait_until(lambda: not download_path(stack, "upparat_forged").exists(), "the file to go")


def test_a_download_swapped_after_the_daemons_check_is_refused_by_the_hook_server(
    device: Device, make_stack: StackFactory, key: SigningKey
) -> None:
    # A compromised daemon (or anyone writing as its user) changes the verified file before
    # root installs it. The hook server is down while the daemon downloads, so the daemon
    # waits with the verified file in place: the moment to swap it.
    stack = make_stack(device, config=signing_config(key))
    stack.stop_hookserver()
    daemon_log = LogWatch(stack.workdir / "daemon.log")

    create_signed(stack, "upparat_swapped", key, force=True)
    daemon_log.wait_for("job upparat_swapped: downloaded")
    path = download_path(stack, "upparat_swapped")
    with path.open("r+b") as f:  # same inode, owner and size: only the bytes differ
        f.write(b"version=6.6.6\n")
    stack.start_hookserver()

    done = finished(stack, "upparat_swapped")
    assert outcome(done) == ("FAILED", "installation_hook_failed")
    assert details(done)["reason"] == "FILE_CHANGED"
    assert "the file changed after the daemon checked it" in details(done)["message"]
    assert device.calls("install") == []
    assert device.version != NEW
