"""RESULTS.md from the measurements: tables, targets met or missed by how much, and what dominates.

Owns every number format and every sentence of the report. It computes only ratios,
differences and medians of what `measure.py` returned; it runs nothing.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence

import attrs

from upbench.measure import (
    FLOOR_IMPORTS,
    AfterJobsMemory,
    DownloadResult,
    HookOverheadResult,
    IdleResult,
    ImportStep,
    LatencyResult,
    PinnedResult,
    ProcIdle,
    Profile,
    Step,
    Timing,
    WaitResult,
)
from upbench.procstat import cpu_at
from upbench.rigs import JobRun
from upbench.wakeups import ProcessWakeups, grouped, owner
from upparat.io.download import HASH_THREAD, THREADS, WRITE_THREAD

NOT_MEASURED = "not measured"

# The first column of every table row the report always has (tests/test_bench_smoke.py
# checks them): measured, or with a reason in place of numbers.
ROW_LABELS = (
    "curl -o /dev/null",
    "curl -o FILE",
    "sha256sum FILE",
    "curl -o FILE && sha256sum FILE",
    "hashlib.sha256 of the file",
    "dd oflag=direct (disk write bandwidth)",
    "upparat",
    "upparat 1.12",
    "upparat daemon",
    "upparat hook server",
    "upparat 1.12 daemon",
    "floor: bare imports",
    "upparat (default, verify after soft restart)",
    "upparat (verify_soft_restart = false)",
    "GetVersion via the shell hook server",
    "same script via subprocess.run",
    "hook server overhead",
    "T1 download time vs curl -o /dev/null",
    "T2 download time vs curl -o FILE && sha256sum FILE",
    "T3 cloud updates per 10 s of download",
    "T4 cloud updates for the whole job",
    "T5 daemon idle RSS above the floor",
    "T6 peak RSS during the download above idle",
    "T7 latency vs 1.12",
    "T8 hook overhead over a bare fork/exec",
)


@attrs.frozen(kw_only=True)
class Environment:
    date: str
    mode: str
    cores: int
    cpu_model: str
    memory_mb: int
    kernel: str
    python: str
    upparat: str
    legacy: str
    curl: str
    mosquitto: str
    libraries: str
    load_start: str
    load_end: str
    processes: int
    """Processes on the machine at the start (the hook server scans them per script run)."""
    command: str


@attrs.frozen(kw_only=True)
class Results:
    env: Environment
    legacy_skipped: str | None
    idle: IdleResult
    imports: tuple[ImportStep, ...]
    imports_from_source: tuple[ImportStep, ...]
    """The same without the bytecode cache: the checkout's modules compiled at import."""
    download: DownloadResult
    latency: LatencyResult
    latency_112_hooks: LatencyResult
    latency_legacy: LatencyResult | None
    hooks: HookOverheadResult
    pinned: PinnedResult | None
    """The same product started on one core (None: not measured)."""
    cloud_rtt: Timing | None
    """GetPendingJobExecutions round trips of a probe client to the emulator."""
    hookserver_alone: ProcessWakeups | None
    """The hook server idle with no daemon connected (None: not measured)."""
    profiles: tuple[Profile, ...]
    profile_skipped: str | None
    after_jobs: AfterJobsMemory | None = None
    """The same processes idle again after the download and latency jobs."""
    latency_cold: LatencyResult | None = None
    """One job after that quiet spell (the hook server's gRPC and the daemon's hook
    worker gone, as before a device's next job)."""
    latency_cold_legacy: LatencyResult | None = None
    waiting: WaitResult | None = None
    """A job whose download hook says "not yet" on every call (None: not measured)."""
    waiting_legacy: WaitResult | None = None


# --- formatting ----------------------------------------------------------------------------------


def _s(seconds: float | None, digits: int = 2) -> str:
    return "-" if seconds is None else f"{seconds:.{digits}f}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _mb(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _median(values: Sequence[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def _best(values: Sequence[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return min(found) if found else None


# --- derived numbers -----------------------------------------------------------------------------


def download_seconds(runs: Sequence[JobRun]) -> list[float | None]:
    return [r.install_seconds if r.status == "SUCCEEDED" else None for r in runs]


@attrs.frozen(kw_only=True)
class Traffic:
    total: int
    while_downloading: int
    """Updates after download_start and before installation_start."""
    download_window: float | None

    @property
    def allowed(self) -> int | None:
        if self.download_window is None:
            return None
        return max(0, math.floor(self.download_window / 10.0))


def _update_at(run: JobRun, state: str) -> float | None:
    """When the cloud received the job's first update with `state`."""
    return next((u.at for u in run.updates if u.state == state), None)


def traffic(run: JobRun) -> Traffic:
    start = _update_at(run, "download_start")
    end = _update_at(run, "installation_start")
    during = 0
    window = None
    if start is not None and end is not None:
        during = sum(1 for u in run.updates if start < u.at < end)
        window = end - start
    return Traffic(total=len(run.updates), while_downloading=during, download_window=window)


def _worst_traffic(runs: Sequence[JobRun]) -> Traffic | None:
    found = [traffic(r) for r in runs if r.status == "SUCCEEDED"]
    if not found:
        return None
    return max(found, key=lambda t: (t.while_downloading - (t.allowed or 0), t.total))


def _peak_kb(runs: Sequence[JobRun]) -> int | None:
    peaks = [max(r.peak_rss_kb or 0, r.peak_hwm_kb or 0) for r in runs]
    return max(peaks) if any(peaks) else None


def _cpu_per_gb(runs: Sequence[JobRun], size: int) -> float | None:
    """The daemon's CPU from job created to install hook called, per GB of the bundle."""
    cpu = _median([r.daemon_cpu for r in runs])
    return None if cpu is None else cpu / (size / 1e9)


def download_cpu(run: JobRun) -> float | None:
    """CPU seconds of the daemon's process tree during its download as the cloud saw it
    (`traffic`'s window, download_start → installation_start), read off the run's 10 ms
    samples; None for a run that failed or was not sampled."""
    start = _update_at(run, "download_start")
    end = _update_at(run, "installation_start")
    if run.status != "SUCCEEDED" or start is None or end is None:
        return None
    before = cpu_at(run.cpu_samples, start)
    after = cpu_at(run.cpu_samples, end)
    return None if before is None or after is None else after - before


def _download_cpu_per_gb(runs: Sequence[JobRun], size: int) -> float | None:
    cpu = _median([download_cpu(r) for r in runs])
    return None if cpu is None else cpu / (size / 1e9)


# --- the report ------------------------------------------------------------------------------------


def render(r: Results) -> str:
    out: list[str] = []
    env = r.env
    d = r.download
    mb = d.size / 1e6
    out.append("# Benchmarks: upparat vs upparat 1.12 vs the physical limit\n")
    out.append(
        f"Generated by `{env.command}` on {env.date} ({env.mode} mode). Every number below"
        " comes from this one run on this machine; `make bench` regenerates this file.\n"
    )
    out.append("## Machine and versions\n")
    out.append(
        _table(
            ("what", "value"),
            [
                ("CPU", f"{env.cores} cores, {env.cpu_model}"),
                ("memory", f"{env.memory_mb} MB"),
                ("kernel", env.kernel),
                ("load (uptime) at start", env.load_start),
                ("load (uptime) at end", env.load_end),
                ("processes running at the start", str(env.processes)),
                ("python", env.python),
                ("upparat", env.upparat),
                ("upparat 1.12", env.legacy),
                ("libraries", env.libraries),
                ("curl", env.curl),
                ("mosquitto", env.mosquitto),
            ],
        )
    )
    out.append(
        "Other engineers' test suites share this machine; the load above says how busy it"
        " was. Every timed section interleaves the clients (curl, upparat, 1.12 in turn per"
        " repetition) so that a busy moment hits all of them, and reports medians.\n"
    )
    if r.legacy_skipped:
        out.append(f"**upparat 1.12 was not measured in this run:** {r.legacy_skipped}\n")

    out.append(_issue16(r))
    out.append(_targets(r))
    out.append(_download_section(r))
    out.append(_traffic_section(r))
    out.append(_memory_section(r))
    out.append(_cpu_section(r))
    out.append(_latency_section(r))
    out.append(_hooks_section(r))
    out.append(_dominates(r))
    out.append(_method(r, mb))
    return "\n".join(out)


def _targets(r: Results) -> str:
    return "## Targets\n\n" + _table(
        ("target", "goal", "measured", "verdict", "missed by"), _target_rows(r)
    )


