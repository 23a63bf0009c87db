"""Where an idle process wakes up: per-thread context switches, and what each thread does.

Owns the evidence behind the idle rows: context switches per thread over repeated windows
(/proc/<pid>/task/*/status, names from comm), the Python name and innermost frame of each
thread (py-spy dump) and its most frequent system call with its timeout (strace -f on a
short window). It reads only; strace and py-spy attach with ptrace and detach.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs


@attrs.frozen(kw_only=True)
class ThreadWakeups:
    tid: int
    comm: str
    """The kernel's thread name (15 characters); every Python thread of 3.11 is `python`."""
    python_name: str
    """threading's name, from py-spy dump ("" when not a Python thread or not known)."""
    where: str
    """Innermost Python frame the thread waits in, from py-spy dump ("" when not known)."""
    rate: float
    """This thread's context switches per second, the mean over the windows."""
    syscall: str
    """Its most frequent system call under strace, with the typical timeout ("" if none)."""
    syscall_rate: float | None

    @property
    def label(self) -> str:
        name = self.python_name or self.comm
        return f"{name} ({self.where})" if self.where else name


@attrs.frozen(kw_only=True)
class ProcessWakeups:
    windows: tuple[float, ...]
    """Context switches per second of all threads, one value per window."""
    cpu_per_minute: tuple[float, ...]
    """CPU seconds per minute, one value per window."""
    threads: tuple[ThreadWakeups, ...]
    """Most first."""
    evidence_skipped: str | None
    """Why strace or py-spy evidence is missing, if it is."""

    # Means, not medians: an idle daemon's one wakeup a minute (its MQTT keepalive) falls
    # in one 10 s window of six, and the median of the six would be 0.

    @property
    def rate(self) -> float:
        return statistics.fmean(self.windows) if self.windows else 0.0

    @property
    def cpu(self) -> float:
        return statistics.fmean(self.cpu_per_minute) if self.cpu_per_minute else 0.0


