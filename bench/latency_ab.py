"""Trivial-job latency of two or more source trees, side by side, jobs taking turns.

A quick check of a latency change against another commit, without the whole `make bench`:
each tree runs its own device (broker, emulator, hook server, daemon) with the rig of
`bench/upbench/rigs.py`, the trees' jobs alternate (a busy moment hits all of them), and
the medians of job created → SUCCEEDED and of each step of the timeline are printed.

    git archive main | tar -x -C /tmp/main-tree
    .venv/bin/python bench/latency_ab.py --jobs 20 main=/tmp/main-tree new=.

A tree is put first on the product processes' PYTHONPATH; they run from /tmp, so that
`python -m` does not pick up the current directory instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from upbench.measure import Step, _timeline
from upbench.origin import Origin
from upbench.rigs import JobRun, UpparatRig

from upparat.devstack.fileserver import make_bundle

SIZE = 1_000_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs per tree (default 20)")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between jobs")
    parser.add_argument("trees", nargs="+", metavar="NAME=TREE")
    args = parser.parse_args()
    trees = [spec.partition("=")[::2] for spec in args.trees]
    work = Path(tempfile.mkdtemp(prefix="latency-ab-", dir="/tmp"))
    os.chdir("/tmp")
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    (work / "origin").mkdir()
    sha = make_bundle(work / "origin" / "small.bin", SIZE, seed=8)
    origin = Origin(work / "origin")
    url = origin.url("small.bin")
    rigs: list[tuple[str, UpparatRig]] = []
    runs: dict[str, list[tuple[JobRun, tuple[Step, ...]]]] = {name: [] for name, _ in trees}
    try:
        for name, tree in trees:
            rig = UpparatRig(work / name)
            rig.stack.env["PYTHONPATH"] = str(Path(tree).resolve())
            rig.start()
            rigs.append((name, rig))

        def one(name: str, rig: UpparatRig, kind: str) -> None:
            job_id, version = rig.next_job(kind)
            run = rig.run_job(job_id, url=url, version=version, sha256=sha, size=SIZE, timeout=30)
            if kind == "lat":
                if run.status == "SUCCEEDED" and run.done_seconds is not None:
                    runs[name].append((run, _timeline(rig, run)))
                else:
                    print(f"{name}: {job_id} ended {run.status} {run.state}", file=sys.stderr)
            time.sleep(args.pause)

        for name, rig in rigs:
            one(name, rig, "warm")
        for i in range(args.jobs):
            for name, rig in rigs if i % 2 == 0 else rigs[::-1]:
                one(name, rig, "lat")
        report(runs)
    finally:
        for _, rig in rigs:
            rig.close()
        origin.close()
        shutil.rmtree(work, ignore_errors=True)
    print("load average at the end:", Path("/proc/loadavg").read_text().strip())
    return 0


def report(runs: dict[str, list[tuple[JobRun, tuple[Step, ...]]]]) -> None:
    for name, series in runs.items():
        ms = sorted((r.done_seconds or 0.0) * 1000 for r, _ in series)
        if not ms:
            print(f"{name}: no job succeeded")
            continue
        cpu = [(r.job_cpu or 0.0) * 1000 for r, _ in series]
        print(
            f"{name}: median {statistics.median(ms):.1f} ms over {len(ms)} jobs"
            f" (quartiles {ms[len(ms) // 4]:.1f}-{ms[3 * len(ms) // 4]:.1f}, best {ms[0]:.1f});"
            f" daemon CPU {statistics.median(cpu):.0f} ms per job"
        )
    names = [n for n, series in runs.items() if series]
    if not names:
        return
    first = runs[names[0]][0][1]
    print("\nmedian gap before each step, ms:")
    print("step".ljust(52) + "".join(n[:12].rjust(13) for n in names))
    for i, step in enumerate(first):
        row = step.what[:50].ljust(52)
        for name in names:
            gaps = [
                t[i].at - (t[i - 1].at if i else 0.0)
                for _, t in runs[name]
                if len(t) == len(first) and t[i].what == step.what
            ]
            row += f"{statistics.median(gaps) * 1000:13.1f}" if gaps else " " * 13
        print(row)


if __name__ == "__main__":
    raise SystemExit(main())