def _target_rows(r: Results) -> list[tuple[str, str, str, str, str]]:
    d = r.download
    ours = _median(download_seconds(d.upparat))
    null = d.curl_null.median
    pipeline = d.pipeline.median
    rows: list[tuple[str, str, str, str, str]] = []

    def verdict(met: bool | None) -> str:
        return NOT_MEASURED if met is None else ("met" if met else "**missed**")

    # T1
    if ours is not None:
        ratio = ours / null
        rows.append(
            (
                "T1 download time vs curl -o /dev/null",
                "≤ 1.5 x",
                f"{ratio:.2f} x ({_s(ours)} s vs {_s(null)} s)",
                verdict(ratio <= 1.5),
                ""
                if ratio <= 1.5
                else f"{ours - 1.5 * null:.2f} s ({ratio / 1.5:.1f} x the budget of {1.5 * null:.2f} s)",
            )
        )
        rows.append(
            (
                "T2 download time vs curl -o FILE && sha256sum FILE",
                "below",
                f"{_s(ours)} s vs {_s(pipeline)} s ({ours / pipeline:.2f} x)",
                verdict(ours < pipeline),
                "" if ours < pipeline else f"{ours - pipeline:.2f} s",
            )
        )
    else:
        rows.append(
            (
                "T1 download time vs curl -o /dev/null",
                "≤ 1.5 x",
                "no successful run",
                NOT_MEASURED,
                "",
            )
        )
        rows.append(
            (
                "T2 download time vs curl -o FILE && sha256sum FILE",
                "below",
                "no successful run",
                NOT_MEASURED,
                "",
            )
        )
    # T3, T4
    t = _worst_traffic(d.upparat)
    if t is not None and t.allowed is not None:
        rows.append(
            (
                "T3 cloud updates per 10 s of download",
                "≤ 1 per 10 s",
                f"{t.while_downloading} progress updates in {t.download_window:.1f} s of download (worst run)",
                verdict(t.while_downloading <= t.allowed),
                ""
                if t.while_downloading <= t.allowed
                else f"{t.while_downloading - t.allowed} updates",
            )
        )
    else:
        rows.append(
            (
                "T3 cloud updates per 10 s of download",
                "≤ 1 per 10 s",
                "no successful run",
                NOT_MEASURED,
                "",
            )
        )
    if t is not None:
        rows.append(
            (
                "T4 cloud updates for the whole job",
                "≤ 20",
                f"{t.total} (worst run)",
                verdict(t.total <= 20),
                "" if t.total <= 20 else f"{t.total - 20} updates",
            )
        )
    else:
        rows.append(
            ("T4 cloud updates for the whole job", "≤ 20", "no successful run", NOT_MEASURED, "")
        )
    # T5, T6
    idle = r.idle
    above = idle.daemon.rss_kb - idle.floor.rss_kb
    rows.append(
        (
            "T5 daemon idle RSS above the floor",
            "≤ 3 MB",
            f"{_mb(above)} MB ({_mb(idle.daemon.rss_kb)} vs {_mb(idle.floor.rss_kb)} MB)",
            verdict(above <= 3 * 1024),
            "" if above <= 3 * 1024 else f"{_mb(above - 3 * 1024)} MB",
        )
    )
    peak = _peak_kb(d.upparat)
    if peak is not None:
        grow = peak - idle.daemon.rss_kb
        rows.append(
            (
                "T6 peak RSS during the download above idle",
                "≤ 10 MB",
                f"{_mb(grow)} MB (peak {_mb(peak)} MB, idle {_mb(idle.daemon.rss_kb)} MB)",
                verdict(grow <= 10 * 1024),
                "" if grow <= 10 * 1024 else f"{_mb(grow - 10 * 1024)} MB",
            )
        )
    else:
        rows.append(
            (
                "T6 peak RSS during the download above idle",
                "≤ 10 MB",
                "no successful run",
                NOT_MEASURED,
                "",
            )
        )
    # T7
    ours_lat = _median([x.done_seconds for x in r.latency.runs])
    legacy_lat = (
        _median([x.done_seconds for x in r.latency_legacy.runs]) if r.latency_legacy else None
    )
    if ours_lat is not None and legacy_lat is not None:
        ratio = ours_lat / legacy_lat
        rows.append(
            (
                "T7 latency vs 1.12",
                "≤ 1/3 of 1.12's",
                f"{_ms(ours_lat)} ms vs {_ms(legacy_lat)} ms ({ratio:.2f} x)",
                verdict(ratio <= 1 / 3),
                ""
                if ratio <= 1 / 3
                else f"{_ms(ours_lat - legacy_lat / 3)} ms (budget {_ms(legacy_lat / 3)} ms)",
            )
        )
    else:
        why = r.legacy_skipped or "no successful run"
        rows.append(("T7 latency vs 1.12", "≤ 1/3 of 1.12's", why, NOT_MEASURED, ""))
    # T8
    over = r.hooks.grpc.median - r.hooks.subprocess.median
    rows.append(
        (
            "T8 hook overhead over a bare fork/exec",
            "≤ 10 ms",
            f"{_ms(over)} ms ({_ms(r.hooks.grpc.median)} vs {_ms(r.hooks.subprocess.median)} ms)",
            verdict(over <= 0.010),
            "" if over <= 0.010 else f"{_ms(over - 0.010)} ms",
        )
    )
    return rows


def _download_section(r: Results) -> str:
    d = r.download
    mb = d.size / 1e6
    null = d.curl_null.median
    rows: list[list[str]] = []

    def row(label: str, t: Timing | None, cpu: float | None, peak: int | None, note: str) -> None:
        if t is None:
            rows.append([label, "-", "-", "-", "-", "-", "-", note])
            return
        rows.append(
            [
                label,
                _s(t.median),
                _s(t.best),
                f"{mb / t.median:.0f}",
                f"{t.median / null:.2f}",
                "-" if cpu is None else f"{cpu:.2f}",
                _mb(peak),
                note,
            ]
        )

    curl_cpu = d.curl_cpu.median / (d.size / 1e9)
    row("curl -o /dev/null", d.curl_null, curl_cpu, None, "no disk, no hash: the network limit")
    row("curl -o FILE", d.curl_file, None, None, "written to the page cache, no fsync")
    row("sha256sum FILE", d.sha256sum, None, None, "coreutils, reading the page cache")
    row("curl -o FILE && sha256sum FILE", d.pipeline, None, None, "the naive verified pipeline")
    row("hashlib.sha256 of the file", d.hashlib, None, None, "one core, from the page cache")
    row(
        "dd oflag=direct (disk write bandwidth)",
        d.dd_direct,
        None,
        None,
        "the same bytes from the page cache straight to the disk (O_DIRECT)",
    )

    def job_row(label: str, runs: Sequence[JobRun], note: str) -> None:
        times = [x for x in download_seconds(runs) if x is not None]
        if not times:
            failed = ", ".join(f"{x.status} {x.state}" for x in runs) or "no run"
            row(label, None, None, None, f"{NOT_MEASURED}: {failed}")
            return
        row(label, Timing(samples=tuple(times)), _cpu_per_gb(runs, d.size), _peak_kb(runs), note)

    job_row(
        "upparat",
        d.upparat,
        f"job created → install hook called; sha256 verified, fdatasync; {len(d.upparat)} run(s)",
    )
    if r.legacy_skipped:
        row("upparat 1.12", None, None, None, f"{NOT_MEASURED}: {r.legacy_skipped}")
    else:
        checked = (
            "file checked by the harness: "
            + ("size and sha256 right" if all(d.legacy_file_ok) else "**size or sha256 WRONG**")
            if d.legacy_file_ok
            else "file not checked"
        )
        job_row(
            "upparat 1.12",
            d.legacy,
            f"job created → install hook called; no hash, fsync every 100 KiB; {checked}",
        )
    return (
        f"## 1. Download inside a job ({mb:.0f} MB over loopback HTTP)\n\n"
        + _table(
            (
                "client",
                "median s",
                "best s",
                "MB/s",
                "x curl -o /dev/null",
                "CPU s/GB",
                "peak RSS MB",
                "what it does",
            ),
            rows,
        )
        + "\nCPU s/GB: CPU seconds of the daemon (all threads, and its worker processes: the"
        " download runs in upparat's download worker) from job created to the install hook,"
        " per 10^9 bytes; for curl, of the curl process. The origin serves the"
        " file from the page cache with sendfile(2) in its own process.\n" + _cloud_note(d)
    )


def _cloud_note(d: DownloadResult) -> str:
    cloud = _median([x.cloud_cpu for x in d.legacy])
    if cloud is None or cloud < 1.0:
        return ""
    return (
        f"\nThe emulator and the broker share this machine's cores with the daemon. During a"
        f" 1.12 download they used {cloud:.1f} CPU s (one UpdateJobExecution per 100 KiB, each"
        " answered and written to the emulator's state file), which slows 1.12 here more than"
        " against AWS IoT; upparat's jobs cost them next to nothing (section 4).\n"
    )


def _traffic_section(r: Results) -> str:
    rows: list[list[str]] = []
    for label, runs in (("upparat", r.download.upparat), ("upparat 1.12", r.download.legacy)):
        t = _worst_traffic(runs)
        if t is None:
            reason = (
                r.legacy_skipped
                if label == "upparat 1.12" and r.legacy_skipped
                else "no successful run"
            )
            rows.append([label, "-", "-", "-", f"{NOT_MEASURED}: {reason}"])
            continue
        per10 = f"{t.while_downloading / t.download_window * 10:.1f}" if t.download_window else "-"
        rows.append(
            [
                label,
                str(t.total),
                str(t.while_downloading),
                _s(t.download_window, 1),
                per10,
            ]
        )
    return (
        "## 2. Cloud traffic: UpdateJobExecution requests at the emulator (the jobs of section 1)\n\n"
        + _table(
            (
                "daemon",
                "updates, whole job",
                "progress updates while downloading",
                "download s (download_start → installation_start)",
                "per 10 s",
            ),
            rows,
        )
    )


def _proc_row(label: str, p: ProcIdle | None, note: str, window: float) -> list[str]:
    if p is None:
        return [label, "-", "-", "-", "-", "-", "-", note]
    return [
        label,
        _mb(p.rss_kb),
        _mb(p.anon_kb),
        _mb(p.file_kb),
        str(p.threads),
        f"{p.cpu_seconds:.2f}",
        f"{p.wakeups / window:.1f}",
        note,
    ]


