"""The measurements: each function runs one experiment on running rigs and returns numbers.

Owns what is timed and how (clocks, repetitions, what a sample means). It asserts nothing
about the results and formats nothing: `report.py` turns the values into RESULTS.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import grpc
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from upbench import wakeups
from upbench.procstat import (
    cpu_seconds,
    memory,
    pss_kb,
    smaps,
    switches_since,
    thread_switches,
    tree_cpu_seconds,
)
from upbench.rigs import JobRun, LegacyRig, Rig, UpparatRig
from upbench.wakeups import ProcessWakeups
from upparat.devstack.procs import child_pids
from upparat.hooks.v1 import hooks_pb2, hooks_pb2_grpc
from upparat.io.child import LINGER

FLOOR_IMPORTS = "import grpc, paho.mqtt.client, attrs"


@attrs.frozen(kw_only=True)
class Timing:
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)


# --- idle: memory and CPU ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ProcIdle:
    rss_kb: int
    hwm_kb: int
    anon_kb: int
    file_kb: int
    threads: int
    cpu_seconds: float
    """CPU used during the idle window."""
    wakeups: int
    """Context switches of all threads during the idle window."""
    wakeups_by_thread: tuple[tuple[str, int], ...]
    """The same per thread name (the kernel's comm, 15 characters), most first."""
    mappings: tuple[tuple[str, int], ...]
    """Resident kB by kind of mapping (procstat.smaps), when RSS was sampled."""
    pss_kb: int = 0
    """Pss (smaps_rollup) when RSS was sampled."""
    detail: ProcessWakeups | None = None
    """Wakeups and CPU per window, per thread, with what each thread does."""


@attrs.frozen(kw_only=True)
class IdleResult:
    settle_seconds: float
    window_seconds: float
    windows: int
    """The window was split into this many; idle rates and CPU are their means."""
    floor: ProcIdle
    daemon: ProcIdle
    hookserver: ProcIdle | None
    legacy: ProcIdle | None


class FloorProcess:
    """`python -c "import grpc, paho.mqtt.client, attrs"`, kept alive to be sampled."""

    def __init__(self) -> None:
        code = f"{FLOOR_IMPORTS}; import sys; print('ready', flush=True); sys.stdin.read()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd="/",
        )
        assert self.proc.stdout is not None
        self.proc.stdout.readline()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def measure_idle(
    ours: UpparatRig,
    legacy: LegacyRig | None,
    floor: FloorProcess,
    *,
    settle: float,
    window: float,
    windows: int = 1,
    evidence: bool = False,
) -> IdleResult:
    """RSS `settle` seconds after each daemon started, then CPU and wakeups over `window`
    more seconds, split into `windows` windows (their means are reported), then with
    `evidence` py-spy dump and strace of each process.

    The rigs were started together; each is sampled at its own `settle` mark.
    """
    pids: dict[str, int] = {"floor": floor.proc.pid, "daemon": ours.daemon_pid()}
    started = {"floor": ours.daemon_started_at, "daemon": ours.daemon_started_at}
    hookserver = ours.hookserver_pid()
    if hookserver is not None:
        pids["hookserver"] = hookserver
        started["hookserver"] = ours.daemon_started_at
    if legacy is not None:
        pids["legacy"] = legacy.daemon_pid()
        started["legacy"] = legacy.daemon_started_at
    first: dict[str, tuple[float, dict[int, tuple[str, int]]]] = {}
    mem = {}
    maps: dict[str, dict[str, int]] = {}
    pss: dict[str, int] = {}
    for name in sorted(pids, key=lambda n: started[n]):
        delay = started[name] + settle - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        mem[name] = memory(pids[name])
        maps[name] = smaps(pids[name])
        pss[name] = pss_kb(pids[name])
        first[name] = (cpu_seconds(pids[name]), thread_switches(pids[name]))
    detail = wakeups.measure(
        pids, windows=windows, seconds=window / windows, evidence=False, py_spy=py_spy
    )
    after = {
        name: (cpu_seconds(pid), switches_since(pid, first[name][1])) for name, pid in pids.items()
    }
    if evidence:
        # After the counted windows: strace slows what it traces.
        for name, found in wakeups.measure(
            {k: v for k, v in pids.items() if k != "floor"},
            windows=1,
            seconds=1.0,
            evidence=True,
            py_spy=py_spy,
        ).items():
            detail[name] = wakeups.with_evidence(detail[name], found)
    out: dict[str, ProcIdle] = {}
    for name in pids:
        cpu1, by_thread = after[name]
        m = mem[name]
        out[name] = ProcIdle(
            rss_kb=m.rss_kb,
            hwm_kb=m.hwm_kb,
            anon_kb=m.anon_kb,
            file_kb=m.file_kb,
            threads=m.threads,
            cpu_seconds=cpu1 - first[name][0],
            wakeups=sum(by_thread.values()),
            wakeups_by_thread=tuple(sorted(by_thread.items(), key=lambda kv: -kv[1])),
            mappings=tuple(sorted(maps[name].items(), key=lambda kv: -kv[1])),
            pss_kb=pss[name],
            detail=detail[name],
        )
    return IdleResult(
        settle_seconds=settle,
        window_seconds=window,
        windows=windows,
        floor=out["floor"],
        daemon=out["daemon"],
        hookserver=out.get("hookserver"),
        legacy=out.get("legacy"),
    )


