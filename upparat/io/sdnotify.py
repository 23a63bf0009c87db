"""systemd's notify protocol (sd_notify(3)): READY=1, STATUS=..., WATCHDOG=1.

Sends datagrams to $NOTIFY_SOCKET and reads the watchdog settings; without systemd
every call is a no-op. It decides nothing about when to send: the runtime does.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify", "watchdog_interval"]

logger = logging.getLogger(__name__)


def _address(value: str) -> str | None:
    # sd_notify(3): an absolute path, or "@name" for the abstract namespace (the
    # "@" stands for a leading NUL byte). Other forms (vsock:...) are not used here.
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1" or "WATCHDOG=1", lines joined by "\\n").

    True when the datagram was sent; False when $NOTIFY_SOCKET is unset (not run by
    systemd, or Type= is not notify) or sending failed. Never raises for I/O.
    """
    value = os.environ.get("NOTIFY_SOCKET")
    if not value:
        return False
    address = _address(value)
    if address is None:
        logger.warning("NOTIFY_SOCKET=%r is not a unix socket address; not notifying", value)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # A datagram either fits in the receiver's queue or is refused; do not
            # let a stuck systemd block the loop.
            sock.settimeout(1.0)
            sock.sendto(message.encode(), address)
    except OSError as e:
        logger.warning("cannot notify systemd at %s: %s", value, e)
        return False
    return True


def watchdog_interval() -> float | None:
    """systemd's watchdog timeout in seconds (WatchdogSec=), or None when it is off.

    This is the timeout itself: send "WATCHDOG=1" at half of it (sd_watchdog_enabled(3)).
    When WATCHDOG_PID is set it must be this process, else the watchdog is another's.
    """
    usec = _number(os.environ.get("WATCHDOG_USEC"))
    if not usec:
        return None
    if "WATCHDOG_PID" in os.environ and _number(os.environ["WATCHDOG_PID"]) != os.getpid():
        return None
    return usec / 1_000_000


def _number(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit():
        return None
    return int(value)
