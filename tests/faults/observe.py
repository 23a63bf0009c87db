"""Reading the outcome of a job back from the emulator, the file server and the disk."""

from __future__ import annotations

from pathlib import Path

from upparat.devstack.stack import Stack
from upparat.io.journal import Journal

TERMINAL = ("SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT", "REMOVED")
TIMEOUT = 60.0
"""Generous: the suite shares two cores with everything else."""


def finished(stack: Stack, job_id: str, timeout: float = TIMEOUT) -> dict[str, object]:
    """Wait for a terminal status; return the execution."""
    return stack.wait_status(job_id, *TERMINAL, timeout=timeout)


def details(execution: dict[str, object]) -> dict[str, str]:
    found = execution.get("statusDetails")
    assert isinstance(found, dict), execution
    return {str(k): str(v) for k, v in found.items()}


def outcome(execution: dict[str, object]) -> tuple[object, str]:
    """(status, statusDetails.state)."""
    return execution.get("status"), details(execution).get("state", "")


def request_of(update: dict[str, object]) -> dict[str, object]:
    request = update.get("request")
    assert isinstance(request, dict), update
    return request


def state_of(update: dict[str, object]) -> str:
    found = request_of(update).get("statusDetails")
    return str(found.get("state", "")) if isinstance(found, dict) else ""


def accepted(stack: Stack, job_id: str) -> list[dict[str, object]]:
    """The job's update requests the emulator accepted, oldest first."""
    return [u for u in stack.updates(job_id) if u.get("result") == "accepted"]


def reported(stack: Stack, job_id: str) -> list[tuple[str, str]]:
    """(status, statusDetails.state) of every accepted update of the job, oldest first."""
    return [(str(request_of(u).get("status")), state_of(u)) for u in accepted(stack, job_id)]


def assert_ends_once(stack: Stack, job_id: str, status: str, state: str) -> None:
    """The cloud accepted exactly one terminal update for the job, and it came last."""
    seen = reported(stack, job_id)
    assert seen, f"no update of {job_id} was accepted"
    assert seen[-1] == (status, state), seen
    assert all(s == "IN_PROGRESS" for s, _ in seen[:-1]), seen


def download_path(stack: Stack, job_id: str) -> Path:
    """Where the daemon downloads a job's file (`<download_location>/upparat/<job id>`)."""
    return stack.download_dir / "upparat" / job_id


def journal(stack: Stack) -> object:
    return Journal(stack.state_dir).load()
