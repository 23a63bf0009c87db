"""Hypothesis strategies for hostile MQTT messages on the daemon's AWS IoT Jobs topics.

A message is (topic, payload). Topics are the ones the daemon subscribes to (notify,
get/accepted|rejected, <jobId>/get|update/accepted|rejected) with hostile job ids in
them, or the same topics of other thing names. Payloads range from random bytes, deep
nesting and 128 KiB strings to well-formed replies whose fields have the wrong types,
odd unicode, hostile job ids (`../`, `/`, NUL, > 64 characters) and hostile job documents
(file:, ftp:, data: URLs, embedded credentials, IPv6 literals).

Ten thousand examples must take well under a minute, so leaves come mostly from
catalogues of hostile values (one draw each) and hypothesis combines them; random bytes,
text and integers are drawn too. Every string that could name a file carries MARK, so a
file made from one is found; every address is loopback on port 1 (nothing listens there)
or invalid, so nothing leaves the machine.
"""

from __future__ import annotations

import itertools
import json
from typing import TypeVar

from hypothesis import strategies as st

MARK = "upfz"
"""In every hostile job id and file URL: a file named after one would contain it."""
OTHER_PREFIX = "upparat_other_"
"""Job ids sent only on other things' topics: the daemon must never ask about them."""
MAX_PAYLOAD = 128 * 1024

Message = tuple[str, bytes]
T = TypeVar("T")

# --- catalogues of hostile values ---------------------------------------------------------

ODD = (
    "",
    "\x00",
    "\ud800",
    "\udfff",
    "\u202e",
    "\u200b",
    "\ufeff",
    "\uffff",
    "\U0010ffff",
    "\x1b[2J",
    "é",
    "\U0001d54f",
    "../",
    "/",
    "\\",
    "%00",
    "%2e%2e%2f",
    "\n",
    "\r\n",
    "${aws:iot:s3-presigned-url:file:///etc/passwd}",
    "2.0.0",
    "x" * 2000,
)
WRONG: tuple[object, ...] = (
    None,
    True,
    False,
    0,
    -1,
    2**63,
    -(2**70),
    1.5,
    -0.0,
    1e308,
    float("nan"),
    float("inf"),
    "1",
    "QUEUED",
    [],
    [1],
    [None],
    {},
    {"a": 1},
    {"jobId": None},
)
HOSTILE_IDS = (
    f"../../../../tmp/{MARK}",
    f"/tmp/{MARK}",
    f"upparat_{MARK}/../../../tmp/{MARK}",
    f"{MARK}/../..",
    f"upparat_{MARK}\x00evil",
    f"upparat_{MARK}" + "a" * 53,  # 65 characters
    f"upparat_{MARK}" + "b" * 300,
    f"upparat {MARK}",
    f"upparat_{MARK}\u202e",
    f"upparat_{MARK}é",
    f"upparat_\ud800{MARK}",
    f"upparat_{MARK}\n",
    f"upparat_{MARK}%2F..",
    f"upparat_{MARK}+",
    f"upparat_{MARK}#",
    f"upparat_{MARK}*",
    "",
    ".",
    "..",
)
VALID_IDS = ("upparat_a", "upparat_fw-2_0_0", "upparat_" + "z" * 56, "other_job", "upparat_")
STATUSES = (
    "QUEUED",
    "IN_PROGRESS",
    "SUCCEEDED",
    "FAILED",
    "REJECTED",
    "TIMED_OUT",
    "CANCELED",
    "REMOVED",
    "in_progress",
    "",
)
CODES = (
    "RequestThrottled",
    "InternalError",
    "TerminalStateReached",
    "InvalidStateTransition",
    "VersionMismatch",
    "ResourceNotFound",
    "InvalidJson",
    "NoSuchCode",
)
HOSTS = ("127.0.0.1", "[::1]", "localhost", "[::ffff:127.0.0.1]", "[fe80::1%25lo]", "127.1", "0")
URLS: tuple[str, ...] = (
    "file:///etc/passwd",
    f"file:///tmp/{MARK}",
    "file://localhost/etc/shadow",
    "ftp://127.0.0.1:1/fw.bin",
    "data:application/octet-stream;base64,AAAA",
    "javascript:alert(1)",
    "gopher://127.0.0.1:1/_",
    "http://127.0.0.1:1@[::1]:1/fw.bin",
    "http://[::1:1/fw.bin",
    "http://127.0.0.1:1/../../../../etc/passwd",
    f"http://127.0.0.1:1/%2e%2e/%2e%2e/tmp/{MARK}",
    "http://127.0.0.1:1/a b",
    "http://127.0.0.1:1/\x00",
    "http:///fw.bin",
    "//127.0.0.1:1/fw.bin",
    "http://127.0.0.1:1/" + "a" * 3000,
    "${aws:iot:s3-presigned-url:file:///etc/passwd}",
    *(
        f"{scheme}://{credentials}{host}{port}/{MARK}"
        for scheme, credentials, host, port in itertools.product(
            ("http", "https", "HTTP", "ftp", "file"),
            ("", "user:s3cr3t@", ":@"),
            HOSTS,
            (":1", ":99999", ":abc"),
        )
    ),
)

