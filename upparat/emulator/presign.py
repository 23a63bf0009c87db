"""Pre-signed URL placeholders in job documents and the signers that fill them.

AWS replaces `${aws:iot:s3-presigned-url-v2:<url>}` and the older
`${aws:iot:s3-presigned-url:<url>}` in a job document's string values with a freshly
signed URL on every document request (create-manage-jobs, "Presigned URLs":
https://docs.aws.amazon.com/iot/latest/developerguide/create-manage-jobs.html). This
module owns both syntaxes (the emulator fills them, `upparat-job` writes them), the
S3 key encoding of the v2 form, and the substitution; it never reads the document
store and never logs a signed URL.

v2 names an S3 object as `https://s3.<region>.amazonaws.com/<bucket>/<key>` with the
key S3-encoded (percent-encoded), so any key works. v1 takes the URL as written; the
emulator signs any v1 URL (tests point it at loopback servers). An emulator given an
`s3_endpoint` serves S3 objects from there: a v2 placeholder, or a v1 one whose URL is an
S3 URL, becomes `<s3_endpoint>/<bucket>/<key>` (key encoded again) before it is signed.
"""

from __future__ import annotations

import datetime
import re
import secrets
import urllib.parse
from collections.abc import Callable

import attrs

from upparat.emulator.clock import Clock, SystemClock
from upparat.emulator.wire import JsonValue

#: (url, expires_in_seconds) -> signed url
Signer = Callable[[str, int], str]

PLACEHOLDER = re.compile(r"\$\{aws:iot:s3-presigned-url(-v2)?:([^}]+)\}")
V1 = "${{aws:iot:s3-presigned-url:{url}}}"
V2 = "${{aws:iot:s3-presigned-url-v2:{url}}}"

MIN_EXPIRES_IN = 60
MAX_EXPIRES_IN = 3600
MAX_KEY_BYTES = 1024

# Bucket naming rules (general purpose buckets).
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
REGION_RE = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")
_V2_HOST = re.compile(r"s3\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?")
# v1 S3 URLs the emulator maps onto its s3_endpoint: virtual-hosted and path style.
_V1_VIRTUAL = re.compile(
    r"([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])\.s3(?:[.-]([a-z0-9-]+))?\.amazonaws\.com"
)
_V1_PATH = re.compile(r"s3(?:[.-]([a-z0-9-]+))?\.amazonaws\.com")
# An S3-encoded key: unreserved and S3-safe characters as they are, anything else %XX.
_ENCODED_KEY = re.compile(r"(?:[A-Za-z0-9!_.*'()/~-]|%[0-9A-Fa-f]{2})+")


@attrs.frozen(kw_only=True)
class S3Location:
    """An S3 object a placeholder names; `key` is the object key itself (decoded)."""

    region: str | None  # None: the URL did not say (v1 global endpoint)
    bucket: str
    key: str


def encode_key(key: str) -> str:
    """The key as S3 (SigV4 canonical URI) encodes it: every byte but A-Za-z0-9-._~ and /."""
    return urllib.parse.quote(key, safe="/~")


def v2_url(region: str, bucket: str, key: str) -> str:
    """`https://s3.<region>.amazonaws.com/<bucket>/<S3-encoded key>`, what v2 expects."""
    return f"https://s3.{region}.amazonaws.com/{bucket}/{encode_key(key)}"


def placeholder_v1(url: str) -> str:
    return V1.format(url=url)


def placeholder_v2(region: str, bucket: str, key: str) -> str:
    return V2.format(url=v2_url(region, bucket, key))


def parse_v2(url: str) -> S3Location | str:
    """The object a v2 placeholder URL names, or why it names none (for a refusal)."""
    parts = urllib.parse.urlsplit(url)
    host = _V2_HOST.fullmatch(parts.netloc)
    if parts.scheme != "https" or host is None:
        return (
            "a v2 pre-signed URL placeholder must name an S3 object as"
            f" https://s3.<region>.amazonaws.com/<bucket>/<key>, got {_shown(url)}"
        )
    if parts.query or parts.fragment:
        return f"a v2 placeholder URL takes no query or fragment, got {_shown(url)}"
    bucket, _, raw_key = parts.path.lstrip("/").partition("/")
    return _location(host.group(1), bucket, raw_key, encoded=True, url=url)


