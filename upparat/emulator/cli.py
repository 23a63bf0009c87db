"""Command line of the jobs emulator: `serve` (the default) and `ctl` (talk to a running one).

    python -m upparat.emulator --host 127.0.0.1 --port 1883 [--state-file F] [--seconds-per-minute 1]
    python -m upparat.emulator ctl --host 127.0.0.1 --port 1883 create-job --job-id J --thing T --document @doc.json

`ctl` prints the emulator's JSON answer on stdout; on a refusal or no answer it prints
the reason on stderr and exits 1. Owns argument parsing only.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from upparat.emulator.control import DEFAULT_PREFIX, EmulatorControl
from upparat.emulator.model import EmulatorError
from upparat.emulator.presign import MAX_EXPIRES_IN, endpoint_problem
from upparat.emulator.server import JobsEmulator
from upparat.emulator.wire import JsonValue


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be an integer 1-65535, got {text!r}")
    return port


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _endpoint(text: str) -> str:
    problem = endpoint_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text.rstrip("/")


def _broker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="MQTT broker host (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=1883, help="MQTT broker port (default 1883)")
    parser.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"control topic prefix (default {DEFAULT_PREFIX}): requests on PREFIX/control/<verb>",
    )


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m upparat.emulator",
        description="A local AWS IoT Jobs service on an MQTT broker, for any thing name."
        " Use `python -m upparat.emulator ctl --help` to drive a running one.",
    )
    _broker_args(parser)
    parser.add_argument(
        "--state-file",
        type=Path,
        help="keep jobs in this JSON file across restarts (loaded at start, written on every change)",
    )
    parser.add_argument(
        "--seconds-per-minute",
        type=_positive,
        default=60.0,
        help="how long one timeout minute lasts (default 60; 1 makes a 1-minute step timeout last"
        " 1 s and a 60 s pre-signed URL expire after 1 s)",
    )
    parser.add_argument(
        "--tick",
        type=_positive,
        default=0.2,
        help="how often timeouts are checked, in seconds (default 0.2)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=_positive,
        default=10.0,
        help="give up if the broker has not accepted us within this many seconds (default 10)",
    )
    parser.add_argument("--client-id", help="MQTT client id (default upparat-emulator-<random>)")
    parser.add_argument(
        "--strict-transitions",
        action="store_true",
        help="refuse QUEUED -> SUCCEEDED without IN_PROGRESS first (AWS allows it)",
    )
    parser.add_argument(
        "--s3-endpoint",
        type=_endpoint,
        metavar="URL",
        help="serve S3 objects of pre-signed URL placeholders from here: a v2 placeholder"
        " (or a v1 one with an S3 URL) for bucket B and key K becomes URL/B/K, signed",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    return parser


def ctl_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m upparat.emulator ctl",
        description="Drive a running jobs emulator through its broker; prints JSON.",
    )
    _broker_args(parser)
    parser.add_argument(
        "--timeout", type=_positive, default=5.0, help="seconds to wait for an answer (default 5)"
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("create-job", help="queue a job for one or more things")
    p.add_argument("--job-id", required=True)
    p.add_argument("--thing", action="append", required=True, help="target thing (repeatable)")
    p.add_argument("--document", required=True, help="job document: JSON text, @file or @- (stdin)")
    p.add_argument("--presigned-expires-in", type=int, default=MAX_EXPIRES_IN, help="60-3600 s")
    p.add_argument("--in-progress-timeout-minutes", type=int, help="job-level timeout, 1-10080")

    p = verbs.add_parser("cancel-job", help="QUEUED -> CANCELED (IN_PROGRESS too with --force)")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--force", action="store_true")

    p = verbs.add_parser("cancel-execution", help="cancel one job on one thing")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--thing", required=True)
    p.add_argument("--force", action="store_true")

    p = verbs.add_parser("delete-job", help="forget a job and its executions")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--force", action="store_true")

    p = verbs.add_parser("describe", help="one execution, as the emulator keeps it")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--thing", required=True)

    verbs.add_parser("list", help="every job with its executions")

    p = verbs.add_parser("pending", help="a thing's pending executions, in $next order")
    p.add_argument("--thing", required=True)

    p = verbs.add_parser("history", help="requests received (updates unless --operation)")
    p.add_argument("job_id", metavar="JOB_ID", nargs="?")
    p.add_argument("--thing")
    p.add_argument(
        "--operation",
        default="update",
        help="update (default), get-pending, start-next, describe, unknown or all",
    )

    p = verbs.add_parser("inject-fault", help="reject the next N requests with a code")
    p.add_argument("code", choices=["RequestThrottled", "InternalError", "TerminalStateReached"])
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--job-id")
    p.add_argument("--thing")
    p.add_argument(
        "--operation",
        default="update",
        help="update (default), get-pending, start-next, describe, any",
    )

    verbs.add_parser("clear-faults", help="forget injected faults not yet used")

    p = verbs.add_parser("pause", help="stop answering (hold requests; --drop ignores them)")
    p.add_argument("--drop", action="store_true")

    verbs.add_parser("resume", help="answer again, held requests first")
    verbs.add_parser("check-timeouts", help="time out expired executions now")
    verbs.add_parser("ping", help="check that an emulator answers")

    p = verbs.add_parser("shadow-get", help="a thing's named shadow ($package by default)")
    p.add_argument("--thing", required=True)
    p.add_argument("--name", default="$package", help="shadow name (default $package)")

    p = verbs.add_parser("shadow-update", help="update a named shadow from the cloud side")
    p.add_argument("--thing", required=True)
    p.add_argument("--name", default="$package", help="shadow name (default $package)")
    p.add_argument(
        "--document",
        required=True,
        help='request state document, e.g. {"state":{"desired":{...}}}: JSON, @file or @-',
    )

    p = verbs.add_parser("inject-shadow-fault", help="reject the next N shadow requests")
    p.add_argument("code", type=int, choices=[429, 500])
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--thing")
    p.add_argument("--operation", choices=["get", "update", "delete", "any"], default="any")

    p = verbs.add_parser("shadow-history", help="named-shadow requests received")
    p.add_argument("--thing")
    p.add_argument("--name")

    p = verbs.add_parser("wait-status", help="wait until an execution reaches a status")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--thing", required=True)
    p.add_argument("--status", action="append", default=[], help="repeatable; default: terminal")
    p.add_argument("--wait", type=_positive, default=30.0, help="seconds (default 30)")
    return parser


def _document(text: str) -> dict[str, JsonValue]:
    if text == "@-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as e:
            raise EmulatorError(f"--document: cannot read {text[1:]}: {e.strerror}") from None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise EmulatorError(f"--document: not JSON ({e})") from None
    if not isinstance(value, dict):
        raise EmulatorError("--document: the document must be a JSON object")
    return value


def run_ctl(argv: Sequence[str]) -> int:
    args = ctl_parser().parse_args(argv)
    try:
        with EmulatorControl(args.host, args.port, prefix=args.prefix, timeout=args.timeout) as ctl:
            result: JsonValue
            match args.verb:
                case "create-job":
                    result = ctl.create_job(
                        args.job_id,
                        _document(args.document),
                        args.thing,
                        presigned_expires_in=args.presigned_expires_in,
                        in_progress_timeout_minutes=args.in_progress_timeout_minutes,
                    )
                case "cancel-job":
                    result = ctl.cancel_job(args.job_id, force=args.force)
                case "cancel-execution":
                    result = ctl.cancel_execution(args.job_id, args.thing, force=args.force)
                case "delete-job":
                    ctl.delete_job(args.job_id, force=args.force)
                    result = {"deleted": args.job_id}
                case "describe":
                    result = ctl.describe(args.job_id, args.thing)
                case "list":
                    result = list[JsonValue](ctl.list_jobs())
                case "pending":
                    result = list[JsonValue](ctl.pending(args.thing))
                case "history":
                    result = list[JsonValue](ctl.history(args.job_id, args.thing, args.operation))
                case "inject-fault":
                    ctl.inject_fault(
                        args.code,
                        args.count,
                        job_id=args.job_id,
                        thing=args.thing,
                        operation=args.operation,
                    )
                    result = {"injected": args.code, "count": args.count}
                case "clear-faults" | "pause" | "resume" | "check-timeouts" | "ping":
                    call_args = {"drop": args.drop} if args.verb == "pause" else {}
                    result = ctl.call(args.verb, call_args)
                case "shadow-get":
                    result = ctl.shadow(args.thing, args.name)
                case "shadow-update":
                    result = ctl.update_shadow(args.thing, _document(args.document), args.name)
                case "inject-shadow-fault":
                    ctl.inject_shadow_fault(
                        args.code, args.count, thing=args.thing, operation=args.operation
                    )
                    result = {"injected": args.code, "count": args.count}
                case "shadow-history":
                    result = list[JsonValue](ctl.shadow_history(args.thing, args.name))
                case "wait-status":
                    result = ctl.wait_for_status(
                        args.job_id, args.thing, *args.status, timeout=args.wait
                    )
                case _:
                    raise AssertionError(args.verb)
    except (EmulatorError, TimeoutError, ConnectionError, ValueError) as e:
        print(f"upparat-emulator ctl {args.verb}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def run_serve(argv: Sequence[str]) -> int:
    args = serve_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        emulator = JobsEmulator(
            args.host,
            args.port,
            seconds_per_minute=args.seconds_per_minute,
            tick_interval=args.tick,
            state_file=args.state_file,
            control_prefix=args.prefix,
            client_id=args.client_id,
            strict_transitions=args.strict_transitions,
            s3_endpoint=args.s3_endpoint,
        )
        emulator.start(timeout=args.connect_timeout)
    except (EmulatorError, ConnectionError) as e:
        print(f"upparat-emulator: {e}", file=sys.stderr)
        return 1
    try:
        stop.wait()
    finally:
        emulator.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "ctl":
        return run_ctl(argv[1:])
    if argv and argv[0] == "serve":
        argv = argv[1:]
    return run_serve(argv)
