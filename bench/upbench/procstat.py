"""What the kernel says about a process: resident memory and CPU time, from /proc.

Owns the parsing of /proc/<pid>/status, /proc/<pid>/stat and the threads' schedstat, and
sampler threads for peaks and CPU. It reads only; resetting a peak (clear_refs) is the one
write, and optional.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Self

import attrs

from upparat.devstack.procs import child_pids

_TICKS = os.sysconf("SC_CLK_TCK")


@attrs.frozen(kw_only=True)
class Memory:
    rss_kb: int
    """VmRSS: resident now."""
    hwm_kb: int
    """VmHWM: the resident peak since start (or since the last reset_peak)."""
    anon_kb: int
    """RssAnon: heap, stacks, arenas: what the process itself allocated."""
    file_kb: int
    """RssFile: mapped files, mostly shared libraries (shared with other processes)."""
    threads: int


_STATUS_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads")


def memory(pid: int) -> Memory:
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in _STATUS_KEYS:
                fields[key] = int(value.split()[0])
    return Memory(
        rss_kb=fields["VmRSS"],
        hwm_kb=fields["VmHWM"],
        anon_kb=fields["RssAnon"],
        file_kb=fields["RssFile"],
        threads=fields["Threads"],
    )


def thread_switches(pid: int) -> dict[int, tuple[str, int]]:
    """Per thread id: its name and its context switches so far (voluntary ones are mostly
    wakeups from a sleep or a wait)."""
    found: dict[int, tuple[str, int]] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        name, switches = "?", 0
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status") as f:
            for line in f:
                if line.startswith("Name:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
        found[int(task)] = (name, switches)
    return found


def switches_since(pid: int, before: dict[int, tuple[str, int]]) -> dict[str, int]:
    """Context switches per thread name since `before` (threads born since count fully)."""
    by_name: dict[str, int] = {}
    for tid, (name, now) in thread_switches(pid).items():
        then = before.get(tid, (name, 0))[1]
        by_name[name] = by_name.get(name, 0) + now - then
    return by_name


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads; not its waited-for children)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = text[text.rindex(")") + 2 :].split()
    utime, stime = int(rest[11]), int(rest[12])
    return (utime + stime) / _TICKS


def _stat_times(pid: int) -> tuple[int, int, int, int]:
    """utime, stime, cutime, cstime in ticks."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[11]), int(rest[12]), int(rest[13]), int(rest[14])


def tree_cpu_seconds(pid: int) -> float:
    """CPU of `pid` and of every process it started, ended or not: its own utime + stime,
    what its reaped children used (cutime + cstime), and the same of the children still
    running, recursively. A process is counted once at any moment: while it runs by its
    own figures, once reaped in its parent's. The daemon's hook and download workers are
    the daemon's work, so its CPU figures are this."""
    try:
        utime, stime, cutime, cstime = _stat_times(pid)
    except OSError:
        return 0.0  # it ended between the listing and the read: its parent counts it now
    total = (utime + stime + cutime + cstime) / _TICKS
    return total + sum(tree_cpu_seconds(child) for child in child_pids(pid))


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, `echo 5 > clear_refs`); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def tree_rss_kb(pid: int) -> int:
    """VmRSS of `pid` plus that of every process below it (pages they share counted in
    each: an upper bound of what they cost together)."""
    total = 0
    with contextlib.suppress(OSError, KeyError):
        total = memory(pid).rss_kb
    return total + sum(tree_rss_kb(child) for child in child_pids(pid))


