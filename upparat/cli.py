"""Command line of the daemon: `upparat -c FILE [-v] [-t THING]`, `upparat check-config`
and `upparat status`.

Owns argument parsing, logging set-up and wiring the drivers to the runtime.
Exit codes: 0 clean stop (SIGTERM/SIGINT) or check passed; 1 unexpected error;
2 bad usage or bad config; 3 (check-config) the hook server did not answer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import upparat
from upparat.config import (
    Config,
    ConfigError,
    default_state_dir,
    load_config,
    unix_socket_path,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_HOOKSERVER = 3

log = logging.getLogger("upparat")

_EPILOG = """\
commands:
  upparat -c FILE            run the daemon (the default)
  upparat check-config -c FILE
                             validate the config, then ask the hook server for its
                             GetInfo and print it
  upparat status [-c FILE | --file PATH] [--watch] [--json]
                             print what the daemon is doing (its status file)

exit codes:
  0  stopped cleanly (SIGTERM / SIGINT), or check-config passed
  1  unexpected error
  2  bad usage or bad config (the message names section, key and value)
  3  check-config: the hook server did not answer
"""


def _parser(prog: str, *, check: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Validate an upparat config and reach its hook server."
            if check
            else "upparat: firmware updates for embedded Linux driven by AWS IoT Jobs."
        ),
        epilog=None if check else _EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-c", "--config", required=True, type=Path, help="path of the INI config file"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument(
        "-t", "--thing", default=None, help="thing name (overrides [broker] thing_name)"
    )
    parser.add_argument("--version", action="version", version=f"upparat {upparat.__version__}")
    return parser


def setup_logging(level: int) -> None:
    # Under systemd the journal stamps every line itself.
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
    # Third-party loggers stay quiet unless something is wrong.
    for noisy in ("paho", "grpc", "urllib3", "sentry_sdk"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _load(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(args.config, thing_name_override=args.thing)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check-config":
        return check_config(argv[1:])
    if argv and argv[0] == "status":
        return status_command(argv[1:])
    if argv and argv[0] in ("run", "daemon"):
        argv = argv[1:]
    args = _parser("upparat", check=False).parse_args(argv)
    config = _load(args)
    if config is None:
        return EXIT_CONFIG
    setup_logging(logging.DEBUG if args.verbose else _level(config))
    from upparat.daemon import run_daemon  # the drivers load only when running
    from upparat.io.mqtt import MqttConfigError

    try:
        return run_daemon(config)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return EXIT_CONFIG
    except MqttConfigError as err:
        return _broker_refused(err)
    except Exception:
        log.exception("upparat stopped on an unexpected error")
        return EXIT_ERROR


def _broker_refused(err: Exception) -> int:
    # The TLS files are read by the MQTT driver, not the config (unreadable, not PEM, an
    # encrypted key): still the configuration's fault, not an unexpected error.
    print(f"config: [broker] {err}", file=sys.stderr)
    return EXIT_CONFIG


def _level(config: Config) -> int:
    return logging.getLevelNamesMapping()[config.service.log_level.name]


def check_config(argv: Sequence[str]) -> int:
    args = _parser("upparat check-config", check=True).parse_args(list(argv))
    config = _load(args)
    if config is None:
        return EXIT_CONFIG
    setup_logging(logging.DEBUG if args.verbose else logging.WARNING)
    from upparat.io.folder import folder_problem, shared_temp_warning

    folder = folder_problem(config.download.directory, uid=None)
    if folder is not None:
        print(f"config: {folder}", file=sys.stderr)  # as the daemon says it
        return EXIT_CONFIG
    from upparat.daemon import mqtt_driver
    from upparat.io.mqtt import MqttConfigError

    try:
        mqtt_driver(config, lambda event: None)  # loads the TLS files; connects nowhere
    except MqttConfigError as err:
        return _broker_refused(err)
    print(f"config {args.config}: ok")
    temp = shared_temp_warning(config.download.location)
    if temp is not None:
        print(f"warning: {temp}")
    print(config.redacted_summary())
    from upparat.hooks.info import Unreachable, fetch_info

    endpoint = config.hooks.endpoint
    hint = "is upparat-hookserver running with this config?"
    if endpoint.startswith("unix:") and not unix_socket_path(endpoint).exists():
        # Nothing to wait for: the hook server creates the socket when it starts.
        reason = f"no socket file at {unix_socket_path(endpoint)}"
        print(f"hook server at {endpoint}: not reachable: {reason}; {hint}", file=sys.stderr)
        return EXIT_HOOKSERVER
    info = fetch_info(endpoint, timeout=5.0)
    if isinstance(info, Unreachable):
        print(f"hook server at {endpoint}: not reachable: {info.reason}; {hint}", file=sys.stderr)
        return EXIT_HOOKSERVER
    print(f"hook server at {endpoint}:")
    print(info)
    return EXIT_OK


# ---- `upparat status`: prints the daemon's status file (upparat.io.status) ----------------


def status_command(
    argv: Sequence[str],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Exit codes: 0 printed (or --watch ended by SIGINT: 130); 1 no readable status file
    (without --watch); 2 bad usage or bad config."""
    from upparat.io import status

    parser = argparse.ArgumentParser(
        prog="upparat status",
        description="Print what the daemon is doing, from its status file: a progress bar"
        " on a terminal, one line of key=value otherwise, or --json (README: the status file).",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", type=Path, help="the daemon's config: its state_dir")
    where.add_argument(
        "--file",
        type=Path,
        help="the status file (default: $RUNTIME_DIRECTORY/status.json, else"
        " <state_dir>/status.json)",
    )
    parser.add_argument("--watch", action="store_true", help="follow changes until Ctrl-C")
    parser.add_argument("--json", action="store_true", help="the file's JSON, one line each")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.5,
        help="with --watch: seconds between looks at the file (default 0.5)",
    )
    args = parser.parse_args(list(argv))
    if not args.interval > 0:
        parser.error(f"--interval must be > 0 seconds, got {args.interval}")
    if args.file is not None:
        path: Path = args.file
    elif args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as err:
            print(str(err), file=sys.stderr)
            return EXIT_CONFIG
        path = status.default_path(os.environ, config.service.state_dir)
    else:
        path = status.default_path(os.environ, default_state_dir(os.environ))
    tty = sys.stdout.isatty() and not args.json

    def text_of(found: status.StatusSnapshot) -> str:
        if args.json:
            return json.dumps(status.to_json(found), ensure_ascii=False, separators=(",", ":"))
        return status.render_tty(found) if tty else status.render_plain(found)

    if not args.watch:
        found = status.read(path)
        if not isinstance(found, status.StatusSnapshot):
            print(f"upparat status: {status.describe_problem(found)}", file=sys.stderr)
            return EXIT_ERROR
        print(text_of(found))
        return EXIT_OK

    # --watch polls the file's identity (inode, size, mtime) while it runs: this is the
    # CLI, so the daemon gets no extra wakeups, and a reader needs no inotify.
    seen: tuple[int, int, int] | bool | None = False
    shown: str | None = None
    try:
        while True:
            try:
                st = path.stat()
                now: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError:
                now = None
            if now != seen:
                seen = now
                found = status.read(path)
                if isinstance(found, status.StatusSnapshot):
                    text = text_of(found)
                    if text != shown:
                        print(("\x1b[H\x1b[2J" + text) if tty else text, flush=True)
                else:
                    text = status.describe_problem(found)
                    if text != shown:
                        print(f"upparat status: {text}", file=sys.stderr, flush=True)
                shown = text
            sleep(args.interval)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