def parse_s3_v1(url: str) -> S3Location | None:
    """The object a v1 placeholder URL names if it is an S3 URL; None for any other URL.

    v1 takes the key as written in the URL (no decoding): that is what v2 changed.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or parts.query or parts.fragment:
        return None
    virtual = _V1_VIRTUAL.fullmatch(parts.netloc)
    if virtual is not None:
        found = _location(
            virtual.group(2), virtual.group(1), parts.path[1:], encoded=False, url=url
        )
        return found if isinstance(found, S3Location) else None
    path = _V1_PATH.fullmatch(parts.netloc)
    if path is not None:
        bucket, _, key = parts.path.lstrip("/").partition("/")
        found = _location(path.group(1), bucket, key, encoded=False, url=url)
        return found if isinstance(found, S3Location) else None
    return None


def _location(
    region: str | None, bucket: str, raw_key: str, *, encoded: bool, url: str
) -> S3Location | str:
    if region is not None and not REGION_RE.fullmatch(region):
        return f"{region!r} in {_shown(url)} is not an AWS region"
    if not BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        return f"{bucket!r} in {_shown(url)} is not an S3 bucket name"
    if not raw_key:
        return f"{_shown(url)} names a bucket but no object key"
    if encoded:
        if not _ENCODED_KEY.fullmatch(raw_key):
            return (
                f"the object key in {_shown(url)} must be S3-encoded (percent-encode"
                " spaces, '+', '%' and other reserved or non-ASCII characters)"
            )
        try:
            key = urllib.parse.unquote(raw_key, errors="strict")
        except UnicodeDecodeError:
            return f"the object key in {_shown(url)} does not decode to UTF-8"
    else:
        key = raw_key
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"S3 object keys are at most {MAX_KEY_BYTES} bytes; {_shown(url)} names a longer one"
    return S3Location(region=region, bucket=bucket, key=key)


def _shown(url: str) -> str:
    return repr(url if len(url) <= 120 else url[:120] + "...")


def check_placeholders(value: JsonValue) -> str | None:
    """Why a document's placeholders cannot be filled (a malformed v2 URL), or None."""
    if isinstance(value, str):
        for match in PLACEHOLDER.finditer(value):
            if match.group(1):
                found = parse_v2(match.group(2))
                if isinstance(found, str):
                    return found
        return None
    if isinstance(value, list):
        items: list[JsonValue] = value
    elif isinstance(value, dict):
        items = list(value.values())
    else:
        return None
    for item in items:
        problem = check_placeholders(item)
        if problem is not None:
            return problem
    return None


class DefaultSigner:
    """Appends an S3-looking SigV4 query (date, expiry, random signature) to the URL.

    The signature is random, so two document requests never see the same URL, like AWS.
    An HTTP test server can honour expiry from X-Amz-Date + X-Amz-Expires.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock if clock is not None else SystemClock()

    def __call__(self, url: str, expires_in: int) -> str:
        date = datetime.datetime.fromtimestamp(self._clock.now(), tz=datetime.UTC)
        query = (
            "X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Date={date.strftime('%Y%m%dT%H%M%SZ')}"
            f"&X-Amz-Expires={expires_in}"
            "&X-Amz-SignedHeaders=host"
            f"&X-Amz-Signature={secrets.token_hex(32)}"
        )
        return f"{url}{'&' if '?' in url else '?'}{query}"


def expires_at(url: str) -> float | None:
    """When a URL from DefaultSigner expires (epoch seconds); None if it carries no expiry.

    For test HTTP servers that answer an expired URL like S3 does (403 AccessDenied,
    "Request has expired").
    """
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    try:
        date = datetime.datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
        lifetime = int(query["X-Amz-Expires"][0])
    except (KeyError, IndexError, ValueError):
        return None
    return date.replace(tzinfo=datetime.UTC).timestamp() + lifetime


def endpoint_problem(url: str) -> str | None:
    """Why `url` cannot be an s3_endpoint (an http(s) URL of a server, no query), or None."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        return f"an S3 endpoint must be an http(s) URL like http://127.0.0.1:8000, got {url!r}"
    return None


def object_url(location: S3Location, s3_endpoint: str | None) -> str:
    """Where the emulator's signed URL for an S3 object points (before the signature)."""
    if s3_endpoint is None:
        return v2_url(location.region or "us-east-1", location.bucket, location.key)
    return f"{s3_endpoint.rstrip('/')}/{location.bucket}/{encode_key(location.key)}"


def resolve(match: re.Match[str], s3_endpoint: str | None) -> str | None:
    """The unsigned URL one placeholder stands for; None when it cannot be filled."""
    url = match.group(2)
    if match.group(1):
        found = parse_v2(url)
        return None if isinstance(found, str) else object_url(found, s3_endpoint)
    if s3_endpoint is not None:
        s3 = parse_s3_v1(url)
        if s3 is not None:
            return object_url(s3, s3_endpoint)
    return url


def substitute(
    value: JsonValue, sign: Signer, expires_in: int, s3_endpoint: str | None = None
) -> JsonValue:
    """A copy of `value` with every placeholder in every string value signed.

    A placeholder that cannot be filled (a bad v2 URL in a loaded state file; create_job
    refuses them) stays as it is, as AWS leaves text it does not recognise.
    """
    if isinstance(value, str):

        def fill(match: re.Match[str]) -> str:
            url = resolve(match, s3_endpoint)
            return match.group(0) if url is None else sign(url, expires_in)

        return PLACEHOLDER.sub(fill, value)
    if isinstance(value, list):
        return [substitute(v, sign, expires_in, s3_endpoint) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, sign, expires_in, s3_endpoint) for k, v in value.items()}
    return value
