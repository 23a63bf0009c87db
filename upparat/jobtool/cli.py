"""`upparat-job create | status | cancel`, on AWS IoT or (with --emulator) the local emulator.

Owns argument parsing, exit codes (0 ok, 1 service error, 2 bad input, 130 interrupted)
and what goes where: the job document and the status on stdout, notes on stderr.
Job rules live in model.py; boto3 is imported only when a command goes to AWS.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO, assert_never

import attrs
from cryptography.hazmat.primitives.asymmetric import ec

from upparat import signing
from upparat.jobtool.backend import Backend, BackendError, InputError
from upparat.jobtool.model import (
    DEFAULT_JOB_PREFIX,
    MAX_EXPIRES_IN,
    MAX_TIMEOUT_MINUTES,
    CreateInput,
    FileFacts,
    Given,
    JobSpec,
    Mode,
    Placeholder,
    Planned,
    Problem,
    Rejected,
    S3Object,
    TargetSelection,
    build_document,
    check_comment,
    check_job_id,
    parse_endpoint,
    plan_create,
    things_from_text,
)
from upparat.jobtool.report import render_table, to_json

PROG = "upparat-job"
EXIT_SERVICE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Usage(Exception):
    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = tuple(problems)


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command: str = args.command
    connection: _Connection | None = None
    try:
        connection = _Connection(args)
        match command:
            case "create":
                return _create(args, connection, stdin or sys.stdin)
            case "status":
                return _status(args, connection, sleep)
            case "cancel":
                return _cancel(args, connection)
            case _:
                raise AssertionError(f"unknown command {command!r}")
    except (_Usage, InputError) as e:
        return _usage(command, e.problems)
    except BackendError as e:
        print(f"{PROG} {command}: {e}", file=sys.stderr)
        return EXIT_SERVICE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if connection is not None:
            connection.close()


class _Connection:
    """The backend, opened only once the input passed every offline check."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._backend: Backend | None = None
        self.mode = Mode.AWS
        self._endpoint: tuple[str, int] | None = None
        if args.emulator is not None:
            endpoint = parse_endpoint(args.emulator)
            if isinstance(endpoint, Problem):
                raise _Usage([endpoint])
            if (
                args.region is not None
                or args.profile is not None
                or getattr(args, "iot_data_endpoint", None) is not None
            ):
                raise _Usage(
                    [
                        Problem(
                            option="--emulator",
                            text="--region, --profile and --iot-data-endpoint are for AWS;"
                            " drop them with --emulator",
                        )
                    ]
                )
            self.mode = Mode.EMULATOR
            self._endpoint = endpoint

    def get(self) -> Backend:
        if self._backend is None:
            self._backend = self._open()
        return self._backend

    def close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    def _open(self) -> Backend:
        if self._endpoint is not None:
            from upparat.jobtool.emulator import EmulatorBackend

            host, port = self._endpoint
            return EmulatorBackend(host, port, timeout=self._args.emulator_timeout)
        try:
            from upparat.jobtool.aws import AwsBackend
        except ImportError as e:
            if e.name is not None and e.name.split(".")[0] in ("boto3", "botocore"):
                raise BackendError(
                    "the AWS commands need boto3: pip install 'upparat[cloud]'"
                    " (or use the local emulator with --emulator HOST:PORT)"
                ) from None
            raise
        return AwsBackend(
            region=self._args.region,
            profile=self._args.profile,
            data_endpoint=getattr(self._args, "iot_data_endpoint", None),
        )


# ---- commands ---------------------------------------------------------------------------


