"""The INI configuration file, parsed once into frozen values.

Owns the key list, the defaults and every config error message. It reads the file and
the public keys `trusted_keys` names (a bad key is a config error, see `upparat.signing`),
nothing else: it creates no directories and opens no TLS files (the drivers do).
"""

from __future__ import annotations

import configparser
import difflib
import enum
import math
import os
import re
import socket
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar, assert_never
from urllib.parse import urlsplit

import attrs

from upparat import scriptenv, urls
from upparat.aws import shadow, topics
from upparat.core.model import LogLevel, Settings, ThingName
from upparat.hooks import RETRY_HOLD

if TYPE_CHECKING:
    from upparat import signing

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_HOOKSERVER_STATE_DIR",
    "ENDPOINT_EXPECTED",
    "KNOWN_KEYS",
    "BrokerConfig",
    "Config",
    "ConfigError",
    "DownloadConfig",
    "Endpoint",
    "HookServerConfig",
    "HooksConfig",
    "ServiceConfig",
    "SigningConfig",
    "TcpEndpoint",
    "TlsFiles",
    "UnixEndpoint",
    "config_from_parser",
    "default_hookserver_state_dir",
    "load_config",
    "parse_config",
    "parse_endpoint",
    "unix_socket_path",
]

DEFAULT_ENDPOINT: Final = "unix:///run/upparat/hooks.sock"
AWS_IOT_ALPN: Final = "x-amzn-mqtt-ca"
"""ALPN protocol AWS IoT requires for MQTT with client certificates on port 443."""

KNOWN_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "service": (
        "sentry_dsn",
        "sentry",
        "log_level",
        "download_location",
        "job_prefix",
        "state_dir",
        "progress_interval",
        "step_timeout",
        "max_restarts",
        "verify_soft_restart",
        "allow_http",
        "proxy",
        "min_speed",
        "min_speed_time",
        "max_speed",
        "min_free_space",
        "max_download_size",
        "download_retries",
        "trusted_keys",
        "require_signature",
        "package_name",
    ),
    "broker": (
        "host",
        "port",
        "thing_name",
        "client_id",
        "cafile",
        "certfile",
        "keyfile",
        "alpn",
        "keepalive",
    ),
    "hooks": (
        "version",
        "download",
        "install",
        "restart",
        "ready",
        "retry_interval",
        "max_retries",
        "endpoint",
        "hook_timeout",
        "install_timeout",
        "hook_unavailable_timeout",
    ),
    "hookserver": (
        "listen",
        "default_retry_after",
        "cancel_grace_period",
        "socket_mode",
        "script_path",
        "environment",
        "pass_environment",
        "log_level",
        "state_dir",
        "idle_release",
        "retry_hold",
    ),
}
"""Every section and key the file may contain (1.12's and the new ones)."""


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one operator-facing line each."""

    def __init__(self, problems: tuple[str, ...]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _redact_dsn(dsn: str) -> str:
    """A DSN with its key masked: enough to tell which project, nothing to send with."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^@/]*@", r"\1***@", dsn)


def _safe_port(url: str) -> int | None:
    try:
        return urlsplit(url).port
    except ValueError:
        return None


def _redact_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if _safe_port(url) is not None else ""
    return parts._replace(netloc=f"{user}:***@{host}{port}").geturl()


def _show_secret_dsn(value: str | None) -> str:
    return "None" if value is None else repr(_redact_dsn(value))


def _show_proxy(value: str | None) -> str:
    return "None" if value is None else repr(_redact_url_password(value))


@attrs.frozen(kw_only=True)
class ServiceConfig:
    """`[service]` minus the download keys (those are in `DownloadConfig`)."""

    log_level: LogLevel = LogLevel.WARNING
    sentry_dsn: str | None = attrs.field(default=None, repr=_show_secret_dsn)
    """From `sentry_dsn`, or 1.12's `sentry`. None: error reporting off."""
    job_prefix: str = "upparat_"
    state_dir: Path = attrs.field(factory=lambda: default_state_dir(os.environ))
    """`state_dir`; unset: the unit's StateDirectory (`$STATE_DIRECTORY`), else
    /var/lib/upparat."""
    progress_interval: float = 10.0
    step_timeout_minutes: int | None = None
    """`step_timeout`: AWS IoT stepTimeoutInMinutes sent with IN_PROGRESS updates."""
    max_restarts: int = 3
    verify_soft_restart: bool = True
    package_name: str | None = None
    """`package_name`: report the running version into the `$package` shadow under this
    Software Package Catalog name. None: no report."""


def default_download_location(environ: Mapping[str, str]) -> Path:
    """Unset `download_location`: the unit's CacheDirectory when systemd gives one (a
    folder only the daemon's user can write), else the temp directory as in 1.12."""
    return _systemd_directory(environ, "CACHE_DIRECTORY") or Path(tempfile.gettempdir())