@attrs.frozen(kw_only=True)
class ProcMemory:
    rss_kb: int
    anon_kb: int
    file_kb: int
    pss_kb: int
    threads: int
    mappings: tuple[tuple[str, int], ...]
    """Resident kB by kind of mapping (procstat.smaps)."""


@attrs.frozen(kw_only=True)
class AfterJobsMemory:
    """Memory of the processes idle again after jobs: what a device carries between jobs
    once it ran one (gRPC is loaded then and stays; the idle rows are before any job)."""

    settle_seconds: float
    """Seconds waited after the last job ended (its channel and the hook server's gRPC
    server closed meanwhile)."""
    daemon: ProcMemory
    hookserver: ProcMemory | None
    legacy: ProcMemory | None


def proc_memory(pid: int) -> ProcMemory:
    m = memory(pid)
    return ProcMemory(
        rss_kb=m.rss_kb,
        anon_kb=m.anon_kb,
        file_kb=m.file_kb,
        pss_kb=pss_kb(pid),
        threads=m.threads,
        mappings=tuple(sorted(smaps(pid).items(), key=lambda kv: -kv[1])),
    )


def measure_after_jobs(
    ours: UpparatRig, legacy: LegacyRig | None, *, settle: float
) -> AfterJobsMemory:
    """Waits `settle` seconds with no job, then samples each process once."""
    time.sleep(settle)
    hookserver = ours.hookserver_pid()
    return AfterJobsMemory(
        settle_seconds=settle,
        daemon=proc_memory(ours.daemon_pid()),
        hookserver=None if hookserver is None else proc_memory(hookserver),
        legacy=None if legacy is None else proc_memory(legacy.daemon_pid()),
    )


# --- where the daemon's memory goes: imports ---------------------------------------------------

IMPORT_STEPS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("the floor: grpc, paho.mqtt.client, attrs", ("grpc", "paho.mqtt.client", "attrs"), ""),
    (
        "google.protobuf + the generated hook stubs",
        (
            "google.protobuf.duration_pb2",
            "upparat.hooks.v1.hooks_pb2",
            "upparat.hooks.v1.hooks_pb2_grpc",
        ),
        "",
    ),
    ("upparat.core + upparat.aws (pure)", ("upparat.core.machine", "upparat.aws"), ""),
    (
        "upparat.io drivers (mqtt, download, journal, sdnotify, sentry)",
        (
            "upparat.io.mqtt",
            "upparat.io.download",
            "upparat.io.journal",
            "upparat.io.sdnotify",
            "upparat.io.sentry",
        ),
        "",
    ),
    ("upparat.hooks.client", ("upparat.hooks.client",), ""),
    (
        "upparat.config, runtime, daemon, cli",
        ("upparat.config", "upparat.runtime", "upparat.daemon", "upparat.cli"),
        "",
    ),
    # What the daemon's drivers do at start, reconstructed from their code
    # (upparat/io/download.py, upparat/hooks/client.py) to weigh each on its own.
    (
        "run: ssl.create_default_context() (the download driver makes one at start)",
        ("ssl",),
        "_ctx = ssl.create_default_context()",
    ),
    (
        "run: a gRPC channel on a unix socket, subscribed to its connectivity (the hook client)",
        ("grpc", "time"),
        "_ch = grpc.insecure_channel('unix://' + SOCKET);"
        " _ch.subscribe(lambda state: None, try_to_connect=True); time.sleep(1.0)",
    ),
)