def _memory_section(r: Results) -> str:
    i = r.idle
    d = r.download
    legacy_note = f"{NOT_MEASURED}: {r.legacy_skipped}" if r.legacy_skipped else ""
    idle_rows = [
        _proc_row(
            "floor: bare imports", i.floor, f'`python -c "{FLOOR_IMPORTS}"`', i.window_seconds
        ),
        _proc_row("upparat daemon", i.daemon, "", i.window_seconds),
        _proc_row("upparat hook server", i.hookserver, "", i.window_seconds),
        _proc_row("upparat 1.12 daemon", i.legacy, legacy_note, i.window_seconds),
    ]
    peak_rows = []
    for label, runs, idle in (
        ("upparat daemon", d.upparat, i.daemon),
        ("upparat 1.12 daemon", d.legacy, i.legacy),
    ):
        peak = _peak_kb(runs)
        before = _median([x.rss_before_kb for x in runs])
        if peak is None or idle is None:
            peak_rows.append([label, "-", "-", "-", legacy_note or "no successful run"])
            continue
        peak_rows.append([label, _mb(idle.rss_kb), _mb(before), _mb(peak), _mb(peak - idle.rss_kb)])
    return (
        f"## 3. Memory (MB = 1024 kB as /proc reports)\n\nIdle: sampled {i.settle_seconds:.0f} s after"
        " the daemon started (no job yet).\n\n"
        + _table(
            (
                "process",
                "idle RSS MB",
                "anon MB",
                "file-backed MB",
                "threads",
                f"CPU s in {i.window_seconds:.0f} s idle",
                "wakeups/s",
                "note",
            ),
            idle_rows,
        )
        + f"\nDuring the {d.size / 1e6:.0f} MB download: the daemon's VmHWM reset (clear_refs) at job"
        " creation and read when the install hook was called, and VmRSS of the daemon plus its"
        " worker processes (upparat: its job worker; 1.12: its hook scripts)"
        " summed at 20 Hz; the larger of the two, worst run. Summed RSS counts the pages the"
        " processes share in each: an upper bound.\n\n"
        + _table(
            ("process", "idle RSS MB", "RSS before the job MB", "peak RSS MB", "peak - idle MB"),
            peak_rows,
        )
        + _after_jobs(r.after_jobs, i)
    )


def _after_jobs(after: AfterJobsMemory | None, i: IdleResult) -> str:
    """Idle before any job next to idle after jobs: gRPC and the download stack, loaded by
    the first job, stay loaded."""
    if after is None:
        return ""
    rows = []
    for label, before, now in (
        ("upparat daemon", i.daemon, after.daemon),
        ("upparat hook server", i.hookserver, after.hookserver),
        ("upparat 1.12 daemon", i.legacy, after.legacy),
    ):
        if now is None:
            continue
        top = ", ".join(f"{kind} {_mb(kb)}" for kind, kb in now.mappings[:3])
        rows.append(
            [
                label,
                "-" if before is None else _mb(before.rss_kb),
                _mb(now.rss_kb),
                _mb(now.anon_kb),
                _mb(now.file_kb),
                _mb(now.pss_kb),
                top,
            ]
        )
    summed = after.daemon.pss_kb + (after.hookserver.pss_kb if after.hookserver else 0)
    return (
        f"\nIdle after jobs: sampled {after.settle_seconds:.0f} s after the last latency job"
        " ended (the daemon's job worker, the child process that holds gRPC"
        " and the download driver, exits 5 s after its last call; the hook server drops its"
        " gRPC server 20 s after its last connection and re-executes itself, which gives that"
        " memory back);"
        f" daemon + hook server PSS summed {_mb(summed)} MB. The idle rows above are before"
        " any job; a device spends months in this state between jobs.\n\n"
        + _table(
            (
                "process",
                "idle RSS MB, before any job",
                "idle RSS MB, after jobs",
                "anon MB",
                "file-backed MB",
                "PSS MB",
                "largest mappings MB",
            ),
            rows,
        )
    )


def _cpu_section(r: Results) -> str:
    i = r.idle
    rows = []
    for label, p in (
        ("upparat daemon", i.daemon),
        ("upparat hook server", i.hookserver),
        ("upparat 1.12 daemon", i.legacy),
    ):
        if p is None:
            rows.append([label, "-", "-", "-", r.legacy_skipped or ""])
        else:
            busiest = ", ".join(
                f"`{name}` {n / i.window_seconds:.1f}" for name, n in p.wakeups_by_thread[:4] if n
            )
            rows.append(
                [
                    label,
                    f"{p.cpu_seconds:.3f}",
                    f"{p.wakeups / i.window_seconds:.1f}",
                    busiest,
                    "",
                ]
            )
    d = r.download
    per_gb = []
    for label, runs in (("upparat", d.upparat), ("upparat 1.12", d.legacy)):
        cpu = _cpu_per_gb(runs, d.size)
        hs = _median([x.hookserver_cpu for x in runs])
        cloud = _median([x.cloud_cpu for x in runs])
        per_gb.append(
            [
                label,
                "-" if cpu is None else f"{cpu:.2f}",
                "-" if hs is None else f"{hs / (d.size / 1e9):.3f}",
                "-" if cloud is None else f"{cloud / (d.size / 1e9):.2f}",
            ]
        )
    per_gb.append(["curl -o /dev/null", f"{d.curl_cpu.median / (d.size / 1e9):.2f}", "", ""])
    return (
        f"## 4. CPU\n\nIdle: CPU seconds (utime + stime, all threads) over {i.window_seconds:.0f} s,"
        f" starting {i.settle_seconds:.0f} s after start; wakeups = context switches of all threads.\n\n"
        + _table(("process", "CPU s", "wakeups/s", "wakeups/s by thread name", "note"), rows)
        + "\nDownloading: CPU seconds per GB, job created → install hook called (median run).\n\n"
        + _table(
            ("client", "daemon CPU s/GB", "hook server CPU s/GB", "emulator + broker CPU s/GB"),
            per_gb,
        )
    )


def _lat_row(label: str, res: LatencyResult | None, legacy: float | None, note: str) -> list[str]:
    if res is None:
        return [label, "-", "-", "-", "-", "-", "-", note]
    done = [x.done_seconds for x in res.runs if x.status == "SUCCEEDED"]
    med = _median(done)
    ok = len([x for x in done if x is not None])
    return [
        label,
        _ms(med),
        _ms(_best(done)),
        _ms(max((x for x in done if x is not None), default=None)),
        f"{ok}/{len(res.runs)}",
        "-" if med is None or legacy is None else f"{med / legacy:.2f}",
        f"{res.daemon_cpu_per_job * 1000:.0f}",
        note,
    ]


def _latency_section(r: Results) -> str:
    legacy = (
        _median([x.done_seconds for x in r.latency_legacy.runs if x.status == "SUCCEEDED"])
        if r.latency_legacy
        else None
    )
    rows = [
        _lat_row(
            "upparat (default, verify after soft restart)",
            r.latency,
            legacy,
            "hooks: version, download, install, restart, version, ready",
        ),
        _lat_row(
            "upparat (verify_soft_restart = false)",
            r.latency_112_hooks,
            legacy,
            "hooks: version, download, install, restart (1.12's sequence); run after the"
            " others, after a daemon restart",
        ),
        _lat_row(
            "upparat 1.12",
            r.latency_legacy,
            legacy,
            r.legacy_skipped or "hooks: version, download, install, restart",
        ),
        _lat_row(
            "upparat, first job after a quiet spell",
            r.latency_cold,
            legacy,
            "one job after the idle-after-jobs sample (section 3): the hook server starts"
            " gRPC again, the daemon its job worker; every job of a device that waits"
            " months between them is such a job",
        ),
        _lat_row(
            "upparat 1.12, first job after a quiet spell",
            r.latency_cold_legacy,
            legacy,
            r.legacy_skipped or "the same moment, for comparison",
        ),
    ]
    return (
        "## 5. Latency: job created → SUCCEEDED (instant hooks, 1 MB file)\n\n"
        "From `time.time()` right before CreateJob to the emulator's receipt of the SUCCEEDED"
        " update (its `history` timestamp, same clock). The daemon runs as upparat.service"
        " runs it: its status file in `RUNTIME_DIRECTORY` on a tmpfs (the unit's"
        " `RuntimeDirectory=`, here a folder under /dev/shm), its journal on the disk.\n\n"
        + _table(
            (
                "daemon",
                "median ms",
                "best ms",
                "worst ms",
                "succeeded",
                "x 1.12",
                "daemon CPU ms/job",
                "note",
            ),
            rows,
        )
    )


def _hooks_section(r: Results) -> str:
    h = r.hooks

    def p90(t: Timing) -> float:
        ordered = sorted(t.samples)
        return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]

    rows = [
        [
            "GetVersion via the shell hook server",
            _ms(h.grpc.median),
            _ms(h.grpc.best),
            _ms(p90(h.grpc)),
            str(len(h.grpc.samples)),
        ],
        [
            "same script via subprocess.run",
            _ms(h.subprocess.median),
            _ms(h.subprocess.best),
            _ms(p90(h.subprocess)),
            str(len(h.subprocess.samples)),
        ],
        [
            "GetInfo via the shell hook server (the round trip alone, no script)",
            _ms(h.info.median) if h.info.samples else "-",
            _ms(h.info.best) if h.info.samples else "-",
            _ms(p90(h.info)) if h.info.samples else "-",
            str(len(h.info.samples)),
        ],
        [
            "hook server overhead",
            _ms(h.grpc.median - h.subprocess.median),
            "",
            "",
            "median - median",
        ],
    ]
    return (
        "## 6. Hook overhead: one GetVersion (gRPC on the unix socket + fork/exec of the script)\n\n"
        + _table(("call", "median ms", "best ms", "p90 ms", "n"), rows)
        + "\nCalls alternate (one GetVersion, one subprocess.run, one GetInfo) after three warm-up rounds;"
        " the channel stays open, as the daemon's does. upparat 1.12 has no hook server: it"
        " runs each hook with subprocess.Popen in a new thread of the daemon, so its cost per"
        " hook is about the subprocess.run row.\n"
    )


