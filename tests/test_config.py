"""The config file: defaults, upparat 1.12 compatibility and every error message."""

from __future__ import annotations

import configparser
import re
import socket
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hookservers.shell import config as hookserver_config
from tests.support.keys import make_key
from upparat.config import (
    DEFAULT_ENDPOINT,
    KNOWN_KEYS,
    BrokerConfig,
    Config,
    ConfigError,
    SigningConfig,
    TcpEndpoint,
    TlsFiles,
    UnixEndpoint,
    load_config,
    parse_config,
    parse_endpoint,
    unix_socket_path,
)
from upparat.core.model import LogLevel, Settings, ThingName

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_112 = ROOT / "examples" / "upparat-1.12.conf"
EXAMPLE = ROOT / "examples" / "upparat.conf"
DOCS = ROOT / "README.md"

DSN_KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def hostname(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(socket, "gethostname", lambda: "dev-host-7")
    return "dev-host-7"


def problems(text: str, *, thing_name_override: str | None = None) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, thing_name_override=thing_name_override)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def one_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# -- defaults ------------------------------------------------------------------------


def test_under_systemd_the_units_directories_are_the_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shipped unit's CacheDirectory is the daemon's alone; /tmp is private to it."""
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/upparat:/var/cache/other")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/upparat-test")
    config = parse_config("")
    assert config.download.location == Path("/var/cache/upparat")
    assert config.download.directory == Path("/var/cache/upparat/upparat")
    assert config.service.state_dir == Path("/var/lib/upparat-test")
    # A configured value wins; a relative "directory" from the environment is ignored.
    config = parse_config("[service]\ndownload_location = /data\nstate_dir = /data/s\n")
    assert (config.download.location, config.service.state_dir) == (Path("/data"), Path("/data/s"))
    monkeypatch.setenv("STATE_DIRECTORY", "relative")
    assert parse_config("").service.state_dir == Path("/var/lib/upparat")


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("4096", 4096), ("64M", 64 * 2**20), ("64 MiB", 64 * 2**20), ("1g", 2**30)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_config(f"[service]\nmin_free_space = {text}\n").download.min_free_space == size


def test_every_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    config = parse_config("")

    s = config.service
    assert s.log_level is LogLevel.WARNING
    assert s.sentry_dsn is None
    assert s.job_prefix == "upparat_"
    assert s.state_dir == Path("/var/lib/upparat")
    assert s.progress_interval == 10.0
    assert s.step_timeout_minutes is None
    assert s.max_restarts == 3
    assert s.verify_soft_restart is True

    d = config.download
    assert d.location == tmp_path  # 1.12: tempfile.gettempdir()
    assert d.directory == tmp_path / "upparat"
    assert d.allow_http is False
    assert d.proxy is None
    assert d.min_speed == 1024
    assert d.min_speed_time == 60.0
    assert d.max_speed is None
    assert d.min_free_space == 64 * 1024 * 1024
    assert d.max_download_size is None

    b = config.broker
    assert b.host == "127.0.0.1"  # 1.12's default
    assert b.port == 1883  # 1.12's default
    assert b.thing_name == "dev-host-7"
    assert b.client_id == "upparat"
    assert b.tls is None
    assert b.alpn == ()
    assert b.keepalive == 60

    h = config.hooks
    assert h.endpoint == "unix:///run/upparat/hooks.sock" == DEFAULT_ENDPOINT
    assert (h.version, h.download, h.install, h.restart, h.ready) == (None,) * 5
    assert h.retry_interval == 60.0
    assert h.max_retries == 60
    assert h.hook_timeout == 3600.0
    assert h.install_timeout == 3600.0
    assert h.hook_unavailable_timeout == 3600.0

    hs = config.hookserver
    assert hs.listen == DEFAULT_ENDPOINT
    assert hs.listen_path == Path("/run/upparat/hooks.sock")
    assert hs.default_retry_after is None
    assert hs.cancel_grace_period == 10.0
    assert hs.socket_mode == 0o660
    assert hs.script_path == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert hs.log_level is LogLevel.INFO
    assert hs.state_dir is None

    assert config.source is None


def test_defaults_of_the_classes_match_the_file_defaults() -> None:
    built = Config(broker=BrokerConfig(thing_name=ThingName("dev-host-7")))
    assert built == parse_config("")


def test_empty_sections_mean_defaults() -> None:
    text = "[service]\n[broker]\n[hooks]\n[hookserver]\n"
    assert parse_config(text) == parse_config("")


def test_core_settings_carry_the_configured_values() -> None:
    config = parse_config(
        "[service]\njob_prefix = fw-\nprogress_interval = 2.5\nstep_timeout = 30\n"
        "max_restarts = 1\nverify_soft_restart = no\nallow_http = yes\n"
        "[hooks]\nretry_interval = 5\nmax_retries = 7\nhook_timeout = 11\n"
        "install_timeout = 12\nhook_unavailable_timeout = 13\n"
    )
    assert config.core_settings() == Settings(
        job_prefix="fw-",
        retry_interval=5.0,
        max_retries=7,
        hook_timeout=11.0,
        install_timeout=12.0,
        hook_unavailable_timeout=13.0,
        progress_interval=2.5,
        step_timeout_minutes=30,
        max_restarts=1,
        verify_soft_restart=False,
        allow_http=True,
    )
    assert parse_config("").core_settings() == Settings()


# -- signed artifacts ----------------------------------------------------------------


def test_signatures_are_not_checked_by_default() -> None:
    config = parse_config("")
    assert config.signing == SigningConfig()
    assert config.signing.trusted_keys is None
    assert config.core_settings().require_signature is False


def test_trusted_keys_are_loaded_and_require_signature_reaches_the_core(tmp_path: Path) -> None:
    key = make_key(tmp_path, "release")

    config = parse_config(f"[service]\ntrusted_keys = {key.public}\nrequire_signature = yes\n")

    keys = config.signing.trusted_keys
    assert keys is not None
    assert keys.path == key.public
    assert [k.source for k in keys.keys] == [str(key.public)]
    assert config.core_settings().require_signature is True
    assert f"trusted_keys={key.public} (1 keys) require_signature=yes" in config.redacted_summary()


def test_trusted_keys_may_be_a_directory(tmp_path: Path) -> None:
    make_key(tmp_path / "keys", "a")
    make_key(tmp_path / "keys", "b")

    config = parse_config(f"[service]\ntrusted_keys = {tmp_path / 'keys'}\n")

    assert config.signing.trusted_keys is not None
    assert len(config.signing.trusted_keys.keys) == 2


def test_a_missing_trusted_keys_path_names_section_key_and_value(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"

    message = one_problem(f"[service]\ntrusted_keys = {missing}\n")

    assert message.startswith("config: [service] trusted_keys must be a PEM file")
    assert "no such file" in message
    assert message.endswith(f'got "{missing}"')


def test_trusted_keys_without_a_usable_key_is_a_config_error(tmp_path: Path) -> None:
    key = make_key(tmp_path, "release")

    message = one_problem(f"[service]\ntrusted_keys = {key.private}\n")

    assert "[service] trusted_keys" in message
    assert "private key" in message
    assert str(key.private) in message


def test_require_signature_without_trusted_keys_is_a_config_error() -> None:
    message = one_problem("[service]\nrequire_signature = true\n")

    assert "[service] require_signature = true needs trusted_keys" in message


def test_a_bad_trusted_keys_is_the_only_problem_reported_with_require_signature(
    tmp_path: Path,
) -> None:
    message = one_problem(
        f"[service]\ntrusted_keys = {tmp_path / 'nope'}\nrequire_signature = true\n"
    )

    assert "trusted_keys must be" in message


def test_the_hook_server_reads_the_shared_keys_by_the_same_rules(tmp_path: Path) -> None:
    key = make_key(tmp_path, "release")
    text = (
        f"[service]\ndownload_location = {tmp_path}\ntrusted_keys = {key.public}\n"
        "require_signature = on\n[hooks]\ninstall = /x\n"
    )
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)

    server = hookserver_config.parse(parser)
    daemon = parse_config(text)

    assert server.download_dir == daemon.download.directory == tmp_path / "upparat"
    assert server.trusted_keys == daemon.signing.trusted_keys
    assert server.require_signature is daemon.signing.require_signature is True

    bad = f"[service]\ntrusted_keys = {tmp_path / 'nope'}\n"
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(bad)
    with pytest.raises(ConfigError) as err:
        hookserver_config.parse(parser)
    assert err.value.problems == problems(bad)


# -- upparat 1.12 files --------------------------------------------------------------


def test_the_1_12_example_loads_unchanged() -> None:
    config = load_config(EXAMPLE_112)
    assert config.source == EXAMPLE_112
    assert config.service.log_level is LogLevel.INFO
    assert config.service.sentry_dsn == (
        f"https://{DSN_KEY}@o123456.ingest.sentry.io/1234567"
    )  # from 1.12's key name "sentry"
    assert config.download.location == Path("/var/cache/upparat")
    assert config.download.directory == Path("/var/cache/upparat/upparat")
    b = config.broker
    assert b.host == "a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com"
    assert b.port == 443
    assert b.thing_name == "gateway-0042"
    assert b.client_id == "gateway-0042"
    assert b.tls == TlsFiles(
        cafile=Path("/etc/upparat/AmazonRootCA1.pem"),
        certfile=Path("/etc/upparat/certificate.pem.crt"),
        keyfile=Path("/etc/upparat/private.pem.key"),
    )
    assert b.alpn == ("x-amzn-mqtt-ca",)  # what 1.12 always offered with TLS
    h = config.hooks
    assert h.version == "/usr/lib/upparat/hooks/version.sh"
    assert h.download == "/usr/lib/upparat/hooks/download.sh"
    assert h.install == "/usr/lib/upparat/hooks/install.sh"
    assert h.restart == "/usr/lib/upparat/hooks/restart.sh"
    assert h.ready == "/usr/lib/upparat/hooks/ready.sh"
    assert h.retry_interval == 30.0
    assert h.max_retries == 120
    # New keys keep their defaults.
    assert config.core_settings() == Settings(retry_interval=30.0, max_retries=120)


def test_a_1_12_bridge_config_with_relative_hooks_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shape of 1.12's own test config: plain MQTT to a local bridge, uppercase
    # level, "sentry", relative script paths, ";" comments.
    monkeypatch.chdir(tmp_path)
    config = parse_config(
        "[service]\nlog_level = WARNING\ndownload_location = tmp/test\n"
        "sentry = https://abc@sentry.example.com/42\n\n"
        "[broker]\nhost = mosquitto\nport = 8080\nthing_name = mything\n"
        "client_id = my_client_id\n\n"
        "[hooks]\nversion = ./version.sh\ndownload = ./download.sh\nready = ./ready.sh\n"
        "install = ./install.sh\nrestart = ./restart.sh\nretry_interval = 60\n"
        "max_retries = 10\n; ready = <checks if your system is ready/stable>\n"
    )
    assert config.download.location == tmp_path / "tmp" / "test"
    assert config.broker.port == 8080
    assert config.broker.tls is None
    assert config.broker.alpn == ()
    assert config.hooks.version == "./version.sh"  # the hook server resolves these
    assert config.hooks.max_retries == 10
    assert config.service.sentry_dsn == "https://abc@sentry.example.com/42"


def test_the_new_example_loads_and_shows_every_key() -> None:
    config = load_config(EXAMPLE)
    assert config.download.location == Path("/var/cache/upparat")
    assert config.broker.alpn == ("x-amzn-mqtt-ca",)
    text = EXAMPLE.read_text()
    for section, keys in KNOWN_KEYS.items():
        assert f"[{section}]" in text
        for key in keys:
            if key == "sentry":  # 1.12's alias; the example uses sentry_dsn
                continue
            assert re.search(rf"^[#;]? ?{key} = ", text, re.MULTILINE), key


# -- values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("yes", True),
        ("on", True),
        ("1", True),
        ("TRUE", True),
        ("Yes", True),
        ("false", False),
        ("no", False),
        ("off", False),
        ("0", False),
        ("Off", False),
    ],
)
def test_booleans(text: str, value: bool) -> None:
    config = parse_config(f"[service]\nallow_http = {text}\nverify_soft_restart = {text}\n")
    assert config.download.allow_http is value
    assert config.service.verify_soft_restart is value


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("DEBUG", LogLevel.DEBUG),
        ("debug", LogLevel.DEBUG),
        ("INFO", LogLevel.INFO),
        ("WARNING", LogLevel.WARNING),
        ("warn", LogLevel.WARNING),
        ("ERROR", LogLevel.ERROR),
        ("EXCEPTION", LogLevel.ERROR),  # listed in 1.12's documentation
        ("CRITICAL", LogLevel.ERROR),
    ],
)
def test_log_levels(text: str, level: LogLevel) -> None:
    assert parse_config(f"[service]\nlog_level = {text}\n").service.log_level is level


def test_every_new_key_is_read() -> None:
    config = parse_config(
        "[service]\nsentry_dsn = https://key@sentry.example.com/path/7\n"
        "state_dir = /data/upparat\nproxy = http://proxy.example:3128\n"
        "min_speed = 0\nmin_speed_time = 0.5\nmax_speed = 1000000\n"
        "min_free_space = 10M\nmax_download_size = 2G\n"
        "[broker]\nport = 8883\ncafile = /c/ca\ncertfile = /c/cert\nkeyfile = /c/key\n"
        "alpn = h2, x-amzn-mqtt-ca\nkeepalive = 1200\n"
        "[hooks]\nendpoint = unix:/run/hooks.sock\n"
        "[hookserver]\nlisten = unix:///srv/hooks.sock\ndefault_retry_after = 300\n"
        "cancel_grace_period = 0\nsocket_mode = 0600\nscript_path = /opt/bin:/usr/bin\n"
    )
    assert config.service.sentry_dsn == "https://key@sentry.example.com/path/7"
    assert config.service.state_dir == Path("/data/upparat")
    assert config.download.proxy == "http://proxy.example:3128"
    assert config.download.min_speed == 0
    assert config.download.min_speed_time == 0.5
    assert config.download.max_speed == 1_000_000
    assert config.download.min_free_space == 10 * 2**20
    assert config.download.max_download_size == 2 * 2**30
    assert config.broker.alpn == ("h2", "x-amzn-mqtt-ca")
    assert config.broker.keepalive == 1200
    assert config.hooks.endpoint == "unix:/run/hooks.sock"
    hs = config.hookserver
    assert hs.listen == "unix:///srv/hooks.sock"
    assert hs.listen_path == Path("/srv/hooks.sock")
    assert hs.default_retry_after == 300.0
    assert hs.cancel_grace_period == 0.0
    assert hs.socket_mode == 0o600
    assert hs.script_path == "/opt/bin:/usr/bin"


def test_hookserver_listens_where_the_daemon_calls_by_default() -> None:
    config = parse_config("[hooks]\nendpoint = unix:/tmp/x/hooks.sock\n")
    assert config.hookserver.listen == "unix:/tmp/x/hooks.sock"
    assert config.hookserver.listen_path == Path("/tmp/x/hooks.sock")


def test_unix_socket_path_forms() -> None:
    assert unix_socket_path("unix:///a/b.sock") == Path("/a/b.sock")
    assert unix_socket_path("unix:/a/b.sock") == Path("/a/b.sock")
    assert unix_socket_path("unix:rel.sock") == Path("rel.sock")
    with pytest.raises(ValueError, match="not a unix: target"):
        unix_socket_path("localhost:50051")


def test_tcp_endpoint_is_accepted() -> None:
    config = parse_config("[hooks]\nendpoint = 127.0.0.1:50051\n")
    assert config.hooks.endpoint == "127.0.0.1:50051"
    assert config.hookserver.listen == "127.0.0.1:50051"


def test_alpn_follows_port_and_tls() -> None:
    tls = "cafile = /ca\ncertfile = /cert\nkeyfile = /key\n"
    assert parse_config(f"[broker]\nport = 443\n{tls}").broker.alpn == ("x-amzn-mqtt-ca",)
    assert parse_config(f"[broker]\nport = 8883\n{tls}").broker.alpn == ()
    assert parse_config("[broker]\nport = 443\n").broker.alpn == ()
    assert parse_config(f"[broker]\nport = 443\nalpn = none\n{tls}").broker.alpn == ()
    assert parse_config(f"[broker]\nport = 8883\nalpn = x-amzn-mqtt-ca\n{tls}").broker.alpn == (
        "x-amzn-mqtt-ca",
    )


def test_optional_keys_left_empty_are_unset() -> None:
    config = parse_config(
        "[service]\nsentry_dsn =\nproxy =\nstep_timeout =\nmax_speed =\n"
        "[hooks]\nversion =\ninstall =\n[hookserver]\ndefault_retry_after =\n"
    )
    assert config == parse_config("")


def test_percent_signs_are_literal() -> None:
    # Interpolation is off: "%" needs no escaping.
    config = parse_config("[broker]\nclient_id = dev%(x)s%\n")
    assert config.broker.client_id == "dev%(x)s%"


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = parse_config("[service]\nstate_dir = state\n")
    assert config.service.state_dir == tmp_path / "state"


# -- thing name ----------------------------------------------------------------------


def test_thing_name_defaults_to_the_hostname(hostname: str) -> None:
    assert parse_config("").broker.thing_name == hostname


def test_thing_name_from_the_file_wins_over_the_hostname() -> None:
    assert parse_config("[broker]\nthing_name = dev-9\n").broker.thing_name == "dev-9"


def test_thing_name_from_the_command_line_wins_over_everything(tmp_path: Path) -> None:
    path = tmp_path / "upparat.conf"
    path.write_text("[broker]\nthing_name = from-file\n")
    assert load_config(path, thing_name_override="from-cli").broker.thing_name == "from-cli"
    assert load_config(path, thing_name_override=None).broker.thing_name == "from-file"
    # 1.12 treated an empty --thing-name like none.
    assert load_config(path, thing_name_override="").broker.thing_name == "from-file"
    assert load_config(tmp_path / "upparat.conf").broker.thing_name == "from-file"


def test_bad_thing_name_from_the_command_line() -> None:
    assert problems("", thing_name_override="a/b") == (
        "config: the thing name given on the command line must be a thing name: 1-128 of"
        ' the characters a-z A-Z 0-9 : _ - (AWS IoT), got "a/b"',
    )


def test_hostname_unusable_as_thing_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "")
    assert one_problem("") == (
        'config: [broker] thing_name is not set and the hostname "" cannot stand in for it:'
        " it must be a thing name: 1-128 of the characters a-z A-Z 0-9 : _ - (AWS IoT)."
        " Set thing_name."
    )


# -- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[broker]\nport = 88a3\n",
            'config: [broker] port must be an integer 1-65535, got "88a3"',
        ),
        ("[broker]\nport = 0\n", 'config: [broker] port must be an integer 1-65535, got "0"'),
        (
            "[broker]\nport = 65536\n",
            'config: [broker] port must be an integer 1-65535, got "65536"',
        ),
        (
            "[broker]\nport = 1_883\n",
            'config: [broker] port must be an integer 1-65535, got "1_883"',
        ),
        (
            "[broker]\nkeepalive = -1\n",
            'config: [broker] keepalive must be an integer 1-65535, got "-1"',
        ),
        (
            # The MQTT driver refused 0 at start (exit 1, "unexpected error").
            "[broker]\nkeepalive = 0\n",
            'config: [broker] keepalive must be an integer 1-65535, got "0"',
        ),
        (
            # The MQTT driver refused it at start; AWS IoT thing names have no ".".
            "[broker]\nthing_name = dev.example\n",
            "config: [broker] thing_name must be a thing name: 1-128 of the characters"
            ' a-z A-Z 0-9 : _ - (AWS IoT), got "dev.example"',
        ),
        (
            "[broker]\nclient_id = " + "x" * 129 + "\n",
            "config: [broker] client_id must be 1-128 bytes of UTF-8 (the AWS IoT limit),"
            ' got "' + "x" * 129 + '"',
        ),
        (
            "[broker]\nthing_name = a+b\n",
            "config: [broker] thing_name must be a thing name: 1-128 of the characters"
            ' a-z A-Z 0-9 : _ - (AWS IoT), got "a+b"',
        ),
        (
            "[broker]\nhost =\n",
            "config: [broker] host must not be empty; remove the line to use the default"
            " (127.0.0.1)",
        ),
        (
            "[broker]\nalpn = a,,b\ncafile=/a\ncertfile=/b\nkeyfile=/c\n",
            'config: [broker] alpn must be "none" or a comma-separated list of ALPN protocol'
            ' names, got "a,,b"',
        ),
        (
            "[broker]\nalpn = x-amzn-mqtt-ca\n",
            "config: [broker] alpn needs TLS: set cafile, certfile and keyfile, or remove alpn",
        ),
        (
            "[service]\nallow_http = maybe\n",
            "config: [service] allow_http must be true or false (also yes/no, on/off, 1/0),"
            ' got "maybe"',
        ),
        (
            "[service]\nverify_soft_restart = 2\n",
            "config: [service] verify_soft_restart must be true or false"
            ' (also yes/no, on/off, 1/0), got "2"',
        ),
        (
            "[service]\nlog_level = loud\n",
            "config: [service] log_level must be one of DEBUG, INFO, WARNING, ERROR (any case),"
            ' got "loud"',
        ),
        (
            "[service]\nlog_level =\n",
            "config: [service] log_level must not be empty; remove the line to use the"
            " default (warning)",
        ),
        (
            "[service]\nmax_restarts = -1\n",
            'config: [service] max_restarts must be an integer >= 0, got "-1"',
        ),
        (
            "[service]\nprogress_interval = 0\n",
            'config: [service] progress_interval must be a number of seconds > 0, got "0"',
        ),
        (
            "[service]\nprogress_interval = inf\n",
            'config: [service] progress_interval must be a number of seconds > 0, got "inf"',
        ),
        (
            "[service]\nmin_speed_time = -5\n",
            'config: [service] min_speed_time must be a number of seconds > 0, got "-5"',
        ),
        (
            "[service]\nmin_speed = 1k\n",
            'config: [service] min_speed must be an integer >= 0, got "1k"',
        ),
        (
            "[service]\nmax_download_size = 0\n",
            "config: [service] max_download_size must be a size in bytes > 0, optionally with"
            ' K, M, G or T (powers of 1024) like 64M, got "0"',
        ),
        (
            "[service]\nmin_free_space = -1M\n",
            "config: [service] min_free_space must be a size in bytes >= 0, optionally with"
            ' K, M, G or T (powers of 1024) like 64M, got "-1M"',
        ),
        (
            "[service]\nmax_speed = 0\n",
            'config: [service] max_speed must be an integer >= 1, got "0"',
        ),
        (
            "[service]\nstep_timeout = 10081\n",
            'config: [service] step_timeout must be an integer 1-10080, got "10081"',
        ),
        (
            "[service]\njob_prefix = up/\n",
            "config: [service] job_prefix must be 1-63 of the characters a-z A-Z 0-9 _ -"
            ' (AWS IoT job id characters), got "up/"',
        ),
        (
            "[service]\njob_prefix =\n",
            "config: [service] job_prefix must not be empty; remove the line to use the"
            " default (upparat_)",
        ),
        (
            "[service]\nproxy = socks5://p:1080\n",
            "config: [service] proxy must be an http:// proxy URL like"
            ' http://[user:password@]proxy.example:3128, got "socks5://p:1080"'
            " (the proxy must be an http:// URL, got socks5://)",
        ),
        (
            "[service]\nproxy = http://p:port\n",
            "config: [service] proxy must be an http:// proxy URL like"
            ' http://[user:password@]proxy.example:3128, got "http://p:port"'
            " (the proxy URL cannot be parsed: malformed port)",
        ),
        (
            "[hooks]\nretry_interval = -1\n",
            'config: [hooks] retry_interval must be a number of seconds >= 0, got "-1"',
        ),
        (
            "[hooks]\nmax_retries = -3\n",
            'config: [hooks] max_retries must be an integer >= 0, got "-3"',
        ),
        (
            "[hooks]\nmax_retries = 2.5\n",
            'config: [hooks] max_retries must be an integer >= 0, got "2.5"',
        ),
        (
            "[hooks]\nhook_timeout = 0\n",
            'config: [hooks] hook_timeout must be a number of seconds > 0, got "0"',
        ),
        (
            "[hooks]\ninstall_timeout = 1h\n",
            'config: [hooks] install_timeout must be a number of seconds > 0, got "1h"',
        ),
        (
            "[hooks]\nendpoint = localhost:0\n",
            "config: [hooks] endpoint must be a unix socket target like"
            " unix:///run/upparat/hooks.sock, or host:port ([v6]:port, or :port for 127.0.0.1)"
            ' with a port 1-65535, got "localhost:0"',
        ),
        (
            "[hooks]\nendpoint = unix://host/x.sock\n",
            "config: [hooks] endpoint must be a unix socket target like"
            " unix:///run/upparat/hooks.sock, or host:port ([v6]:port, or :port for 127.0.0.1)"
            ' with a port 1-65535, got "unix://host/x.sock"',
        ),
        (
            "[hooks]\ninstall = /a\n  /b\n",
            'config: [hooks] install must be a single line, got "/a\\n/b"',
        ),
        (
            "[hookserver]\nsocket_mode = 0999\n",
            "config: [hookserver] socket_mode must be an octal mode of 0660 or tighter"
            ' (no bits outside 0660, e.g. 0600), got "0999"',
        ),
        (
            "[hookserver]\nsocket_mode = 4777\n",
            "config: [hookserver] socket_mode must be an octal mode of 0660 or tighter"
            ' (no bits outside 0660, e.g. 0600), got "4777"',
        ),
        (
            "[hookserver]\nlisten = unix-abstract:upparat\n",
            "config: [hookserver] listen must be a unix socket target like"
            " unix:///run/upparat/hooks.sock, or host:port ([v6]:port, or :port for 127.0.0.1)"
            ' with a port 1-65535, got "unix-abstract:upparat"',
        ),
        (
            "[hookserver]\ncancel_grace_period = -1\n",
            'config: [hookserver] cancel_grace_period must be a number of seconds >= 0, got "-1"',
        ),
    ],
)
def test_bad_value(text: str, message: str) -> None:
    assert one_problem(text) == message


@pytest.mark.parametrize(
    ("files", "given", "missing"),
    [
        ("cafile = /ca\n", "cafile", "certfile and keyfile"),
        ("certfile = /cert\n", "certfile", "cafile and keyfile"),
        ("cafile = /ca\nkeyfile = /key\n", "cafile and keyfile", "certfile"),
        ("certfile = /cert\nkeyfile = /key\n", "certfile and keyfile", "cafile"),
    ],
)
def test_tls_files_go_together(files: str, given: str, missing: str) -> None:
    assert one_problem(f"[broker]\nport = 8883\n{files}") == (
        "config: [broker] cafile, certfile and keyfile go together: set all three for TLS"
        " with a client certificate, or none for plain MQTT;"
        f" {given} set but {missing} missing"
    )


def test_unknown_key_suggests_the_closest() -> None:
    assert one_problem("[broker]\nprot = 8883\n") == (
        'config: [broker] unknown key "prot" (did you mean port?); known keys: host, port,'
        " thing_name, client_id, cafile, certfile, keyfile, alpn, keepalive"
    )


def test_unknown_key_without_a_close_match() -> None:
    message = one_problem("[hooks]\nzzzz = 1\n")
    assert message.startswith('config: [hooks] unknown key "zzzz"; known keys: version,')


def test_key_in_the_wrong_section_names_the_right_one() -> None:
    message = one_problem("[service]\nretry_interval = 5\n")
    assert message.startswith(
        'config: [service] unknown key "retry_interval" (did you mean [hooks] retry_interval?);'
    )


def test_unknown_section_suggests_the_closest() -> None:
    assert one_problem("[hook]\nversion = /v\n") == (
        "config: unknown section [hook] (did you mean [hooks]?);"
        " known sections: [service], [broker], [hooks], [hookserver]"
    )


def test_default_section_is_not_special() -> None:
    # configparser would copy [DEFAULT] keys into every section; here it is unknown.
    assert one_problem("[DEFAULT]\nport = 1\n") == (
        "config: unknown section [DEFAULT];"
        " known sections: [service], [broker], [hooks], [hookserver]"
    )


def test_all_problems_are_reported_at_once() -> None:
    found = problems(
        "[broker]\nport = x\nkeepalive = y\nhots = h\n[service]\nallow_http = z\n[nope]\n"
    )
    assert len(found) == 5
    assert found[0].startswith('config: [broker] unknown key "hots" (did you mean host?)')
    assert found[1].startswith("config: unknown section [nope];")


def test_sentry_and_sentry_dsn_must_agree() -> None:
    same = "https://k@sentry.example.com/1"
    assert parse_config(f"[service]\nsentry = {same}\nsentry_dsn = {same}\n").service.sentry_dsn
    assert one_problem(
        f"[service]\nsentry = {same}\nsentry_dsn = https://k@sentry.example.com/2\n"
    ) == (
        "config: [service] sentry_dsn and sentry (its 1.12 name) are both set and differ;"
        " keep only sentry_dsn"
    )


def test_a_bad_dsn_is_reported_without_its_key() -> None:
    message = one_problem(f"[service]\nsentry_dsn = https://{DSN_KEY}@sentry.example.com/\n")
    assert message == (
        "config: [service] sentry_dsn must be a Sentry DSN like"
        ' https://<public key>@<host>/<project id>, got "https://***@sentry.example.com/"'
    )
    message = one_problem(f"[service]\nsentry = {DSN_KEY}\n")
    assert DSN_KEY not in message
    assert message.endswith("got a value of 32 characters")


def test_syntax_errors_are_config_errors() -> None:
    (message,) = problems("port = 1\n")
    assert message == (
        "config: File contains no section headers. file: '<config>', line: 1 'port = 1\\n'"
    )
    (message,) = problems("[broker]\nport = 1\nport = 2\n")
    assert "option 'port' in section 'broker' already exists" in message
    (message,) = problems("[broker]\n[broker]\n")
    assert "section 'broker' already exists" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.conf")
    assert info.value.problems == (
        f"config: cannot read {tmp_path / 'nope.conf'}: [Errno 2] No such file or directory:"
        f" '{tmp_path / 'nope.conf'}'",
    )


@given(st.text(alphabet="0123456789-+x. _", max_size=8))
def test_port_is_an_integer_in_range_or_an_error(text: str) -> None:
    valid = re.fullmatch(r"[+-]?[0-9]+", text.strip()) and 1 <= int(text) <= 65535
    if valid:
        assert parse_config(f"[broker]\nport = {text}\n").broker.port == int(text)
    else:
        with pytest.raises(ConfigError, match=r"^config: \[broker\] port must "):
            parse_config(f"[broker]\nport = {text}\n")


# -- secrets -------------------------------------------------------------------------


def test_summary_and_repr_hide_secrets(tmp_path: Path) -> None:
    keyfile = tmp_path / "private.pem.key"
    keyfile.write_text("-----BEGIN PRIVATE KEY-----\nSECRETKEYMATERIAL\n")
    config = parse_config(
        f"[service]\nsentry_dsn = https://{DSN_KEY}@o1.ingest.sentry.io/77\n"
        "proxy = http://user:hunter2@proxy.example:3128\n"
        f"[broker]\ncafile = /ca\ncertfile = /cert\nkeyfile = {keyfile}\n",
        source=tmp_path / "upparat.conf",
    )
    summary = config.redacted_summary()
    for shown in (summary, repr(config)):
        assert DSN_KEY not in shown
        assert "hunter2" not in shown
        assert "SECRETKEYMATERIAL" not in shown
    assert "sentry_dsn=https://***@o1.ingest.sentry.io/77" in summary
    assert "proxy=http://user:***@proxy.example:3128" in summary
    ipv6 = parse_config("[service]\nproxy = http://u:hunter2@[fd00::1]:3128\n")
    assert "proxy=http://u:***@[fd00::1]:3128" in ipv6.redacted_summary()
    assert f"keyfile={keyfile}" in summary
    assert summary.splitlines()[0] == f"config: {tmp_path / 'upparat.conf'}"
    assert [line.split(" ", 1)[0] for line in summary.splitlines()[1:]] == [
        "[service]",
        "[broker]",
        "[hooks]",
        "[hookserver]",
    ]


# -- documentation -------------------------------------------------------------------


def test_docs_list_every_key() -> None:
    rows = {
        (m.group(1), m.group(2))
        for m in re.finditer(r"^\| `\[(\w+)\]` \| `(\w+)` \|", DOCS.read_text(), re.MULTILINE)
    }
    expected = {(section, key) for section, keys in KNOWN_KEYS.items() for key in keys}
    assert rows == expected


def test_the_daemon_and_the_hook_server_read_an_endpoint_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`:port` and a relative socket path meant something to the hook server only; now both
    read them by `parse_endpoint`, and the daemon's target is where the server listens."""
    monkeypatch.chdir(tmp_path)
    config = parse_config("[hooks]\nendpoint = :50051\n[hookserver]\nlisten = unix:rel.sock\n")

    assert config.hooks.endpoint == "127.0.0.1:50051"
    assert config.hookserver.listen == f"unix://{tmp_path / 'rel.sock'}"
    assert parse_endpoint("[::1]:7") == TcpEndpoint(host="::1", port=7)
    assert parse_endpoint(":7") == TcpEndpoint(host="127.0.0.1", port=7)
    assert parse_endpoint("unix:/run/x.sock") == UnixEndpoint(path=Path("/run/x.sock"))
    for bad in ("::1:80", ":0", "unix:", "unix://host/x.sock", "[::1]", "h:80/x"):
        with pytest.raises(ValueError, match="unix socket target"):
            parse_endpoint(bad)


@pytest.mark.parametrize("mode", ["0666", "0664", "0770", "0777"])
def test_a_socket_mode_beyond_0660_is_refused(mode: str) -> None:
    # The daemon accepted these and the hook server refused them.
    assert one_problem(f"[hookserver]\nsocket_mode = {mode}\n") == (
        "config: [hookserver] socket_mode must be an octal mode of 0660 or tighter"
        f' (no bits outside 0660, e.g. 0600), got "{mode}"'
    )