# --- strategies of values -------------------------------------------------------------------


def weighted(strategy: st.SearchStrategy[T], weight: int) -> list[st.SearchStrategy[T]]:
    """`weight` distinct copies, for st.one_of (which drops repeats of the same object)."""
    return [strategy.map(_same) for _ in range(weight)]


def _same(value: T) -> T:
    return value


odd_text = st.one_of(*weighted(st.sampled_from(ODD), 3), st.text(max_size=8))
wrong = st.one_of(st.sampled_from(WRONG), odd_text, st.integers())
"""A value of any JSON type: wrong wherever a field wants another one."""
number = st.one_of(st.integers(0, 2**40), wrong)
job_id = st.sampled_from(HOSTILE_IDS + VALID_IDS)
job_id_field = st.one_of(*weighted(job_id, 3), wrong)
token = st.one_of(
    st.integers(1, 300).map("upparat-{}".format),  # may match a request in flight
    st.sampled_from(("x" * 65, "upparat-0", "upparat-", "")),
    wrong,
)
url = st.one_of(*weighted(st.sampled_from(URLS), 3), wrong)
document = st.one_of(
    st.fixed_dictionaries(
        {"file": url, "version": st.one_of(st.sampled_from(("2.0.0", "1.0.0")), odd_text)},
        optional={
            "meta": odd_text,
            "force": st.sampled_from((True, False, "yes", None)),
            "sha256": st.sampled_from(("0" * 64, "A" * 64, "g" * 64, "0" * 63, 1)),
            "size": number,
        },
    ),
    wrong,
)
summary = st.one_of(
    st.fixed_dictionaries(
        {"jobId": job_id_field, "queuedAt": number}, optional={"versionNumber": number}
    ),
    wrong,
)
summaries = st.one_of(st.lists(summary, max_size=4), wrong)

# --- payloads ---------------------------------------------------------------------------------


def _encode(value: object, ascii_only: bool) -> bytes:
    # ensure_ascii=False with a lone surrogate makes bytes that are not UTF-8: hostile too.
    text = json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


def as_json(values: st.SearchStrategy[object]) -> st.SearchStrategy[bytes]:
    return st.builds(_encode, values, st.booleans())


def notify(ids: st.SearchStrategy[object] = job_id_field) -> st.SearchStrategy[object]:
    listed = st.one_of(st.lists(st.fixed_dictionaries({"jobId": ids, "queuedAt": number})), wrong)
    jobs = st.one_of(
        st.fixed_dictionaries({}, optional={"IN_PROGRESS": listed, "QUEUED": listed}), wrong
    )
    return st.fixed_dictionaries({"jobs": jobs}, optional={"timestamp": number})


