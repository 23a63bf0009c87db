"""An upparat job as operators ask for it, checked against the AWS IoT limits before anything is sent.

Pure: no I/O, no clock, no randomness (callers pass `now` and a random token). Every
check of user input lives here and reports *all* problems at once, each naming its option.
Limits: botocore's iot service model (CreateJob, CancelJob shapes) and the AWS IoT Jobs
developer guide (jobs-configurations-details); the document fields: `upparat.aws.inbound`.
"""

from __future__ import annotations

import base64
import datetime
import enum
import json
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable
from typing import NewType, TypeAlias, assert_never

import attrs

from upparat.aws.topics import JOB_ID_RE as JOB_ID_RE  # re-exported: the one rule
from upparat.aws.topics import JOB_PREFIX_RE as JOB_PREFIX_RE
from upparat.aws.topics import THING_NAME_RE as THING_NAME_RE
from upparat.emulator.presign import BUCKET_RE, MAX_KEY_BYTES, placeholder_v1, placeholder_v2

JobId = NewType("JobId", str)
ThingName = NewType("ThingName", str)
GroupName = NewType("GroupName", str)

DEFAULT_JOB_PREFIX = "upparat_"
# RoleArn is 20-2048 characters; IAM role names and paths use [\w+=,.@-].
ROLE_ARN_RE = re.compile(r"arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]+")
SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
# S3's "safe characters" for object keys: they need no percent-encoding in a URL, so a
# v1 placeholder URL names the key exactly, however AWS IoT parses it. v2 encodes the key
# (upparat.emulator.presign owns both syntaxes), so any key works there.
SAFE_KEY_RE = re.compile(r"[A-Za-z0-9!_.*'()/-]+")

MAX_DOCUMENT_CHARS = 32768
MIN_EXPIRES_IN, MAX_EXPIRES_IN = 60, 3600
MIN_TIMEOUT_MINUTES, MAX_TIMEOUT_MINUTES = 1, 10080
MAX_COMMENT_CHARS = 2028
MAX_URL_CHARS = 2048  # the daemon refuses longer file URLs (upparat.aws.inbound)


# Query parameters that make a URL a credential: pre-signed S3/CloudFront URLs, tokens.
_SECRET_PARAM = re.compile(
    r"(?i)signature|credential|security-token|token|secret|password|awsaccesskeyid|^sig$|^key$"
)
_URL_IN_TEXT = re.compile(r"https?://[^\s\"'<>]+")


class Mode(enum.Enum):
    """Where the job goes: AWS IoT, or the local jobs emulator."""

    AWS = "aws"
    EMULATOR = "emulator"


class Placeholder(enum.Enum):
    """Which pre-signed URL placeholder the document uses (create-manage-jobs, "Presigned URLs")."""

    V1 = "v1"  # ${aws:iot:s3-presigned-url:<url>}, the key as written
    V2 = "v2"  # ${aws:iot:s3-presigned-url-v2:https://s3.<region>.amazonaws.com/<bucket>/<key>}


class TargetSelection(enum.Enum):
    SNAPSHOT = "SNAPSHOT"
    CONTINUOUS = "CONTINUOUS"


@attrs.frozen(kw_only=True)
class Given:
    """One value from the command line, with where it came from (for error messages)."""

    value: str
    origin: str  # "--thing", "--things-from fleet.txt line 3"


@attrs.frozen(kw_only=True)
class Problem:
    """Bad input: what the option got and what is allowed. The text starts with the option."""

    option: str
    text: str

    def __str__(self) -> str:
        return self.text


@attrs.frozen(kw_only=True)
class Rejected:
    problems: tuple[Problem, ...]


@attrs.frozen(kw_only=True)
class S3Object:
    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"https://{self.bucket}.s3.amazonaws.com/{self.key}"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@attrs.frozen(kw_only=True)
class HttpFile:
    url: str

    def __str__(self) -> str:
        return redact_url(self.url)


FileSource: TypeAlias = S3Object | HttpFile


