"""A private D-Bus system bus for one test or the demo: its own config file and socket,
started and stopped by PID. Never the machine's bus: programs meet on it through
`DBUS_SYSTEM_BUS_ADDRESS`, which the caller hands to them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import quoteattr

from upparat.devstack.procs import stop_process

# Debian's /usr/share/dbus-1/system.conf default policy (method calls denied unless a
# service's file punches a hole), plus one hole per service named by the caller: what
# /usr/share/dbus-1/system.d/de.pengutronix.rauc.conf does on a real system.
_CONFIG = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
{services}  </policy>
  <policy user="root">
{owners}  </policy>
</busconfig>
"""


def dbus_daemon_binary() -> str:
    found = shutil.which("dbus-daemon") or (
        "/usr/bin/dbus-daemon" if os.path.exists("/usr/bin/dbus-daemon") else None
    )
    if found is None:
        raise RuntimeError(
            "dbus-daemon is not installed: run `make test`, which installs it with apt-get"
        )
    return found


class PrivateBus:
    """A system bus whose config and log are under `workdir`, its socket in `socket_dir`.

    `services`: bus names root may own and anyone may call (e.g. de.pengutronix.rauc).
    `socket_dir` must be short: a unix socket path has at most 108 bytes.
    """

    def __init__(self, workdir: Path, socket_dir: Path, services: Sequence[str]) -> None:
        self.workdir = workdir
        self.socket = socket_dir / "bus.sock"
        self.services = tuple(services)
        self.config_path = workdir / "dbus-system.conf"
        self.log_path = workdir / "dbus-daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The value of DBUS_SYSTEM_BUS_ADDRESS for programs on this bus."""
        return f"unix:path={self.socket}"

    def write_config(self) -> Path:
        services = "".join(
            f"    <allow send_destination={quoteattr(name)}/>\n" for name in self.services
        )
        owners = "".join(f"    <allow own={quoteattr(name)}/>\n" for name in self.services)
        self.config_path.write_text(
            _CONFIG.format(socket=self.socket, services=services, owners=owners)
        )
        return self.config_path

    def start(self, timeout: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    dbus_daemon_binary(),
                    f"--config-file={self.config_path}",
                    "--nofork",
                    "--nopidfile",
                    "--nosyslog",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"dbus-daemon exited with {self.proc.returncode}; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"dbus-daemon did not listen on {self.socket} in {timeout} s")
            time.sleep(0.02)

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(self.socket))
            except OSError:
                return False
            return True

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        self.socket.unlink(missing_ok=True)