def default_state_dir(environ: Mapping[str, str]) -> Path:
    return _systemd_directory(environ, "STATE_DIRECTORY") or Path("/var/lib/upparat")


DEFAULT_HOOKSERVER_STATE_DIR: Final = Path("/var/lib/upparat-hookserver")


def default_hookserver_state_dir(environ: Mapping[str, str]) -> Path:
    """Unset `[hookserver] state_dir`: the hook server unit's StateDirectory, else fixed."""
    return _systemd_directory(environ, "STATE_DIRECTORY") or DEFAULT_HOOKSERVER_STATE_DIR


def _systemd_directory(environ: Mapping[str, str], name: str) -> Path | None:
    # systemd sets e.g. CACHE_DIRECTORY=/var/cache/upparat (colon-separated when the unit
    # names several); only an absolute first entry is taken.
    first = environ.get(name, "").split(":")[0]
    return Path(first) if os.path.isabs(first) else None


MIB: Final = 1024 * 1024
DEFAULT_MIN_FREE_SPACE: Final = 64 * MIB


@attrs.frozen(kw_only=True)
class DownloadConfig:
    """The `[service]` keys that steer the HTTP download."""

    location: Path = attrs.field(factory=lambda: default_download_location(os.environ))
    """`download_location` as configured (absolute). Files go to `directory`."""
    allow_http: bool = False
    proxy: str | None = attrs.field(default=None, repr=_show_proxy)
    min_speed: int = 1024
    """Bytes per second; a download slower than this for `min_speed_time` is retried. 0: off."""
    min_speed_time: float = 60.0
    max_speed: int | None = None
    """Bytes per second; None: unlimited."""
    min_free_space: int = DEFAULT_MIN_FREE_SPACE
    """Bytes a download leaves free on the download folder's file system."""
    max_download_size: int | None = None
    """Bytes; a larger file (announced or received) fails the job. None: no limit."""
    retries: int = 10
    """`download_retries`: interrupted attempts in a row without a new byte before the
    job fails (the rule is `upparat.core.model.Settings.download_backoff`)."""

    @property
    def directory(self) -> Path:
        """Where downloads are written: `<download_location>/upparat`, as in 1.12.

        1.12 appended the service name so the whole directory can be removed safely.
        """
        return self.location / "upparat"


@attrs.frozen(kw_only=True)
class SigningConfig:
    """`[service] trusted_keys` and `require_signature`: which signed artifacts are accepted.

    Read by the daemon (its download driver checks the signature on the digest it computes)
    and by the hook server (which checks the file again before root installs it).
    """

    trusted_keys: signing.TrustedKeys | None = None
    """The keys, loaded and checked at start. None: signatures are not checked."""
    require_signature: bool = False
    """A job document without `signature` is REJECTED before any download."""


@attrs.frozen(kw_only=True)
class TlsFiles:
    """Client certificate authentication: 1.12 requires all three files or none."""

    cafile: Path
    certfile: Path
    keyfile: Path


@attrs.frozen(kw_only=True)
class BrokerConfig:
    thing_name: ThingName
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "upparat"
    tls: TlsFiles | None = None
    """None: plain MQTT (1.12 with no cafile/certfile/keyfile)."""
    alpn: tuple[str, ...] = ()
    """TLS ALPN protocols to offer; empty: none."""
    keepalive: int = 60


@attrs.frozen(kw_only=True)
class HooksConfig:
    """`[hooks]`. The script paths are the hook server's business; the daemon keeps them
    only to show them in the summary."""

    endpoint: str = DEFAULT_ENDPOINT
    version: str | None = None
    download: str | None = None
    install: str | None = None
    restart: str | None = None
    ready: str | None = None
    retry_interval: float = 60.0
    max_retries: int = 60
    hook_timeout: float = 3600.0
    install_timeout: float = 3600.0
    hook_unavailable_timeout: float = 3600.0


