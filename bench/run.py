"""`make bench`: upparat vs upparat 1.12 vs curl on this machine, written to bench/RESULTS.md.

Runs every process for real on loopback (mosquitto, the jobs emulator, the hook server,
the daemons, an HTTP origin) and measures download time, cloud traffic, memory, idle CPU,
job latency and hook overhead in one run. Prints progress on stderr.

    .venv/bin/python bench/run.py [--quick | --smoke] [--out DIR] [--keep] [--no-install]
    .venv/bin/python bench/run.py --fleet [--out DIR]   # only the simulated fleet section

--smoke needs no network: upparat 1.12 and py-spy are used only if already installed.
Otherwise a missing bench/.venv112 (1.12) and py-spy are installed from PyPI first.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fleet
from upbench import measure
from upbench.origin import Origin
from upbench.report import Environment, Results, render
from upbench.rigs import (
    ROOT,
    VENV112,
    JobRun,
    LegacyRig,
    Rig,
    UpparatRig,
    legacy_available,
)

from hookservers.shell.config import DEFAULT_IDLE_RELEASE
from upparat.devstack.fileserver import make_bundle
from upparat.devstack.procs import mosquitto_binary

BENCH = Path(__file__).resolve().parent


@attrs.frozen(kw_only=True)
class Mode:
    name: str
    size: int
    repeat: int
    latency_jobs: int
    latency_pause: float
    hook_calls: int
    settle: float
    idle_window: float
    timeout: float
    install: bool
    profile: bool
    idle_windows: int
    """The idle window is split into this many; rates and CPU are their means."""
    evidence: bool
    """strace and py-spy dump of the idle processes (what each thread waits in)."""
    pinned_settle: float
    pinned_window: float
    pinned_windows: int
    pinned_latency_jobs: int
    pinned_downloads: int
    """Downloads on one core, the median reported (each comes after the job worker stopped)."""
    after_jobs_settle: float
    """Seconds after the last latency job before memory is sampled "idle after jobs"; the
    full and quick runs wait for the hook server's gRPC to be dropped (DEFAULT_IDLE_RELEASE)."""
    wait_interval: int
    """retry_interval of the job waiting for its maintenance window: past the hook
    server's DEFAULT_IDLE_RELEASE plus the channel's linger in the full and quick runs, so
    each call finds the hook server without gRPC, as the default of 60 s does."""
    wait_window: float


MODES = {
    "full": Mode(
        name="full",
        size=500_000_000,
        repeat=5,
        latency_jobs=10,
        latency_pause=1.0,
        hook_calls=100,
        settle=30.0,
        idle_window=60.0,
        timeout=900.0,
        install=True,
        profile=True,
        idle_windows=6,
        evidence=True,
        pinned_settle=30.0,
        pinned_window=60.0,
        pinned_windows=6,
        pinned_latency_jobs=6,
        pinned_downloads=3,
        after_jobs_settle=DEFAULT_IDLE_RELEASE + 10.0,
        wait_interval=30,
        wait_window=90.0,
    ),
    "quick": Mode(
        name="quick",
        size=50_000_000,
        repeat=2,
        latency_jobs=3,
        latency_pause=0.5,
        hook_calls=20,
        settle=5.0,
        idle_window=10.0,
        timeout=180.0,
        install=True,
        profile=True,
        idle_windows=2,
        evidence=True,
        pinned_settle=5.0,
        pinned_window=10.0,
        pinned_windows=2,
        pinned_latency_jobs=3,
        pinned_downloads=1,
        after_jobs_settle=DEFAULT_IDLE_RELEASE + 5.0,
        wait_interval=30,
        wait_window=30.0,
    ),
    "smoke": Mode(
        name="smoke",
        size=4_000_000,
        repeat=1,
        latency_jobs=2,
        latency_pause=0.3,
        hook_calls=5,
        settle=1.0,
        idle_window=1.0,
        timeout=60.0,
        install=False,
        profile=False,
        idle_windows=1,
        evidence=False,
        pinned_settle=1.0,
        pinned_window=1.0,
        pinned_windows=1,
        pinned_latency_jobs=1,
        pinned_downloads=1,
        after_jobs_settle=1.0,
        wait_interval=1,
        wait_window=2.0,
    ),
}
LATENCY_SIZE = 1_000_000