_IMPORT_PROBE = """
import importlib, json, sys
def rss():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return 0
out = [['python itself', rss(), 0]]
space = {'SOCKET': sys.argv[2]}
for label, modules, code in json.loads(sys.argv[1]):
    before = set(sys.modules)
    for name in modules:
        try:
            space[name.split('.')[0]] = importlib.import_module(name.split('.')[0])
            importlib.import_module(name)
        except ImportError:
            pass
    if code:
        exec(code, space)
    out.append([label, rss(), len(set(sys.modules) - before)])
print(json.dumps(out))
"""


@attrs.frozen(kw_only=True)
class ImportStep:
    label: str
    rss_kb: int
    """VmRSS after this step."""
    modules: int
    """Modules this step added to sys.modules."""


def measure_imports(socket: Path, *, bytecode: bool = True) -> tuple[ImportStep, ...]:
    """RSS after each of IMPORT_STEPS in a fresh python; `socket` is a hook server's, for
    the channel step. bytecode=False: without the harness's bytecode cache, so the
    checkout's modules (which have no __pycache__ under PYTHONDONTWRITEBYTECODE) compile
    from source; libraries still read their .pyc files."""
    env = dict(os.environ)
    if not bytecode:
        env.pop("PYTHONPYCACHEPREFIX", None)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, json.dumps(IMPORT_STEPS), str(socket)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env=env,
    )
    raw = json.loads(done.stdout)
    return tuple(ImportStep(label=str(r[0]), rss_kb=int(r[1]), modules=int(r[2])) for r in raw)


# --- download ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DownloadResult:
    size: int
    curl_null: Timing
    curl_file: Timing
    sha256sum: Timing
    pipeline: Timing
    """curl -o FILE && sha256sum FILE, per repetition."""
    dd_direct: Timing
    """dd of the origin file (page cache) to the download folder with O_DIRECT: what the
    disk takes, with no page cache in between (conv=fsync for the short last block)."""
    hashlib: Timing
    """hashlib.sha256 of the origin file (page cache) in the harness: one core's hash cost."""
    curl_cpu: Timing
    """CPU seconds (user + sys) of `curl -o /dev/null`."""
    hashlib_cpu: Timing = Timing(samples=())
    """CPU seconds (user + sys) of the harness thread that ran `hashlib` above."""
    upparat: tuple[JobRun, ...]
    legacy: tuple[JobRun, ...]
    legacy_file_ok: tuple[bool, ...]
    """Whether 1.12's file had the right size and sha256 (1.12 does not check)."""


