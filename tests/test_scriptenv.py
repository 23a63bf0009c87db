"""`[hookserver] environment` / `pass_environment`: one rule (upparat.scriptenv), read the
same way by the daemon's config check and by the hook server."""

from __future__ import annotations

import configparser

import pytest

from hookservers.shell import config as hookserver_config
from upparat import scriptenv
from upparat.config import ConfigError, parse_config


def daemon_problems(text: str) -> tuple[str, ...]:
    try:
        parse_config(text)
    except ConfigError as e:
        return e.problems
    return ()


def hookserver_problems(text: str) -> tuple[str, ...]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    try:
        hookserver_config.parse(parser)
    except hookserver_config.ConfigError as e:
        return tuple(str(e).splitlines())
    return ()


def test_assignments_keep_order_and_shell_quoting() -> None:
    text = 'DBUS_SYSTEM_BUS_ADDRESS=unix:path=/tmp/x/bus HTTPS_PROXY="http://p:3128" EMPTY='

    assert scriptenv.parse_assignments(text) == (
        ("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/tmp/x/bus"),
        ("HTTPS_PROXY", "http://p:3128"),
        ("EMPTY", ""),
    )


def test_assignments_win_over_passed_names_and_unset_names_are_left_out() -> None:
    extra = scriptenv.extra_environment(
        ("A", "B", "NOT_SET"), (("B", "assigned"),), {"A": "from-server", "B": "from-server"}
    )

    assert extra == {"A": "from-server", "B": "assigned"}


@pytest.mark.parametrize(
    ("key", "value", "complaint"),
    [
        ("environment", "NOEQUALS", "'NOEQUALS' has no '='"),
        ("environment", "1X=a", "'1X' is not such a name"),
        ("environment", "A-B=a", "'A-B' is not such a name"),
        ("environment", "PATH=/bin", "free of PATH"),
        ("environment", "UPPARAT_JOB_ID=x", "free of UPPARAT_* names"),
        ("environment", "A=1 A=2", "A twice"),
        ("environment", 'A="unbalanced', "balanced quotes"),
        ("pass_environment", "HTTP_PROXY bad-name", "'bad-name' is not such a name"),
        ("pass_environment", "PATH", "free of PATH"),
    ],
)
def test_both_programs_refuse_the_same_values_naming_key_and_value(
    key: str, value: str, complaint: str
) -> None:
    text = f"[hookserver]\n{key} = {value}\n"

    (daemon,) = daemon_problems(text)
    (hookserver,) = hookserver_problems(text)

    for message in (daemon, hookserver):
        assert message.startswith(f"config: [hookserver] {key} must be ")
        assert complaint in message
        assert value.strip('"').split('"')[-1] in message


def test_both_programs_read_the_same_values() -> None:
    text = "[hookserver]\nenvironment = A=1 B='two words'\npass_environment = HTTP_PROXY\n"

    daemon = parse_config(text).hookserver
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    server = hookserver_config.parse(parser)

    assert daemon.environment == server.environment == (("A", "1"), ("B", "two words"))
    assert daemon.pass_environment == server.pass_environment == ("HTTP_PROXY",)