@attrs.frozen(kw_only=True)
class HookServerConfig:
    """`[hookserver]`: read by the hook server only; the daemon checks and ignores it."""

    listen: str = DEFAULT_ENDPOINT
    """Defaults to `[hooks] endpoint`, so both processes agree without repeating it."""
    default_retry_after: float | None = None
    cancel_grace_period: float = 10.0
    socket_mode: int = 0o660
    script_path: str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    """PATH for the scripts (never the hook server's own environment)."""
    environment: tuple[tuple[str, str], ...] = ()
    """Variables set for every script (`NAME=value ...`), see `upparat.scriptenv`."""
    pass_environment: tuple[str, ...] = ()
    """Variables copied from the hook server's own environment when set there."""
    log_level: LogLevel = LogLevel.INFO
    """The hook server's log level."""
    state_dir: Path | None = None
    """Root-only directory of the hook server (verified copies of install files). None:
    `$STATE_DIRECTORY` (systemd's StateDirectory=) or /var/lib/upparat-hookserver."""
    idle_release: float = 20.0
    """Seconds after the last connection before the hook server drops gRPC and re-executes
    itself, so that gRPC's memory goes back to the system until the next job."""
    retry_hold: float = RETRY_HOLD
    """Seconds after a script last said "retry later" during which the hook server, idle,
    drops gRPC's server but does not re-execute: the daemon's next call comes soon."""

    @property
    def listen_path(self) -> Path:
        return unix_socket_path(self.listen)


@attrs.frozen(kw_only=True)
class Config:
    broker: BrokerConfig
    service: ServiceConfig = attrs.field(factory=ServiceConfig)
    download: DownloadConfig = attrs.field(factory=DownloadConfig)
    hooks: HooksConfig = HooksConfig()
    hookserver: HookServerConfig = HookServerConfig()
    signing: SigningConfig = SigningConfig()
    source: Path | None = None
    """The file this was loaded from."""

    def core_settings(self) -> Settings:
        return Settings(
            job_prefix=self.service.job_prefix,
            retry_interval=self.hooks.retry_interval,
            max_retries=self.hooks.max_retries,
            hook_timeout=self.hooks.hook_timeout,
            install_timeout=self.hooks.install_timeout,
            hook_unavailable_timeout=self.hooks.hook_unavailable_timeout,
            progress_interval=self.service.progress_interval,
            step_timeout_minutes=self.service.step_timeout_minutes,
            max_restarts=self.service.max_restarts,
            verify_soft_restart=self.service.verify_soft_restart,
            allow_http=self.download.allow_http,
            download_retries=self.download.retries,
            require_signature=self.signing.require_signature,
            package_name=self.service.package_name,
        )

    def redacted_summary(self) -> str:
        """The effective configuration for the log: one line per section, no secrets.

        The Sentry DSN shows host and project but not its key; a proxy shows no
        password; TLS files show their paths only (their contents are never read here).
        """
        s, d, b, h, hs = self.service, self.download, self.broker, self.hooks, self.hookserver
        keys = self.signing.trusted_keys
        tls = (
            f"cafile={b.tls.cafile} certfile={b.tls.certfile} keyfile={b.tls.keyfile}"
            if b.tls is not None
            else "tls=off"
        )

        def opt(value: object) -> str:
            return "unset" if value is None else str(value)

        lines = (
            f"config: {self.source if self.source is not None else '(built in code)'}",
            "[service]"
            f" log_level={s.log_level.value}"
            f" sentry_dsn={'unset' if s.sentry_dsn is None else _redact_dsn(s.sentry_dsn)}"
            f" download_location={d.location} (files in {d.directory})"
            f" job_prefix={s.job_prefix} state_dir={s.state_dir}"
            f" progress_interval={s.progress_interval:g} step_timeout={opt(s.step_timeout_minutes)}"
            f" max_restarts={s.max_restarts} verify_soft_restart={_yes_no(s.verify_soft_restart)}"
            f" allow_http={_yes_no(d.allow_http)}"
            f" proxy={'unset' if d.proxy is None else _redact_url_password(d.proxy)}"
            f" min_speed={d.min_speed} min_speed_time={d.min_speed_time:g}"
            f" max_speed={opt(d.max_speed)} min_free_space={d.min_free_space}"
            f" max_download_size={opt(d.max_download_size)}"
            f" trusted_keys={'unset' if keys is None else f'{keys.path} ({len(keys.keys)} keys)'}"
            f" require_signature={_yes_no(self.signing.require_signature)}"
            f" package_name={opt(s.package_name)}",
            f"[broker] host={b.host} port={b.port} thing_name={b.thing_name}"
            f" client_id={b.client_id} {tls} alpn={','.join(b.alpn) or 'none'}"
            f" keepalive={b.keepalive}",
            f"[hooks] endpoint={h.endpoint} version={opt(h.version)} download={opt(h.download)}"
            f" install={opt(h.install)} restart={opt(h.restart)} ready={opt(h.ready)}"
            f" retry_interval={h.retry_interval:g} max_retries={h.max_retries}"
            f" hook_timeout={h.hook_timeout:g} install_timeout={h.install_timeout:g}"
            f" hook_unavailable_timeout={h.hook_unavailable_timeout:g}",
            f"[hookserver] listen={hs.listen}"
            f" default_retry_after={opt(hs.default_retry_after)}"
            f" cancel_grace_period={hs.cancel_grace_period:g} socket_mode={hs.socket_mode:04o}"
            f" script_path={opt(hs.script_path)} idle_release={hs.idle_release:g}"
            f" retry_hold={hs.retry_hold:g}",
        )
        return "\n".join(lines)


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


