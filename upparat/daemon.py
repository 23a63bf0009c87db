"""Wires the configured drivers to the runtime loop and runs it.

Owns nothing but construction and teardown: which driver gets which config keys.
"""

from __future__ import annotations

import logging

import upparat
from upparat.config import Config
from upparat.core.model import JobId
from upparat.hooks.client import HookClient
from upparat.io import sdnotify, sentry
from upparat.io.download import Downloader
from upparat.io.journal import Journal
from upparat.io.mqtt import MqttDriver
from upparat.runtime import EventQueue, Runtime

log = logging.getLogger("upparat")


class ProcessServices:
    """systemd notifications and Sentry, as the runtime's `Services`."""

    def __init__(self, *, sentry_enabled: bool) -> None:
        self._sentry = sentry_enabled

    def notify(self, message: str) -> None:
        sdnotify.notify(message)

    def watchdog_interval(self) -> float | None:
        return sdnotify.watchdog_interval()

    def job_failed(self, job_id: str, state: str, message: str) -> None:
        if self._sentry:
            sentry.report_job_failure(JobId(job_id), state, message)


def run_daemon(config: Config) -> int:
    broker = config.broker
    log.info(
        "upparat %s starting for thing %s; config:\n%s",
        upparat.__version__,
        broker.thing_name,
        config.redacted_summary(),
    )
    sentry_enabled = sentry.init_sentry(
        config.service.sentry_dsn,
        thing_name=broker.thing_name,
        release=f"upparat@{upparat.__version__}",
    )
    inbox = EventQueue()
    tls = broker.tls
    mqtt = MqttDriver(
        host=broker.host,
        port=broker.port,
        client_id=broker.client_id,
        thing_name=broker.thing_name,
        on_event=inbox.post,
        keepalive=broker.keepalive,
        cafile=tls.cafile if tls else None,
        certfile=tls.certfile if tls else None,
        keyfile=tls.keyfile if tls else None,
        alpn=broker.alpn,
    )
    download = config.download
    downloader = Downloader(
        download.directory,
        inbox.post,
        allow_http=download.allow_http,
        proxy=download.proxy,
        min_speed=download.min_speed,
        min_speed_time=download.min_speed_time,
        max_speed=download.max_speed,
        trusted_keys=config.signing.trusted_keys,
    )
    hooks = HookClient(config.hooks.endpoint, inbox.post)
    runtime = Runtime(
        settings=config.core_settings(),
        inbox=inbox,
        mqtt=mqtt,
        hooks=hooks,
        downloader=downloader,
        journal=Journal(config.service.state_dir),
        services=ProcessServices(sentry_enabled=sentry_enabled),
    )
    runtime.install_signal_handlers()
    try:
        status = runtime.run()
    finally:
        if sentry_enabled:
            sentry.close_sentry()
    log.info("upparat stopped")
    return status