def _verdicts(r: Results) -> dict[str, tuple[str, str]]:
    """Target label -> (verdict, missed by), as in the targets table."""
    return {row[0]: (row[3], row[4]) for row in _target_rows(r)}


def _headline(r: Results, *labels: str) -> str:
    verdicts = _verdicts(r)
    parts = []
    for label in labels:
        verdict, miss = verdicts[label]
        parts.append(f"{label.split(' ', 1)[0]} {verdict}" + (f" by {miss}" if miss else ""))
    return "; ".join(parts)


def _top(pairs: Sequence[tuple[str, int]], total: int, n: int = 3) -> str:
    """The first `n` named entries (not the "(no ... frame)" bucket) with their shares."""
    named = [(name, count) for name, count in pairs if not name.startswith("(")]
    return ", ".join(f"`{name}` {count / total:.0%}" for name, count in named[:n])


def _find_profile(r: Results, key: str) -> Profile | None:
    return next((p for p in r.profiles if p.key == key and p.samples), None)


def _dominates(r: Results) -> str:
    d = r.download
    out = ["## What dominates\n\n"]
    if r.profile_skipped:
        out.append(f"No profiles in this run: {r.profile_skipped}.\n")

    # --- download
    out.append(f"### Download ({_headline(r, 'T1 download time vs curl -o /dev/null')})\n\n")
    ours = _median(download_seconds(d.upparat))
    if ours is not None:
        disk = d.dd_direct.median
        net = d.curl_null.median
        limit = max(disk, net)
        if ours <= limit:
            verdict = (
                f"upparat took less ({ours / limit:.0%} of that): its writes go through the"
                " page cache and are flushed while the transfer runs, so the disk works in"
                " parallel with the network. It runs at the physical limit of a download that"
                " keeps its file; what misses the target is the disk, which"
                " `curl -o /dev/null` never touches."
            )
        elif ours <= 1.25 * limit:
            verdict = (
                f"upparat took {ours / limit:.2f} x that, so it runs close to the physical"
                " limit of a download that keeps its file; what misses the target is the disk,"
                " which `curl -o /dev/null` never touches."
            )
        else:
            verdict = (
                f"upparat took {ours / limit:.2f} x the slower of network and disk: it spends"
                f" {_s(ours - limit)} s beyond the physical limit; the profile below shows where."
            )
        out.append(
            f"upparat took {_s(ours)} s where `curl -o /dev/null` took {_s(net)} s, the network"
            f" limit (it neither writes nor hashes). upparat writes the file (O_DIRECT, 4 MiB"
            f" at a time), verifies it and calls install; it keeps it durable as it goes (an"
            f" fdatasync per 8 MiB and second) and fsyncs the whole file while install runs. Writing the same {d.size / 1e6:.0f} MB straight to this disk"
            f" (`dd oflag=direct`, from the page cache, no network) takes {_s(disk)} s: the"
            f" disk limit. {verdict} `curl -o FILE` ({_s(d.curl_file.median)} s) only"
            " fills the page cache and leaves the writing to the kernel after it exits."
            f" Hashing the {d.size / 1e6:.0f} MB with hashlib (OpenSSL, SHA-NI) takes"
            f" {_s(d.hashlib.median)} s of one core; upparat receives, hashes and writes in"
            " three threads (two 4 MiB buffers between them), so that the slowest of the three"
            " sets the pace instead of their sum."
            " coreutils' sha256sum, without SHA-NI, took"
            f" {_s(d.sha256sum.median)} s, which is why the naive pipeline is slow.\n"
        )
        budget = 1.5 * net
        alone = [
            (what, t)
            for what, t in (
                ("hashing alone (hashlib)", d.hashlib.median),
                ("writing alone (`curl -o FILE`, not even synced)", d.curl_file.median),
                ("the disk alone (`dd oflag=direct`)", disk),
            )
            if t > budget
        ]
        if alone:
            out.append(
                f"\nThe budget of 1.5 x `curl -o /dev/null` is {_s(budget)} s, but "
                + "; ".join(f"{what} takes {_s(t)} s" for what, t in alone)
                + ": a verified download that keeps its file cannot meet it on this machine.\n"
            )
    profile = _find_profile(r, "download")
    if profile is not None:
        out.append(_profile(profile))

    # --- memory
    out.append(
        "\n### Memory ("
        + _headline(
            r,
            "T5 daemon idle RSS above the floor",
            "T6 peak RSS during the download above idle",
        )
        + ")\n\n"
    )
    steps = r.imports
    if len(steps) > 1:
        rows = [[steps[0].label, _mb(steps[0].rss_kb), "", ""]]
        prev = steps[0].rss_kb
        added: list[tuple[str, int]] = []
        for step in steps[1:]:
            rows.append(
                [
                    step.label,
                    _mb(step.rss_kb),
                    f"{(step.rss_kb - prev) / 1024:+.1f}",
                    str(step.modules),
                ]
            )
            added.append((step.label, step.rss_kb - prev))
            prev = step.rss_kb
        daemon = r.idle.daemon
        running = daemon.rss_kb - prev
        rows.append(
            [
                "the real daemon, idle (the rest: MQTT client, runtime, state, buffers)",
                _mb(daemon.rss_kb),
                f"{running / 1024:+.1f}",
                "",
            ]
        )
        floor_rss = steps[1].rss_kb
        imported = [st for st in steps[2:] if not st.label.startswith("run:")]
        last_import = imported[-1].rss_kb if imported else floor_rss
        imports_only = [kv for kv in added[1:] if not kv[0].startswith("run:")]
        biggest = max(imports_only, key=lambda kv: kv[1], default=("-", 0))
        out.append(
            "The daemon's RSS step by step: a fresh `python` importing the daemon's modules in"
            " this order, then doing what its drivers do at start (`run:` rows), RSS after each"
            " step; last, the real daemon, idle. Above the floor, imports add"
            f" {_mb(last_import - floor_rss)} MB (the most: {biggest[0]},"
            f" +{_mb(biggest[1])} MB), the start-up steps {_mb(prev - last_import)} MB and"
            f" the running daemon differs from all that by {running / 1024:+.1f} MB"
            + (
                " (it is below: idle, it has not imported gRPC, protobuf and the download"
                " stack, which these steps load, nor made their start-up calls)"
                if running < 0
                else ""
            )
            + f". Of the idle daemon's"
            f" {_mb(daemon.rss_kb)} MB, {_mb(daemon.file_kb)} MB are file-backed (the floor:"
            f" {_mb(r.idle.floor.file_kb)}) and {_mb(daemon.anon_kb)} MB anonymous (the floor:"
            f" {_mb(r.idle.floor.anon_kb)}); {daemon.threads} threads.\n\n"
        )
        out.append(_table(("step", "RSS MB", "added MB", "modules added"), rows))
        out.append(_mappings(r))
        source = r.imports_from_source
        cached = [st for st in steps if not st.label.startswith("run:")]
        compiled = [st for st in source if not st.label.startswith("run:")]
        if not compiled:
            out.append(
                "\nThis run did not give its processes a bytecode cache (--smoke): upparat's"
                " modules were compiled from source at every start, which costs RSS.\n"
            )
        elif cached and len(compiled) == len(cached):
            extra = compiled[-1].rss_kb - cached[-1].rss_kb
            out.append(
                "\nAll processes here read compiled bytecode, as an installed package does."
                " This environment sets PYTHONDONTWRITEBYTECODE=1 and the checkout has no"
                " `__pycache__`, so without the harness's cache (PYTHONPYCACHEPREFIX in its"
                " work directory) the daemon would compile upparat at every start: its imports"
                f" then end at {_mb(compiled[-1].rss_kb)} MB instead of {_mb(cached[-1].rss_kb)}"
                f" MB ({extra / 1024:+.1f} MB: the compiler's memory stays with the process).\n"
            )

    # --- idle CPU
    p = r.idle.daemon
    if p.wakeups_by_thread:
        out.append(
            f"\n### Idle CPU\n\nThe idle daemon used {p.cpu_seconds:.2f} CPU s in"
            f" {r.idle.window_seconds:.0f} s and woke {p.wakeups / r.idle.window_seconds:.1f}"
            f" times a second, most in threads {_top(p.wakeups_by_thread, max(1, p.wakeups))}"
            + (
                " (`event_engine`, `grpc_global_tim` and `lifeguard` are the gRPC core's threads)."
                if any(name in _GRPC_THREADS for name, _ in p.wakeups_by_thread)
                else " (no gRPC thread: the idle daemon has not loaded gRPC)."
            )
            + (
                f" 1.12 woke {r.idle.legacy.wakeups / r.idle.window_seconds:.1f} times a second."
                if r.idle.legacy
                else ""
            )
            + "\n"
        )

    # --- latency
    out.append(f"\n### Latency ({_headline(r, 'T7 latency vs 1.12')})\n\n")
    ours_lat = _median([x.done_seconds for x in r.latency.runs])
    if ours_lat is not None and r.latency.timeline:
        steps_ = r.latency.timeline
        hooks = sum(1 for st in steps_ if st.what.endswith("hook started"))
        to_hook = sum(
            b.at - a.at for a, b in itertools.pairwise(steps_) if b.what.endswith("hook started")
        )
        to_cloud = sum(
            b.at - a.at
            for a, b in itertools.pairwise(steps_)
            if b.what.startswith("cloud received")
        )
        overhead = r.hooks.grpc.median - r.hooks.subprocess.median
        out.append(
            f"upparat's median job took {_ms(ours_lat)} ms and called {hooks} hooks. In its"
            f" timeline (below), the gaps that end with a hook starting add up to {_ms(to_hook)}"
            f" ms and those that end with the cloud receiving an update to {_ms(to_cloud)} ms."
            f" One hook call through the hook server costs {_ms(r.hooks.grpc.median)} ms, of"
            f" which {_ms(overhead)} ms are the hook server's overhead over a bare fork/exec"
            f" (section 6): {hooks} calls x {_ms(overhead)} ms = {_ms(hooks * overhead)} ms of"
            " the job. Every phase change is an update the daemon sends and whose answer it"
            " waits for before the next hook (the emulator's round trip), and the journal is"
            f" written with fsync before the hooks that may restart. The daemon used"
            f" {r.latency.daemon_cpu_per_job * 1000:.0f} ms of CPU per job.\n"
        )
    legacy = r.latency_legacy
    if ours_lat is not None and legacy is not None and legacy.timeline and r.latency.timeline:

        def first_hook(steps: Sequence[Step]) -> float:
            return next((st.at for st in steps if st.what.endswith("hook started")), 0.0)

        legacy_hooks = sum(1 for st in legacy.timeline if st.what.endswith("hook started"))
        out.append(
            f"\nupparat 1.12 started its first hook {_ms(first_hook(legacy.timeline))} ms after"
            f" CreateJob (upparat: {_ms(first_hook(r.latency.timeline))} ms), then ran"
            f" {legacy_hooks} hooks as plain fork/exec from a thread"
            f" (~{_ms(r.hooks.subprocess.median)} ms each) and published its updates without"
            " waiting for any answer, so its later phases follow each other within a few"
            " milliseconds.\n"
        )
    profile = _find_profile(r, "latency")
    if profile is not None:
        out.append(
            "\nIn the daemon's profile over the latency jobs the busiest of its own functions"
            f" are {_top(profile.own, profile.samples, 4)}.\n"
        )
        out.append(_profile(profile))

    def timeline(res: LatencyResult | None, title: str) -> None:
        if res is None or not res.timeline:
            return
        rows: list[list[str]] = []
        prev = 0.0
        repeated = 0
        for n, step in enumerate(res.timeline):
            following = res.timeline[n + 1] if n + 1 < len(res.timeline) else None
            if following is not None and following.what == step.what:
                repeated += 1
                continue
            what = step.what if not repeated else f"{step.what} (x {repeated + 1}; the last one)"
            rows.append([_ms(step.at), "+" + _ms(step.at - prev), what])
            prev = step.at
            repeated = 0
        out.append(f"\nTimeline, {title} (the median run):\n\n")
        out.append(_table(("ms after CreateJob", "gap ms", "event"), rows))

    timeline(r.latency, "upparat, default")
    timeline(r.latency_112_hooks, "upparat, verify_soft_restart = false")
    timeline(r.latency_legacy, "upparat 1.12 (it publishes updates without waiting for answers)")

    # --- hooks
    out.append(
        f"\n### Hook overhead ({_headline(r, 'T8 hook overhead over a bare fork/exec')})\n\n"
    )
    profile = _find_profile(r, "hookserver")
    if profile is not None:
        out.append(
            f"In the hook server's profile the busiest functions of its own are"
            f" {_top(profile.own, profile.samples)}.\n"
        )
        out.append(_profile(profile))
    return "".join(x if x.endswith("\n") else x + "\n" for x in out)


