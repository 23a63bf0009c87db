"""The hook server's view of the upparat INI file: `[hooks]`, `[hookserver]` and the
`[service]` keys it shares with the daemon.

Reads only what the hook server needs; every other section and key belongs to the daemon
and is ignored here (the daemon checks them). The shared keys (`download_location`,
`trusted_keys`, `require_signature`) are read by the daemon's own rules
(`upparat.config.parse_shared_keys`), so both processes agree on what they mean.
"""

from __future__ import annotations

import configparser
import dataclasses
import math
import os
import re
import shutil
import stat
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from upparat import config as daemon_config
from upparat import scriptenv, signing

T = TypeVar("T")

HOOKS = ("version", "download", "install", "restart", "ready")
"""The `[hooks]` keys naming scripts, in the order a job uses them."""

DEFAULT_CONFIG = Path("/etc/upparat/upparat.conf")
DEFAULT_ENDPOINT = "unix:///run/upparat/hooks.sock"
DEFAULT_SCRIPT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_GRACE = 10.0
DEFAULT_SOCKET_MODE = 0o660
DEFAULT_STATE_DIR = Path("/var/lib/upparat-hookserver")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

OPTIONS: Mapping[str, tuple[str, str]] = {
    "listen": (
        "[hooks] endpoint",
        "Where to listen: unix:///path/to/socket (also unix:/path), or host:port for TCP "
        "(a bare :port means 127.0.0.1; TCP has no access control, keep it on loopback).",
    ),
    "default_retry_after": (
        "unset",
        "Seconds sent as the retry hint when a script exits 3 without a retry-after= line. "
        "Unset: no hint, the daemon uses its [hooks] retry_interval.",
    ),
    "cancel_grace_period": (
        f"{DEFAULT_GRACE:g}",
        "Seconds between SIGTERM and SIGKILL to the process group of a script that is "
        "cancelled, runs past its deadline, or is still running when the server stops.",
    ),
    "socket_mode": (
        f"{DEFAULT_SOCKET_MODE:04o}",
        "Octal mode of the unix socket file: 0660 or tighter (no bits outside 0660).",
    ),
    "script_path": (DEFAULT_SCRIPT_PATH, "PATH of the scripts."),
    "environment": (
        "unset",
        "Variables set for every script, as NAME=value items separated by spaces "
        '(shell quoting: NAME="a b"), e.g. DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/dbus/x. '
        "PATH and UPPARAT_* are the hook server's own.",
    ),
    "pass_environment": (
        "unset",
        "Names of variables copied from the hook server's own environment when set "
        "there (e.g. a proxy set by the unit); environment wins for the same name.",
    ),
    "log_level": ("INFO", "DEBUG, INFO, WARNING or ERROR."),
    "state_dir": (
        f"$STATE_DIRECTORY, else {DEFAULT_STATE_DIR}",
        "Root-only directory (created 0700) where the install file is copied while it is "
        "checked; the install script gets that copy as $4. Needs room for one bundle.",
    ),
}
"""`[hookserver]` keys: (default, help). The --help epilog is built from this table."""


class ConfigError(Exception):
    """The configuration cannot be used; the message is one operator-facing line each."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class UnixListen:
    path: Path

    def __str__(self) -> str:
        return f"unix://{self.path}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TcpListen:
    host: str
    port: int

    @property
    def address(self) -> str:
        """The gRPC bind address."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.address


Listen = UnixListen | TcpListen


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
    scripts: Mapping[str, Path]
    """Configured hooks only: hook name → absolute script path."""
    listen: Listen
    default_retry_after: float | None = None
    cancel_grace_period: float = DEFAULT_GRACE
    socket_mode: int = DEFAULT_SOCKET_MODE
    script_path: str = DEFAULT_SCRIPT_PATH
    environment: tuple[tuple[str, str], ...] = ()
    pass_environment: tuple[str, ...] = ()
    log_level: str = "INFO"
    download_dir: Path
    """`<[service] download_location>/upparat`: the only place install files come from."""
    state_dir: Path = DEFAULT_STATE_DIR
    trusted_keys: signing.TrustedKeys | None = None
    require_signature: bool = False