# -- loading -------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], *, thing_name_override: str | None = None) -> Config:
    """Read and check the INI file at `path`.

    `thing_name_override` (the command line's `--thing-name`) wins over
    `[broker] thing_name` and the hostname. Raises `ConfigError` listing every problem.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError((f"config: cannot read {file}: {e}",)) from e
    return parse_config(text, source=file, thing_name_override=thing_name_override)


def parse_config(
    text: str, *, source: Path | None = None, thing_name_override: str | None = None
) -> Config:
    """`load_config` for a string (tests, and callers that read the file themselves)."""
    # Interpolation is off so a "%" in a path or DSN is taken literally (1.12 used
    # configparser's default interpolation, where it had to be written "%%"). The
    # default section is renamed so "[DEFAULT]" is reported as unknown instead of
    # silently copying its keys into every section.
    parser = configparser.RawConfigParser(
        interpolation=None, default_section="\0no default section", strict=True
    )
    try:
        parser.read_string(text, source=str(source) if source is not None else "<config>")
    except configparser.Error as e:
        # configparser's messages span lines; a problem is one line.
        raise ConfigError((f"config: {' '.join(e.message.split())}",)) from e
    return config_from_parser(parser, source=source, thing_name_override=thing_name_override)


def config_from_parser(
    parser: configparser.RawConfigParser,
    *,
    source: Path | None = None,
    thing_name_override: str | None = None,
) -> Config:
    """The checked `Config` of an INI file already read (the hook server's tests use it)."""
    reader = _Reader(parser)
    reader.check_names()
    config = _build(reader, source, thing_name_override)
    if reader.problems:
        raise ConfigError(tuple(reader.problems))
    return config


T = TypeVar("T")


class _Invalid(Exception):
    """A value does not parse; `expected` completes "must be ...", `detail` says why not."""

    def __init__(self, expected: str, *, detail: str | None = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.detail = detail


class _Reader:
    """Reads single keys, collecting problems so the operator sees all of them at once."""

    def __init__(self, parser: configparser.RawConfigParser) -> None:
        self._parser = parser
        self.problems: list[str] = []

    def problem(self, message: str) -> None:
        self.problems.append(f"config: {message}")

    def check_names(self) -> None:
        known_sections = ", ".join(f"[{s}]" for s in KNOWN_KEYS)
        for section in self._parser.sections():
            if section not in KNOWN_KEYS:
                hint = _closest(section.lower(), list(KNOWN_KEYS), "[{}]")
                self.problem(f"unknown section [{section}]{hint}; known sections: {known_sections}")
                continue
            for key in self._parser.options(section):
                if key in KNOWN_KEYS[section]:
                    continue
                elsewhere = [s for s, keys in KNOWN_KEYS.items() if key in keys]
                if elsewhere:
                    hint = f" (did you mean [{elsewhere[0]}] {key}?)"
                else:
                    hint = _closest(key, list(KNOWN_KEYS[section]), "{}")
                self.problem(
                    f'[{section}] unknown key "{key}"{hint};'
                    f" known keys: {', '.join(KNOWN_KEYS[section])}"
                )

    def raw(self, section: str, key: str) -> str | None:
        if not self._parser.has_section(section):
            return None
        value = self._parser.get(section, key, fallback=None)
        return None if value is None else value.strip()

    def value(
        self,
        section: str,
        key: str,
        parse: Callable[[str], T],
        default: T,
        *,
        secret: bool = False,
    ) -> T:
        """The parsed value of `key`, or `default` when absent (or empty, for optional keys).

        An empty value of a key that has a default is a mistake, not "use the default".
        """
        text = self.raw(section, key)
        if text is None:
            return default
        shown = _quote(_USERINFO_PASSWORD.sub(r"\1***@", text))
        if secret:
            shown = (
                _quote(_redact_dsn(text)) if "@" in text else f"a value of {len(text)} characters"
            )
        if text == "":
            if default is None:
                return default
            self.problem(
                f"[{section}] {key} must not be empty; remove the line to use the default"
                f" ({_show_default(default)})"
            )
            return default
        if "\n" in text:
            self.problem(f"[{section}] {key} must be a single line, got {shown}")
            return default
        try:
            return parse(text)
        except _Invalid as e:
            why = "" if e.detail is None else f" ({e.detail})"
            self.problem(f"[{section}] {key} must be {e.expected}, got {shown}{why}")
            return default


_USERINFO_PASSWORD = re.compile(r"(://[^/@:]*:)[^/@]*@")
"""The password of a `scheme://user:password@host` value, masked in messages."""


def _closest(name: str, candidates: list[str], fmt: str) -> str:
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {fmt.format(match[0])}?)" if match else ""


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _show_default(value: object) -> str:
    match value:
        case bool():
            return _yes_no(value)
        case enum.Enum():
            return str(value.value)
        case float():
            return f"{value:g}"
        case _:
            return str(value)


# -- value parsers: each returns a typed value or raises _Invalid ----------------------

_INT_RE = re.compile(r"[+-]?[0-9]+")
_NUMBER_RE = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)")


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    expected = f"an integer {low}-{high}" if high is not None else f"an integer >= {low}"

    def parse(text: str) -> int:
        if not _INT_RE.fullmatch(text):
            raise _Invalid(expected)
        value = int(text)
        if value < low or (high is not None and value > high):
            raise _Invalid(expected)
        return value

    return parse