@attrs.frozen(kw_only=True)
class Presign:
    """Pre-signed URL configuration. role_arn is None with the emulator (it signs without one)."""

    role_arn: str | None
    expires_in: int


@attrs.frozen(kw_only=True)
class FileFacts:
    sha256: str  # lower-case hex
    size: int


@attrs.frozen(kw_only=True)
class CreateInput:
    """`upparat-job create` as typed, before any check."""

    file: str
    version: str
    things: tuple[Given, ...] = ()
    groups: tuple[Given, ...] = ()
    force: bool = False
    meta: str | None = None
    job_id: str | None = None
    job_prefix: str = DEFAULT_JOB_PREFIX
    role_arn: str | None = None
    expires: int | None = None
    target_selection: TargetSelection = TargetSelection.SNAPSHOT
    in_progress_timeout: int | None = None
    sha256: str | None = None
    size: int | None = None
    presign: bool = False
    placeholder: Placeholder | None = None  # None: v2 for s3://, v1 for an http(s) URL


@attrs.frozen(kw_only=True)
class JobSpec:
    """A job that passed every check that can be made without asking a service."""

    job_id: JobId
    file: FileSource
    version: str
    force: bool
    meta: str | None
    things: tuple[ThingName, ...]
    groups: tuple[GroupName, ...]
    presign: Presign | None
    target_selection: TargetSelection
    in_progress_timeout: int | None
    sha256: str | None  # given with --sha256 (lower-case)
    size: int | None  # given with --size
    placeholder: Placeholder = Placeholder.V1
    # The bucket's region, for a v2 placeholder: the backend says it once asked
    # (Backend.s3_region); set with attrs.evolve before build_document.
    s3_region: str | None = None

    @property
    def description(self) -> str:
        """CreateJob's description (shown in the AWS console): [^\\p{C}]{0,2028}."""
        text = f"upparat update to {self.version}"
        return "".join(c for c in text if not unicodedata.category(c).startswith("C"))[:2028]

    @property
    def document_file(self) -> str:
        """The `file` value of the document: a placeholder AWS IoT (or the emulator) signs."""
        match self.file:
            case S3Object(bucket=bucket, key=key):
                match self.placeholder:
                    case Placeholder.V1:
                        return placeholder_v1(self.file.url)
                    case Placeholder.V2:
                        if self.s3_region is None:
                            raise AssertionError("a v2 placeholder needs JobSpec.s3_region")
                        return placeholder_v2(self.s3_region, bucket, key)
                    case _:
                        assert_never(self.placeholder)
            case HttpFile(url=url):
                return placeholder_v1(url) if self.presign is not None else url
            case _:
                assert_never(self.file)


@attrs.frozen(kw_only=True)
class Planned:
    spec: JobSpec
    warnings: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Document:
    """The job document: `text` is sent as is, `shown` is for the terminal (no secrets)."""

    text: str
    shown: str


# ---- create ----------------------------------------------------------------------------