def _create(args: argparse.Namespace, connection: _Connection, stdin: TextIO) -> int:
    mode = connection.mode
    things = tuple(Given(value=t, origin="--thing") for t in args.thing)
    for source in args.things_from:
        things += _read_things(source, stdin)
    given = CreateInput(
        file=args.file,
        version=args.version,
        things=things,
        groups=tuple(Given(value=g, origin="--group") for g in args.group),
        force=args.force,
        meta=args.meta,
        job_id=args.job_id,
        job_prefix=args.job_prefix,
        role_arn=args.role_arn,
        expires=args.expires,
        target_selection=TargetSelection(args.target_selection),
        in_progress_timeout=args.in_progress_timeout,
        sha256=args.sha256,
        size=args.size,
        presign=args.presign,
        placeholder=None if args.placeholder is None else Placeholder(args.placeholder),
    )
    planned = plan_create(given, mode, now=time.time(), token=secrets.token_hex(2))
    match planned:
        case Rejected(problems=problems):
            raise _Usage(problems)
        case Planned(spec=spec, warnings=warnings):
            pass
        case _:
            assert_never(planned)
    signer = _signer(args)
    for warning in warnings:
        _note(f"warning: {warning}")
    backend = connection.get()
    if spec.sha256 is None or spec.size is None or isinstance(spec.file, S3Object):
        _note(f"reading sha256 and size of {spec.file} ...")
    facts = backend.file_facts(spec.file, spec)
    if isinstance(spec.file, S3Object):
        spec = attrs.evolve(spec, s3_region=backend.s3_region(spec.file))
    signature = None if signer is None else signer.signature(facts)
    built = build_document(spec, facts, signature)
    if isinstance(built, Rejected):
        raise _Usage(built.problems)
    targets = backend.resolve_targets(spec)
    print(built.shown, flush=True)
    what = _targets_text(spec)
    if args.dry_run:
        _note(f"dry run: job {spec.job_id} for {what} not created on {backend.where}")
        return 0
    created = backend.create_job(spec, built.text, targets)
    named = "" if created == spec.job_id else f" ({created})"
    _note(f"created job {spec.job_id} for {what} on {backend.where}{named}")
    return 0


@attrs.frozen(kw_only=True)
class _Signer:
    """--sign-key or --signature, read and checked before any service is asked."""

    option: str
    private_key: ec.EllipticCurvePrivateKey | None = attrs.field(repr=False)
    """--sign-key: the key to sign with."""
    given: bytes | None
    """--signature: a DER signature made elsewhere (AWS Signer, an HSM, openssl)."""
    trusted: signing.TrustedKeys | None
    """--trusted-keys: what the devices check with; the signature is checked the same way."""

    def signature(self, facts: FileFacts) -> bytes:
        """The signature of the file whose sha256 the backend found, checked against the
        trusted keys (as a device will) before it goes into the document."""
        digest = bytes.fromhex(facts.sha256)
        if self.private_key is not None:
            made = signing.sign_digest(self.private_key, digest)
        else:
            assert self.given is not None
            made = self.given
        if self.trusted is not None:
            checked = self.trusted.verify(digest, made)
            if isinstance(checked, signing.NotVerified):
                text = f"{self.option} {checked.reason}; devices with these keys would refuse it"
                raise _Usage([Problem(option=self.option, text=text)])
            _note(f"{self.option}: signature verified with {checked.key}")
        return made


def _signer(args: argparse.Namespace) -> _Signer | None:
    key, given, trusted = args.sign_key, args.signature, args.trusted_keys
    if key is None and given is None:
        if trusted is not None:
            raise _Usage(
                [Problem(option="--trusted-keys", text="--trusted-keys checks --sign-key or"
                         " --signature; give one of them")]
            )  # fmt: skip
        return None
    if key is not None and given is not None:
        text = "--sign-key and --signature exclude each other: sign here, or bring a signature"
        raise _Usage([Problem(option="--sign-key", text=text)])
    option = "--sign-key" if key is not None else "--signature"
    if given is not None and trusted is None:
        text = (
            "--signature needs --trusted-keys (the public key or certificate the devices"
            " check it with), so a wrong signature is caught here, not on every device"
        )
        raise _Usage([Problem(option="--trusted-keys", text=text)])
    keys = private = None
    try:
        if trusted is not None:
            option_now = "--trusted-keys"
            keys = signing.load_trusted_keys(Path(trusted))
        if key is not None:
            option_now = "--sign-key"
            private = signing.load_private_key(_read(key, option_now, 64 * 1024))
    except signing.UnusableKeys as e:
        raise _Usage([Problem(option=option_now, text=f"{option_now}: {e}")]) from None
    return _Signer(
        option=option,
        private_key=private,
        given=None if given is None else _read(given, option, 1024),
        trusted=keys,
    )