def _seconds(*, allow_zero: bool) -> Callable[[str], float]:
    expected = "a number of seconds " + (">= 0" if allow_zero else "> 0")

    def parse(text: str) -> float:
        if not _NUMBER_RE.fullmatch(text):
            raise _Invalid(expected)
        value = float(text)
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise _Invalid(expected)
        return value

    return parse


_BOOLEANS: Final = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}


_SIZE_RE = re.compile(r"([0-9]+)\s*([KMGT]?)(i?B)?", re.IGNORECASE)
_SIZE_UNITS: Final = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _size(*, allow_zero: bool) -> Callable[[str], int]:
    expected = (
        "a size in bytes"
        + (" >= 0" if allow_zero else " > 0")
        + ", optionally with K, M, G or T (powers of 1024) like 64M"
    )

    def parse(text: str) -> int:
        match = _SIZE_RE.fullmatch(text)
        if match is None:
            raise _Invalid(expected)
        value = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
        if value == 0 and not allow_zero:
            raise _Invalid(expected)
        return value

    return parse


def _boolean(text: str) -> bool:
    try:
        return _BOOLEANS[text.lower()]
    except KeyError:
        raise _Invalid("true or false (also yes/no, on/off, 1/0)") from None


_LOG_LEVELS: Final = {
    "debug": LogLevel.DEBUG,
    "info": LogLevel.INFO,
    "warning": LogLevel.WARNING,
    "warn": LogLevel.WARNING,
    "error": LogLevel.ERROR,
    # 1.12 documented EXCEPTION; Python knows CRITICAL and FATAL. upparat logs
    # nothing above error, so all three mean "errors only".
    "exception": LogLevel.ERROR,
    "critical": LogLevel.ERROR,
    "fatal": LogLevel.ERROR,
}


def _log_level(text: str) -> LogLevel:
    try:
        return _LOG_LEVELS[text.lower()]
    except KeyError:
        raise _Invalid("one of DEBUG, INFO, WARNING, ERROR (any case)") from None


def _text(text: str) -> str:
    return text


def _path(text: str) -> Path:
    # Relative paths are taken from the working directory, as 1.12 did, and fixed now
    # so a later chdir cannot move them.
    return Path(os.path.abspath(text))


def _job_prefix(text: str) -> str:
    # A prefix as long as a whole job id could match no job.
    if not topics.is_job_prefix(text):
        raise _Invalid("1-63 of the characters a-z A-Z 0-9 _ - (AWS IoT job id characters)")
    return text


def _package_name(text: str) -> str:
    # The Software Package Catalog's rule for package names, the one the report is built with.
    if not shadow.PACKAGE_NAME_RE.fullmatch(text):
        raise _Invalid(
            "a Software Package Catalog package name: 1-128 of the characters a-z A-Z 0-9 . _ -"
        )
    return text


THING_NAME_EXPECTED: Final = "a thing name: 1-128 of the characters a-z A-Z 0-9 : _ - (AWS IoT)"


def _thing_name(text: str) -> ThingName:
    # The AWS IoT rule, the one the MQTT driver and the topics use: the name becomes part
    # of MQTT topics ($aws/things/<name>/jobs/...), where "/", "+" and "#" would reach
    # other things' topics.
    if not topics.is_thing_name(text):
        raise _Invalid(THING_NAME_EXPECTED)
    return ThingName(text)


def _client_id(text: str) -> str:
    if not topics.is_client_id(text):
        raise _Invalid(f"1-{topics.MAX_CLIENT_ID_BYTES} bytes of UTF-8 (the AWS IoT limit)")
    return text


