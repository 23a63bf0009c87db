"""The hook server's view of the upparat INI file: `[hooks]`, `[hookserver]` and the
`[service]` keys it shares with the daemon.

The file is read and checked by the daemon's model (`upparat.config`): every section,
every key, every value by the same rule, so the daemon, `upparat check-config` and this
server accept exactly the same files and refuse the others with the same message. This
module only picks what the server uses and resolves script paths.
"""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import textwrap
from collections.abc import Mapping
from pathlib import Path

import attrs

from upparat import config as daemon_config
from upparat import signing

HOOKS = ("version", "download", "install", "restart", "ready")
"""The `[hooks]` keys naming scripts, in the order a job uses them."""

DEFAULT_CONFIG = Path("/etc/upparat/upparat.conf")
DEFAULT_ENDPOINT = daemon_config.DEFAULT_ENDPOINT
_DEFAULTS = daemon_config.HookServerConfig()
DEFAULT_SCRIPT_PATH = _DEFAULTS.script_path
DEFAULT_GRACE = _DEFAULTS.cancel_grace_period
DEFAULT_SOCKET_MODE = _DEFAULTS.socket_mode
DEFAULT_STATE_DIR = daemon_config.DEFAULT_HOOKSERVER_STATE_DIR
DEFAULT_IDLE_RELEASE = _DEFAULTS.idle_release
DEFAULT_RETRY_HOLD = _DEFAULTS.retry_hold
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
"""What --log-level takes; the file's log_level also takes the daemon's aliases (warn...)."""

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
    "idle_release": (
        f"{DEFAULT_IDLE_RELEASE:g}",
        "Seconds after the last connection closed before gRPC is dropped and the server "
        "re-executes itself (same PID and socket) to give gRPC's memory back until the "
        "next call; skipped while a script runs or the config changed on disk.",
    ),
    "retry_hold": (
        f"{DEFAULT_RETRY_HOLD:g}",
        "Seconds after a script last said retry later (exit 3) during which the server, "
        "idle, drops gRPC but does not re-execute: the daemon calls again every "
        "retry_interval, and a call then costs ~10 ms of CPU instead of a fresh "
        "program's ~0.2 s. 0: re-execute as after any call.",
    ),
    "state_dir": (
        f"$STATE_DIRECTORY, else {DEFAULT_STATE_DIR}",
        "Root-only directory (created 0700) that holds the install file while it is "
        "checked and installed; the script gets it there as $4. On the file system of "
        "download_location the daemon's file is moved in and back; else it is copied.",
    ),
}
"""`[hookserver]` keys: (default, help). The --help epilog is built from this table."""

ConfigError = daemon_config.ConfigError
"""The configuration cannot be used; one operator-facing line per problem."""

UnixListen = daemon_config.UnixEndpoint
TcpListen = daemon_config.TcpEndpoint
Listen = daemon_config.Endpoint


@attrs.frozen(kw_only=True)
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
    """A `logging` level name."""
    download_dir: Path
    """`<[service] download_location>/upparat`: the only place install files come from."""
    state_dir: Path = DEFAULT_STATE_DIR
    idle_release: float = DEFAULT_IDLE_RELEASE
    retry_hold: float = DEFAULT_RETRY_HOLD
    trusted_keys: signing.TrustedKeys | None = None
    require_signature: bool = False


def load(path: Path, *, listen: str | None = None, log_level: str | None = None) -> ServerConfig:
    """Reads `path`; `listen` and `log_level` (from the command line) override the file."""
    return from_config(daemon_config.load_config(path), listen=listen, log_level=log_level)


def parse(
    parser: configparser.RawConfigParser,
    *,
    listen: str | None = None,
    log_level: str | None = None,
) -> ServerConfig:
    """`load` for a file already read."""
    config = daemon_config.config_from_parser(parser)
    return from_config(config, listen=listen, log_level=log_level)


def from_config(
    config: daemon_config.Config, *, listen: str | None = None, log_level: str | None = None
) -> ServerConfig:
    """What the server uses of a checked `Config`, with the command line's overrides."""
    hs = config.hookserver
    where = hs.listen
    if listen is not None:
        where = listen
    try:
        endpoint = daemon_config.parse_endpoint(where)
    except ValueError as e:
        # Only --listen can get here: the file's value passed the same rule.
        raise ConfigError((f"config: --listen must be {e}, got {listen!r}",)) from None
    scripts: dict[str, Path] = {}
    for hook in HOOKS:
        value: str | None = getattr(config.hooks, hook)
        if value is not None:
            scripts[hook] = _script_location(value, hs.script_path)
    return ServerConfig(
        scripts=scripts,
        listen=endpoint,
        default_retry_after=hs.default_retry_after,
        cancel_grace_period=hs.cancel_grace_period,
        socket_mode=hs.socket_mode,
        script_path=hs.script_path,
        environment=hs.environment,
        pass_environment=hs.pass_environment,
        log_level=log_level.upper() if log_level is not None else hs.log_level.name,
        download_dir=config.download.directory,
        state_dir=hs.state_dir if hs.state_dir is not None else default_state_dir(),
        idle_release=hs.idle_release,
        retry_hold=hs.retry_hold,
        trusted_keys=config.signing.trusted_keys,
        require_signature=config.signing.require_signature,
    )


def default_state_dir() -> Path:
    """systemd's StateDirectory= (the first, when it names several), else the fixed path."""
    return daemon_config.default_hookserver_state_dir(os.environ)


def parse_listen(text: str) -> Listen:
    """`unix:///abs`, `unix:/abs`, `unix:relative`, `host:port`, `[v6]:port` or `:port`."""
    return daemon_config.parse_endpoint(text)


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
        "configuration (INI, the same file as the daemon's, checked by the same rules):",
        "  [hooks] version, download, install, restart, ready",
        "      Paths of the hook scripts; each is optional. An unset hook answers",
        "      UNIMPLEMENTED. Scripts are run as upparat 1.12 ran them:",
        "      $1 whole seconds since the first call, $2 retries so far, $3 the job's",
        "      meta (empty if none); install: $4 the checked file, root-only (below);",
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
        "      group or others. It is taken over into state_dir (renamed, made root's and",
        "      read-only, a read lease proving no writer is open) or, where that cannot",
        "      be proven, copied there; size, sha256 and, with trusted_keys, the",
        "      signature are checked on those bytes, which the script gets. When it ends",
        "      a taken file goes back to the daemon, a copy is removed. A refusal is a",
        "      FAILURE with its reason (FILE_CHANGED, SIGNATURE_INVALID, ...); the script",
        "      never runs.",
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
        "The whole file is checked as the daemon and upparat check-config check it:",
        "unknown sections and keys and bad values anywhere are errors, reported with the",
        "same message. Exit status 2: the configuration or a script is unusable, or the",
        "socket path is taken.",
    ]
    return "\n".join(lines)
