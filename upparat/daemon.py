"""Wires the configured drivers to the runtime loop and runs it.

Owns nothing but construction and teardown: which driver gets which config keys.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable

import attrs

import upparat
from upparat.config import Config, ConfigError
from upparat.core.events import Event
from upparat.core.model import JobId
from upparat.io import sdnotify, sentry
from upparat.io.folder import (
    FolderRefused,
    prepare_download_folder,
    private_temp_trap,
    read_mountinfo,
)
from upparat.io.journal import Journal
from upparat.io.mqtt import MqttDriver
from upparat.io.status import StatusFile, StatusTracker
from upparat.io.status import default_path as status_path
from upparat.runtime import EventQueue, Runtime
from upparat.worker import job_worker

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


def _check_download_folder(config: Config) -> None:
    """Refuse to start (exit 2) with a download folder root must not install from."""
    download = config.download
    try:
        trap = private_temp_trap(download.location, read_mountinfo())
        if trap is not None:
            raise FolderRefused(trap)
        prepare_download_folder(download.directory)
    except FolderRefused as e:
        raise ConfigError((f"config: {e}",)) from None


def mqtt_driver(config: Config, on_event: Callable[[Event], None]) -> MqttDriver:
    """The MQTT driver for `config`, not connected yet. It loads the TLS files, so it raises
    `MqttConfigError` for unreadable ones; check-config builds it too, to refuse the same."""
    broker = config.broker
    tls = broker.tls
    return MqttDriver(
        host=broker.host,
        port=broker.port,
        client_id=broker.client_id,
        thing_name=broker.thing_name,
        on_event=on_event,
        keepalive=broker.keepalive,
        cafile=tls.cafile if tls else None,
        certfile=tls.certfile if tls else None,
        keyfile=tls.keyfile if tls else None,
        alpn=broker.alpn,
        package_name=config.service.package_name,
    )


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
    _check_download_folder(config)
    inbox = EventQueue()
    mqtt = mqtt_driver(config, inbox.post)
    # gRPC and the download stack run in a child process that exists only while it has
    # work: Python never gives back what they take, and a device waits months (issue 16).
    worker = job_worker(
        config.hooks.endpoint, config.download, config.signing.trusted_keys, inbox.post
    )
    runtime = Runtime(
        # 64 random bits: client tokens nobody else on the broker can predict; and a
        # seed of its own per process, so a fleet's retries are not in lockstep.
        settings=attrs.evolve(
            config.core_settings(),
            token_nonce=secrets.token_hex(8),
            seed=secrets.randbits(64),
        ),
        inbox=inbox,
        mqtt=mqtt,
        hooks=worker,
        downloader=worker,
        journal=Journal(config.service.state_dir),
        services=ProcessServices(sentry_enabled=sentry_enabled),
        status=StatusTracker(
            StatusFile(status_path(os.environ, config.service.state_dir, unit_dir=None)),
            wall_clock=time.time,
            on_write_failed=lambda failed: log.warning(
                "status file %s not written: %s (the job goes on)", failed.path, failed.reason
            ),
        ),
    )
    runtime.install_signal_handlers()
    try:
        status = runtime.run()
    finally:
        if sentry_enabled:
            sentry.close_sentry()
    log.info("upparat stopped")
    return status