def _keepalive(text: str) -> int:
    # MQTT 3.1.1 section 3.1.2.10 allows 0 (no keepalive), but then a connection that dies
    # silently (a NAT forgets it) is never noticed and the device hears no job again; the
    # MQTT driver takes the value as given. AWS IoT treats less than 30 as 30, caps at 1200.
    return _integer(1, 65535)(text)


def _port(text: str) -> int:
    return _integer(1, 65535)(text)


def _alpn(text: str) -> tuple[str, ...]:
    if text.lower() == "none":
        return ()
    protocols = tuple(p.strip() for p in text.split(","))
    if not all(protocols) or any(len(p.encode()) > 255 for p in protocols):
        raise _Invalid('"none" or a comma-separated list of ALPN protocol names')
    return protocols


def unix_socket_path(endpoint: str) -> Path:
    """The socket file of a gRPC `unix:` target (`unix:/p`, `unix:///p` or `unix:rel`)."""
    if not endpoint.startswith("unix:"):
        raise ValueError(f"not a unix: target: {endpoint!r}")
    rest = endpoint.removeprefix("unix:")
    if rest.startswith("//"):
        rest = rest[2:]
    return Path(rest)


ENDPOINT_EXPECTED: Final = (
    "a unix socket target like unix:///run/upparat/hooks.sock, or host:port ([v6]:port,"
    " or :port for 127.0.0.1) with a port 1-65535"
)


@attrs.frozen(kw_only=True)
class UnixEndpoint:
    """A unix socket file: who may connect is decided by its owner and mode."""

    path: Path
    """Absolute."""

    @property
    def target(self) -> str:
        """The gRPC target."""
        return f"unix://{self.path}"

    def __str__(self) -> str:
        return self.target


