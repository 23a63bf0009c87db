"""Stream an http(s) file once to learn its sha256 and size (urllib, no third-party code).

Owns the one download `upparat-job create` makes. Messages name the URL without user
info or a signed query string (model.redact_url).
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from collections.abc import Iterable

from upparat.jobtool.backend import BackendError, InputError
from upparat.jobtool.model import FileFacts, HttpFile, JobSpec, check_facts, redact_url

CHUNK = 1024 * 1024


def digest(chunks: Iterable[bytes]) -> FileFacts:
    sha = hashlib.sha256()
    size = 0
    for chunk in chunks:
        sha.update(chunk)
        size += len(chunk)
    return FileFacts(sha256=sha.hexdigest(), size=size)


def http_facts(file: HttpFile, spec: JobSpec, *, timeout: float = 30.0) -> FileFacts:
    """--sha256 and --size when both are given (no I/O); otherwise stream the URL once."""
    if spec.sha256 is not None and spec.size is not None:
        return FileFacts(sha256=spec.sha256, size=spec.size)
    found = stream(file.url, timeout=timeout)
    problems = check_facts(found, spec, f"streamed from {redact_url(file.url)}")
    if problems:
        raise InputError(problems)
    return found


def stream(url: str, *, timeout: float) -> FileFacts:
    shown = redact_url(url)
    request = urllib.request.Request(url, headers={"User-Agent": "upparat-job"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            found = digest(iter(lambda: response.read(CHUNK), b""))
    except urllib.error.HTTPError as e:
        raise BackendError(f"--file {shown}: the server answered {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise BackendError(f"--file {shown}: cannot download it ({e.reason})") from None
    except (OSError, http.client.HTTPException) as e:
        raise BackendError(f"--file {shown}: the download broke off ({e!r})") from None
    if expected is not None and expected.isdigit() and int(expected) != found.size:
        raise BackendError(
            f"--file {shown}: got {found.size} bytes, the server announced {expected}"
        )
    return found