def _switches(pid: int) -> dict[int, tuple[str, int]]:
    found: dict[int, tuple[str, int]] = {}
    tasks: list[str] = []
    with contextlib.suppress(OSError):
        tasks = os.listdir(f"/proc/{pid}/task")
    for task in tasks:
        name, count = "?", 0
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        count += int(line.split()[1])
        found[int(task)] = (name, count)
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time of all threads from /proc/<pid>/task/*/schedstat (nanoseconds; utime and
    stime in /proc/<pid>/stat count 10 ms ticks, too coarse for 0.01 s per minute)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(OSError, ValueError, IndexError),
                open(f"/proc/{pid}/task/{task}/schedstat") as f,
            ):
                total += int(f.read().split()[0])
    return total / 1e9


@attrs.frozen(kw_only=True)
class _Windows:
    totals: tuple[float, ...]
    cpu: tuple[float, ...]
    per_thread: dict[int, tuple[str, list[float]]]


def _sample(pids: Mapping[str, int], windows: int, seconds: float) -> dict[str, _Windows]:
    """All processes sampled at the same boundaries, so a busy moment hits all alike."""
    snaps = {name: _switches(pid) for name, pid in pids.items()}
    cpus = {name: cpu_seconds(pid) for name, pid in pids.items()}
    totals: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    per: dict[str, dict[int, tuple[str, list[float]]]] = defaultdict(dict)
    for _ in range(windows):
        start = time.monotonic()
        time.sleep(seconds)
        took = time.monotonic() - start
        for name, pid in pids.items():
            now, cpu_now = _switches(pid), cpu_seconds(pid)
            total = 0
            for tid, (comm, count) in now.items():
                delta = count - snaps[name].get(tid, (comm, 0))[1]
                total += delta
                per[name].setdefault(tid, (comm, []))[1].append(delta / took)
            totals[name].append(total / took)
            cpu[name].append((cpu_now - cpus[name]) * 60.0 / took)
            snaps[name], cpus[name] = now, cpu_now
    return {
        name: _Windows(totals=tuple(totals[name]), cpu=tuple(cpu[name]), per_thread=per[name])
        for name in pids
    }


# --- what each thread does ------------------------------------------------------------------

_PYSPY_THREAD = re.compile(r'^Thread (?:0x)?(?P<tid>[0-9A-Fa-f]+) \((?:\w+)\): "(?P<name>.*)"')
_PYSPY_FRAME = re.compile(r"^\s+(?P<func>\S.*?) \((?P<file>[^:()]+)(?::\d+)?\)\s*$")


def python_threads(py_spy: Path | None, pid: int) -> dict[int, tuple[str, str]]:
    """tid -> (threading name, innermost frame as `func (file)`), from `py-spy dump`."""
    if py_spy is None:
        return {}
    try:
        done = subprocess.run(
            [str(py_spy), "dump", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found: dict[int, tuple[str, str]] = {}
    tid: int | None = None
    for line in done.stdout.splitlines():
        head = _PYSPY_THREAD.match(line)
        if head is not None:
            text = head["tid"]
            tid = int(text, 16) if line.startswith("Thread 0x") else int(text)
            found[tid] = (head["name"], "")
            continue
        frame = _PYSPY_FRAME.match(line)
        if frame is not None and tid is not None and not found[tid][1]:
            file = frame["file"].rsplit("/site-packages/", 1)[-1]
            found[tid] = (found[tid][0], f"{frame['func']} in {file}")
    return found


_STRACE_LINE = re.compile(r"^(?P<tid>\d+)\s+\S+\s+(?P<call>[a-z_0-9]+)\((?P<args>.*)$")
_TIMESPEC = re.compile(r"tv_sec=(\d+), tv_nsec=(\d+)")
_EPOLL_TIMEOUT = re.compile(r", (-?\d+)\)?(?: <unfinished \.\.\.>| = .*)?$")


def _timeout_of(call: str, args: str) -> float | None:
    """The timeout (seconds) a blocking call was given, where strace shows one."""
    if call in ("futex", "pselect6", "ppoll", "clock_nanosleep", "nanosleep", "select"):
        found = _TIMESPEC.search(args)
        if found is None or "BITSET" in args or "ABSTIME" in args:
            return None  # an absolute deadline, not a period
        return int(found[1]) + int(found[2]) / 1e9
    if call in ("epoll_wait", "epoll_pwait", "poll"):
        found = _EPOLL_TIMEOUT.search(args)
        if found is not None and int(found[1]) >= 0:
            return int(found[1]) / 1000
    return None


def strace_threads(pid: int, seconds: float) -> tuple[dict[int, tuple[str, float]], str | None]:
    """tid -> (most frequent call with its typical timeout, calls per second), from
    `strace -f` on the running process for `seconds`; or ({}, why not)."""
    strace = shutil.which("strace")
    if strace is None:
        return {}, "strace is not installed"
    with tempfile.TemporaryDirectory(prefix="upparat-strace-") as tmp:
        out = Path(tmp) / "trace"
        try:
            proc = subprocess.Popen(
                [strace, "-f", "-tt", "-qq", "-p", str(pid), "-o", str(out)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as e:
            return {}, f"strace could not start ({e})"
        time.sleep(seconds)
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        text = out.read_text(errors="replace") if out.exists() else ""
    if not text:
        why = err.decode(errors="replace").strip().splitlines()
        return {}, f"strace saw nothing ({why[-1] if why else 'no output'})"
    calls: dict[int, Counter[str]] = defaultdict(Counter)
    timeouts: dict[tuple[int, str], list[float]] = defaultdict(list)
    for line in text.splitlines():
        found = _STRACE_LINE.match(line)
        if found is None or "resumed>" in line:
            continue
        tid, call = int(found["tid"]), found["call"]
        if call == "restart_syscall":
            continue  # the call strace interrupted when it attached
        calls[tid][call] += 1
        timeout = _timeout_of(call, found["args"])
        if timeout is not None:
            timeouts[tid, call].append(timeout)
    summary: dict[int, tuple[str, float]] = {}
    for tid, counter in calls.items():
        call, count = counter.most_common(1)[0]
        waits = timeouts.get((tid, call))
        shown = call
        if waits:
            shown += f" (timeout median {statistics.median(waits) * 1000:.0f} ms)"
        summary[tid] = (shown, count / seconds)
    return summary, None


def measure(
    pids: Mapping[str, int],
    *,
    windows: int,
    seconds: float,
    evidence: bool,
    py_spy: Callable[[], Path | None],
    strace_seconds: float = 5.0,
) -> dict[str, ProcessWakeups]:
    """Wakeups of every process over `windows` windows of `seconds`, then (evidence=True)
    py-spy dump and strace of each, one after the other, after the counted windows."""
    sampled = _sample(pids, windows, seconds)
    result: dict[str, ProcessWakeups] = {}
    for name, pid in pids.items():
        got = sampled[name]
        names: dict[int, tuple[str, str]] = {}
        calls: dict[int, tuple[str, float]] = {}
        skipped: str | None = None if evidence else "no strace/py-spy in this mode"
        if evidence:
            names = python_threads(py_spy(), pid)
            calls, skipped = strace_threads(pid, strace_seconds)
            if py_spy() is None:
                skipped = "; ".join(filter(None, (skipped, "py-spy is not installed")))
        threads = [
            ThreadWakeups(
                tid=tid,
                comm=comm,
                python_name=names.get(tid, ("", ""))[0],
                where=names.get(tid, ("", ""))[1],
                rate=statistics.fmean(rates) if rates else 0.0,
                syscall=calls.get(tid, ("", 0.0))[0],
                syscall_rate=calls[tid][1] if tid in calls else None,
            )
            for tid, (comm, rates) in got.per_thread.items()
        ]
        threads.sort(key=lambda t: (-t.rate, t.comm))
        result[name] = ProcessWakeups(
            windows=got.totals,
            cpu_per_minute=got.cpu,
            threads=tuple(threads),
            evidence_skipped=skipped,
        )
    return result


def with_evidence(counted: ProcessWakeups, evidence: ProcessWakeups) -> ProcessWakeups:
    """The counted windows, with each thread's name, frame and system call from a later
    evidence pass (matched by thread id)."""
    by_tid = {t.tid: t for t in evidence.threads}
    threads = []
    for t in counted.threads:
        seen = by_tid.get(t.tid)
        if seen is not None:
            t = attrs.evolve(
                t,
                python_name=seen.python_name,
                where=seen.where,
                syscall=seen.syscall,
                syscall_rate=seen.syscall_rate,
            )
        threads.append(t)
    return attrs.evolve(counted, threads=tuple(threads), evidence_skipped=evidence.evidence_skipped)


def owner(thread: ThreadWakeups) -> str:
    """Who makes this thread wake, in words a reader of RESULTS.md can act on."""
    where, comm = thread.where, thread.comm
    if comm in ("event_engine", "lifeguard", "grpc_global_tim"):
        return "gRPC core"
    if "_poll_connectivity" in where or "channel_spin" in where:
        return "grpc channel connectivity polling (upparat/hooks/client.py)"
    if "_serve" in where and "grpc" in where:
        return "grpc sync server's completion-queue poll (200 ms, in cygrpc)"
    if thread.python_name.startswith("paho-mqtt") or "paho" in where:
        return "paho-mqtt loop"
    if thread.python_name == "MainThread":
        return "main thread"
    return thread.python_name or comm


def grouped(threads: Sequence[ThreadWakeups]) -> list[tuple[str, float]]:
    """Wakeups/s summed by owner, most first."""
    sums: dict[str, float] = defaultdict(float)
    for t in threads:
        sums[owner(t)] += t.rate
    return sorted(sums.items(), key=lambda kv: -kv[1])