@attrs.frozen(kw_only=True)
class TcpEndpoint:
    host: str
    """Without brackets for an IPv6 address."""
    port: int

    @property
    def address(self) -> str:
        """The gRPC bind address and target."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def target(self) -> str:
        return self.address

    def __str__(self) -> str:
        return self.address


Endpoint = UnixEndpoint | TcpEndpoint


def parse_endpoint(text: str) -> Endpoint:
    """`[hooks] endpoint` and `[hookserver] listen`, read by the daemon and the hook server.

    `unix:///abs`, `unix:/abs`, `unix:relative` (from the working directory), `host:port`,
    `[v6]:port`, `:port` (127.0.0.1). Raises ValueError(ENDPOINT_EXPECTED).
    """
    # A unix socket file is the default and the recommendation: the hook server runs
    # install scripts as root, so who may call it is decided by the socket file's owner
    # and mode. TCP is accepted for development and for hook servers in another
    # container; it has no such check, so a bare :port means loopback.
    if text.startswith("unix:"):
        if text.startswith("unix://") and text[7:8] != "/":
            raise ValueError(ENDPOINT_EXPECTED)  # unix://host/... names no path
        rest = str(unix_socket_path(text))
        if rest in ("", "."):
            raise ValueError(ENDPOINT_EXPECTED)
        return UnixEndpoint(path=Path(os.path.abspath(rest)))
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or ":" not in host:
            raise ValueError(ENDPOINT_EXPECTED)
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:  # an IPv6 address needs brackets
            raise ValueError(ENDPOINT_EXPECTED)
        host = host or "127.0.0.1"
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(ENDPOINT_EXPECTED)
    if any(ch.isspace() or ch in "/@?#[]" for ch in host):
        raise ValueError(ENDPOINT_EXPECTED)
    return TcpEndpoint(host=host, port=int(port))


def _endpoint(text: str) -> str:
    try:
        endpoint = parse_endpoint(text)
    except ValueError:
        raise _Invalid(ENDPOINT_EXPECTED) from None
    # Kept as written where gRPC reads it the same way; a relative socket path and a bare
    # :port are written out so the daemon connects where the hook server listens.
    match endpoint:
        case UnixEndpoint():
            return text if os.path.isabs(unix_socket_path(text)) else endpoint.target
        case TcpEndpoint():
            return endpoint.target if text.startswith(":") else text
        case never:
            assert_never(never)


def _proxy(text: str) -> str:
    # The download driver reads the value by the same rule (upparat.core.urls), so what passes
    # here is what it uses.
    match urls.parse_proxy_url(text):
        case urls.BadUrl(reason=reason):
            raise _Invalid(f"{urls.PROXY_EXPECTED}", detail=reason)
        case urls.ProxyUrl():
            return text
        case never:
            assert_never(never)


_DSN_PATH_RE = re.compile(r"(/[^/]+)*/[0-9]+")


def _sentry_dsn(text: str) -> str:
    parts = urlsplit(text)
    if (
        parts.scheme not in ("http", "https")
        or not parts.username
        or not parts.hostname
        or not _DSN_PATH_RE.fullmatch(parts.path)
    ):
        raise _Invalid("a Sentry DSN like https://<public key>@<host>/<project id>")
    return text


def _environment(text: str) -> tuple[tuple[str, str], ...]:
    try:
        return scriptenv.parse_assignments(text)
    except scriptenv.InvalidEnvironment as e:
        raise _Invalid(str(e)) from None


def _environment_names(text: str) -> tuple[str, ...]:
    try:
        return scriptenv.parse_names(text)
    except scriptenv.InvalidEnvironment as e:
        raise _Invalid(str(e)) from None


SOCKET_MODE_LIMIT: Final = 0o660
"""Who may connect to the hook server may have root run scripts: never other users."""


def _socket_mode(text: str) -> int:
    match = re.fullmatch(r"(0o)?([0-7]{3,4})", text)
    if match is None or int(match.group(2), 8) & ~SOCKET_MODE_LIMIT:
        raise _Invalid("an octal mode of 0660 or tighter (no bits outside 0660, e.g. 0600)")
    return int(match.group(2), 8)


# -- assembling the sections -----------------------------------------------------------


def _build(reader: _Reader, source: Path | None, thing_name_override: str | None) -> Config:
    hooks = _build_hooks(reader)
    return Config(
        source=source,
        service=_build_service(reader),
        download=_build_download(reader),
        broker=_build_broker(reader, thing_name_override),
        hooks=hooks,
        hookserver=_build_hookserver(reader, hooks),
        signing=_build_signing(reader),
    )


def _build_service(r: _Reader) -> ServiceConfig:
    sec, d = "service", ServiceConfig()
    dsn = r.value(sec, "sentry_dsn", _sentry_dsn, None, secret=True)
    legacy_dsn = r.value(sec, "sentry", _sentry_dsn, None, secret=True)
    if dsn is not None and legacy_dsn is not None and dsn != legacy_dsn:
        r.problem(
            "[service] sentry_dsn and sentry (its 1.12 name) are both set and differ;"
            " keep only sentry_dsn"
        )
    return ServiceConfig(
        log_level=r.value(sec, "log_level", _log_level, d.log_level),
        sentry_dsn=dsn if dsn is not None else legacy_dsn,
        job_prefix=r.value(sec, "job_prefix", _job_prefix, d.job_prefix),
        state_dir=r.value(sec, "state_dir", _path, d.state_dir),
        progress_interval=r.value(
            sec, "progress_interval", _seconds(allow_zero=False), d.progress_interval
        ),
        # AWS IoT accepts stepTimeoutInMinutes of 1 to 10080 (seven days).
        step_timeout_minutes=r.value(sec, "step_timeout", _integer(1, 10080), None),
        max_restarts=r.value(sec, "max_restarts", _integer(0), d.max_restarts),
        verify_soft_restart=r.value(sec, "verify_soft_restart", _boolean, d.verify_soft_restart),
        package_name=r.value(sec, "package_name", _package_name, None),
    )


def _build_download(r: _Reader) -> DownloadConfig:
    sec, d = "service", DownloadConfig()
    return DownloadConfig(
        location=r.value(sec, "download_location", _path, d.location),
        allow_http=r.value(sec, "allow_http", _boolean, d.allow_http),
        proxy=r.value(sec, "proxy", _proxy, None),
        min_speed=r.value(sec, "min_speed", _integer(0), d.min_speed),
        min_speed_time=r.value(sec, "min_speed_time", _seconds(allow_zero=False), d.min_speed_time),
        max_speed=r.value(sec, "max_speed", _integer(1), None),
        min_free_space=r.value(sec, "min_free_space", _size(allow_zero=True), d.min_free_space),
        max_download_size=r.value(sec, "max_download_size", _size(allow_zero=False), None),
        retries=r.value(sec, "download_retries", _integer(0), d.retries),
    )


def _trusted_keys(text: str) -> signing.TrustedKeys:
    # Imported here: cryptography adds ~10 MB RSS, needed only where keys are configured.
    from upparat import signing

    try:
        return signing.load_trusted_keys(_path(text))
    except signing.UnusableKeys as e:
        raise _Invalid(f"{signing.KEYS_EXPECTED} ({e})") from None


def _build_signing(r: _Reader) -> SigningConfig:
    sec, d = "service", SigningConfig()
    keys = r.value(sec, "trusted_keys", _trusted_keys, None)
    required = r.value(sec, "require_signature", _boolean, d.require_signature)
    if required and keys is None and r.raw(sec, "trusted_keys") in (None, ""):
        r.problem(
            "[service] require_signature = true needs trusted_keys (the public key or"
            " certificate the signatures are checked with); set trusted_keys or remove"
            " require_signature"
        )
    return SigningConfig(trusted_keys=keys, require_signature=required)


def _build_broker(r: _Reader, thing_name_override: str | None) -> BrokerConfig:
    sec = "broker"
    port = r.value(sec, "port", _port, 1883)

    thing_name = ThingName("invalid")
    if thing_name_override:
        try:
            thing_name = _thing_name(thing_name_override)
        except _Invalid as e:
            r.problem(
                f"the thing name given on the command line must be {e.expected},"
                f" got {_quote(thing_name_override)}"
            )
    elif r.raw(sec, "thing_name") is not None:
        thing_name = r.value(sec, "thing_name", _thing_name, thing_name)
    else:
        hostname = socket.gethostname()
        try:
            thing_name = _thing_name(hostname)
        except _Invalid as e:
            r.problem(
                f"[broker] thing_name is not set and the hostname {_quote(hostname)} cannot"
                f" stand in for it: it must be {e.expected}. Set thing_name."
            )

    files = {key: r.value(sec, key, _path, None) for key in ("cafile", "certfile", "keyfile")}
    tls: TlsFiles | None = None
    match files:
        case {"cafile": Path() as ca, "certfile": Path() as cert, "keyfile": Path() as key}:
            tls = TlsFiles(cafile=ca, certfile=cert, keyfile=key)
        case _:
            given = [k for k, v in files.items() if v is not None]
            if given:
                missing = [k for k, v in files.items() if v is None]
                r.problem(
                    "[broker] cafile, certfile and keyfile go together: set all three for"
                    " TLS with a client certificate, or none for plain MQTT;"
                    f" {' and '.join(given)} set but {' and '.join(missing)} missing"
                )

    alpn_text = r.raw(sec, "alpn")
    if alpn_text is None:
        # AWS IoT serves MQTT with client certificates on 443 only with this ALPN
        # protocol ("Protocols, port mappings, and authentication", AWS IoT dev guide).
        alpn: tuple[str, ...] = (AWS_IOT_ALPN,) if tls is not None and port == 443 else ()
    else:
        alpn = r.value(sec, "alpn", _alpn, ())
        if alpn and tls is None:
            r.problem("[broker] alpn needs TLS: set cafile, certfile and keyfile, or remove alpn")

    return BrokerConfig(
        host=r.value(sec, "host", _text, "127.0.0.1"),
        port=port,
        thing_name=thing_name,
        client_id=r.value(sec, "client_id", _client_id, "upparat"),
        tls=tls,
        alpn=alpn,
        keepalive=r.value(sec, "keepalive", _keepalive, 60),
    )


def _build_hooks(r: _Reader) -> HooksConfig:
    sec, d = "hooks", HooksConfig()
    timeout = _seconds(allow_zero=False)
    return HooksConfig(
        endpoint=r.value(sec, "endpoint", _endpoint, d.endpoint),
        version=r.value(sec, "version", _text, None),
        download=r.value(sec, "download", _text, None),
        install=r.value(sec, "install", _text, None),
        restart=r.value(sec, "restart", _text, None),
        ready=r.value(sec, "ready", _text, None),
        retry_interval=r.value(sec, "retry_interval", _seconds(allow_zero=True), d.retry_interval),
        max_retries=r.value(sec, "max_retries", _integer(0), d.max_retries),
        hook_timeout=r.value(sec, "hook_timeout", timeout, d.hook_timeout),
        install_timeout=r.value(sec, "install_timeout", timeout, d.install_timeout),
        hook_unavailable_timeout=r.value(
            sec, "hook_unavailable_timeout", timeout, d.hook_unavailable_timeout
        ),
    )


def _build_hookserver(r: _Reader, hooks: HooksConfig) -> HookServerConfig:
    sec, d = "hookserver", HookServerConfig()
    return HookServerConfig(
        listen=r.value(sec, "listen", _endpoint, hooks.endpoint),
        default_retry_after=r.value(sec, "default_retry_after", _seconds(allow_zero=True), None),
        cancel_grace_period=r.value(
            sec, "cancel_grace_period", _seconds(allow_zero=True), d.cancel_grace_period
        ),
        socket_mode=r.value(sec, "socket_mode", _socket_mode, d.socket_mode),
        script_path=r.value(sec, "script_path", _text, d.script_path),
        environment=r.value(sec, "environment", _environment, d.environment),
        pass_environment=r.value(sec, "pass_environment", _environment_names, ()),
        log_level=r.value(sec, "log_level", _log_level, d.log_level),
        state_dir=r.value(sec, "state_dir", _path, None),
        idle_release=r.value(sec, "idle_release", _seconds(allow_zero=False), d.idle_release),
        retry_hold=r.value(sec, "retry_hold", _seconds(allow_zero=True), d.retry_hold),
    )
