"""One URL rule (`upparat.core.urls`): the AWS edge, the download driver and the config agree.

A URL the edge accepts and the driver refuses ends FAILED download_failed after the job
started; one both refuse ends REJECTED invalid_job_document before anything happens.
"""

from __future__ import annotations

import json

import pytest

from upparat import urls
from upparat.aws import parse
from upparat.config import ConfigError, parse_config
from upparat.core.events import JobDescribed
from upparat.core.model import InvalidJobDocument, JobDocument, ThingName
from upparat.io import download

THING = ThingName("dev-1")

URLS = [
    "https://h.example/fw.bin?X-Amz-Signature=S",
    "http://127.0.0.1:8080/fw.bin",
    "https://[::1]:8443/fw.bin",
    "HTTPS://H.example/fw.bin",
    "https://user:SECRET@h.example/fw.bin",
    "https://user@h.example/fw.bin",
    "http://admin:secret@[::1]:80/fw.bin",
    "https://[::1/fw.bin",
    "https://h.example:99999/fw.bin",
    "https://h.example:port/fw.bin",
    "https:///fw.bin",
    "https://h.example/a b",
    "https://h.example/a\tb",
    "https://h\u00f4st.example/fw.bin",
    "//h.example/fw.bin",
    "/just/a/path",
    "https://h.example/" + "a" * urls.MAX_FILE_URL_CHARS,
]


def edge_accepts(url: str) -> bool:
    payload = {
        "execution": {
            "jobId": "upparat_7",
            "thingName": "dev-1",
            "jobDocument": {"file": url, "version": "1"},
            "status": "QUEUED",
            "queuedAt": 1,
            "lastUpdatedAt": 1,
            "versionNumber": 1,
            "executionNumber": 1,
        },
        "timestamp": 1,
    }
    event = parse(
        THING, "$aws/things/dev-1/jobs/upparat_7/get/accepted", json.dumps(payload).encode()
    )
    assert isinstance(event, JobDescribed), event
    document = event.execution.document
    assert isinstance(document, JobDocument | InvalidJobDocument)
    return isinstance(document, JobDocument)


def driver_accepts(url: str) -> bool:
    return isinstance(download._parse_url(url, allow_http=True), download._Url)


@pytest.mark.parametrize("url", URLS)
def test_the_aws_edge_and_the_download_driver_accept_the_same_urls(url: str) -> None:
    assert edge_accepts(url) == driver_accepts(url)


@pytest.mark.parametrize(
    "url", ["https://user:SECRET@h.example/fw.bin", "http://admin:SECRET@[::1]:80/fw.bin"]
)
def test_credentials_in_a_job_url_make_the_document_invalid_without_quoting_them(url: str) -> None:
    assert not edge_accepts(url)
    bad = urls.parse_file_url(url)
    assert isinstance(bad, urls.BadUrl)
    assert "credentials" in bad.reason
    assert "SECRET" not in bad.reason


def test_the_scheme_rule_follows_allow_http() -> None:
    parsed = urls.parse_file_url("http://h.example/fw.bin")
    assert isinstance(parsed, urls.FileUrl)
    assert urls.scheme_problem(parsed, allow_http=True) is None
    assert urls.scheme_problem(parsed, allow_http=False) == (
        "scheme http: is not allowed, expected https:"
    )


PROXIES = [
    "http://proxy.example:3128",
    "http://proxy.example",
    "http://user:p%40ss@proxy.example:3128",
    "http://[::1]:3128/",
    "https://proxy.example:3128",
    "socks5://proxy.example:1080",
    "http://proxy.example:port",
    "http://proxy.example:3128/path",
    "http://:3128",
    "proxy.example:3128",
]


def config_accepts_proxy(proxy: str) -> bool:
    try:
        parse_config(f"[broker]\nthing_name = dev-1\n[service]\nproxy = {proxy}\n")
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("proxy", PROXIES)
def test_every_proxy_the_config_accepts_the_download_driver_uses(proxy: str) -> None:
    if config_accepts_proxy(proxy):
        assert isinstance(download._parse_proxy(proxy), download._Proxy)
    else:
        assert isinstance(urls.parse_proxy_url(proxy), urls.BadUrl)


def test_an_https_proxy_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("[broker]\nthing_name = dev-1\n[service]\nproxy = https://p.example:3128\n")

    assert err.value.problems == (
        f"config: [service] proxy must be {urls.PROXY_EXPECTED}, got"
        ' "https://p.example:3128" (the proxy must be an http:// URL, got https://)',
    )


def test_proxy_credentials_become_basic_authorization() -> None:
    proxy = download._parse_proxy("http://user:p%40ss@proxy.example:3128")
    assert isinstance(proxy, download._Proxy)
    assert (proxy.host, proxy.port) == ("proxy.example", 3128)
    assert proxy.headers == (("Proxy-Authorization", "Basic dXNlcjpwQHNz"),)


def test_a_proxy_password_never_reaches_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("[broker]\nthing_name = dev-1\n[service]\nproxy = https://u:hunter2@p:3128\n")

    assert "hunter2" not in str(err.value)
    assert '"https://u:***@p:3128"' in str(err.value)
