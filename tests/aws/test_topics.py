"""Topic names and subscription filters of the jobs edge."""

from __future__ import annotations

from upparat.aws import topics
from upparat.core.model import JobId, ThingName

THING = ThingName("dev-1")


def test_request_topics() -> None:
    assert topics.get_pending(THING) == "$aws/things/dev-1/jobs/get"
    assert topics.describe(THING, JobId("j1")) == "$aws/things/dev-1/jobs/j1/get"
    assert topics.update(THING, JobId("j1")) == "$aws/things/dev-1/jobs/j1/update"
    assert topics.start_next(THING) == "$aws/things/dev-1/jobs/start-next"
    assert topics.notify(THING) == "$aws/things/dev-1/jobs/notify"
    assert topics.notify_next(THING) == "$aws/things/dev-1/jobs/notify-next"
    assert topics.accepted(topics.get_pending(THING)) == "$aws/things/dev-1/jobs/get/accepted"
    assert (
        topics.rejected(topics.update(THING, JobId("j")))
        == "$aws/things/dev-1/jobs/j/update/rejected"
    )


def test_subscription_filters_cover_every_reply_upparat_uses() -> None:
    p = "$aws/things/dev-1/jobs/"
    assert set(topics.subscription_filters(THING)) == {
        p + "notify",
        p + "get/accepted",
        p + "get/rejected",
        p + "+/get/accepted",
        p + "+/get/rejected",
        p + "+/update/accepted",
        p + "+/update/rejected",
    }


def test_subscription_batches_respect_the_aws_limit_of_8_filters() -> None:
    batches = topics.subscription_batches(THING)
    assert all(1 <= len(batch) <= topics.MAX_FILTERS_PER_SUBSCRIBE for batch in batches)
    assert tuple(f for batch in batches for f in batch) == topics.subscription_filters(THING)


def test_job_id_syntax() -> None:
    assert topics.is_job_id("upparat_1-A")
    assert topics.is_job_id("a" * 64)
    assert not topics.is_job_id("a" * 65)
    assert not topics.is_job_id("")
    assert not topics.is_job_id("$next")
    assert not topics.is_job_id("a/b")
    assert not topics.is_job_id("a\n")
    assert topics.job_id_or_none("x+") is None
    assert topics.job_id_or_none("x") == "x"
    assert topics.is_thing_name("arn:thing_1-2")
    assert not topics.is_thing_name("a/b")