def load(path: Path, *, listen: str | None = None, log_level: str | None = None) -> ServerConfig:
    """Reads `path`; `listen` and `log_level` (from the command line) override the file."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        raise ConfigError(
            f"config: {path} does not exist (pass -c /path/to/upparat.conf)"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config: cannot read {path}: {e}") from None
    except configparser.Error as e:
        message = " ".join(str(e).split())
        raise ConfigError(f"config: {path} is not a valid INI file: {message}") from None
    return parse(parser, listen=listen, log_level=log_level)


def parse(
    parser: configparser.ConfigParser, *, listen: str | None = None, log_level: str | None = None
) -> ServerConfig:
    problems: list[str] = []
    defaults = set(parser.defaults())

    def get(section: str, key: str) -> str | None:
        if not parser.has_section(section) or key not in parser[section]:
            return None
        value = parser[section][key].strip()
        return value or None

    if parser.has_section("hookserver"):
        unknown = sorted(set(parser.options("hookserver")) - defaults - set(OPTIONS))
        if unknown:
            problems.append(
                f"config: [hookserver] has unknown keys {', '.join(unknown)}; "
                f"known: {', '.join(OPTIONS)}"
            )

    script_path = get("hookserver", "script_path") or DEFAULT_SCRIPT_PATH

    scripts: dict[str, Path] = {}
    for hook in HOOKS:
        value = get("hooks", hook)
        if value is not None:
            scripts[hook] = _script_location(value, script_path)

    listen_text = listen or get("hookserver", "listen") or get("hooks", "endpoint")
    where = "--listen" if listen else "[hookserver] listen"
    parsed_listen: Listen = UnixListen(path=Path("/run/upparat/hooks.sock"))
    try:
        parsed_listen = parse_listen(listen_text or DEFAULT_ENDPOINT)
    except ValueError as e:
        problems.append(f"config: {where} {e}, got {listen_text!r}")

    def seconds(key: str, default: float | None) -> float | None:
        text = get("hookserver", key)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            problems.append(f"config: [hookserver] {key} must be seconds >= 0, got {text!r}")
            return default
        return value

    default_retry_after = seconds("default_retry_after", None)
    grace = seconds("cancel_grace_period", DEFAULT_GRACE)

    mode = DEFAULT_SOCKET_MODE
    mode_text = get("hookserver", "socket_mode")
    if mode_text is not None:
        match = re.fullmatch(r"(?:0o)?([0-7]{3,4})", mode_text)
        if match is None or int(match.group(1), 8) & ~DEFAULT_SOCKET_MODE:
            problems.append(
                "config: [hookserver] socket_mode must be an octal mode of 0660 or tighter "
                f"(no bits outside 0660, e.g. 0600), got {mode_text!r}"
            )
        else:
            mode = int(match.group(1), 8)

    def variables(key: str, parse: Callable[[str], T], default: T) -> T:
        text = get("hookserver", key)
        if text is None:
            return default
        try:
            return parse(text)
        except scriptenv.InvalidEnvironment as e:
            problems.append(f"config: [hookserver] {key} must be {e}, got {text!r}")
            return default

    no_assignments: tuple[tuple[str, str], ...] = ()
    no_names: tuple[str, ...] = ()
    environment = variables("environment", scriptenv.parse_assignments, no_assignments)
    pass_environment = variables("pass_environment", scriptenv.parse_names, no_names)

    state_text = get("hookserver", "state_dir")
    state_dir = default_state_dir() if state_text is None else Path(os.path.abspath(state_text))

    download, signing_config, shared_problems = daemon_config.parse_shared_keys(parser)
    problems.extend(shared_problems)

    level = (log_level or get("hookserver", "log_level") or "INFO").upper()
    if level not in LOG_LEVELS:
        problems.append(
            f"config: [hookserver] log_level must be one of {', '.join(LOG_LEVELS)}, got {level!r}"
        )
        level = "INFO"

    if problems:
        raise ConfigError("\n".join(problems))
    return ServerConfig(
        scripts=scripts,
        listen=parsed_listen,
        default_retry_after=default_retry_after,
        cancel_grace_period=DEFAULT_GRACE if grace is None else grace,
        socket_mode=mode,
        script_path=script_path,
        environment=environment,
        pass_environment=pass_environment,
        log_level=level,
        download_dir=download.directory,
        state_dir=state_dir,
        trusted_keys=signing_config.trusted_keys,
        require_signature=signing_config.require_signature,
    )


def default_state_dir() -> Path:
    """systemd's StateDirectory= (the first, when it names several), else the fixed path."""
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(given) if given.startswith("/") else DEFAULT_STATE_DIR