def _mappings(r: Results) -> str:
    """Where the idle daemon's RSS above the floor's lies, by kind of mapping."""
    daemon, floor = dict(r.idle.daemon.mappings), dict(r.idle.floor.mappings)
    if not daemon or not floor:
        return ""
    deltas = sorted(
        ((kind, daemon.get(kind, 0) - floor.get(kind, 0)) for kind in daemon.keys() | floor.keys()),
        key=lambda kv: -abs(kv[1]),
    )
    shown = [(k, d) for k, d in deltas if abs(d) >= 256][:8]
    rest = sum(d for _, d in deltas) - sum(d for _, d in shown)
    rows = [
        [f"`{kind}`", _mb(floor.get(kind, 0)), _mb(daemon.get(kind, 0)), f"{d / 1024:+.1f}"]
        for kind, d in shown
    ]
    rows.append(["everything else", "", "", f"{rest / 1024:+.1f}"])
    return (
        "\nThe same difference by kind of mapping (/proc/<pid>/smaps of the idle daemon and"
        " of the floor process; `other anonymous` is mostly Python's object arenas, `heap`"
        " the main thread's malloc; `file` rows are shared libraries and their data):\n\n"
        + _table(("mapping", "floor MB", "daemon MB", "difference MB"), rows)
    )


def _profile(p: Profile) -> str:
    total = p.samples
    if not total:
        return f"\nProfile of {p.what}: py-spy recorded no samples.\n"
    threads = _table(
        ("thread", "share of busy samples"),
        [[f"`{name}`", f"{n / total:.0%}"] for name, n in p.threads],
    )
    leaves = _table(
        ("innermost Python function (time in C is charged to it)", "share"),
        [[f"`{frame}`", f"{n / total:.0%}"] for frame, n in p.leaves],
    )
    own = _table(
        ("innermost upparat function on the stack (library time below it included)", "share"),
        [[f"`{frame}`", f"{n / total:.0%}"] for frame, n in p.own],
    )
    return (
        f"\nProfile of {p.what} (py-spy, {p.rate} Hz, samples of busy threads only):"
        f" {total} samples = {total / p.rate:.2f} s of thread time.\n\n{threads}\n{own}\n{leaves}"
    )


def _method(r: Results, mb: float) -> str:
    return f"""
## How it is measured

- Each daemon is a real process with its own mosquitto broker and AWS IoT Jobs emulator
  (`upparat.devstack.Stack`), upparat with its shell hook server; upparat 1.12 runs as its
  console script from `bench/.venv112` with an INI file in its own format, plain MQTT (1.12
  uses TLS only when cafile/certfile/keyfile are set), on the same emulator code.
- upparat 1.12 is `pip install upparat==1.12 'paho-mqtt<2'` (its MQTT class overrides
  paho 1.x internals; it declares only `paho-mqtt>=1.4.0`).
- Every Python process reads compiled bytecode from a cache in the work directory
  (PYTHONPYCACHEPREFIX, filled by a warm-up job before anything is measured), as an
  installed package would; 1.12 reads the .pyc files pip wrote into its venv.
- Config: the product defaults where they matter (`progress_interval = 10`, keepalive 60,
  log level INFO for both daemons).
- Hook scripts are bash with builtins only (no fork inside) and log `$EPOCHREALTIME` when they
  start; "install hook called" is that timestamp. The job's `meta` is its version; the install
  script records it so the version check after a soft restart passes.
- Download: one {mb:.0f} MB file served by a separate process with sendfile(2) from the page
  cache (Range, ETag), on loopback. `os.sync()` before every timed run. The download folder
  is on the same file system as curl's FILE and dd's output.
- "Progress updates while downloading" counts accepted UpdateJobExecution requests after the
  `download_start` update and before the `installation_start` update; allowed are
  floor(seconds / 10).
- Latency: {len(r.latency.runs)} jobs per daemon, {r.latency.pause:g} s apart, so each starts
  from an idle daemon.
- A value shown as "-" or "{NOT_MEASURED}" was not measured in this run, with the reason beside it.
"""


# --- issue 16: waiting is free, jobs are quick -------------------------------------------------

ISSUE16_LABELS = (
    "I1 daemon idle wakeups/s",
    "I2 hook server idle wakeups/s",
    "I3 daemon idle CPU s/min",
    "I4 hook server idle CPU s/min",
    "I4b a job waiting for its maintenance window: CPU s/min, daemon + hook server",
    "I5 daemon idle RSS above the floor",
    "I6 daemon + hook server idle PSS summed",
    "I7 trivial job latency, median",
    "I8 daemon CPU per GB downloaded",
    "I8b the whole job's CPU per GB of this bundle (job created → install script)",
    "I9 download time vs the physical limit",
    "I9b job created → install script (I9 plus the hooks before and root's check)",
)


def _rate(p: ProcIdle | None) -> float | None:
    if p is None:
        return None
    if p.detail is not None and p.detail.windows:
        return p.detail.rate
    return None


def _cpu_min(p: ProcIdle | None, window: float) -> float | None:
    if p is None:
        return None
    if p.detail is not None and p.detail.cpu_per_minute:
        return p.detail.cpu
    return p.cpu_seconds * 60.0 / window


def _bound_by_threads(p: ProcIdle | None, n: int = 3) -> str:
    if p is None or p.detail is None:
        return ""
    parts = [
        f"{who} {rate:.2f}/s" if rate < 0.1 else f"{who} {rate:.1f}/s"
        for who, rate in grouped(p.detail.threads)[:n]
        if rate >= 0.01
    ]
    return ", ".join(parts)


def _woke(p: ProcIdle | None, n: int = 3) -> str:
    """The threads that woke (I1-I4's bound), or that none did."""
    if p is None or p.detail is None:
        return ""
    return _bound_by_threads(p, n) or "no thread woke 0.01 times a second or more"