class _Sampler:
    """Calls `_sample` at enter, every `interval` seconds in a thread of its own, and at exit."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def _sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> Self:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class PeakSampler(_Sampler):
    """Samples VmRSS of some processes every `interval` seconds, each with the processes
    it started (the daemon's workers); keeps the largest sum seen."""

    def __init__(self, pids: Iterable[int], interval: float = 0.05) -> None:
        self.peaks: dict[int, int] = dict.fromkeys(pids, 0)
        super().__init__(interval)

    def _sample(self) -> None:
        for pid in self.peaks:
            self.peaks[pid] = max(self.peaks[pid], tree_rss_kb(pid))


@attrs.frozen(kw_only=True)
class ThreadTime:
    """One thread's scheduler figures (/proc/<pid>/task/<tid>/schedstat) as last read."""

    name: str
    """Its name (comm), digits replaced by N: one thread of each download has its id."""
    seen_from: float
    """Epoch of the first reading that found it."""
    seen_to: float
    """Epoch of the last: within a sampling interval of its end, if it ended."""
    ran: float
    """Seconds on a CPU."""
    waited: float
    """Seconds runnable but waiting for a CPU (the run queue's delay)."""


def _schedstat(pid: int, tid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
        ran, waited, _ = f.read().split()
    return int(ran) / 1e9, int(waited) / 1e9


class CpuSampler(_Sampler):
    """Reads the CPU seconds of a process tree (`tree_cpu_seconds`) every `interval` seconds,
    each with the wall clock (epoch) of the reading, so that the CPU spent between two
    moments another clock recorded (the emulator's time of an update) can be read off.
    With `threads`, also the scheduler figures of every thread in the tree whose name
    starts with it (`ThreadTime`; names are read once per thread)."""

    def __init__(self, pid: int, interval: float = 0.01, threads: str | None = None) -> None:
        self.samples: list[tuple[float, float]] = []
        self.threads: dict[tuple[int, int], ThreadTime] = {}
        self._pid = pid
        self._prefix = threads
        self._names: dict[tuple[int, int], str | None] = {}
        super().__init__(interval)

    def _sample(self) -> None:
        now = time.time()
        self.samples.append((now, tree_cpu_seconds(self._pid)))
        if self._prefix is not None:
            self._sample_threads(self._pid, now)

    def _sample_threads(self, pid: int, now: float) -> None:
        with contextlib.suppress(OSError):  # it ended meanwhile: its last figures stay
            for entry in os.listdir(f"/proc/{pid}/task"):
                key = (pid, int(entry))
                if key not in self._names:
                    self._names[key] = self._name(pid, key[1])
                name = self._names[key]
                if name is None:
                    continue
                with contextlib.suppress(OSError):
                    ran, waited = _schedstat(pid, key[1])
                    first = self.threads.get(key)
                    self.threads[key] = ThreadTime(
                        name=name,
                        seen_from=now if first is None else first.seen_from,
                        seen_to=now,
                        ran=ran,
                        waited=waited,
                    )
        for child in child_pids(pid):
            self._sample_threads(child, now)

    def _name(self, pid: int, tid: int) -> str | None:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            return None
        assert self._prefix is not None
        return re.sub(r"\d+", "N", comm) if comm.startswith(self._prefix) else None


def cpu_at(samples: Sequence[tuple[float, float]], at: float) -> float | None:
    """The tree's CPU seconds at epoch `at`, linear between the two readings around it
    (/proc counts in clock ticks: each reading is within 10 ms per process); None outside."""
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        if t0 <= at <= t1:
            return c0 if t1 == t0 else c0 + (c1 - c0) * (at - t0) / (t1 - t0)
    return None


def pss_kb(pid: int) -> int:
    """Pss from /proc/<pid>/smaps_rollup: resident memory with each shared page divided
    among the processes that map it, so two processes' Pss add up to what they cost."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


_HEAP_MAX = 64 * 1024 * 1024
"""glibc maps each non-main malloc arena at a multiple of HEAP_MAX_SIZE (64 MiB on 64 bit)."""
_STACK = 8 * 1024 * 1024


def smaps(pid: int) -> dict[str, int]:
    """Resident kB by kind of mapping: each file by name, the heap, thread stacks, the
    malloc arenas of threads, other anonymous memory (Python's object arenas, buffers)."""
    kinds: dict[str, int] = {}
    kind = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if not head:
                continue
            if "-" in head[0] and not head[0].endswith(":"):
                start, end = (int(x, 16) for x in head[0].split("-"))
                path = head[5] if len(head) > 5 else ""
                if path.startswith("/"):
                    kind = "file " + path.rsplit("/", 1)[-1]
                elif path == "[heap]":
                    kind = "heap (brk)"
                elif path.startswith("["):
                    kind = path
                elif start % _HEAP_MAX == 0:
                    kind = "malloc arenas of threads"
                elif end - start == _STACK:
                    kind = "thread stacks"
                else:
                    kind = "other anonymous"
            elif head[0] == "Rss:":
                kinds[kind] = kinds.get(kind, 0) + int(head[1])
    return kinds
