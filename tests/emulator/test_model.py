"""Properties of the pure parts: the parser never raises, the model keeps the AWS invariants."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from upparat.emulator.model import EmulatorError, JobsModel, Publish
from upparat.emulator.wire import (
    BadRequest,
    ExecutionStatus,
    Ignored,
    JobId,
    Request,
    ThingName,
    parse,
)

FIELDS = [
    "status",
    "statusDetails",
    "expectedVersion",
    "executionNumber",
    "includeJobExecutionState",
    "includeJobDocument",
    "stepTimeoutInMinutes",
    "clientToken",
]
STATUSES = [s.value for s in ExecutionStatus] + ["", "in_progress"]
DEVICE = ["IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(STATUSES),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=20,
)
payloads = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6).map(
        lambda v: json.dumps(v).encode()
    )
)
levels = st.sampled_from(
    ["get", "update", "start-next", "$next", "notify", "accepted", "rejected", "fw-1", "", "+"]
) | st.text(max_size=8)
topics = st.lists(levels, max_size=4).map(
    lambda rest: "/".join(["$aws", "things", "dev-1", "jobs", *rest])
) | st.text(max_size=40)


@settings(max_examples=100, deadline=None)
@given(topic=topics, payload=payloads)
def test_parse_never_raises_and_answers_on_the_request_topic(topic: str, payload: bytes) -> None:
    parsed = parse(topic, payload)
    if isinstance(parsed, Ignored):
        return
    assert parsed.topic == topic
    if isinstance(parsed, BadRequest):
        assert parsed.message
        assert parsed.client_token is None or isinstance(parsed.client_token, str)


def request(topic: str, payload: bytes) -> Request | BadRequest:
    parsed = parse(topic, payload)
    assert not isinstance(parsed, Ignored)
    return parsed


def sign(url: str, expires_in: int) -> str:
    return f"{url}?e={expires_in}"


THINGS = [ThingName("t1"), ThingName("t2")]
JOBS = [JobId("a"), JobId("b"), JobId("c")]


class ModelMachine(RuleBasedStateMachine):
    """Random requests and control calls; the invariants are AWS's."""

    def __init__(self) -> None:
        super().__init__()
        self.model = JobsModel(minute=60.0)
        self.now = 1_700_000_000.0
        self.versions: dict[tuple[str, str], int] = {}
        self.finished: dict[tuple[str, str], ExecutionStatus] = {}

    def _heads(self) -> dict[str, str | None]:
        return {t: (None if (h := self.model.head(t)) is None else h.job_id) for t in THINGS}

    def _check_notify_next(
        self, before: dict[str, str | None], out: list[Publish] | tuple[Publish, ...]
    ) -> None:
        after = self._heads()
        for thing in THINGS:
            sent = [p for p in out if p.topic == f"$aws/things/{thing}/jobs/notify-next"]
            assert len(sent) == (1 if before[thing] != after[thing] else 0)
            if sent:
                body = sent[0].json()
                execution: Any = body.get("execution")
                assert (execution["jobId"] if execution else None) == after[thing]

    @initialize()
    def first_job(self) -> None:
        self.create("a", list(THINGS), None)

    @rule(
        job=st.sampled_from(JOBS),
        things=st.lists(st.sampled_from(THINGS), min_size=1, max_size=2),
        timeout=st.none() | st.integers(1, 3),
    )
    def create(self, job: str, things: list[str], timeout: int | None) -> None:
        before = self._heads()
        try:
            out = self.model.create_job(
                job,
                {"u": "${aws:iot:s3-presigned-url:https://b/x}"},
                things,
                self.now,
                sign,
                in_progress_timeout_minutes=timeout,
            )
        except EmulatorError:
            assert JobId(job) in self.model.jobs
            return
        for thing in set(things):
            self.versions[(job, thing)] = 1
        self._check_notify_next(before, out)

    @rule(
        job=st.sampled_from(JOBS),
        thing=st.sampled_from(THINGS),
        status=st.sampled_from(DEVICE) | st.sampled_from(DEVICE) | st.sampled_from(STATUSES),
        details=st.none()
        | st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["1", "x"]), max_size=2)
        | st.dictionaries(
            st.sampled_from(["a", "bad key"]), st.sampled_from(["1", ""]), max_size=2
        ),
        expected=st.none() | st.none() | st.integers(0, 5) | st.sampled_from(["1", "2", "x"]),
        step=st.none() | st.sampled_from([-1, 1, 2, 0]),
    )
    def update(
        self,
        job: str,
        thing: str,
        status: str,
        details: dict[str, str] | None,
        expected: int | str | None,
        step: int | None,
    ) -> None:
        body: dict[str, Any] = {"status": status, "clientToken": "tok"}
        if details is not None:
            body["statusDetails"] = details
        if expected is not None:
            body["expectedVersion"] = expected
        if step is not None:
            body["stepTimeoutInMinutes"] = step
        before = self._heads()
        old = self.model.execution(JobId(job), ThingName(thing))
        result = self.model.handle(
            request(f"$aws/things/{thing}/jobs/{job}/update", json.dumps(body).encode()),
            self.now,
            sign,
        )
        answers = [
            p
            for p in result.publishes
            if p.topic.startswith(f"$aws/things/{thing}/jobs/{job}/update/")
        ]
        assert len(answers) == 1
        assert answers[0].json()["clientToken"] == "tok"
        new = self.model.execution(JobId(job), ThingName(thing))
        if result.code is None:
            assert answers[0].topic.endswith("/accepted")
            assert old is not None
            assert new is not None
            assert not old.status.terminal
            assert new.version_number == old.version_number + 1
            assert new.status.value == status
            self.versions[(job, thing)] = new.version_number
        else:
            assert answers[0].topic.endswith("/rejected")
            assert new == old  # a rejected request changes nothing
            assert not [p for p in result.publishes if "notify" in p.topic]
        self._check_notify_next(before, result.publishes)

    @rule(thing=st.sampled_from(THINGS))
    def start_next(self, thing: str) -> None:
        before = self._heads()
        result = self.model.handle(
            request(f"$aws/things/{thing}/jobs/start-next", b"{}"), self.now, sign
        )
        assert result.code is None
        if result.execution is not None:
            assert result.execution.status is ExecutionStatus.IN_PROGRESS
            self.versions[(result.execution.job_id, thing)] = result.execution.version_number
        self._check_notify_next(before, result.publishes)

    @rule(job=st.sampled_from(JOBS), force=st.booleans())
    def cancel(self, job: str, force: bool) -> None:
        before = self._heads()
        try:
            out = self.model.cancel_job(job, self.now, sign, force=force)
        except EmulatorError:
            return
        self._check_notify_next(before, out)

    @rule(job=st.sampled_from(JOBS), force=st.booleans())
    def delete(self, job: str, force: bool) -> None:
        before = self._heads()
        try:
            out = self.model.delete_job(job, self.now, sign, force=force)
        except EmulatorError:
            return
        for key in [k for k in self.versions if k[0] == job]:
            del self.versions[key]
            self.finished.pop(key, None)
        self._check_notify_next(before, out)

    @rule(seconds=st.sampled_from([1.0, 59.0, 60.0, 200.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        before = self._heads()
        self._check_notify_next(before, self.model.expire(self.now, sign))

    @invariant()
    def versions_only_move_with_device_updates(self) -> None:
        for (job, thing), version in self.versions.items():
            found = self.model.execution(JobId(job), ThingName(thing))
            assert found is not None
            assert found.version_number == version

    @invariant()
    def terminal_is_final(self) -> None:
        for key, status in self.finished.items():
            found = self.model.execution(JobId(key[0]), ThingName(key[1]))
            assert found is not None
            assert found.status is status
        for (job, thing), found in self.model.executions.items():
            if found.status.terminal:
                self.finished[(job, thing)] = found.status
                assert found.step_deadline is None
                assert found.in_progress_deadline is None

    @invariant()
    def pending_order_is_in_progress_first_then_queue_time(self) -> None:
        for thing in THINGS:
            pending = self.model.pending(thing)
            keys = [
                (e.status is not ExecutionStatus.IN_PROGRESS, e.queued_at, e.seq) for e in pending
            ]
            assert keys == sorted(keys)
            assert all(not e.status.terminal for e in pending)

    @invariant()
    def state_survives_a_round_trip(self) -> None:
        copy = JobsModel()
        copy.load_json(json.loads(json.dumps(self.model.to_json())))
        assert copy.executions == self.model.executions
        assert copy.jobs == self.model.jobs


TestModel = ModelMachine.TestCase
TestModel.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
