"""Hostile input through the broker: ten thousand generated messages on the daemon's own
topics (and other things' topics), then hostile job documents through the cloud.

Whoever can publish on `$aws/things/<thing>/jobs/...` is trusted by design (the AWS IoT
policy decides who can); what must hold anyway: the daemon stays up, its memory stays
bounded, it never asks about a job id that is not one, no file appears outside the
download folder, and a well-formed job afterwards still succeeds. A job document that
looks valid but carries a hostile URL ends REJECTED or FAILED with a reason.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from paho.mqtt.enums import CallbackAPIVersion

from tests.faults.conftest import THING, StackFactory
from tests.faults.device import Device, MiB, create_update, publish_bundle
from tests.faults.observe import assert_ends_once, details, finished, outcome
from tests.faults.payloads import MARK, OTHER_PREFIX, Message, messages
from upparat.aws.topics import is_job_id
from upparat.devstack.faults import LogWatch, MqttSpy, snapshot, top_level, vm_rss_kib
from upparat.devstack.stack import Stack

EXAMPLES = 10_000
BATCH = 500
"""Messages between two probes: each probe waits until the daemon has read up to it."""
SEED = 20261127
MAX_GROWTH_KIB = 30 * 1024
PREFIX = f"$aws/things/{THING}/jobs/"
_DOWNLOAD_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}(\.meta\.json(\.tmp)?)?")
_OURS = re.compile(
    r"(downloads/.*|files/.*|state/|state/journal\.json|state/status\.json|[^/]+\.(log|conf)"
    # the hook server's record of its running gRPC server's private directory
    r"|emulator-state\.json.*|hookserver-state/grpc-private-dir)"
)


def new_files_outside_downloads(stack: Stack, before: set[str]) -> list[str]:
    """Paths that appeared in the stack's directory other than downloads, logs and state."""
    return sorted(p for p in snapshot(stack.workdir) - before if not _OURS.fullmatch(p))


def marked(names: set[str]) -> list[str]:
    return sorted(n for n in names if MARK in n)


def daemon_pid(stack: Stack) -> int:
    assert stack.daemon is not None
    assert stack.daemon.poll() is None, "the daemon died"
    return stack.daemon.pid


@pytest.mark.timeout(300)
def test_ten_thousand_hostile_messages_leave_the_daemon_unharmed(
    device: Device, make_stack: StackFactory
) -> None:
    stack = make_stack(device)
    # Warm up first: the baseline memory includes everything a whole job loads.
    create_update(stack, "upparat_warm_up", size=64 * 1024)
    assert outcome(finished(stack, "upparat_warm_up")) == ("SUCCEEDED", "complete_ready")
    pid = daemon_pid(stack)
    rss_before = vm_rss_kib(pid)
    files_before = snapshot(stack.workdir)
    tmp_before, cwd_before = top_level(Path("/tmp")), top_level(Path.cwd())
    daemon_log = LogWatch(stack.workdir / "daemon.log")
    daemon_log.skip_to_end()
    requests = MqttSpy(stack.broker.port, PREFIX + "+/get", PREFIX + "+/update")

    publisher = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    publisher.connect("127.0.0.1", stack.broker.port)
    publisher.loop_start()
    published = probes = 0
    peak = rss_before

    def probe() -> None:
        """A message the daemon logs with its topic: once logged, it has read all before."""
        nonlocal probes, peak
        probes += 1
        marker = f"probe_{probes:05d}"
        publisher.publish(f"{PREFIX}{marker}/update/accepted", b"probe", qos=1).wait_for_publish(30)
        daemon_log.wait_for(f"/jobs/{marker}/update/accepted", timeout=60)
        peak = max(peak, vm_rss_kib(daemon_pid(stack)))

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(message=messages(THING))
    def publish(message: Message) -> None:
        nonlocal published
        topic, payload = message
        sent = publisher.publish(topic, payload, qos=0)
        assert sent.rc == paho.MQTT_ERR_SUCCESS, f"the broker dropped us after {topic!r}"
        published += 1
        if published % BATCH == 0:
            probe()

    try:
        publish()
        probe()
    finally:
        publisher.disconnect()
        publisher.loop_stop()
    assert published >= EXAMPLES
    ignored = daemon_log.count("ignored a message on")
    assert ignored >= published // 2, (ignored, published)

    # A well-formed job still runs, start to end.
    create_update(stack, "upparat_after_fuzz", version="3.0.0", size=MiB)
    try:
        done = finished(stack, "upparat_after_fuzz")
    finally:
        requests.close()
    assert outcome(done) == ("SUCCEEDED", "complete_ready")
    assert_ends_once(stack, "upparat_after_fuzz", "SUCCEEDED", "complete_ready")
    assert device.version == "3.0.0"

    rss_after = vm_rss_kib(daemon_pid(stack))
    print(f"published {published}, ignored {ignored}; VmRSS KiB {rss_before} {peak} {rss_after}")
    assert rss_after - rss_before < MAX_GROWTH_KIB, (rss_before, peak, rss_after)
    assert stack.daemon_starts == 1
    # Requests only ever named real job ids, never one that came on another thing's topic.
    asked = {topic.removeprefix(PREFIX).rsplit("/", 1)[0] for topic in requests.topics()}
    assert "upparat_after_fuzz" in asked
    assert all(is_job_id(j) and not j.startswith(OTHER_PREFIX) for j in asked), sorted(asked)
    # No file outside the download folder, and in it only files named after job ids.
    assert new_files_outside_downloads(stack, files_before) == []
    downloads = top_level(stack.download_dir / "upparat")
    assert all(_DOWNLOAD_NAME.fullmatch(n) for n in downloads), sorted(downloads)
    assert marked(top_level(Path("/tmp")) - tmp_before) == []
    assert marked(top_level(Path.cwd()) - cwd_before) == []


