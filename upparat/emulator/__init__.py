"""A local stand-in for AWS IoT Jobs (and named shadows such as `$package`), so upparat runs
with no AWS account.

Owns the service side of the jobs device MQTT API (answers, notifications, rules,
timeouts, pre-signed URLs) plus test controls (fault injection, pause, history) and an
out-of-process control channel. It must not import upparat's daemon: it is the peer the
daemon talks to. Rules: model.py (jobs), shadow.py (named shadows); topics and payload
parsing: wire.py; MQTT: server.py.
"""

from upparat.emulator.clock import Clock, FakeClock, SystemClock
from upparat.emulator.control import EmulatorControl
from upparat.emulator.model import EmulatorError, Execution, Job, Publish
from upparat.emulator.presign import DefaultSigner, Signer
from upparat.emulator.server import HistoryEntry, JobInfo, JobsEmulator, ShadowHistoryEntry
from upparat.emulator.shadow import PACKAGE_SHADOW
from upparat.emulator.wire import ErrorCode, ExecutionStatus, Operation

__all__ = [
    "PACKAGE_SHADOW",
    "Clock",
    "DefaultSigner",
    "EmulatorControl",
    "EmulatorError",
    "ErrorCode",
    "Execution",
    "ExecutionStatus",
    "FakeClock",
    "HistoryEntry",
    "Job",
    "JobInfo",
    "JobsEmulator",
    "Operation",
    "Publish",
    "ShadowHistoryEntry",
    "Signer",
    "SystemClock",
]
