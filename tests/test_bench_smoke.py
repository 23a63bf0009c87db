"""`bench/run.py --smoke`: the benchmark harness runs end to end and reports every row.

Asserts the structure of what it wrote and that the jobs it ran succeeded, never a
timing: the numbers belong in bench/RESULTS.md, not in assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The first column of every row RESULTS.md must have, measured or with a reason.
ROWS = (
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
    "I1 daemon idle wakeups/s",
    "I2 hook server idle wakeups/s",
    "I3 daemon idle CPU s/min",
    "I4 hook server idle CPU s/min",
    "I5 daemon idle RSS above the floor",
    "I6 daemon + hook server idle PSS summed",
    "I7 trivial job latency, median",
    "I8 daemon CPU per GB downloaded",
    "I8b the whole job's CPU per GB of this bundle (job created → install script)",
    "I9 download time vs the physical limit",
    "I9b job created → install script (I9 plus the hooks before and root's check)",
)
SECTIONS = (
    "## Machine and versions",
    "## Issue 16: waiting is free, jobs are quick",
    "## Targets",
    "## 1. Download inside a job",
    "## 2. Cloud traffic",
    "## 3. Memory",
    "## 4. CPU",
    "## 5. Latency",
    "## 6. Hook overhead",
    "## What dominates",
)


def _section(markdown: str, heading: str) -> str:
    """The text under the `## ` heading that starts with `heading`, up to the next one."""
    start = markdown.index("\n" + heading)
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end != -1 else len(markdown)]


def _rows(markdown: str) -> dict[str, list[str]]:
    """Table rows by their first cell (the first table wins for a repeated label)."""
    found: dict[str, list[str]] = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and line.endswith(" |"):
            cells = [c.strip() for c in line[2:-2].split(" | ")]
            found.setdefault(cells[0], cells[1:])
    return found


def test_smoke_run_reports_every_row(tmp_path: Path) -> None:
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--no-install"]
    done = subprocess.run(
        [*argv, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-6000:]

    markdown = (tmp_path / "RESULTS.md").read_text()
    for section in SECTIONS:
        assert section in markdown, section
    rows = _rows(markdown)
    missing = [label for label in ROWS if label not in rows]
    assert not missing, f"rows missing from RESULTS.md: {missing}"
    targets = _rows(_section(markdown, "## Targets"))
    for label in ROWS:
        if label.startswith("T"):
            verdict = targets[label][2]
            assert verdict in ("met", "**missed**", "not measured"), (label, verdict)
    # Both tables of issue 16 (all cores, then one core), each row with a verdict.
    issue16 = _section(markdown, "## Issue 16")
    for label in ROWS:
        if label.startswith("I"):
            assert issue16.count(f"| {label} |") == 2, label
            verdict = _rows(issue16)[label][4]
            unjudged = label.startswith(("I8b", "I9b"))
            judged = ("no target",) if unjudged else ("met", "**missed**")
            assert verdict in (*judged, "not measured"), (label, verdict)
    assert "| I2b hook server idle wakeups/s, no daemon connected |" in issue16
    # Measured on all cores only: a job whose download hook says "not yet", retried.
    waiting = "I4b a job waiting for its maintenance window: CPU s/min, daemon + hook server"
    assert issue16.count(f"| {waiting} |") == 1
    assert _rows(issue16)[waiting][4] == "no target"
    download_rows = _rows(_section(markdown, "## 1. Download"))

    results = json.loads((tmp_path / "results.json").read_text())
    download = results["download"]
    assert [run["status"] for run in download["upparat"]] == ["SUCCEEDED"]
    assert download["upparat"][0]["install_at"] is not None
    # I8 is the CPU of the download window, read off the samples taken during the job.
    assert len(download["upparat"][0]["cpu_samples"]) >= 2
    assert _rows(issue16)["I8 daemon CPU per GB downloaded"][1] != "- s"
    for series in ("latency", "latency_112_hooks"):
        assert {run["status"] for run in results[series]["runs"]} == {"SUCCEEDED"}, series
    assert len(results["hooks"]["grpc"]["samples"]) == 5
    assert results["idle"]["daemon"]["rss_kb"] > 0
    assert results["waiting"]["calls"] >= 1
    assert results["idle"]["floor"]["rss_kb"] > 0

    # 1.12 runs only when bench/.venv112 exists (the smoke run installs nothing); either
    # its jobs ran and succeeded, or every 1.12 row says why it was not measured.
    if results["legacy_skipped"] is None:
        assert [run["status"] for run in download["legacy"]] == ["SUCCEEDED"]
        assert download["legacy_file_ok"] == [True]
        assert {run["status"] for run in results["latency_legacy"]["runs"]} == {"SUCCEEDED"}
    else:
        assert "not measured" in download_rows["upparat 1.12"][-1]
        assert targets["T7 latency vs 1.12"][2] == "not measured"