def plan_create(given: CreateInput, mode: Mode, *, now: float, token: str) -> Planned | Rejected:
    """Check everything about a job that can be checked offline; report every problem."""
    problems: list[Problem] = []
    warnings: list[str] = []

    file = _file(given.file, mode, given.placeholder, problems, warnings)
    version = _text_value("--version", given.version, problems, required=True)
    meta = None if given.meta is None else _text_value("--meta", given.meta, problems)

    prefix = given.job_prefix
    if not JOB_PREFIX_RE.fullmatch(prefix):
        problems.append(
            Problem(
                option="--job-prefix",
                text=f"--job-prefix must be 1-63 of a-z A-Z 0-9 _ - (like the daemon's"
                f" [service] job_prefix), got {_show(prefix)}",
            )
        )
    job_id = _job_id(given.job_id, prefix, version or "", now, token, problems)

    things = tuple(ThingName(t) for t in _names(given.things, "thing", problems))
    groups = tuple(GroupName(g) for g in _names(given.groups, "thing group", problems))
    if mode is Mode.EMULATOR and given.groups:
        problems.append(
            Problem(
                option="--group",
                text="--group cannot be used with --emulator: the emulator has no thing groups;"
                " name the things with --thing or --things-from",
            )
        )
    if not given.things and not given.groups:
        problems.append(
            Problem(
                option="--thing",
                text="--thing, --group or --things-from: give at least one target",
            )
        )

    presign = _presign(given, mode, file, problems)
    placeholder = _placeholder(given.placeholder, file, presign, problems)

    if mode is Mode.EMULATOR and given.target_selection is TargetSelection.CONTINUOUS:
        problems.append(
            Problem(
                option="--target-selection",
                text="--target-selection CONTINUOUS needs thing groups, which the emulator does"
                " not have; use SNAPSHOT (the default)",
            )
        )
    if given.target_selection is TargetSelection.CONTINUOUS and not given.groups:
        warnings.append(
            "--target-selection CONTINUOUS only matters for --group targets (things that join"
            " the group later get the job too)"
        )
    timeout = given.in_progress_timeout
    if timeout is not None and not MIN_TIMEOUT_MINUTES <= timeout <= MAX_TIMEOUT_MINUTES:
        problems.append(
            Problem(
                option="--in-progress-timeout",
                text=f"--in-progress-timeout must be {MIN_TIMEOUT_MINUTES}-{MAX_TIMEOUT_MINUTES}"
                f" minutes (7 days), got {timeout}",
            )
        )

    sha256 = given.sha256
    if sha256 is not None and not SHA256_RE.fullmatch(sha256):
        problems.append(
            Problem(
                option="--sha256",
                text=f"--sha256 must be 64 hexadecimal characters, got {_show(sha256)}",
            )
        )
    if given.size is not None and given.size < 0:
        problems.append(
            Problem(option="--size", text=f"--size must be 0 or more bytes, got {given.size}")
        )

    if problems or file is None or version is None or job_id is None:
        return Rejected(problems=tuple(problems))
    return Planned(
        spec=JobSpec(
            job_id=job_id,
            file=file,
            version=version,
            force=given.force,
            meta=meta,
            things=things,
            groups=groups,
            presign=presign,
            target_selection=given.target_selection,
            in_progress_timeout=timeout,
            sha256=None if sha256 is None else sha256.lower(),
            size=given.size,
            placeholder=placeholder,
        ),
        warnings=tuple(warnings),
    )


def build_document(
    spec: JobSpec, facts: FileFacts, signature: bytes | None = None
) -> Document | Rejected:
    """The upparat job document (see upparat.aws.inbound), within the AWS size limit.

    `signature`: DER ECDSA over `facts.sha256`, checked by the caller; goes in as base64."""
    doc: dict[str, str | int | bool] = {
        "file": spec.document_file,
        "version": spec.version,
        "force": spec.force,
    }
    if spec.meta is not None:
        doc["meta"] = spec.meta
    doc["sha256"] = facts.sha256.lower()
    doc["size"] = facts.size
    if signature is not None:
        doc["signature"] = base64.b64encode(signature).decode("ascii")
    # AWS counts characters of the document as sent; non-ASCII stays unescaped.
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    if len(text) > MAX_DOCUMENT_CHARS:
        meta_len = 0 if spec.meta is None else len(spec.meta)
        return Rejected(
            problems=(
                Problem(
                    option="--meta",
                    text=f"the job document would be {len(text)} characters, AWS IoT allows"
                    f" {MAX_DOCUMENT_CHARS}: shorten --meta ({meta_len} characters)"
                    f" or --version ({len(spec.version)})",
                ),
            )
        )
    shown = dict(doc)
    if isinstance(spec.file, HttpFile):
        shown["file"] = (
            placeholder_v1(redact_url(spec.file.url))
            if spec.presign is not None
            else redact_url(spec.file.url)
        )
    return Document(text=text, shown=json.dumps(shown, ensure_ascii=False, indent=2))