def _per_wakeup(p: ProcIdle | None, window: float) -> str:
    """The CPU each wakeup cost, where both were measured."""
    rate, cpu = _rate(p), _cpu_min(p, window)
    if not rate or cpu is None:
        return ""
    return f", {cpu / (rate * 60) * 1000:.1f} ms of CPU each"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


NO_TARGET = "no target"
"""The verdict of a row shown for what it explains (I9b), not judged."""


def _verdict16(value: float | None, goal: float | None) -> str:
    if value is None or goal is None:
        return NOT_MEASURED
    return "met" if value <= goal else "**missed**"


@attrs.frozen(kw_only=True)
class _Run16:
    """What one table of issue 16 needs (all cores, or the product on one core)."""

    idle: IdleResult
    latency: LatencyResult
    latency_legacy: LatencyResult | None
    downloads: tuple[JobRun, ...]
    legacy_downloads: tuple[JobRun, ...]
    size: int
    curl_null: float
    curl_cpu: float
    durable_write: float
    sha256: float
    sha256_cpu: float | None
    cores: int
    """The cores the daemon had."""
    waiting: WaitResult | None = None
    waiting_legacy: WaitResult | None = None


def _runs16(r: Results) -> list[tuple[str, _Run16]]:
    d = r.download
    sha_cpu = d.hashlib_cpu.median if d.hashlib_cpu.samples else None
    found = [
        (
            "all cores",
            _Run16(
                idle=r.idle,
                latency=r.latency,
                latency_legacy=r.latency_legacy,
                downloads=d.upparat,
                legacy_downloads=d.legacy,
                size=d.size,
                curl_null=d.curl_null.median,
                curl_cpu=d.curl_cpu.median,
                durable_write=d.dd_direct.median,
                sha256=d.hashlib.median,
                sha256_cpu=sha_cpu,
                cores=r.env.cores,
                waiting=r.waiting,
                waiting_legacy=r.waiting_legacy,
            ),
        )
    ]
    p = r.pinned
    if p is not None:
        found.append(
            (
                f"daemon and hook server on one core (cpu {','.join(map(str, p.cpus))})",
                _Run16(
                    idle=p.idle,
                    latency=p.latency,
                    latency_legacy=p.latency_legacy,
                    downloads=p.upparat,
                    legacy_downloads=p.legacy,
                    size=d.size,
                    curl_null=p.curl_null.median,
                    curl_cpu=p.curl_cpu.median,
                    durable_write=d.dd_direct.median,
                    sha256=d.hashlib.median,
                    sha256_cpu=sha_cpu,
                    cores=len(p.cpus),
                ),
            )
        )
    return found


def _rows16(run: _Run16, r: Results) -> list[list[str]]:
    i = run.idle
    w = i.window_seconds
    rows: list[list[str]] = []
    legacy_idle = i.legacy

    def row(
        label: str,
        goal_text: str,
        ours: float | None,
        legacy: str,
        floor: str,
        goal: float | None,
        bound: str,
        digits: int = 1,
    ) -> None:
        rows.append(
            [label, goal_text, _num(ours, digits), legacy, floor, _verdict16(ours, goal), bound]
        )

    # wakeups
    row(
        "I1 daemon idle wakeups/s",
        "≤ 1",
        _rate(i.daemon),
        _num(_rate(legacy_idle)),
        _num(_rate(i.floor)),
        1.0,
        _woke(i.daemon),
        2,
    )
    row(
        "I2 hook server idle wakeups/s",
        "≤ 1",
        _rate(i.hookserver),
        "(no hook server)",
        _num(_rate(i.floor)),
        1.0,
        _woke(i.hookserver),
        2,
    )
    row(
        "I3 daemon idle CPU s/min",
        "≤ 0.01",
        _cpu_min(i.daemon, w),
        _num(_cpu_min(legacy_idle, w), 3),
        _num(_cpu_min(i.floor, w), 3),
        0.01,
        "the wakeups of I1: " + _woke(i.daemon, 2) + _per_wakeup(i.daemon, w),
        3,
    )
    row(
        "I4 hook server idle CPU s/min",
        "≤ 0.01",
        _cpu_min(i.hookserver, w),
        "(no hook server)",
        _num(_cpu_min(i.floor, w), 3),
        0.01,
        "the wakeups of I2: " + _woke(i.hookserver, 2),
        3,
    )
    if run.waiting is not None:
        rows.append(_waiting_row(run.waiting, run.waiting_legacy))
    above = (i.daemon.rss_kb - i.floor.rss_kb) / 1024
    rows.append(
        [
            "I5 daemon idle RSS above the floor",
            "≤ 3 MB",
            f"{above:.1f} MB ({_mb(i.daemon.rss_kb)} vs {_mb(i.floor.rss_kb)})",
            "-" if legacy_idle is None else f"1.12's RSS: {_mb(legacy_idle.rss_kb)} MB",
            f"{_mb(i.floor.rss_kb)} MB",
            _verdict16(above, 3.0),
            (
                "its largest mappings: "
                + ", ".join(f"{kind} {_mb(kb)} MB" for kind, kb in i.daemon.mappings[:3])
                + " (section 3)"
            )
            if above <= 3
            else "imports and start-up steps (section 3 and `What dominates`)"
            + (" and gRPC core, mapped in the idle daemon" if _holds_grpc(i.daemon) else ""),
        ]
    )
    if i.hookserver is not None:
        pss = (i.daemon.pss_kb + i.hookserver.pss_kb) / 1024
        rss = (i.daemon.rss_kb + i.hookserver.rss_kb) / 1024
        goal = None if legacy_idle is None else legacy_idle.rss_kb / 1024 + 20
        rows.append(
            [
                "I6 daemon + hook server idle PSS summed",
                "≤ 1.12's RSS + 20 MB" + ("" if goal is None else f" = {goal:.1f} MB"),
                f"{pss:.1f} MB (RSS summed {rss:.1f} MB)",
                "-"
                if legacy_idle is None
                else f"RSS {_mb(legacy_idle.rss_kb)}, PSS {_mb(legacy_idle.pss_kb)} MB",
                f"PSS {_mb(i.floor.pss_kb)} MB",
                _verdict16(pss, goal),
                _pss_bound(i),
            ]
        )
    lat = _median([x.done_seconds for x in run.latency.runs if x.status == "SUCCEEDED"])
    lat_legacy = (
        _median([x.done_seconds for x in run.latency_legacy.runs if x.status == "SUCCEEDED"])
        if run.latency_legacy
        else None
    )
    rows.append(
        [
            "I7 trivial job latency, median",
            "≤ 60 ms",
            f"{_ms(lat)} ms",
            f"{_ms(lat_legacy)} ms",
            "",
            _verdict16(lat, 0.060),
            _latency_bound(run.latency, r),
        ]
    )
    gb = run.size / 1e9
    cpu = _download_cpu_per_gb(run.downloads, run.size)
    legacy_cpu = _download_cpu_per_gb(run.legacy_downloads, run.size)
    limit_cpu = None if run.sha256_cpu is None else 1.1 * (run.curl_cpu / gb + run.sha256_cpu / gb)
    parts = f"curl {run.curl_cpu / gb:.2f} s + sha256 " + (
        "-" if run.sha256_cpu is None else f"{run.sha256_cpu / gb:.2f} s"
    )
    rows.append(
        [
            "I8 daemon CPU per GB downloaded",
            "≤ 1.1 x (curl + sha256) per GB"
            + ("" if limit_cpu is None else f" = {limit_cpu:.2f} s"),
            f"{_num(cpu, 2)} s",
            f"{_num(legacy_cpu, 2)} s",
            parts,
            _verdict16(cpu, limit_cpu),
            "; ".join(
                part
                for part in (
                    ""
                    if cpu is None or limit_cpu is None or cpu <= limit_cpu
                    else "what curl -o /dev/null and a bare sha256 do not: writing the file"
                    " (O_DIRECT: the disk's DMA, no copy; the fdatasyncs), the hand-over of each"
                    " buffer between the three threads, the progress updates (profile in"
                    " `What dominates`)",
                    _threads_per_gb(run.downloads, run.size),
                )
                if part
            ),
        ]
    )
    whole = _cpu_per_gb(run.downloads, run.size)
    legacy_whole = _cpu_per_gb(run.legacy_downloads, run.size)
    rows.append(
        [
            "I8b the whole job's CPU per GB of this bundle (job created → install script)",
            "none: I8 plus what a job costs once, whatever its size",
            f"{_num(whole, 2)} s",
            f"{_num(legacy_whole, 2)} s",
            parts,
            NO_TARGET,
            _fixed_costs(run, r),
        ]
    )
    limits = {
        "the network (curl -o /dev/null)": run.curl_null,
        "the durable disk write (dd oflag=direct)": run.durable_write,
        "sha256 (hashlib, one core)": run.sha256,
    }
    which, limit = max(limits.items(), key=lambda kv: kv[1])
    ours = _median(download_windows(run.downloads))
    legacy_dl = _median(download_windows(run.legacy_downloads))
    ratio = None if ours is None else ours / limit
    rows.append(
        [
            "I9 download time vs the physical limit",
            "≤ 1.15 x the slowest of network, durable write, sha256",
            "-" if ratio is None else f"{ratio:.2f} x ({_s(ours)} s)",
            "-" if legacy_dl is None else f"{legacy_dl / limit:.2f} x ({_s(legacy_dl)} s)",
            f"{_s(limit)} s: {which}",
            _verdict16(ratio, 1.15),
            "; ".join(
                part
                for part in (
                    ""
                    if ratio is None or ratio <= 1.15
                    else f"{which} ({_s(limit)} s) is the limit; " + _download_bound(run, limit),
                    _runs_spread(run.downloads, limit),
                    _threads_text(run.downloads),
                )
                if part
            ),
        ]
    )
    whole = _median(download_seconds(run.downloads))
    legacy_whole = _median(download_seconds(run.legacy_downloads))
    rows.append(
        [
            "I9b job created → install script (I9 plus the hooks before and root's check)",
            "none: I9's download plus the hooks before it and root's check after it",
            "-" if whole is None else f"{whole / limit:.2f} x ({_s(whole)} s)",
            "-" if legacy_whole is None else f"{legacy_whole / limit:.2f} x ({_s(legacy_whole)} s)",
            f"{_s(limit)} s: {which}",
            NO_TARGET,
            _download_split(run, whole, limit),
        ]
    )
    return rows


