"""The systemd units: `systemd-analyze verify` and `security`, sysusers, and the
facts the rest of upparat relies on (socket directory, state and cache dirs)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hookservers.shell import config as hookserver_config
from upparat.config import DEFAULT_ENDPOINT, ServiceConfig, unix_socket_path

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
DAEMON = "upparat.service"
HOOKSERVER = "upparat-hookserver.service"


def systemd_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/bin")
    if path is None:
        pytest.fail(
            f"{name} is missing: install systemd (apt-get install systemd); the unit checks"
            " must not be skipped"
        )
    return path


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as (key, value) lists; keys may repeat, as in systemd."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: str, section: str, key: str) -> list[str]:
    sections = parse_unit((UNITS / unit).read_text())
    return [v for k, v in sections.get(section, []) if k == key]


def value(unit: str, section: str, key: str) -> str:
    (only,) = values(unit, section, key)
    return only


def install_for_test(tmp_path: Path, unit: str, text: str | None = None) -> Path:
    """Copy `unit` into tmp_path with its ExecStart binary replaced by /bin/true
    (verify checks that it exists; upparat is not installed in /usr/bin here)."""
    text = (UNITS / unit).read_text() if text is None else text
    binary = f"/usr/bin/{unit.removesuffix('.service')} "
    assert text.count(f"ExecStart={binary}") == 1
    path = tmp_path / unit
    path.write_text(text.replace(f"ExecStart={binary}", "ExecStart=/bin/true "))
    return path


def verify(tmp_path: Path, *units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_tool("systemd-analyze"), "verify", "--man=no", *map(str, units)],
        # The trailing ":" appends the built-in search path (network-online.target ...).
        env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    # verify exits 0 on unknown keys and unparsable values, which it only prints and
    # ignores: any output at all is a defect.
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    assert result.stdout == "", result.stdout


def test_both_units_verify(tmp_path: Path) -> None:
    daemon = install_for_test(tmp_path, DAEMON)
    hookserver = install_for_test(tmp_path, HOOKSERVER)
    assert_clean(verify(tmp_path, daemon, hookserver))


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("NoNewPrivileges=yes", "NoNewPrivilege=yes", "Unknown key 'NoNewPrivilege'"),
        ("Type=notify", "Type=notfy", "Failed to parse service type"),
        (
            "RestrictAddressFamilies=AF_UNIX",
            "RestrictAddressFamilies=AF_UNIXX",
            "Failed to parse address family",
        ),
    ],
)
def test_verify_catches_a_broken_unit(tmp_path: Path, old: str, new: str, complaint: str) -> None:
    text = (UNITS / DAEMON).read_text()
    assert text.count(old) == 1
    broken = install_for_test(tmp_path, DAEMON, text.replace(old, new))
    result = verify(tmp_path, broken)
    assert complaint in result.stderr
    with pytest.raises(AssertionError):
        assert_clean(result)


def test_verify_catches_a_missing_binary(tmp_path: Path) -> None:
    unit = tmp_path / DAEMON
    unit.write_text((UNITS / DAEMON).read_text())  # ExecStart=/usr/bin/upparat, absent here
    if Path("/usr/bin/upparat").exists():
        pytest.fail("/usr/bin/upparat exists on this machine; this check needs it absent")
    result = verify(tmp_path, unit)
    assert result.returncode != 0
    assert "/usr/bin/upparat" in result.stderr


def test_daemon_sandbox_scores_ok(tmp_path: Path) -> None:
    daemon = install_for_test(tmp_path, DAEMON)
    install_for_test(tmp_path, HOOKSERVER)
    tool = systemd_tool("systemd-analyze")
    env = {"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"}

    def security(threshold: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool, "security", "--offline=yes", f"--threshold={threshold}", str(daemon)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    # Exposure is 0-10, the threshold 0-100. 2.0 is well inside "OK"; the units score
    # about 1.4 today. A threshold of 0 must fail, or this check proves nothing.
    ok = security(20)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Overall exposure level for upparat.service" in ok.stdout
    assert security(0).returncode != 0


def test_hookserver_is_hardened_as_far_as_installers_allow(tmp_path: Path) -> None:
    """Root, and it must stay able to write slots, mount and reboot; still, 9.6 UNSAFE
    without any directive, 6.0 with what RAUC and SWUpdate never miss."""
    hookserver = install_for_test(tmp_path, HOOKSERVER)
    tool = systemd_tool("systemd-analyze")
    env = {"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [tool, "security", "--offline=yes", "--threshold=65", str(hookserver)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert value(HOOKSERVER, "Service", "MemoryMax") == "256M"
    assert value(HOOKSERVER, "Service", "TasksMax") == "64"
    assert value(HOOKSERVER, "Service", "NoNewPrivileges") == "yes"
    # The daemon and the hook server agree on where downloads are.
    assert "CACHE_DIRECTORY=/var/cache/upparat" in values(HOOKSERVER, "Service", "Environment")
    assert value(DAEMON, "Service", "CacheDirectory") == "upparat"


def test_sysusers_creates_the_user_and_group(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [
            systemd_tool("systemd-sysusers"),
            f"--root={tmp_path}",
            str(UNITS / "sysusers.d" / "upparat.conf"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (user,) = [
        line.split(":")
        for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
        if line.startswith("upparat:")
    ]
    (group,) = [
        line.split(":")
        for line in (tmp_path / "etc" / "group").read_text().splitlines()
        if line.startswith("upparat:")
    ]
    assert user[3] == group[2]  # primary group upparat
    assert int(user[2]) < 1000  # a system user
    assert user[6] in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")


def test_daemon_unit_facts() -> None:
    assert value(DAEMON, "Service", "ExecStart") == "/usr/bin/upparat -c /etc/upparat/upparat.conf"
    assert value(DAEMON, "Service", "Type") == "notify"
    assert int(value(DAEMON, "Service", "WatchdogSec")) > 0
    assert value(DAEMON, "Service", "User") == "upparat"
    assert value(DAEMON, "Service", "Group") == "upparat"
    assert value(DAEMON, "Service", "Restart") == "on-failure"
    # The journal and download directories the config defaults and docs point at.
    assert Path("/var/lib") / value(DAEMON, "Service", "StateDirectory") == (
        ServiceConfig().state_dir
    )
    assert value(DAEMON, "Service", "CacheDirectory") == "upparat"
    assert "download_location = /var/cache/upparat" in (ROOT / "README.md").read_text()
    for key, expected in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("SystemCallArchitectures", "native"),
    ]:
        assert value(DAEMON, "Service", key) == expected, key
    assert "upparat-hookserver.service" in value(DAEMON, "Unit", "After").split()
    assert "network-online.target" in value(DAEMON, "Unit", "After").split()
    assert "network-online.target" in value(DAEMON, "Unit", "Wants").split()


def test_hookserver_socket_directory_is_only_for_group_upparat() -> None:
    assert (
        value(HOOKSERVER, "Service", "ExecStart")
        == "/usr/bin/upparat-hookserver -c /etc/upparat/upparat.conf"
    )
    # Root process, root group: scripts must not create files owned by the daemon's group.
    assert value(HOOKSERVER, "Service", "User") == "root"
    assert value(HOOKSERVER, "Service", "Group") == "root"
    # The default endpoint lives in the unit's runtime directory ...
    socket_dir = unix_socket_path(DEFAULT_ENDPOINT).parent
    assert socket_dir == Path("/run") / value(HOOKSERVER, "Service", "RuntimeDirectory")
    # ... which is handed to group upparat, setgid, no access for others.
    assert values(HOOKSERVER, "Service", "ExecStartPre") == [
        "/bin/chown root:upparat %t/upparat",
        "/bin/chmod 2750 %t/upparat",
    ]
    assert value(HOOKSERVER, "Service", "RuntimeDirectoryMode") == "0750"
    assert value(HOOKSERVER, "Service", "Restart") == "on-failure"


def test_hookserver_state_directory_is_the_default_state_dir_and_root_only() -> None:
    state = Path("/var/lib") / value(HOOKSERVER, "Service", "StateDirectory")
    assert state == hookserver_config.DEFAULT_STATE_DIR
    assert value(HOOKSERVER, "Service", "StateDirectoryMode") == "0700"