SECRET = "s3cr3t-do-not-log"


def hostile_documents(stack: Stack) -> dict[str, tuple[dict[str, object], str, str, str]]:
    """job id -> (job document, status, statusDetails.state, text in the message)."""
    url, sha = publish_bundle(stack, "fw.bin", 64 * 1024)
    port = stack.files.port
    ok = {"version": "2.0.0", "sha256": sha, "size": 64 * 1024}
    rejected = ("REJECTED", "invalid_job_document")
    failed = ("FAILED", "download_failed")
    return {
        "upparat_doc_file": ({"file": "file:///etc/passwd", **ok}, *rejected, "field 'file'"),
        "upparat_doc_file_host": (
            {"file": "file://localhost/etc/passwd", **ok},
            *rejected,
            "file:// URL",
        ),
        "upparat_doc_file_presigned": (
            {"file": f"${{aws:iot:s3-presigned-url:file:///tmp/{MARK}}}", **ok},
            *rejected,
            "field 'file'",
        ),
        "upparat_doc_ftp": ({"file": f"ftp://127.0.0.1:{port}/fw.bin", **ok}, *rejected, "ftp://"),
        "upparat_doc_data": (
            {"file": "data:application/octet-stream;base64,AAAA", **ok},
            *rejected,
            "field 'file'",
        ),
        "upparat_doc_no_host": ({"file": "http:///fw.bin", **ok}, *rejected, "field 'file'"),
        "upparat_doc_ipv6_bad_port": (
            {"file": "http://[::1]:99999/fw.bin", **ok},
            *rejected,
            "cannot be parsed",
        ),
        "upparat_doc_ipv6_broken": (
            {"file": "http://[::1/fw.bin", **ok},
            *rejected,
            "cannot be parsed",
        ),
        "upparat_doc_nul": ({"file": f"{url}\x00.sh", **ok}, *rejected, "control"),
        "upparat_doc_unicode": ({"file": f"{url}\u202e", **ok}, *rejected, "non-ASCII"),
        "upparat_doc_long": ({"file": url + "?" + "a" * 3000, **ok}, *rejected, "longer than"),
        "upparat_doc_credentials": (
            {"file": f"http://admin:{SECRET}@127.0.0.1:{port}/fw.bin", **ok},
            *rejected,
            "credentials",
        ),
        "upparat_doc_credentials_ipv6": (
            {"file": f"http://admin:{SECRET}@[::1]:{port}/fw.bin", **ok},
            *rejected,
            "credentials",
        ),
        "upparat_doc_traversal": (
            {"file": f"http://127.0.0.1:{port}/../../../../etc/passwd", **ok},
            *failed,
            "HTTP 404",
        ),
        "upparat_doc_encoded_traversal": (
            {"file": f"http://127.0.0.1:{port}/%2e%2e/%2e%2e/%2e%2e/etc/passwd", **ok},
            *failed,
            "HTTP 404",
        ),
        "upparat_doc_meta_nul": (
            {"file": url, **ok, "meta": "a\x00b"},
            "FAILED",
            "version_hook_failed",
            "NUL",
        ),
    }