def _waiting_row(w: WaitResult, legacy: WaitResult | None) -> list[str]:
    """A job waiting for its maintenance window, side by side with 1.12: not idle (a job
    runs), so the idle target is not its verdict; what one call costs is its text."""

    def per_call(cpu: float | None, calls: int) -> str:
        return "-" if cpu is None or not calls else f"{cpu / calls:.3f} s"

    return [
        "I4b a job waiting for its maintenance window: CPU s/min, daemon + hook server",
        "none (the idle rows' ≤ 0.01 is for no job)",
        f"{w.cpu_per_minute:.3f}",
        "-" if legacy is None else f"{legacy.cpu_per_minute:.3f}",
        "",
        NO_TARGET,
        f'the download hook said "not yet" (exit 3) {w.calls} times in {w.window:.0f} s'
        f" (retry_interval {w.interval:g} s; 60 s by default; CPU read in clock ticks of"
        f" 10 ms, so ± {0.01 / max(1, w.calls):.3f} s per call). Per call: the daemon"
        f" {per_call(w.daemon_cpu, w.calls)} (its job worker stays through the wait, with no gRPC"
        f" channel open between calls, and makes the call), the hook server"
        f" {per_call(w.hookserver_cpu, w.calls)} (the script, and building its gRPC server again:"
        " it drops it idle_release after the call, but keeps gRPC loaded and does not"
        " re-execute while a retry is expected, [hookserver] retry_hold)"
        + (
            ""
            if legacy is None
            else f"; 1.12 {per_call(legacy.daemon_cpu, legacy.calls)} (a thread runs the script)"
        ),
    ]


def _runs_spread(runs: Sequence[JobRun], limit: float) -> str:
    """Each run's download against the limit, in the order they ran: the median is the
    row's figure; a busy moment of this shared machine shows as one run far from the rest."""
    shown = [f"{w / limit:.2f}" for w in download_windows(runs) if w is not None]
    if len(shown) < 2:
        return ""
    return f"each of the {len(shown)} runs: {', '.join(shown)} x"


def download_windows(runs: Sequence[JobRun]) -> list[float | None]:
    """The daemon's download as the cloud saw it (`traffic`'s window: download_start to
    installation_start, which it sends once the file is received and verified) of each
    run that succeeded."""
    return [traffic(r).download_window if r.status == "SUCCEEDED" else None for r in runs]


def _fixed_costs(run: _Run16, r: Results) -> str:
    """What the whole job spent outside its download (I8b minus I8), and what a job that
    downloads nearly nothing costs after the same quiet spell, for comparison."""
    outside = [
        job.daemon_cpu - cpu
        for job in run.downloads
        if job.daemon_cpu is not None and (cpu := download_cpu(job)) is not None
    ]
    if not outside:
        return "the download window's CPU was not measured"
    text = (
        f"{statistics.median(outside):.2f} s of CPU per job outside the download window (median"
        " of the runs): starting the job worker, a Python that imports gRPC and the download"
        " driver (every download job here comes after a quiet spell, as a device's do), the"
        " hook calls before and after the download, and MQTT. It does not grow with the"
        " bundle: per GB it is half of this for a 1 GB bundle, a fifth for 2.5 GB"
    )
    cold = r.latency_cold
    if cold is not None and cold.daemon_cpu_per_job:
        text += (
            f"; the trivial job after the same quiet spell costs {cold.daemon_cpu_per_job:.2f} s"
            " to its end (section 5)"
        )
    return text


_THREAD_ROLES = (
    (HASH_THREAD, "hashing"),
    (THREADS + "N", "receiving"),  # download-<id>, its digits made N by the sampler
    (WRITE_THREAD, "writing"),
)
"""The download's threads by their kernel names, slowest first."""


@attrs.frozen(kw_only=True)
class _ThreadSplit:
    """One download thread's time, the median of the runs (schedstat, read every 10 ms)."""

    ran: float
    waited: float
    """Runnable, waiting for a core."""
    idle: float
    """Neither: waiting for work (its next buffer, the socket, the disk); its life is read
    to within 0.02 s (the sampler's interval at each end), so this is too."""


def _thread_splits(runs: Sequence[JobRun]) -> dict[str, _ThreadSplit]:
    found: dict[str, list[tuple[float, float, float]]] = {}
    for r in runs:
        for name, role in _THREAD_ROLES:
            times = [t for t in r.download_threads if t.name == name]
            if len(times) != 1:
                continue  # not sampled, or two downloads in one job: not this row's case
            t = times[0]
            idle = max(0.0, (t.seen_to - t.seen_from) - t.ran - t.waited)
            found.setdefault(role, []).append((t.ran, t.waited, idle))
    return {
        role: _ThreadSplit(
            ran=statistics.median(x[0] for x in rows),
            waited=statistics.median(x[1] for x in rows),
            idle=statistics.median(x[2] for x in rows),
        )
        for role, rows in found.items()
    }


def _threads_per_gb(runs: Sequence[JobRun], size: int) -> str:
    """The download threads' CPU per GB (I8's bound), largest first."""
    splits = _thread_splits(runs)
    if not splits:
        return ""
    gb = size / 1e9
    parts = [f"{role} {t.ran / gb:.2f} s" for role, t in splits.items()]
    return "per GB, its threads ran: " + ", ".join(parts) + " (medians, schedstat)"


def _threads_text(runs: Sequence[JobRun]) -> str:
    """What each download thread did (median of the runs), slowest first."""
    splits = _thread_splits(runs)
    if not splits:
        return ""
    parts = [
        f"{role} ran {_s(t.ran)} s, waited {_s(t.waited)} s for a core and {_s(t.idle)} s for work"
        for role, t in splits.items()
    ]
    return "the download's threads (median of the runs, from schedstat): " + "; ".join(parts)


def _download_bound(run: _Run16, limit: float) -> str:
    """Why the daemon's download took longer than the limit, from the run's own figures:
    how many cores its threads kept busy during it, and, where that is all it had, the
    least time the work curl and sha256 need takes on those cores."""
    busy = [
        cpu / w
        for r, w in zip(run.downloads, download_windows(run.downloads), strict=True)
        if (cpu := download_cpu(r)) is not None and w
    ]
    if not busy:
        return "the daemon's CPU was not measured"
    cores = statistics.median(busy)
    text = (
        f"the daemon kept {cores:.2f} of its {run.cores} core(s) busy on average while it"
        " downloaded (receiving, sha256 and writing in three threads, median of the runs)"
    )
    if cores < 0.9 * run.cores or run.sha256_cpu is None:
        return text + (
            ": not all of them, but on this machine the origin sending the file and the"
            " loopback network's kernel work share those cores (on a device they are"
            " remote)" + _hash_thread_text(run)
        )
    floor = (run.curl_cpu + run.sha256_cpu) / run.cores
    ours = _median(download_windows(run.downloads))
    return text + (
        f": its CPU is the bound. The three limits run side by side only on cores to spare;"
        f" on {run.cores} core(s) receiving the bytes as curl does ({_s(run.curl_cpu)} s of"
        f" CPU) and hashing them as hashlib does reading the file ({_s(run.sha256_cpu)} s)"
        f" take {_s(floor)} s of the core(s), without any writing"
        + ("" if ours is None else f": the daemon's {_s(ours)} s is {ours / floor:.2f} x that")
        + _threads_ran(run, limit)
    )


def _threads_ran(run: _Run16, limit: float) -> str:
    splits = _thread_splits(run.downloads)
    if not splits:
        return ""
    ran = sum(t.ran for t in splits.values())
    least = ran / run.cores
    return (
        f". Its download threads alone ran {_s(ran)} s (medians, summed): on {run.cores}"
        f" core(s) no less than {_s(least)} s, {least / limit:.2f} x the limit"
    )


def _hash_thread_text(run: _Run16) -> str:
    own = (
        ""
        if run.sha256_cpu is None
        else f" (hashlib's CPU for the file, reading it included: {_s(run.sha256_cpu)} s)"
    )
    return (
        "; the hash thread, the slowest of the three, keeps hashlib's pace only while it has a"
        f" core and its next buffer{own}"
        + ("" if _thread_splits(run.downloads) else " (not measured per thread in this run)")
    )


_GRPC_THREADS = ("event_engine", "grpc_global_tim", "lifeguard")


def _holds_grpc(p: ProcIdle) -> bool:
    return any("cygrpc" in name for name, _ in p.mappings)


def _pss_bound(i: IdleResult) -> str:
    """What keeps the idle pair above its goal, from their mappings."""
    holding = [
        name
        for name, p in (("the daemon", i.daemon), ("the hook server", i.hookserver))
        if p is not None and _holds_grpc(p)
    ]
    if holding:
        return (
            " and ".join(holding) + " still held gRPC core (cygrpc mapped) when sampled: the"
            " hook server gives it back [hookserver] idle_release after its last connection,"
            " the daemon holds none before its first job"
        )
    return (
        "Python's own heap and libraries in each of the two processes (no gRPC mapped in"
        " either); shared library pages are counted once"
    )