# Well-formed messages, hostile only in their documents and guessed client tokens: they get
# past the parser into selection, description and the job stages.
plausible_summary = st.fixed_dictionaries(
    {"jobId": st.sampled_from(VALID_IDS), "queuedAt": st.integers(0, 2**40)},
    optional={"versionNumber": st.integers(1, 5)},
)
plausible_lists = st.lists(plausible_summary, max_size=3)
plausible_notify = st.fixed_dictionaries(
    {
        "jobs": st.fixed_dictionaries(
            {}, optional={"IN_PROGRESS": plausible_lists, "QUEUED": plausible_lists}
        )
    }
)
plausible_pending = st.fixed_dictionaries(
    {"inProgressJobs": plausible_lists, "queuedJobs": plausible_lists, "clientToken": token}
)
plausible_execution = st.fixed_dictionaries(
    {
        "status": st.sampled_from(("QUEUED", "IN_PROGRESS")),
        "jobDocument": st.fixed_dictionaries(
            {"file": st.sampled_from(URLS), "version": st.just("2.0.0")},
            optional={"meta": odd_text, "sha256": st.just("0" * 64), "size": st.integers(0, 2**40)},
        ),
    },
    optional={"statusDetails": st.sampled_from(({"state": "reboot_start"}, {"state": "x"}))},
)


def _described_reply(job_id: str, execution: dict[str, object], client_token: object) -> object:
    """A describe reply whose execution is about the job its topic names."""
    return {"execution": {**execution, "jobId": job_id}, "clientToken": client_token}


pending = st.fixed_dictionaries(
    {"inProgressJobs": summaries, "queuedJobs": summaries}, optional={"clientToken": token}
)
execution = st.fixed_dictionaries(
    {
        "jobId": job_id_field,
        "status": st.one_of(st.sampled_from(STATUSES), wrong),
        "jobDocument": document,
    },
    optional={
        "thingName": st.one_of(st.just("device-1"), odd_text),
        "statusDetails": st.one_of(st.dictionaries(odd_text, odd_text, max_size=2), wrong),
        "versionNumber": number,
    },
)
described = st.fixed_dictionaries(
    {"execution": st.one_of(*weighted(execution, 3), wrong)}, optional={"clientToken": token}
)
update_accepted = st.fixed_dictionaries(
    {}, optional={"clientToken": token, "timestamp": number, "executionState": wrong}
)
rejected = st.fixed_dictionaries(
    {"code": st.one_of(st.sampled_from(CODES), wrong)},
    optional={
        "message": odd_text,
        "clientToken": token,
        "executionState": st.one_of(
            st.fixed_dictionaries({"status": st.sampled_from(STATUSES)}), wrong
        ),
    },
)


OPENERS = ("[", '{"jobs":', '{"execution":', '[{"a":')