def _read(path: str, option: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise _Usage([Problem(option=option, text=f"{option} {path}: {e.strerror}")]) from None
    if len(data) > limit:
        text = f"{option} {path}: larger than {limit} bytes, not a key or a DER signature"
        raise _Usage([Problem(option=option, text=text)])
    return data


def _status(
    args: argparse.Namespace, connection: _Connection, sleep: Callable[[float], None]
) -> int:
    _check(check_job_id(args.job_id))
    if args.interval <= 0:
        raise _Usage(
            [Problem(option="--interval", text=f"--interval must be > 0 s, got {args.interval}")]
        )
    backend = connection.get()
    last: str | None = None
    tty = sys.stdout.isatty()
    while True:
        report = backend.report(args.job_id)
        text = (
            json.dumps(to_json(report), ensure_ascii=False, separators=(",", ":"))
            if args.json
            else render_table(report, args.package)
        )
        if not args.watch:
            print(text)
            return 0
        # A terminal gets a fresh screen per refresh; a pipe or log only gets changes.
        if tty and not args.json:
            print("\x1b[H\x1b[2J" + text, flush=True)
        elif text != last:
            print(text if args.json or last is None else f"\n{text}", flush=True)
        last = text
        if report.finished:
            return 0
        sleep(args.interval)


def _cancel(args: argparse.Namespace, connection: _Connection) -> int:
    _check(check_job_id(args.job_id))
    if args.comment is not None:
        _check(check_comment(args.comment))
    print(connection.get().cancel(args.job_id, force=args.force, comment=args.comment))
    return 0


# ---- plumbing ---------------------------------------------------------------------------


def _targets_text(spec: JobSpec) -> str:
    names = [f"thing {t}" for t in spec.things] + [f"group {g}" for g in spec.groups]
    if len(names) <= 5:
        return ", ".join(names)
    return f"{len(spec.things)} things and {len(spec.groups)} groups"


def _read_things(source: str, stdin: TextIO) -> tuple[Given, ...]:
    if source == "-":
        return things_from_text(stdin.read(), "--things-from -")
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise _Usage(
            [Problem(option="--things-from", text=f"--things-from {source}: cannot read it: {e}")]
        ) from None
    return things_from_text(text, f"--things-from {source}")


def _check(problem: Problem | None) -> None:
    if problem is not None:
        raise _Usage([problem])


def _usage(command: str, problems: Sequence[Problem]) -> int:
    for problem in problems:
        print(f"{PROG} {command}: {problem}", file=sys.stderr)
    print(f"(see {PROG} {command} --help)", file=sys.stderr)
    return EXIT_USAGE


def _note(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("where the job lives (default: AWS IoT)")
    where.add_argument(
        "--emulator",
        metavar="HOST:PORT",
        help="use the local jobs emulator on this MQTT broker instead of AWS IoT",
    )
    where.add_argument(
        "--emulator-timeout",
        type=_seconds,
        default=5.0,
        metavar="SEC",
        help="how long to wait for the emulator to answer (default 5)",
    )
    where.add_argument("--region", help="AWS region (default: AWS_REGION or the profile's)")
    where.add_argument("--profile", help="AWS profile (default: AWS_PROFILE or the default)")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Create, follow and cancel upparat jobs on AWS IoT or the local emulator.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    create = commands.add_parser(
        "create",
        parents=[common],
        help="build an upparat job document and create the job",
        description="Build the upparat job document (file, version, force, meta, sha256,"
        " size), print it, and create the job. s3:// files are pre-signed by AWS IoT"
        " for every download (needs --role-arn); sha256 comes from the object's"
        " x-amz-meta-sha256, its full-object SHA256 checksum, or streaming it once.",
    )
    create.add_argument(
        "--file",
        required=True,
        metavar="s3://BUCKET/KEY|URL",
        help="the update bundle: s3://BUCKET/KEY or an https URL (--emulator: http(s) URL)",
    )
    create.add_argument("--version", required=True, help="the version the bundle installs")
    create.add_argument(
        "--thing", action="append", default=[], metavar="NAME", help="target thing (repeat)"
    )
    create.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME",
        help="target thing group (repeat; AWS only)",
    )
    create.add_argument(
        "--things-from",
        action="append",
        default=[],
        metavar="FILE|-",
        help="thing names, one a line (# comments); - reads stdin",
    )
    create.add_argument(
        "--force",
        action="store_true",
        help="skip the version and download hooks: install now, even the same version",
    )
    create.add_argument("--meta", help="free text passed to the hooks")
    create.add_argument(
        "--job-id",
        metavar="ID",
        help="job id (the prefix is added if missing; default <prefix><version>_<UTC time>_<random>)",
    )
    create.add_argument(
        "--job-prefix",
        default=DEFAULT_JOB_PREFIX,
        metavar="PREFIX",
        help=f"the devices' [service] job_prefix (default {DEFAULT_JOB_PREFIX})",
    )
    create.add_argument(
        "--role-arn",
        metavar="ARN",
        help="IAM role AWS IoT assumes to pre-sign s3:// downloads (required for s3://)",
    )
    create.add_argument(
        "--expires",
        type=_whole,
        metavar="SEC",
        help=f"pre-signed URL lifetime, 60-{MAX_EXPIRES_IN} s (default {MAX_EXPIRES_IN})",
    )
    create.add_argument(
        "--target-selection",
        choices=[t.value for t in TargetSelection],
        default=TargetSelection.SNAPSHOT.value,
        help="CONTINUOUS: things that join a target group later get the job too (default SNAPSHOT)",
    )
    create.add_argument(
        "--in-progress-timeout",
        type=_whole,
        metavar="MIN",
        help=f"minutes (1-{MAX_TIMEOUT_MINUTES}) an execution may stay IN_PROGRESS before"
        " AWS IoT sets TIMED_OUT",
    )
    create.add_argument(
        "--sha256", metavar="HEX", help="the bundle's sha256 (with --size: no download)"
    )
    create.add_argument("--size", type=_whole, metavar="BYTES", help="the bundle's size in bytes")
    signed = create.add_argument_group(
        "signing (devices with [service] trusted_keys check it; README: Security)"
    )
    signed.add_argument(
        "--sign-key",
        metavar="KEY.pem",
        help="sign the bundle's sha256 with this EC P-256 private key (PEM) and put the"
        " signature in the document",
    )
    signed.add_argument(
        "--signature",
        metavar="SIG.der",
        help="a DER signature of the bundle made elsewhere (openssl dgst -sha256 -sign,"
        " AWS Signer, an HSM); needs --trusted-keys",
    )
    signed.add_argument(
        "--trusted-keys",
        metavar="PATH",
        help="the public key(s) or certificate(s) the devices trust (their [service]"
        " trusted_keys): the signature is checked with them before the job is created",
    )
    create.add_argument(
        "--presign",
        action="store_true",
        help="--emulator only: wrap the URL in the pre-signed URL placeholder so the"
        " emulator signs it like AWS IoT does (lifetime --expires)",
    )
    create.add_argument(
        "--placeholder",
        choices=[p.value for p in Placeholder],
        help="pre-signed URL placeholder for s3:// files: v2 (default;"
        " ${aws:iot:s3-presigned-url-v2:https://s3.<region>.amazonaws.com/<bucket>/<key>},"
        " key S3-encoded, any key) or v1 (${aws:iot:s3-presigned-url:<url>}, S3-safe keys only)",
    )
    create.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything and print the document, create nothing",
    )

    status = commands.add_parser(
        "status",
        parents=[common],
        help="every target's execution status, running version and statusDetails",
        description="A table of every target's execution status, the version its $package"
        " shadow reports, and statusDetails, with a summary line (succeeded, failed, rolled"
        " back, in progress).",
    )
    status.add_argument("job_id", metavar="JOB_ID")
    status.add_argument(
        "--watch",
        action="store_true",
        help="refresh until every execution is terminal (a pipe only gets changes)",
    )
    status.add_argument(
        "--interval",
        type=_seconds,
        default=5.0,
        metavar="SEC",
        help="seconds between refreshes with --watch (default 5)",
    )
    status.add_argument(
        "--json", action="store_true", help="JSON instead of a table (one line per refresh)"
    )
    status.add_argument(
        "--package",
        metavar="NAME",
        help="the devices' [service] package_name: VERSION shows that package of each"
        " thing's $package shadow (default: the only one, else name=version for each)",
    )
    status.add_argument(
        "--iot-data-endpoint",
        metavar="URL",
        help="AWS only: the IoT data plane endpoint for GetThingShadow (default: the"
        " account's, from DescribeEndpoint iot:Data-ATS)",
    )

    cancel = commands.add_parser(
        "cancel",
        parents=[common],
        help="cancel a job",
        description="Cancel a job: queued executions are canceled; IN_PROGRESS ones only"
        " with --force (the device is told to stop).",
    )
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.add_argument("--force", action="store_true", help="cancel executions IN_PROGRESS too")
    cancel.add_argument("--comment", help="why (kept by AWS IoT with the job)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