def check_facts(found: FileFacts, spec: JobSpec, source: str) -> tuple[Problem, ...]:
    """--sha256 / --size against what the file turned out to be."""
    problems: list[Problem] = []
    if spec.sha256 is not None and spec.sha256 != found.sha256.lower():
        problems.append(
            Problem(
                option="--sha256",
                text=f"--sha256 {spec.sha256} differs from the file's sha256 {found.sha256}"
                f" ({source}); check the file or drop --sha256",
            )
        )
    if spec.size is not None and spec.size != found.size:
        problems.append(
            Problem(
                option="--size",
                text=f"--size {spec.size} differs from the file's size {found.size} bytes"
                f" ({source}); check the file or drop --size",
            )
        )
    return tuple(problems)


def things_from_text(text: str, origin: str) -> tuple[Given, ...]:
    """Thing names, one a line; blank lines and `#` comments are skipped."""
    found: list[Given] = []
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.split("#", 1)[0].strip()
        if name:
            found.append(Given(value=name, origin=f"{origin} line {number}"))
    return tuple(found)


def generate_job_id(prefix: str, version: str, now: float, token: str) -> JobId:
    """`<prefix><version>_<UTC time>_<token>`, sanitised to [a-zA-Z0-9_-] and at most 64."""
    stamp = datetime.datetime.fromtimestamp(now, tz=datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    token = re.sub(r"[^a-zA-Z0-9]", "", token)
    tail = f"_{stamp}_{token}" if token else f"_{stamp}"
    room = 64 - len(prefix) - len(tail)
    safe_version = re.sub(r"[^a-zA-Z0-9_-]+", "-", version).strip("-_")[: max(room, 0)]
    safe_version = safe_version.rstrip("-_")
    job_id = f"{prefix}{safe_version}{tail}" if safe_version else f"{prefix}{tail[1:]}"
    return JobId(job_id[:64])


# ---- cancel, status, endpoints ---------------------------------------------------------


def check_comment(comment: str) -> Problem | None:
    if not comment or len(comment) > MAX_COMMENT_CHARS or _has_control(comment):
        return Problem(
            option="--comment",
            text=f"--comment must be 1-{MAX_COMMENT_CHARS} characters without control"
            f" characters, got {len(comment)} characters",
        )
    return None


def check_job_id(job_id: str, option: str = "JOB_ID") -> Problem | None:
    if JOB_ID_RE.fullmatch(job_id):
        return None
    return Problem(
        option=option, text=f"{option} must be 1-64 of a-z A-Z 0-9 _ -, got {_show(job_id)}"
    )


def parse_endpoint(text: str) -> tuple[str, int] | Problem:
    """`HOST:PORT` (IPv6 as `[::1]:1883`) for --emulator."""
    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if sep and host and port_text.isdigit() and 1 <= int(port_text) <= 65535:
        return host, int(port_text)
    return Problem(
        option="--emulator",
        text=f"--emulator must be HOST:PORT of the emulator's MQTT broker (e.g."
        f" 127.0.0.1:1883), got {_show(text)}",
    )


def redact_url(url: str) -> str:
    """The URL without credentials: no user:password, no signed or token query string."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if port is not None:
        netloc = f"{netloc}:{port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"***@{netloc}"
    query = parts.query
    if query and _looks_secret(query):
        query = "<redacted>"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted (statusDetails, service messages)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


# ---- helpers ---------------------------------------------------------------------------


def _file(
    text: str,
    mode: Mode,
    placeholder: Placeholder | None,
    problems: list[Problem],
    warnings: list[str],
) -> FileSource | None:
    if text.startswith("s3://"):
        # The emulator serves s3:// objects from its --s3-endpoint (EmulatorBackend).
        return _s3_object(text, placeholder or Placeholder.V2, problems)
    if not text.startswith(("https://", "http://")):
        allowed = (
            "s3://BUCKET/KEY or an http(s) URL"
            if mode is Mode.EMULATOR
            else "s3://BUCKET/KEY or an https URL"
        )
        problems.append(
            Problem(
                option="--file", text=f"--file must be {allowed}, got {_show(redact_url(text))}"
            )
        )
        return None
    problem = _url_problem(text)
    if problem is not None:
        problems.append(Problem(option="--file", text=f"--file {problem}"))
        return None
    if text.startswith("http://"):
        warnings.append(
            "--file is plain http://: devices refuse it unless their upparat.conf has"
            " [service] allow_http = true"
        )
    query = urllib.parse.urlsplit(text).query
    if mode is Mode.AWS and query and _looks_secret(query):
        warnings.append(
            "--file looks pre-signed: that URL expires, and every device would get the same"
            " one; upload the file to S3 and pass s3://BUCKET/KEY so AWS IoT signs a fresh URL"
            " for each download"
        )
    return HttpFile(url=text)


def _s3_object(text: str, placeholder: Placeholder, problems: list[Problem]) -> S3Object | None:
    bucket, _, key = text[len("s3://") :].partition("/")
    ok = True
    if not BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        problems.append(
            Problem(
                option="--file",
                text=f"--file s3://BUCKET/KEY: the bucket must be 3-63 of a-z 0-9 . - starting"
                f" and ending with a letter or digit, got {_show(bucket)}",
            )
        )
        ok = False
    if not key:
        problems.append(
            Problem(option="--file", text="--file s3://BUCKET/KEY needs the object's key")
        )
        ok = False
    elif len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        problems.append(
            Problem(option="--file", text=f"--file: S3 keys are at most {MAX_KEY_BYTES} bytes")
        )
        ok = False
    elif _has_control(key):
        problems.append(
            Problem(option="--file", text="--file: the S3 key must not contain control characters")
        )
        ok = False
    elif placeholder is Placeholder.V1 and not SAFE_KEY_RE.fullmatch(key):
        problems.append(
            Problem(
                option="--file",
                text="--file: with --placeholder v1 the S3 key may only use letters, digits"
                " and ! - _ . * ' ( ) / (S3's safe characters, as v1 takes the URL as written),"
                f" got {_show(key)}; use --placeholder v2 (the default) or rename the object",
            )
        )
        ok = False
    return S3Object(bucket=bucket, key=key) if ok else None


def _url_problem(url: str) -> str | None:
    """Why the daemon would refuse this URL (the same rules as upparat.aws.inbound)."""
    if len(url) > MAX_URL_CHARS:
        return f"must be at most {MAX_URL_CHARS} characters, got {len(url)}"
    if not url.isascii() or any(ch <= " " or ch == "\x7f" for ch in url):
        return "must not contain spaces, control or non-ASCII characters (percent-encode them)"
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port
    except ValueError as err:
        return f"cannot be parsed as a URL: {err}"
    if not parts.hostname:
        return f"must be an absolute URL with a host, got {_show(redact_url(url))}"
    return None


def _placeholder(
    given: Placeholder | None,
    file: FileSource | None,
    presign: Presign | None,
    problems: list[Problem],
) -> Placeholder:
    if isinstance(file, HttpFile) and given is Placeholder.V2:
        problems.append(
            Problem(
                option="--placeholder",
                text="--placeholder v2 names an S3 object: use --file s3://BUCKET/KEY (an"
                " http(s) URL can only go in a v1 placeholder, with --presign on the emulator)",
            )
        )
    if isinstance(file, HttpFile) and given is Placeholder.V1 and presign is None:
        problems.append(
            Problem(
                option="--placeholder",
                text="--placeholder is for pre-signed files (s3://..., or --presign with"
                " --emulator); drop it",
            )
        )
    if given is not None:
        return given
    return Placeholder.V2 if isinstance(file, S3Object) else Placeholder.V1


def _presign(
    given: CreateInput, mode: Mode, file: FileSource | None, problems: list[Problem]
) -> Presign | None:
    expires = given.expires
    if expires is not None and not MIN_EXPIRES_IN <= expires <= MAX_EXPIRES_IN:
        problems.append(
            Problem(
                option="--expires",
                text=f"--expires must be {MIN_EXPIRES_IN}-{MAX_EXPIRES_IN} seconds, got {expires}",
            )
        )
    expires_in = MAX_EXPIRES_IN if expires is None else expires
    if mode is Mode.EMULATOR:
        if given.role_arn is not None:
            problems.append(
                Problem(
                    option="--role-arn",
                    text="--role-arn is not used with --emulator (it signs URLs without a role);"
                    " drop it",
                )
            )
        # s3:// objects are always pre-signed, as on AWS.
        if given.presign or isinstance(file, S3Object):
            return Presign(role_arn=None, expires_in=expires_in)
        if expires is not None:
            problems.append(
                Problem(
                    option="--expires",
                    text="--expires needs --presign with --emulator (only signed URLs expire)",
                )
            )
        return None
    if given.presign:
        problems.append(
            Problem(
                option="--presign",
                text="--presign is for --emulator only; on AWS, s3:// files are always pre-signed",
            )
        )
    if not isinstance(file, S3Object):
        if file is not None and given.role_arn is not None:
            problems.append(
                Problem(
                    option="--role-arn",
                    text="--role-arn is only for --file s3://... (devices download an https URL"
                    " directly); drop it",
                )
            )
        if file is not None and expires is not None:
            problems.append(
                Problem(option="--expires", text="--expires is only for --file s3://...; drop it")
            )
        return None
    role = given.role_arn
    if role is None:
        problems.append(
            Problem(
                option="--role-arn",
                text="--role-arn is required with --file s3://...: the ARN of an IAM role that"
                " AWS IoT assumes to pre-sign the download URL (it needs s3:GetObject on the"
                " object)",
            )
        )
        return None
    if not 20 <= len(role) <= 2048 or not ROLE_ARN_RE.fullmatch(role):
        problems.append(
            Problem(
                option="--role-arn",
                text="--role-arn must be an IAM role ARN like"
                f" arn:aws:iam::123456789012:role/upparat-download, got {_show(role)}",
            )
        )
        return None
    return Presign(role_arn=role, expires_in=expires_in)


def _job_id(
    given: str | None,
    prefix: str,
    version: str,
    now: float,
    token: str,
    problems: list[Problem],
) -> JobId | None:
    if given is None:
        return generate_job_id(prefix, version, now, token)
    job_id = given if given.startswith(prefix) else f"{prefix}{given}"
    if JOB_ID_RE.fullmatch(job_id):
        return JobId(job_id)
    problems.append(
        Problem(
            option="--job-id",
            text=f"--job-id must be 1-64 of a-z A-Z 0-9 _ - including the prefix {prefix!r}"
            f" ({64 - len(prefix)} characters left for the id), got {_show(job_id)}",
        )
    )
    return None


def _names(given: Iterable[Given], what: str, problems: list[Problem]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in given:
        if THING_NAME_RE.fullmatch(item.value):
            seen.setdefault(item.value, None)
        else:
            problems.append(
                Problem(
                    option=item.origin.split(" ", 1)[0],
                    text=f"{item.origin}: a {what} name must be 1-128 of a-z A-Z 0-9 : _ -,"
                    f" got {_show(item.value)}",
                )
            )
    return tuple(seen)


def _text_value(
    option: str, value: str, problems: list[Problem], *, required: bool = False
) -> str | None:
    if required and not value:
        problems.append(Problem(option=option, text=f"{option} must not be empty"))
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        problems.append(
            Problem(option=option, text=f"{option} is not valid UTF-8 (check the shell's locale)")
        )
        return None
    if _has_control(value):
        problems.append(
            Problem(option=option, text=f"{option} must not contain control characters")
        )
        return None
    return value


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _looks_secret(query: str) -> bool:
    names = [name for name, _ in urllib.parse.parse_qsl(query, keep_blank_values=True)]
    return any(_SECRET_PARAM.search(name) for name in names)


def _show(text: str, limit: int = 80) -> str:
    shown = text if len(text) <= limit else f"{text[:limit]}..."
    return json.dumps(shown, ensure_ascii=False)