_STARTED = time.monotonic()


def say(text: str) -> None:
    print(f"bench [{time.monotonic() - _STARTED:5.1f} s]: {text}", file=sys.stderr, flush=True)


def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _load() -> str:
    uptime = shutil.which("uptime")
    if uptime:
        return _first_line([uptime]).strip()
    with open("/proc/loadavg") as f:
        return "load average " + " ".join(f.read().split()[:3])


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def _upparat_version() -> str:
    version = importlib.metadata.version("upparat")
    commit = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{version} (commit {commit}{', uncommitted changes in the tree' if dirty else ''})"


def _legacy_version() -> str:
    if not legacy_available():
        return "not installed"
    code = (
        "import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}'"
        " for p in ('upparat', 'paho-mqtt', 'pysm', 'backoff')))"
    )
    return _first_line([str(VENV112 / "bin" / "python"), "-c", code])


def _libraries() -> str:
    names = ("grpcio", "paho-mqtt", "protobuf", "attrs")
    return ", ".join(f"{n} {importlib.metadata.version(n)}" for n in names)


def ensure_legacy(mode: Mode, allow_install: bool) -> str | None:
    """None when 1.12 can run, else why not."""
    if legacy_available():
        return None
    if not (mode.install and allow_install):
        why = "--no-install" if mode.install else f"--{mode.name} installs nothing"
        return (
            f"{VENV112.relative_to(ROOT)} is not installed ({why});"
            " `make bench` installs it from PyPI"
        )
    say("installing upparat 1.12 into bench/.venv112 (from PyPI)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV112)], check=True)
        subprocess.run(
            [str(VENV112 / "bin" / "pip"), "install", "--quiet", "upparat==1.12", "paho-mqtt<2"],
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        return f"installing it failed ({e}); see the pip output above"
    return None if legacy_available() else "installed, but bench/.venv112/bin/upparat is missing"


def ensure_py_spy(mode: Mode, allow_install: bool) -> str | None:
    if not mode.profile:
        return f"no profile in --{mode.name} mode"
    if measure.py_spy() is not None:
        return None
    if not allow_install:
        return "py-spy is not installed (--no-install)"
    say("installing py-spy into the venv for the profile (bench only, not a project dependency)")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=False
    )
    if done.returncode != 0 or measure.py_spy() is None:
        return "py-spy could not be installed from PyPI"
    return None


def _processes() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def environment(
    mode: Mode, load_start: str, load_end: str, processes: int, argv: Sequence[str]
) -> Environment:
    return Environment(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        mode=mode.name,
        cores=os.cpu_count() or 0,
        cpu_model=_cpu_model(),
        memory_mb=_memory_mb(),
        kernel=f"Linux {platform.release()}",
        python=f"{platform.python_implementation()} {platform.python_version()}",
        upparat=_upparat_version(),
        legacy=_legacy_version(),
        curl=" ".join(_first_line(["curl", "--version"]).split()[:2]),
        mosquitto=_first_line([mosquitto_binary(), "-h"]),
        libraries=_libraries(),
        load_start=load_start,
        load_end=load_end,
        processes=processes,
        command=" ".join(["bench/run.py", *argv]),
    )


WARM_IMPORTS = (
    "import upparat.cli, upparat.daemon, upparat.emulator.cli, upparat.emulator.server,"
    " hookservers.shell.main, hookservers.shell.server, grpc, grpc_health.v1.health, paho.mqtt.client, attrs,"
    " http.server, hashlib, json"
)


def use_bytecode_cache(workdir: Path, *, small: Path) -> None:
    """Give every Python process started from now on compiled modules, as an installed
    package has.

    This environment sets PYTHONDONTWRITEBYTECODE=1 and the checkout has no __pycache__,
    so each daemon, hook server and emulator would compile upparat from source at every
    start, which costs startup time and RSS a device never pays (1.12's venv has the .pyc
    files pip compiled). The cache lives in the work directory (PYTHONPYCACHEPREFIX), so
    the tree stays untouched. A warm-up job runs every code path once, so that modules
    imported on first use are compiled before anything is measured.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    subprocess.run([sys.executable, "-c", WARM_IMPORTS], check=True, cwd=ROOT)
    subprocess.run([sys.executable, "-c", measure.FLOOR_IMPORTS], check=True, cwd="/")
    origin = Origin(small)
    rig = UpparatRig(workdir / "warm-up")
    try:
        rig.start()
        job_id, version = rig.next_job("warmup")
        sha = measure.file_sha256(small / "small.bin")
        rig.run_job(
            job_id,
            url=origin.url("small.bin"),
            version=version,
            sha256=sha,
            size=LATENCY_SIZE,
            timeout=60,
        )
    finally:
        rig.close()
        origin.close()


def run(mode: Mode, workdir: Path, *, allow_install: bool, argv: Sequence[str]) -> Results:
    load_start = _load()
    processes = _processes()
    say(f"{mode.name} mode, work directory {workdir}; {load_start}")
    legacy_skipped = ensure_legacy(mode, allow_install)
    if legacy_skipped:
        say(f"upparat 1.12 will not be measured: {legacy_skipped}")
    profile_skipped = ensure_py_spy(mode, allow_install)

    origin_dir = workdir / "origin"
    origin_dir.mkdir()
    say(f"writing the {mode.size / 1e6:.0f} MB bundle")
    sha_big = make_bundle(origin_dir / "bundle.bin", mode.size, seed=7)
    sha_small = make_bundle(origin_dir / "small.bin", LATENCY_SIZE, seed=8)
    if mode.name != "smoke":  # 5 s to fill a fresh cache; the smoke run checks function
        say("compiling the Python modules into the work directory's bytecode cache")
        use_bytecode_cache(workdir, small=origin_dir)
    origin: Origin | None = None
    ours = UpparatRig(workdir / "upparat")
    legacy = None if legacy_skipped else LegacyRig(workdir / "upparat-1.12")
    floor: measure.FloorProcess | None = None
    try:
        origin = Origin(origin_dir)
        big, small = origin.url("bundle.bin"), origin.url("small.bin")
        say("starting both devices (broker, emulator, daemons, hook server)")
        floor = measure.FloorProcess()
        # Side by side: nothing is timed before the idle window.
        with ThreadPoolExecutor(2) as pool:
            starts = [pool.submit(ours.start)]
            if legacy is not None:
                starts.append(pool.submit(legacy.start))
            for started in starts:
                started.result()
        say("memory of the daemon's imports and start-up steps, in a probe process")
        imports = measure.measure_imports(ours.stack.socket)
        imports_from_source = (
            measure.measure_imports(ours.stack.socket, bytecode=False)
            if mode.name != "smoke"
            else ()
        )
        say(f"idle: RSS after {mode.settle:.0f} s, then CPU over {mode.idle_window:.0f} s")
        idle = measure.measure_idle(
            ours,
            legacy,
            floor,
            settle=mode.settle,
            window=mode.idle_window,
            windows=mode.idle_windows,
            evidence=mode.evidence,
        )

        download = measure.measure_download(
            url=big,
            origin_file=origin_dir / "bundle.bin",
            sha256=sha_big,
            size=mode.size,
            scratch=workdir / "curl",
            ours=ours,
            legacy=legacy,
            repeat=mode.repeat,
            timeout=mode.timeout,
            say=say,
        )
        profiles: list[measure.Profile] = []
        if profile_skipped is None:
            say("profile: one more download under py-spy")

            def one_download() -> JobRun:
                job_id, version = ours.next_job("prof")
                return ours.run_job(
                    job_id,
                    url=big,
                    sha256=sha_big,
                    size=mode.size,
                    timeout=mode.timeout,
                    version=version,
                )

            profiles.append(
                measure.profile(
                    "download",
                    ours.daemon_pid(),
                    f"the daemon during one {mode.size / 1e6:.0f} MB job",
                    workdir / "py-spy-download.txt",
                    one_download,
                )
            )

        def latency(*rigs: tuple[str, Rig]) -> list[measure.LatencyResult]:
            return measure.measure_latency(
                rigs,
                url=small,
                sha256=sha_small,
                size=LATENCY_SIZE,
                count=mode.latency_jobs,
                pause=mode.latency_pause,
                timeout=mode.timeout,
                say=say,
            )

        both: list[tuple[str, Rig]] = [("upparat", ours)]
        if legacy is not None:
            both.append(("upparat 1.12", legacy))
        say(f"latency: {mode.latency_jobs} jobs each of " + " and ".join(n for n, _ in both))
        lat, *rest = latency(*both)
        lat_legacy = rest[0] if rest else None
        # Idle again after the jobs, before anything else touches the daemon: its channel
        # closed CHANNEL_LINGER after the last call, the hook server's gRPC DEFAULT_IDLE_RELEASE after.
        say(f"idle after jobs: memory {mode.after_jobs_settle:.0f} s after the last latency job")
        after_jobs = measure.measure_after_jobs(ours, legacy, settle=mode.after_jobs_settle)
        # A device's jobs come months apart: the next one finds the hook server without
        # gRPC and the daemon without its hook worker, as they are now.
        say("cold job: one job of each after that quiet spell")
        cold, *cold_rest = measure.measure_latency(
            both,
            url=small,
            sha256=sha_small,
            size=LATENCY_SIZE,
            count=1,
            pause=0.0,
            timeout=mode.timeout,
            say=say,
        )
        # Right after the latency jobs, on the same processes, so the per-call breakdown
        # of a job compares numbers taken under the same load.
        say(f"hook overhead: {mode.hook_calls} GetVersion calls and script runs")
        hooks = measure.measure_hook_overhead(ours, count=mode.hook_calls)
        say("cloud round trip: a probe client's GetPendingJobExecutions")
        cloud_rtt = measure.measure_cloud_rtt(ours, count=mode.hook_calls)
        if profile_skipped is None:
            say("profile: the latency jobs again under py-spy")
            profiles.append(
                measure.profile(
                    "latency",
                    ours.daemon_pid(),
                    f"the daemon during {mode.latency_jobs} latency jobs (1 MB, instant hooks)",
                    workdir / "py-spy-latency.txt",
                    lambda: latency(("upparat under py-spy", ours)),
                )
            )
        pinned = measure.measure_pinned(
            ours=ours,
            legacy=legacy,
            floor=floor,
            cpus={min(os.sched_getaffinity(0))},
            settle=mode.pinned_settle,
            window=mode.pinned_window,
            windows=mode.pinned_windows,
            url=big,
            sha256=sha_big,
            size=mode.size,
            latency_url=small,
            latency_sha256=sha_small,
            latency_size=LATENCY_SIZE,
            latency_jobs=mode.pinned_latency_jobs,
            downloads=mode.pinned_downloads,
            latency_pause=mode.latency_pause,
            timeout=mode.timeout,
            say=say,
        )
        floor.close()
        floor = None
        say("restarting upparat with verify_soft_restart = false")
        ours.reconfigure("service", {"verify_soft_restart": "false"})
        job_id, version = ours.next_job("warmup")  # the first job of a fresh daemon is slow
        ours.run_job(
            job_id, url=small, version=version, sha256=sha_small, size=LATENCY_SIZE, timeout=60
        )
        (lat_112,) = latency(("upparat, verify_soft_restart = false", ours))

        hookserver_alone = None
        hookserver = ours.hookserver_pid()
        if hookserver is not None:
            settle = DEFAULT_IDLE_RELEASE + min(mode.settle, 5.0)
            say(f"hook server alone: daemon stopped, idle after {settle:.0f} s")
            ours.stack.stop_daemon()
            hookserver_alone = measure.measure_alone(
                hookserver,
                settle=settle,
                window=mode.pinned_window,
                windows=mode.pinned_windows,
                evidence=mode.evidence,
            )
        hookserver = ours.hookserver_pid()
        if profile_skipped is None and hookserver is not None:
            say("profile: the hook server during the GetVersion calls, under py-spy")
            profiles.append(
                measure.profile(
                    "hookserver",
                    hookserver,
                    f"the hook server during {mode.hook_calls} GetVersion calls",
                    workdir / "py-spy-hookserver.txt",
                    lambda: measure.measure_hook_overhead(ours, count=mode.hook_calls),
                )
            )
        # Last: it leaves both daemons with a job that waits (cancelled at the end).
        say(
            f"waiting for a maintenance window: download hook 'not yet' every"
            f" {mode.wait_interval} s, CPU over {mode.wait_window:.0f} s"
        )
        waiting, *waiting_rest = measure.measure_waiting(
            [rig for _, rig in both],
            interval=mode.wait_interval,
            window=mode.wait_window,
            timeout=mode.timeout,
        )
    finally:
        if floor is not None:
            floor.close()
        ours.close()
        if legacy is not None:
            legacy.close()
        if origin is not None:
            origin.close()
    load_end = _load()
    say(load_end)
    return Results(
        env=environment(mode, load_start, load_end, processes, argv),
        legacy_skipped=legacy_skipped,
        idle=idle,
        after_jobs=after_jobs,
        latency_cold=cold,
        latency_cold_legacy=cold_rest[0] if cold_rest else None,
        waiting=waiting,
        waiting_legacy=waiting_rest[0] if waiting_rest else None,
        imports=imports,
        imports_from_source=imports_from_source,
        download=download,
        latency=lat,
        latency_112_hooks=lat_112,
        latency_legacy=lat_legacy,
        hooks=hooks,
        pinned=pinned,
        cloud_rtt=cloud_rtt,
        hookserver_alone=hookserver_alone,
        profiles=tuple(profiles),
        profile_skipped=profile_skipped,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="50 MB, few repetitions (~2 min)")
    size.add_argument(
        "--smoke", action="store_true", help="tiny; checks the harness works (~30 s, no network)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=BENCH,
        help="folder for RESULTS.md and results.json (default: bench/)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    parser.add_argument(
        "--no-install", action="store_true", help="install neither upparat 1.12 nor py-spy"
    )
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="only the simulated fleet section of RESULTS.md (bench/fleet.py, ~10 s)",
    )
    args = parser.parse_args(args_list)
    if args.fleet:
        return fleet.main(["--out", str(args.out / "RESULTS.md")])
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    workdir = Path(tempfile.mkdtemp(prefix="upparat-bench-"))
    ok = False
    started = time.monotonic()
    try:
        results = run(mode, workdir, allow_install=not args.no_install, argv=args_list)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "RESULTS.md").write_text(render(results))
        if mode.name != "smoke":
            say("the simulated fleet after a broker outage (bench/fleet.py)")
            fleet.update(args.out / "RESULTS.md", fleet.run())
        measure.dump_json(results, args.out / "results.json")
        say(f"wrote {args.out / 'RESULTS.md'} in {time.monotonic() - started:.0f} s")
        ok = True
    finally:
        if args.keep or not ok:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