def _download_split(run: _Run16, ours: float | None, limit: float) -> str:
    """Where the time to the install script goes, from the cloud's timestamps: before the
    download (the version and download hooks; after a quiet spell the hook server builds
    its gRPC server again), the daemon's download, and the hook server's check of the file
    before Install (hookservers/shell/verify.py)."""
    parts: list[tuple[float, float, float]] = []
    for r in run.downloads:
        start, end = _update_at(r, "download_start"), _update_at(r, "installation_start")
        if r.status != "SUCCEEDED" or start is None or end is None or r.install_at is None:
            continue
        parts.append((start - r.created_at, end - start, r.install_at - end))
    if ours is None or not parts:
        return "the rest is the daemon's"
    before, window, after = (statistics.median(p[i] for p in parts) for i in range(3))
    return (
        f"the daemon's download itself (download_start → installation_start) took {_s(window)} s"
        f" ({window / limit:.2f} x); before it, {_s(before)} s (job created → download_start:"
        " the version and download hooks, and after a quiet spell the hook server building"
        f" its gRPC server again); after it, {_s(after)} s (installation_start → install"
        " script) are the hook server's check of the file: it takes the daemon's file over"
        " (a rename, downloads and state_dir being on one file system here) and reads it once"
        " for its sha256, the guarantee that root installs bytes the daemon can no longer"
        " change; it reads them from the disk, the daemon having written them around the page"
        " cache (O_DIRECT), as a device whose bundle is larger than its free RAM does anyway"
        " (medians of the runs)"
    )


def _alone_row(r: Results) -> list[str]:
    label = "I2b hook server idle wakeups/s, no daemon connected"
    a = r.hookserver_alone
    if a is None:
        return [label, "≤ 1", "-", "(no hook server)", "", NOT_MEASURED, ""]
    verdict = _verdict16(a.rate, 1.0)
    who = ", ".join(f"{w} {x:.1f}/s" for w, x in grouped(a.threads)[:3] if x >= 0.05)
    return [
        label,
        "≤ 1",
        f"{a.rate:.1f} (CPU {a.cpu:.3f} s/min)",
        "(no hook server)",
        "",
        verdict,
        who if verdict != "met" else "",
    ]


def _latency_bound(res: LatencyResult, r: Results) -> str:
    hooks = sum(1 for s in res.timeline if s.what.endswith("hook started"))
    updates = sum(1 for s in res.timeline if s.what.startswith("cloud received"))
    per_call = r.hooks.grpc.median
    return (
        f"{hooks} hook calls x {_ms(per_call)} ms (a GetVersion on all cores, section 6) and"
        f" {updates} cloud round trips, one per phase (breakdown below)"
    )


def _issue16(r: Results) -> str:
    out = [
        "## Issue 16: waiting is free, jobs are quick\n\n"
        "Each row measured in this run, side by side with upparat 1.12 and the floor"
        f' (`python -c "{FLOOR_IMPORTS}"`) or the physical limit. Idle figures are the mean'
        f" of {r.idle.windows} windows of {r.idle.window_seconds / r.idle.windows:.0f} s"
        " (context switches of every thread, CPU from schedstat), taken"
        f" {r.idle.settle_seconds:.0f} s after the start; `what bounds it` names the threads"
        " that wake (evidence per thread below) or the resource that sets the limit.\n"
    ]
    header = (
        "what",
        "target",
        "upparat",
        "upparat 1.12",
        "floor / limit",
        "verdict",
        "what bounds it",
    )
    for n, (title, run) in enumerate(_runs16(r)):
        out.append(f"\n### {title}\n\n")
        rows = _rows16(run, r)
        if n == 0:
            rows.insert(2, _alone_row(r))
        out.append(_table(header, rows))
    if r.pinned is None:
        out.append("\nOne core: not measured in this run.\n")
    else:
        out.append(
            "\nOne core: the hook server and the daemon were restarted with the harness's"
            " thread on one CPU (children inherit the mask, as under `taskset -c`), so gRPC"
            " sized its thread pools for one core; 1.12's threads were moved there"
            " (`taskset -a -p`). The emulator, broker and origin stay on all cores: on a"
            " device they are remote. Durable write and sha256 are the all-core run's"
            " (single-threaded); curl was run under `taskset -c`, three times (the median).\n"
        )
    out.append(_evidence(r))
    out.append(_breakdown(r))
    return "".join(out)


def _evidence(r: Results) -> str:
    rows = []
    for label, p in (
        ("daemon", r.idle.daemon),
        ("hook server", r.idle.hookserver),
        ("1.12", r.idle.legacy),
    ):
        if p is None or p.detail is None:
            continue
        for t in p.detail.threads:
            if t.rate < 0.05 and not t.syscall_rate:
                continue
            rows.append(
                [
                    label,
                    t.python_name or t.comm,
                    t.comm,
                    t.where or "-",
                    f"{t.rate:.1f}",
                    t.syscall or "-",
                    "-" if t.syscall_rate is None else f"{t.syscall_rate:.1f}",
                    owner(t),
                ]
            )
    skipped = {
        p.detail.evidence_skipped for p in (r.idle.daemon, r.idle.hookserver) if p and p.detail
    }
    notes = "; ".join(s for s in skipped if s)
    return (
        "\n### Idle wakeups per thread (all cores)\n\n"
        "Context switches per second of each thread (mean of the windows), the thread's"
        " Python name and the frame it waits in (`py-spy dump`), and its most frequent system"
        " call under `strace -f` in a separate window after the counted ones (strace's own"
        " attach adds a call or two per thread).\n\n"
        + _table(
            (
                "process",
                "thread",
                "comm",
                "waits in",
                "wakeups/s",
                "most frequent system call",
                "calls/s",
                "who",
            ),
            rows,
        )
        + (f"\nEvidence incomplete: {notes}.\n" if notes else "")
    )


def _breakdown(r: Results) -> str:
    h = r.hooks
    res = r.latency
    job = _median([x.done_seconds for x in res.runs if x.status == "SUCCEEDED"])
    hooks = sum(1 for s in res.timeline if s.what.endswith("hook started"))
    updates = sum(1 for s in res.timeline if s.what.startswith("cloud received"))
    if job is None or not h.info.samples:
        return "\n### Where a trivial job's time goes\n\nNot measured in this run.\n"
    info = h.info.median
    script = h.subprocess.median
    server = max(0.0, h.grpc.median - info - script)
    hook_total = hooks * h.grpc.median
    rest = job - hook_total
    rows = [
        [
            "gRPC round trip through the hook server (GetInfo: no script)",
            _ms(info),
            str(hooks),
            _ms(hooks * info),
        ],
        [
            "running the script in the hook server, over a bare fork/exec"
            " (GetVersion - GetInfo - subprocess.run)",
            _ms(server),
            str(hooks),
            _ms(hooks * server),
        ],
        ["the script itself (subprocess.run of it)", _ms(script), str(hooks), _ms(hooks * script)],
    ]
    if r.cloud_rtt is not None and r.cloud_rtt.samples:
        cloud = r.cloud_rtt.median
        rows.append(
            [
                "a cloud round trip (MQTT publish → emulator → answer; a probe client's"
                " GetPendingJobExecutions)",
                _ms(cloud),
                f"{updates} updates",
                _ms(updates * cloud),
            ]
        )
        rest -= updates * cloud
    steps = list(res.timeline)
    gaps = [
        b.at - a.at
        for a, b in itertools.pairwise(steps)
        if a.what.endswith("hook started") and b.what.endswith("hook started")
    ]
    daemon_per_hook: float | None = None
    if gaps:
        daemon_per_hook = max(0.0, statistics.median(gaps) - h.grpc.median)
        rows.append(
            [
                "the daemon's own share of each hook call: hook-to-hook gap with no cloud"
                f" update between ({_ms(statistics.median(gaps))} ms, median of {len(gaps)})"
                " minus a whole GetVersion from a bare client",
                _ms(daemon_per_hook) if daemon_per_hook > 0 else "≈ 0 (within the noise)",
                str(hooks),
                _ms(hooks * daemon_per_hook),
            ]
        )
        rest -= hooks * daemon_per_hook
    rows += [
        [
            "the rest: the daemon between events (journal fsync before the hooks that may"
            " restart, state steps, hook client and MQTT driver threads), the emulator's"
            " state-file write per update",
            "",
            "",
            _ms(rest),
        ],
        ["the median job", "", "", _ms(job)],
    ]
    return (
        "\n### Where a trivial job's time goes\n\n"
        "Per hook call from section 6 (the same hook server, the channel open), times the calls"
        " the median job made; what is left of the job is the cloud's and the daemon's (its"
        " timeline is in `What dominates`).\n\n"
        + _table(("part", "ms each", "count per job", "ms per job"), rows)
        + "\nThe hook-to-hook gap is the whole path of one call as the daemon makes it (the"
        " core's step, the hook client starting the call, the gRPC round trip, the hook"
        " server starting the script, the script, the answer back into the daemon's queue);"
        " a bare gRPC client doing the same GetVersion needs the `GetVersion via the shell"
        " hook server` time of section 6, so the difference is spent in the daemon's hook"
        " client and runtime. The rest includes the download of the 1 MB file (received,"
        " hashed and written; its fsync runs beside the install), the hook server's take-over and check"
        " of it before Install, the journal's fsync before the restart hook, and the removal of"
        " the download before the terminal update: guarantees, kept.\n"
    )
