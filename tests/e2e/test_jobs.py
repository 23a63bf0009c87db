"""Which jobs the device takes: queue order, foreign jobs, documents it cannot run."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import StackFactory
from tests.e2e.device import (
    Device,
    create_update,
    details,
    finished,
    outcome,
    presigned,
    publish_bundle,
    wait_until,
)

pytestmark = pytest.mark.slow


def test_two_queued_jobs_run_one_after_the_other_by_queue_time(
    device: Device, make_stack: StackFactory
) -> None:
    stack = make_stack(device, daemon=False)
    # Created first, so queued first, though its id sorts last.
    create_update(stack, "upparat_zz_first", version="2.0.0")
    second = int(time.time())
    wait_until(lambda: int(time.time()) > second, "the next second (queuedAt has seconds)")
    create_update(stack, "upparat_aa_second", version="3.0.0")
    stack.start_daemon()

    assert outcome(finished(stack, "upparat_zz_first")) == ("SUCCEEDED", "complete_ready")
    assert outcome(finished(stack, "upparat_aa_second")) == ("SUCCEEDED", "complete_ready")
    order = [u["jobId"] for u in stack.control.history(thing=stack.thing)]
    first_updates = order.count("upparat_zz_first")
    assert order == ["upparat_zz_first"] * first_updates + ["upparat_aa_second"] * (
        len(order) - first_updates
    )
    assert device.version == "3.0.0"
    assert [c[0] for c in device.calls()].count("install") == 2


def test_foreign_job_is_never_touched(device: Device, make_stack: StackFactory) -> None:
    stack = make_stack(device, daemon=False)
    url, _ = publish_bundle(stack, "other.bin", "9.9.9", 4096)
    # Older than ours, so first in the queue: only its prefix tells it apart.
    stack.control.create_job("fleet_config_7", {"file": presigned(url)}, [stack.thing])
    second = int(time.time())
    wait_until(lambda: int(time.time()) > second, "the next second (queuedAt has seconds)")
    create_update(stack, "upparat_fw_2")
    stack.start_daemon()

    assert outcome(finished(stack, "upparat_fw_2")) == ("SUCCEEDED", "complete_ready")
    assert stack.execution("fleet_config_7")["status"] == "QUEUED"
    assert stack.control.history("fleet_config_7", stack.thing, operation="all") == []
    assert "other.bin" not in stack.files.served


def test_invalid_job_documents_are_rejected_naming_the_field(
    device: Device, make_stack: StackFactory
) -> None:
    stack = make_stack(device, daemon=False)
    url, sha = publish_bundle(stack, "fw.bin", "2.0.0", 4096)
    documents: dict[str, dict[str, object]] = {
        "upparat_no_version": {"file": presigned(url)},
        "upparat_bad_sha": {"file": presigned(url), "version": "2.0.0", "sha256": sha[:12]},
        "upparat_ftp": {"file": "ftp://files.example.com/fw.bin", "version": "2.0.0"},
        "upparat_bad_size": {"file": presigned(url), "version": "2.0.0", "size": "4096"},
    }
    for job_id, document in documents.items():
        stack.control.create_job(job_id, document, [stack.thing])
    stack.start_daemon()

    expected = {
        "upparat_no_version": "field 'version' must be a non-empty string",
        "upparat_bad_sha": "field 'sha256' must be 64 hexadecimal characters",
        "upparat_ftp": "field 'file' must be an https:// or http:// URL, got a ftp:// URL",
        "upparat_bad_size": "field 'size' must be a non-negative integer",
    }
    for job_id, message in expected.items():
        done = finished(stack, job_id)
        assert outcome(done) == ("REJECTED", "invalid_job_document"), job_id
        assert details(done)["message"].startswith(f"invalid job document: {message}"), done
    assert device.calls() == []
    assert stack.files.requests == []
