"""The URL rules the edges parse with: a job document's file URL (and a redirect's target)
and the download proxy URL.

The one home of what upparat accepts as such a URL, read by the AWS edge (job documents),
the download driver (the URL it fetches, redirects, proxies) and the config
(`[service] proxy`), so no URL passes one and fails the other. Which schemes are allowed
and how a URL appears in a log line are the core's rules (`upparat.core.urls`), since the
core needs them too and may not parse with `urllib`. Pure string work: no I/O.
"""

from __future__ import annotations

import urllib.parse
from typing import Final

import attrs

from upparat.core.urls import allowed_schemes

MAX_FILE_URL_CHARS: Final = 2048
"""Longer than any pre-signed S3 URL; a longer `file` is refused before anything is fetched."""

PROXY_EXPECTED: Final = "an http:// proxy URL like http://[user:password@]proxy.example:3128"
"""What `parse_proxy_url` accepts, for messages that say what is allowed."""


@attrs.frozen(kw_only=True)
class BadUrl:
    """Why a URL is refused. Never quotes the URL: it may be pre-signed or carry a password."""

    reason: str


@attrs.frozen(kw_only=True)
class FileUrl:
    """A URL with a host and no credentials, safe to put on a request line."""

    scheme: str
    """Lower case; whether it is allowed is `scheme_problem`'s question."""
    host: str
    """Without brackets for an IPv6 literal."""
    port: int | None
    path: str
    query: str


@attrs.frozen(kw_only=True)
class ProxyUrl:
    host: str
    port: int
    """80 when the URL names none, as curl does."""
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)


def parse_file_url(url: str) -> FileUrl | BadUrl:
    """The syntax of a job document's `file` (and of a redirect's target), or why not.

    Credentials in the URL are refused: a pre-signed URL never has them, they would end up
    in logs, and what `user:pw@host` means to a redirect is a classic source of confusion.
    """
    if len(url) > MAX_FILE_URL_CHARS:
        return BadUrl(reason=f"URL is longer than {MAX_FILE_URL_CHARS} characters ({len(url)})")
    # urlsplit silently drops tabs and newlines (WHATWG), so they are refused first.
    if not url.isascii() or any(ch <= " " or ch == "\x7f" for ch in url):
        return BadUrl(
            reason="URL contains spaces, control or non-ASCII characters (percent-encode them)"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        return BadUrl(reason=f"URL cannot be parsed: {_why(e)}")
    if not parts.scheme or not url.lower().startswith(parts.scheme + "://"):
        return BadUrl(reason="not an absolute URL with a host (scheme://host/path)")
    if "@" in parts.netloc:
        return BadUrl(reason="URLs with embedded credentials (user:password@) are refused")
    if not parts.hostname:
        return BadUrl(reason="not an absolute URL with a host (scheme://host/path)")
    return FileUrl(
        scheme=parts.scheme.lower(),
        host=parts.hostname,
        port=port,
        path=parts.path,
        query=parts.query,
    )


def scheme_problem(url: FileUrl, *, allow_http: bool) -> str | None:
    """Why `url`'s scheme may not be fetched (the core's `allowed_schemes`), or None."""
    allowed = allowed_schemes(allow_http=allow_http)
    if url.scheme in allowed:
        return None
    expected = " or ".join(f"{s}:" for s in allowed)
    return f"scheme {url.scheme}: is not allowed, expected {expected}"


def parse_proxy_url(text: str) -> ProxyUrl | BadUrl:
    """`[service] proxy` (and HTTP(S)_PROXY): an `http://` proxy, optional credentials.

    Only plain-HTTP proxies: the download driver speaks HTTP to the proxy (CONNECT for
    https:// files), it does not open TLS to the proxy itself.
    """
    if not text.isascii() or any(ch <= " " or ch == "\x7f" for ch in text):
        return BadUrl(reason="the proxy URL contains spaces, control or non-ASCII characters")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as e:
        return BadUrl(reason=f"the proxy URL cannot be parsed: {_why(e)}")
    if parts.scheme.lower() != "http" or "://" not in text:
        shown = f"{parts.scheme}://" if "://" in text else "no scheme"
        return BadUrl(reason=f"the proxy must be an http:// URL, got {shown}")
    if not parts.hostname:
        return BadUrl(reason="the proxy URL has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return BadUrl(reason="the proxy URL must be only http://[user:password@]host[:port]")
    username = None if parts.username is None else urllib.parse.unquote(parts.username)
    password = None if parts.password is None else urllib.parse.unquote(parts.password)
    return ProxyUrl(
        host=parts.hostname,
        port=80 if port is None else port,
        username=username,
        password=password,
    )


def _why(error: ValueError) -> str:
    text = str(error)
    if "out of range" in text:
        return "port out of range 0-65535"
    if "IPv6" in text or "bracket" in text.lower():
        return "malformed host (an IPv6 literal needs [brackets])"
    return "malformed port" if "port" in text.lower() else text
