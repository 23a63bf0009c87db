"""The core's rules about a job document's file URL: which schemes it accepts, and how a
URL is written in a log line. Pure.
"""

from __future__ import annotations


def allowed_schemes(*, allow_http: bool) -> tuple[str, ...]:
    """The schemes a file may be fetched with: `https`, and `http` with `allow_http`. The
    one rule, also read by the download driver (upparat.urls.scheme_problem)."""
    return ("https", "http") if allow_http else ("https",)


def file_url_problem(url: str, *, allow_http: bool) -> str | None:
    """Why `url` cannot be downloaded (for `invalid_job_document`), or None if it can."""
    allowed = allowed_schemes(allow_http=allow_http)
    scheme, separator, rest = url.partition("://")
    host = rest.split("/", 1)[0].split("?", 1)[0]
    if not separator or scheme.lower() not in allowed or not host:
        expected = " or ".join(f"{s}://" for s in allowed)
        got = f"a {scheme}:// URL" if separator else "no URL"
        return f"must be an {expected} URL, got {got}"
    return None


def redact(url: str) -> str:
    """No pre-signed query strings nor user:password@ in logs: they are credentials."""
    url = url.split("?", 1)[0].split("#", 1)[0]
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"