def _timed(argv: Sequence[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(list(argv), check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def measure_download(
    *,
    url: str,
    origin_file: Path,
    sha256: str,
    size: int,
    scratch: Path,
    ours: UpparatRig,
    legacy: LegacyRig | None,
    repeat: int,
    timeout: float,
    say: Callable[[str], None],
) -> DownloadResult:
    """Each repetition runs every client once, interleaved, so drift hits all alike."""
    curl = shutil.which("curl") or "curl"
    sha256sum = shutil.which("sha256sum") or "sha256sum"
    scratch.mkdir(parents=True, exist_ok=True)
    target = scratch / "curl.bin"
    null: list[float] = []
    cpu: list[float] = []
    to_file: list[float] = []
    summed: list[float] = []
    pipeline: list[float] = []
    dd: list[float] = []
    hashing: list[float] = []
    hash_cpu: list[float] = []
    runs: list[JobRun] = []
    legacy_runs: list[JobRun] = []
    legacy_ok: list[bool] = []
    for rep in range(1, repeat + 1):
        os.sync()
        wall, used = _timed([curl, "-s", "-f", "-o", "/dev/null", url])
        null.append(wall)
        cpu.append(used)
        os.sync()
        wall_file, _ = _timed([curl, "-s", "-f", "-o", str(target), url])
        wall_sum, _ = _timed([sha256sum, str(target)])
        to_file.append(wall_file)
        summed.append(wall_sum)
        pipeline.append(wall_file + wall_sum)
        target.unlink()
        os.sync()
        wall_dd, _ = _timed(
            [
                "dd",
                f"if={origin_file}",
                f"of={target}",
                "bs=8M",
                "oflag=direct",
                "conv=fsync",
                "status=none",
            ]
        )
        dd.append(wall_dd)
        target.unlink()
        start = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_THREAD)
        file_sha256(origin_file)
        hashing.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_THREAD)
        hash_cpu.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
        say(
            f"download {rep}/{repeat}: curl -o /dev/null {null[-1]:.2f} s, -o FILE "
            f"{wall_file:.2f} s, sha256sum {wall_sum:.2f} s, dd oflag=direct {wall_dd:.2f} s"
        )
        run = _download_job(ours, "dl", url=url, sha256=sha256, size=size, timeout=timeout)
        runs.append(run)
        say(f"download {rep}/{repeat}: upparat {_show_run(run)}")
        if legacy is not None:
            run, ok = _legacy_download(
                legacy, "dl", url=url, sha256=sha256, size=size, timeout=timeout
            )
            legacy_runs.append(run)
            legacy_ok.append(ok)
            say(f"download {rep}/{repeat}: upparat 1.12 {_show_run(run)}")
    return DownloadResult(
        size=size,
        curl_null=Timing(samples=tuple(null)),
        curl_file=Timing(samples=tuple(to_file)),
        sha256sum=Timing(samples=tuple(summed)),
        pipeline=Timing(samples=tuple(pipeline)),
        dd_direct=Timing(samples=tuple(dd)),
        hashlib=Timing(samples=tuple(hashing)),
        curl_cpu=Timing(samples=tuple(cpu)),
        hashlib_cpu=Timing(samples=tuple(hash_cpu)),
        upparat=tuple(runs),
        legacy=tuple(legacy_runs),
        legacy_file_ok=tuple(legacy_ok),
    )


def _legacy_download(
    legacy: LegacyRig, prefix: str, *, url: str, sha256: str, size: int, timeout: float
) -> tuple[JobRun, bool]:
    """One download job on 1.12, and whether the file it left is the right one."""
    run = _download_job(legacy, prefix, url=url, sha256=sha256, size=size, timeout=timeout)
    return run, _check_legacy_file(legacy.download_folder / run.job_id, size, sha256)


def _check_legacy_file(path: Path, size: int, sha256: str) -> bool:
    """1.12 verifies nothing; the harness does, then removes the file (outside any timing)."""
    try:
        ok = path.stat().st_size == size and file_sha256(path) == sha256
        path.unlink()
    except OSError:
        return False
    return ok


def _show_run(run: JobRun) -> str:
    took = run.install_seconds
    shown = "no install call" if took is None else f"install called after {took:.2f} s"
    return f"{run.status} {run.state}, {shown}, {len(run.updates)} updates"


# --- latency ------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Step:
    at: float
    """Seconds after the job was created."""
    what: str


@attrs.frozen(kw_only=True)
class LatencyResult:
    label: str
    runs: tuple[JobRun, ...]
    timeline: tuple[Step, ...]
    """Hook calls and cloud updates of the median run."""
    daemon_cpu_per_job: float
    """Median CPU seconds of the daemon from job created to its terminal status."""
    pause: float
    """Seconds between one job's end and the next job's creation."""


def measure_latency(
    rigs: Sequence[tuple[str, Rig]],
    *,
    url: str,
    sha256: str,
    size: int,
    count: int,
    pause: float,
    timeout: float,
    say: Callable[[str], None],
) -> list[LatencyResult]:
    """`count` jobs per rig, the rigs taking turns, so a busy moment hits all of them."""
    runs: dict[str, list[JobRun]] = {label: [] for label, _ in rigs}
    for _ in range(count):
        for label, rig in rigs:
            job_id, version = rig.next_job("lat")
            runs[label].append(
                rig.run_job(
                    job_id, url=url, version=version, sha256=sha256, size=size, timeout=timeout
                )
            )
            time.sleep(pause)
    results = []
    for label, rig in rigs:
        series = runs[label]
        say(
            f"latency {label}: "
            + ", ".join(f"{r.done_seconds:.3f}" if r.done_seconds else r.status for r in series)
        )
        done = sorted(
            (r for r in series if r.done_seconds is not None), key=lambda r: r.done_seconds or 0.0
        )
        timeline = _timeline(rig, done[(len(done) - 1) // 2]) if done else ()
        cpu = [r.job_cpu for r in series if r.job_cpu is not None]
        results.append(
            LatencyResult(
                label=label,
                runs=tuple(series),
                timeline=timeline,
                daemon_cpu_per_job=statistics.median(cpu) if cpu else 0.0,
                pause=pause,
            )
        )
    return results


def _timeline(rig: Rig, run: JobRun) -> tuple[Step, ...]:
    steps = [Step(at=0.0, what="job created (CreateJob sent to the emulator)")]
    for update in run.updates:
        steps.append(
            Step(
                at=update.at - run.created_at,
                what=f"cloud received update {update.status} {update.state}".rstrip(),
            )
        )
    meta = rig.meta_of(run.job_id)
    for call in rig.scripts.calls():
        if call.meta == meta:
            steps.append(Step(at=call.at - run.created_at, what=f"{call.hook} hook started"))
    return tuple(sorted(steps, key=lambda s: s.at))


# --- hook overhead --------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class HookOverheadResult:
    grpc: Timing
    subprocess: Timing
    info: Timing = Timing(samples=())
    """GetInfo: the gRPC round trip through the hook server with no script behind it."""


def measure_hook_overhead(rig: UpparatRig, *, count: int) -> HookOverheadResult:
    """GetVersion through the shell hook server vs the same script by subprocess.run, alternating."""
    script = rig.scripts.paths()["version"]
    channel = grpc.insecure_channel(f"unix://{rig.stack.socket}")
    try:
        stub = hooks_pb2_grpc.HookServiceStub(channel)
        identity = hooks_pb2_grpc.IdentityServiceStub(channel)
        request = hooks_pb2.GetVersionRequest(
            context=hooks_pb2.JobContext(job_id="upparat_bench_hooks", meta="", attempt=1)
        )

        def via_grpc() -> float:
            start = time.perf_counter()
            answer = stub.GetVersion(request, timeout=30)
            took = time.perf_counter() - start
            if answer.result.outcome != hooks_pb2.OUTCOME_SUCCESS or not answer.version:
                raise RuntimeError(f"GetVersion did not succeed: {answer}")
            return took

        def info() -> float:
            start = time.perf_counter()
            identity.GetInfo(hooks_pb2.GetInfoRequest(), timeout=30)
            return time.perf_counter() - start

        def via_subprocess() -> float:
            start = time.perf_counter()
            subprocess.run(
                [str(script), "0", "0", ""],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                check=True,
            )
            return time.perf_counter() - start

        for _ in range(3):  # connect, warm caches
            via_grpc()
            via_subprocess()
            info()
        grpc_times: list[float] = []
        sub_times: list[float] = []
        info_times: list[float] = []
        for _ in range(count):
            grpc_times.append(via_grpc())
            sub_times.append(via_subprocess())
            info_times.append(info())
    finally:
        channel.close()
    return HookOverheadResult(
        grpc=Timing(samples=tuple(grpc_times)),
        subprocess=Timing(samples=tuple(sub_times)),
        info=Timing(samples=tuple(info_times)),
    )


# --- profile --------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Profile:
    key: str
    """download, latency or hookserver."""
    what: str
    samples: int
    rate: int
    threads: tuple[tuple[str, int], ...]
    """(thread name with numbers as N, samples), most first."""
    leaves: tuple[tuple[str, int], ...]
    """(innermost Python function, samples), most first."""
    own: tuple[tuple[str, int], ...]
    """(innermost upparat or hookservers function on the stack, samples), most first."""


def py_spy() -> Path | None:
    found = Path(sys.executable).parent / "py-spy"
    return found if found.exists() else None


class PySpy:
    """`py-spy record` on one process, stopped with SIGINT."""

    RATE = 250

    def __init__(self, pid: int, out: Path) -> None:
        binary = py_spy()
        assert binary is not None
        self.out = out
        self._log = out.with_suffix(".log").open("wb")
        self.proc = subprocess.Popen(
            [
                str(binary),
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--threads",
                "--nonblocking",
                "--rate",
                str(self.RATE),
                "--output",
                str(out),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(1.0)  # attach before the work starts

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


_DIGITS = re.compile(r"\d+")


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")
_OWN = re.compile(r"\((?:upparat|hookservers)/")


def _function(frame: str) -> str:
    """`func (file:line)` without the line: samples of one function count together."""
    match = _FRAME.match(frame)
    return f"{match['func']} ({match['file']})" if match else frame


@attrs.frozen(kw_only=True)
class RawProfile:
    samples: int
    threads: Counter[str]
    leaves: Counter[str]
    own: Counter[str]


def parse_raw_profile(text: str) -> RawProfile:
    """py-spy's raw format: `thread (tid): name;outer frame;...;inner frame COUNT` per line."""
    threads: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        head, *frames = stack.split(";")
        threads[_DIGITS.sub("N", head.split(":", 1)[-1].strip())] += count
        if frames:
            leaves[_function(frames[-1])] += count
        ours = next((f for f in reversed(frames) if _OWN.search(f)), None)
        own[
            _function(ours)
            if ours
            else "(no upparat or hookservers frame on the stack: a library thread)"
        ] += count
        total += count
    return RawProfile(samples=total, threads=threads, leaves=leaves, own=own)


def profile(key: str, pid: int, what: str, out: Path, work: Callable[[], object]) -> Profile:
    """Run `work` with py-spy recording process `pid`."""
    spy = PySpy(pid, out)
    try:
        work()
    finally:
        spy.stop()
    text = out.read_text() if out.exists() else ""
    raw = parse_raw_profile(text)
    return Profile(
        key=key,
        what=what,
        samples=raw.samples,
        rate=PySpy.RATE,
        threads=tuple(raw.threads.most_common(8)),
        leaves=tuple(raw.leaves.most_common(10)),
        own=tuple(raw.own.most_common(10)),
    )


def _plain(o: object) -> object:
    """JSON-ready data; a job's updates are summarised (1.12 sends thousands per job)."""
    if isinstance(o, JobRun):
        out = {f.name: _plain(getattr(o, f.name)) for f in attrs.fields(JobRun)}
        rows = [[round(u.at - o.created_at, 4), u.status, u.state] for u in o.updates]
        out["updates"] = {
            "count": len(rows),
            "by_state": dict(Counter(u.state for u in o.updates)),
            "first": rows[:8],
            "last": rows[-4:] if len(rows) > 8 else [],
        }
        return out
    cls = type(o)
    if attrs.has(cls):
        return {f.name: _plain(getattr(o, f.name)) for f in attrs.fields(cls)}
    if isinstance(o, tuple | list):
        return [_plain(x) for x in o]
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, Path):
        return str(o)
    return o


def dump_json(value: object, path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    path.write_text(json.dumps(_plain(value), indent=1, sort_keys=True) + "\n")


# --- one core: the closest this machine gets to a small board --------------------------------


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Every thread of a running process onto `cpus` (what `taskset -a -p` does)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(int(task), cpus)


@contextlib.contextmanager
def affinity(cpus: set[int]) -> Iterator[None]:
    """The harness's own thread on `cpus` meanwhile: processes it starts inherit the mask
    from the start, as under `taskset -c`, so gRPC sizes its thread pools for one core."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def restart_product(rig: UpparatRig, cpus: set[int] | None) -> None:
    """Hook server and daemon stopped and started again, on `cpus` (None: all of them)."""
    rig.stack.stop_daemon()
    rig.stack.stop_hookserver()
    with affinity(cpus) if cpus else contextlib.nullcontext():
        rig.stack.start_hookserver()
        rig.start_daemon()


@attrs.frozen(kw_only=True)
class PinnedResult:
    cpus: tuple[int, ...]
    idle: IdleResult
    latency: LatencyResult
    latency_legacy: LatencyResult | None
    curl_null: Timing
    """`taskset -c` curl -o /dev/null (wall seconds)."""
    curl_cpu: Timing
    upparat: tuple[JobRun, ...]
    legacy: tuple[JobRun, ...]


def measure_pinned(
    *,
    ours: UpparatRig,
    legacy: LegacyRig | None,
    floor: FloorProcess,
    cpus: set[int],
    settle: float,
    window: float,
    windows: int,
    url: str,
    sha256: str,
    size: int,
    latency_url: str,
    latency_sha256: str,
    latency_size: int,
    latency_jobs: int,
    latency_pause: float,
    timeout: float,
    say: Callable[[str], None],
    downloads: int = 1,
) -> PinnedResult:
    """Idle, latency and `downloads` downloads with the product (daemon and hook server)
    started on `cpus`, and 1.12's threads moved there; both are put back on all cores after."""
    all_cpus = os.sched_getaffinity(0)
    restart_product(ours, cpus)
    if legacy is not None:
        pin_threads(legacy.daemon_pid(), cpus)
        legacy.daemon_started_at = time.monotonic()
    try:
        say(f"one core: idle after {settle:.0f} s, then {windows} x {window / windows:.0f} s")
        idle = measure_idle(ours, legacy, floor, settle=settle, window=window, windows=windows)
        rigs: list[tuple[str, Rig]] = [("upparat, one core", ours)]
        if legacy is not None:
            rigs.append(("upparat 1.12, one core", legacy))
        say(f"one core: latency, {latency_jobs} jobs each")
        lat, *rest = measure_latency(
            rigs,
            url=latency_url,
            sha256=latency_sha256,
            size=latency_size,
            count=latency_jobs,
            pause=latency_pause,
            timeout=timeout,
            say=say,
        )
        curl = shutil.which("curl") or "curl"
        taskset = shutil.which("taskset")
        prefix = [taskset, "-c", ",".join(map(str, sorted(cpus)))] if taskset else []
        # Three times, the median: a loopback transfer with the client on one core now and
        # then takes ten times as long (seen here: 2-6 s instead of 0.2-0.4 s), and one such
        # sample would make the limit the rows are judged against.
        walls: list[float] = []
        cpus_used: list[float] = []
        for _ in range(3):
            os.sync()
            wall, cpu = _timed([*prefix, curl, "-s", "-f", "-o", "/dev/null", url])
            walls.append(wall)
            cpus_used.append(cpu)
        runs: list[JobRun] = []
        legacy_runs: list[JobRun] = []
        shown = ", ".join(f"{w:.2f}" for w in walls)
        say(f"one core: curl -o /dev/null {shown} s")
        for n in range(1, downloads + 1):
            # As every download of the all-core run comes, and a device's: to a daemon whose
            # job worker has stopped (the latency jobs, or the last download, left it running).
            _await_no_worker(ours, timeout=3 * LINGER)
            run = _download_job(ours, f"dl{n}", url=url, sha256=sha256, size=size, timeout=timeout)
            runs.append(run)
            say(f"one core: download {n}/{downloads}: upparat {_show_run(run)}")
            if legacy is not None:
                legacy_run, _ = _legacy_download(
                    legacy, f"dl{n}", url=url, sha256=sha256, size=size, timeout=timeout
                )
                legacy_runs.append(legacy_run)
                say(f"one core: download {n}/{downloads}: upparat 1.12 {_show_run(legacy_run)}")
    finally:
        say("back on all cores: restarting the hook server and the daemon")
        restart_product(ours, None)
        if legacy is not None:
            pin_threads(legacy.daemon_pid(), all_cpus)
    return PinnedResult(
        cpus=tuple(sorted(cpus)),
        idle=idle,
        latency=lat,
        latency_legacy=rest[0] if rest else None,
        curl_null=Timing(samples=tuple(walls)),
        curl_cpu=Timing(samples=tuple(cpus_used)),
        upparat=tuple(runs),
        legacy=tuple(legacy_runs),
    )


def _download_job(
    rig: Rig, prefix: str, *, url: str, sha256: str, size: int, timeout: float
) -> JobRun:
    """One download job on `rig`, its daemon's CPU sampled (report.download_cpu)."""
    job_id, version = rig.next_job(prefix)
    return rig.run_job(
        job_id,
        url=url,
        version=version,
        sha256=sha256,
        size=size,
        timeout=timeout,
        sample_cpu=True,
    )


def _await_no_worker(rig: UpparatRig, *, timeout: float) -> None:
    """Until the daemon has no child process (its job worker stopped), at most `timeout` s."""
    daemon = rig.daemon_pid()
    deadline = time.monotonic() + timeout
    while child_pids(daemon) and time.monotonic() < deadline:
        time.sleep(0.2)


# --- a job waiting for its maintenance window --------------------------------------------------


@attrs.frozen(kw_only=True)
class WaitResult:
    """One daemon's job waiting for its maintenance window: its download hook says "not
    yet" (exit 3) on every call, `interval` seconds apart (retry_interval)."""

    interval: float
    window: float
    calls: int
    """Download hook calls in the window."""
    daemon_cpu: float
    """CPU s in the window of the daemon and every process it started (upparat's job
    worker; 1.12's hook scripts)."""
    hookserver_cpu: float | None
    """CPU s in the window of the hook server and its scripts (1.12 has none)."""

    @property
    def cpu_per_minute(self) -> float:
        return (self.daemon_cpu + (self.hookserver_cpu or 0.0)) * 60.0 / self.window


def measure_waiting(
    rigs: Sequence[Rig], *, interval: int, window: float, timeout: float
) -> list[WaitResult]:
    """Each rig's daemon restarted with `interval` as its retry_interval, then one job whose
    download hook says "not yet" on every call; CPU over `window` seconds from halfway
    between two calls. The rigs side by side (CPU seconds are each process's own)."""
    with ThreadPoolExecutor(len(rigs)) as pool:
        return list(
            pool.map(
                lambda rig: _wait_on(rig, interval=interval, window=window, timeout=timeout),
                rigs,
            )
        )


def _wait_on(rig: Rig, *, interval: int, window: float, timeout: float) -> WaitResult:
    rig.retry_hooks(interval, max_retries=1000)

    def downloads() -> int:
        return sum(1 for c in rig.scripts.calls() if c.hook == "download")

    rig.scripts.not_yet.touch()
    job_id, version = rig.next_job("wait")
    try:
        before = downloads()
        rig.stack.create_job(
            job_id,
            url="http://127.0.0.1:9/never.bin",  # never fetched: the window stays closed
            version=version,
            meta=version,
            sha256="0" * 64,
            size=1,
        )
        deadline = time.monotonic() + timeout
        while downloads() == before and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(interval / 2)
        daemon, hookserver = rig.daemon_pid(), rig.hookserver_pid()
        cpu0 = tree_cpu_seconds(daemon)
        hs0 = None if hookserver is None else tree_cpu_seconds(hookserver)
        calls0 = downloads()
        time.sleep(window)
        return WaitResult(
            interval=interval,
            window=window,
            calls=downloads() - calls0,
            daemon_cpu=tree_cpu_seconds(daemon) - cpu0,
            hookserver_cpu=None
            if hookserver is None or hs0 is None
            else tree_cpu_seconds(hookserver) - hs0,
        )
    finally:
        rig.scripts.not_yet.unlink(missing_ok=True)
        with contextlib.suppress(Exception):  # the job ends with the section either way
            rig.stack.control.cancel_job(job_id, force=True)


# --- the cloud's share of a phase change -----------------------------------------------------


def measure_cloud_rtt(rig: Rig, *, count: int) -> Timing:
    """GetPendingJobExecutions round trips (publish → the emulator's answer) of a probe
    client on the rig's broker, for a thing of its own so the daemon sees nothing: the
    broker and the emulator's share of each update the daemon waits for."""
    thing = "bench-rtt-probe"
    answered = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=thing)
    client.on_message = lambda c, u, m: answered.set()
    client.connect("127.0.0.1", rig.stack.broker.port, keepalive=60)
    sock = client.socket()
    if isinstance(sock, socket.socket):  # as the daemon's MQTT driver does (Nagle off)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.loop_start()
    samples: list[float] = []
    try:
        base = f"$aws/things/{thing}/jobs/get"
        client.subscribe([(f"{base}/accepted", 1), (f"{base}/rejected", 1)])
        time.sleep(0.5)  # SUBACK
        for n in range(count + 2):
            answered.clear()
            start = time.perf_counter()
            client.publish(base, json.dumps({"clientToken": f"probe-{n}"}), qos=1)
            if not answered.wait(5):
                raise RuntimeError("the emulator did not answer GetPendingJobExecutions")
            if n >= 2:  # two warm-up rounds
                samples.append(time.perf_counter() - start)
    finally:
        client.loop_stop()
        client.disconnect()
    return Timing(samples=tuple(samples))


def measure_alone(
    pid: int, *, settle: float, window: float, windows: int, evidence: bool
) -> ProcessWakeups:
    """Wakeups of one process (the hook server after the daemon stopped), `settle` seconds
    from now, over `windows` windows."""
    time.sleep(settle)
    counted = wakeups.measure(
        {"p": pid}, windows=windows, seconds=window / windows, evidence=False, py_spy=py_spy
    )["p"]
    if not evidence:
        return counted
    seen = wakeups.measure({"p": pid}, windows=1, seconds=1.0, evidence=True, py_spy=py_spy)
    return wakeups.with_evidence(counted, seen["p"])
