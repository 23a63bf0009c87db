"""The core's URL rules: which schemes a job's file may be fetched with, the document check
that reads them, and how a URL is written in a log line. Pure string work (the core does
not import `urllib`); the parsing of file and proxy URLs is the edges' (`upparat.urls`).
"""

from __future__ import annotations

REDACT_UNPARSEABLE = "<unparseable URL>"


def allowed_schemes(*, allow_http: bool) -> tuple[str, ...]:
    """The schemes a file may be fetched with: `https`, and `http` with `allow_http`. The
    one rule, read by the core's document check and the download driver (`scheme_problem`)."""
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
    """`scheme://host[:port]/path` of `url`: no credentials, query string or fragment;
    scheme and host in lower case, an IPv6 host in brackets.

    Pre-signed URLs carry their signature in the query string; this is the only form of a
    URL that may reach a log line or an event message. A URL whose host or port cannot be
    read is `<unparseable URL>`; a text with no `://` is kept without query and fragment.
    """
    url = url.split("#", 1)[0].split("?", 1)[0]
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    authority, slash, path = rest.partition("/")
    hostport = authority.rpartition("@")[2]
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            return REDACT_UNPARSEABLE
        port = after[1:] if after else None
        host = f"[{host}]"
    else:
        host, colon, port_text = hostport.partition(":")
        port = port_text if colon else None
    if (
        port is not None
        and port != ""
        and not (port.isascii() and port.isdigit() and int(port) <= 65535)
    ):
        return REDACT_UNPARSEABLE
    netloc = host.lower() if not port else f"{host.lower()}:{int(port)}"
    return f"{scheme.lower()}://{netloc}{slash}{path}"