def test_hostile_job_documents_end_rejected_or_failed_with_a_reason(
    device: Device, make_stack: StackFactory
) -> None:
    stack = make_stack(device, daemon=False)
    cases = hostile_documents(stack)
    files_before = snapshot(stack.workdir)
    tmp_before = top_level(Path("/tmp"))
    for job_id, (document, *_) in cases.items():
        stack.control.create_job(job_id, document, [THING])
    stack.start_daemon()

    for job_id, (_, status, state, text) in cases.items():
        done = finished(stack, job_id)
        assert outcome(done) == (status, state), (job_id, done)
        assert_ends_once(stack, job_id, status, state)
        message = details(done)["message"]
        assert text in message, (job_id, message)
        assert SECRET not in str(details(done)), (job_id, done)

    create_update(stack, "upparat_doc_good", size=MiB)
    assert outcome(finished(stack, "upparat_doc_good")) == ("SUCCEEDED", "complete_ready")
    # Nothing was installed from a hostile document, nothing fetched outside the file root,
    # no file written outside the download folder.
    assert [row[2] for row in device.calls("install")] == ["upparat_doc_good"]
    assert {path for path, _, status in stack.files.requests if status == 200} <= {
        "fw.bin",
        "upparat_doc_good.bundle",
    }
    assert new_files_outside_downloads(stack, files_before) == []
    assert marked(top_level(Path("/tmp")) - tmp_before) == []
    assert os.listdir(stack.download_dir / "upparat") == []


def test_credentials_in_a_job_url_never_reach_the_log(
    device: Device, make_stack: StackFactory
) -> None:
    """STYLE: log lines carry no secrets. A URL's user:password is one, like its query."""
    stack = make_stack(device)
    port = stack.files.port
    stack.control.create_job(
        "upparat_doc_secret",
        {"file": f"http://admin:{SECRET}@127.0.0.1:{port}/fw.bin", "version": "2.0.0"},
        [THING],
    )
    done = finished(stack, "upparat_doc_secret")
    # upparat.urls refuses credentials in a job URL at the edge: REJECTED, not downloaded.
    assert outcome(done) == ("REJECTED", "invalid_job_document")
    assert SECRET not in str(details(done))
    # The log line follows the cloud's answer: wait for it rather than race it.
    LogWatch(stack.workdir / "daemon.log").wait_for("upparat_doc_secret: REJECTED")
    assert SECRET not in stack.daemon_log()


def test_client_tokens_cannot_be_guessed_by_another_client_of_the_broker(
    device: Device, make_stack: StackFactory
) -> None:
    """`upparat-1`, `upparat-2` … would let any client on a shared broker answer our
    requests in our name; each process draws 64 random bits for its tokens."""
    stack = make_stack(device, start=False)
    stack.start(daemon=False)
    spy = MqttSpy(stack.broker.port, PREFIX + "get", PREFIX + "+/get")
    try:
        stack.start_daemon()
        spy.wait_for_topic(PREFIX + "get")
        stack.stop_daemon()
        stack.start_daemon()
        wait = time.monotonic() + 30
        while len(spy.topics()) < 2 and time.monotonic() < wait:
            time.sleep(0.05)
        tokens = [json.loads(payload)["clientToken"] for _, payload in spy.messages]
    finally:
        spy.close()
    nonces = set()
    for token in tokens:
        match = re.fullmatch(r"upparat-([0-9a-f]{16})-[0-9]+", token)
        assert match is not None, token
        nonces.add(match.group(1))
    assert len(nonces) == 2, tokens  # a new nonce for each start