def parse_listen(text: str) -> Listen:
    """`unix:///abs`, `unix:/abs`, `unix:relative`, `host:port`, `[v6]:port` or `:port`."""
    if text.startswith("unix:"):
        rest = text.removeprefix("unix:")
        if rest.startswith("//"):
            rest = rest[2:]
            if not rest.startswith("/"):
                raise ValueError("must be unix:///absolute/path (unix://host/... is not a path)")
        if rest in ("", "."):
            raise ValueError("must name a socket file, e.g. unix:///run/upparat/hooks.sock")
        return UnixListen(path=Path(os.path.abspath(rest)))
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError("must be [ipv6-address]:port")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("must be unix:///path/to/socket or host:port")
        if ":" in host:
            raise ValueError("must put an IPv6 address in brackets, e.g. [::1]:50051")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError("must end in a port 1-65535")
    return TcpListen(host=host or "127.0.0.1", port=int(port_text))


def _script_location(value: str, script_path: str) -> Path:
    # A bare name is looked up on script_path, as 1.12's Popen looked it up on PATH.
    if "/" not in value:
        found = shutil.which(value, path=script_path)
        return Path(found) if found else Path(value)
    return Path(os.path.abspath(value))


def script_problems(config: ServerConfig) -> list[str]:
    """One line per configured script that does not exist or cannot be executed."""
    problems = []
    for hook, path in config.scripts.items():
        what = f"[hooks] {hook} = {path}"
        try:
            st = path.stat()
        except FileNotFoundError:
            problems.append(f"{what}: no such file; fix the path or remove the {hook} key")
            continue
        except OSError as e:
            problems.append(f"{what}: cannot be read ({e.strerror})")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{what}: not a regular file")
        elif not os.access(path, os.X_OK):
            problems.append(f"{what}: not executable (chmod +x {path})")
    return problems


def epilog() -> str:
    """The --help text describing the config keys the hook server reads."""
    lines = [
        "configuration (INI, the same file as the daemon's; other sections are ignored):",
        "  [hooks] version, download, install, restart, ready",
        "      Paths of the hook scripts; each is optional. An unset hook answers",
        "      UNIMPLEMENTED. Scripts are run as upparat 1.12 ran them:",
        "      $1 whole seconds since the first call, $2 retries so far, $3 the job's",
        "      meta (empty if none); install: $4 the checked copy of the file (below);",
        "      restart: $4 'True' if forced",
        "      else empty. Exit 0 = success, 3 = retry later (a last stdout line",
        "      'retry-after=<seconds>' gives the hint), anything else = failure.",
        f"  [hooks] endpoint (default {DEFAULT_ENDPOINT})",
        "      Where the daemon connects; the server listens there unless [hookserver]",
        "      listen or --listen says otherwise.",
        "  [service] download_location, trusted_keys, require_signature",
        "      Read as the daemon reads them. Install takes only",
        "      <download_location>/upparat/<job id>, opened without following a symlink,",
        "      owned by the owner of that folder (the daemon's user), not writable by",
        "      group or others. It is copied into state_dir while hashed; size, sha256",
        "      and, with trusted_keys, the signature are checked on the copy, which the",
        "      script gets and which is removed when it ends. A refusal is a FAILURE",
        "      with its reason (FILE_CHANGED, SIGNATURE_INVALID, ...); the script never",
        "      runs.",
    ]
    for key, (default, text) in OPTIONS.items():
        lines.append(f"  [hookserver] {key} (default {default})")
        lines.extend("      " + part for part in textwrap.wrap(text, 72))
    lines += [
        "",
        "Scripts get a clean environment: PATH (script_path), LANG=C.UTF-8, HOME, what",
        "pass_environment and environment name, UPPARAT_HOOK, UPPARAT_JOB_ID,",
        "UPPARAT_ATTEMPT, UPPARAT_FORCE (1/0), UPPARAT_META, UPPARAT_ELAPSED and, for",
        "install, UPPARAT_FILE; stdin /dev/null, working directory /. Each runs in its",
        "own process group; at most one call per hook runs.",
        "",
        "Access: anyone who can connect can run the scripts (as root, on a device). The",
        "socket file gets socket_mode and the server's user; its group is the directory's",
        "group when the directory is setgid. Put it in a directory only root and the",
        "daemon's group can enter, e.g. /run/upparat root:upparat mode 2750 (the systemd",
        "unit does this), so the daemon's group is the socket's group.",
        "",
        "Unknown keys in [hookserver] are an error. Exit status 2: the configuration or a",
        "script is unusable, or the socket path is taken.",
    ]
    return "\n".join(lines)