def _nested(depth: int, opener: str) -> bytes:
    """`depth` levels of `opener` (capped near the payload limit), closed again."""
    closer = {"[": "]", '{"jobs":': "}", '{"execution":': "}", '[{"a":': "}]"}[opener]
    depth = min(depth, (MAX_PAYLOAD + 1024) // (len(opener) + len(closer)))
    return (opener * depth + "1" + closer * depth).encode()


def _long_string(unit: str, size: int, where: str) -> bytes:
    """`where` with each @ replaced by a JSON string, the whole about `size` bytes."""
    per_unit = len(json.dumps(unit, ensure_ascii=False).encode()) - 2
    count = max(1, size // per_unit // where.count("@"))
    text = json.dumps(unit * count, ensure_ascii=False)
    return where.replace("@", text).encode("utf-8", "replace")


LONG_IN = (
    "@",
    '{"jobs": {"QUEUED": [{"jobId": @, "queuedAt": 1}]}}',
    '{"code": @, "message": @}',
    '{"execution": {"jobId": "upparat_x", "status": "QUEUED", "jobDocument": '
    '{"file": @, "version": "2"}}}',
    '{"inProgressJobs": [], "queuedJobs": [], "clientToken": @}',
)
FIXED_RAW = (
    b"",
    b"null",
    b"[]",
    b'"jobs"',
    b'{"jobs": {}, "jobs": 5}',
    b'{"timestamp": NaN, "jobs": {}}',
    b'{"jobs": {"QUEUED": [{"jobId": "upparat_\\ud800", "queuedAt": 1}]}}',
    b"\xef\xbb\xbf{}",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b'{"jobs": {"QUEUED": [{"jobId": "upparat_\xff", "queuedAt": 1}]}}',
    b'{"jobs": {"QUEUED": [{"jobId": "upparat_a", "queuedAt": 1e400}]}}',
    ('{"timestamp": ' + "9" * 5000 + ', "jobs": {}}').encode(),
)
small_raw = st.one_of(
    st.binary(max_size=256),
    st.sampled_from(FIXED_RAW),
    st.builds(_nested, st.integers(1, 100), st.sampled_from(OPENERS)),
)
big_raw = st.one_of(
    st.builds(_nested, st.integers(100, 30_000), st.sampled_from(OPENERS)),
    st.integers(60, 5000).map(lambda n: ("[" * n).encode()),  # never closed
    st.builds(
        _long_string,
        st.sampled_from(("a", "é", "\U0001d54f", "\\", '"', "\u202e", "../")),
        st.one_of(st.integers(1000, MAX_PAYLOAD + 64), st.integers(MAX_PAYLOAD - 64, MAX_PAYLOAD)),
        st.sampled_from(LONG_IN),
    ),
)
raw = st.one_of(*weighted(small_raw, 12), big_raw)

# --- topics -----------------------------------------------------------------------------------


def _topic_safe(text: str) -> str:
    """What a broker takes as a topic level: no + or #, and UTF-8 without NUL, control
    characters or non-characters (mosquitto drops a client that sends those)."""
    return "".join(ch for ch in text if ch not in "+#" and _topic_char(ord(ch)))


def _topic_char(code: int) -> bool:
    return not (
        code <= 0x1F
        or 0x7F <= code <= 0x9F
        or 0xD800 <= code <= 0xDFFF
        or 0xFDD0 <= code <= 0xFDEF
        or code & 0xFFFF in (0xFFFE, 0xFFFF)
    )


OTHER_THINGS = (
    "device-10",
    "Device-1",
    "device-1 ",
    "dévice-1",
    "",
    "device-1/jobs/x",
    "other",
    "d" * 200,
    MARK,
    "device-1\u200b",
)


def messages(thing: str) -> st.SearchStrategy[Message]:
    """Hostile messages on `thing`'s job topics and, fewer, on other things' topics."""
    prefix = f"$aws/things/{thing}/jobs/"
    ids = tuple(sorted({_topic_safe(j) for j in HOSTILE_IDS + VALID_IDS}))

    def on(
        topics: st.SearchStrategy[str], payload: st.SearchStrategy[bytes]
    ) -> st.SearchStrategy[Message]:
        return st.tuples(topics, st.one_of(*weighted(payload, 3), raw))

    def job_topic(kind: str) -> st.SearchStrategy[str]:
        return st.sampled_from(tuple(f"{prefix}{j}/{kind}" for j in ids))

    other_ids = st.integers(1, 99).map(f"{OTHER_PREFIX}{{}}".format)
    others = st.tuples(
        st.sampled_from(
            tuple(
                f"$aws/things/{name}/jobs/{suffix}"
                for name in OTHER_THINGS
                for suffix in ("notify", "get/accepted", f"{OTHER_PREFIX}1/get/accepted")
            )
        ),
        st.one_of(as_json(notify(other_ids)), as_json(described), raw),
    )
    return st.one_of(
        on(st.just(prefix + "notify"), as_json(notify())),
        on(st.just(prefix + "notify"), as_json(plausible_notify)),
        on(st.just(prefix + "notify-next"), as_json(described)),
        on(st.just(prefix + "get/accepted"), as_json(pending)),
        on(st.just(prefix + "get/accepted"), as_json(plausible_pending)),
        on(st.just(prefix + "get/rejected"), as_json(rejected)),
        on(job_topic("get/accepted"), as_json(described)),
        st.builds(
            lambda j, execution, client_token: (
                f"{prefix}{j}/get/accepted",
                _encode(_described_reply(j, execution, client_token), True),
            ),
            st.sampled_from(VALID_IDS),
            plausible_execution,
            token,
        ),
        on(job_topic("get/rejected"), as_json(rejected)),
        on(job_topic("update/accepted"), as_json(update_accepted)),
        on(job_topic("update/rejected"), as_json(rejected)),
        others,
    )
