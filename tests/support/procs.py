"""Test-side names for the development stack's process helpers."""

from upparat.devstack.procs import (
    Mosquitto,
    free_port,
    mosquitto_binary,
    running_mosquitto,
    stop_process,
    wait_for_port,
)

__all__ = [
    "Mosquitto",
    "free_port",
    "mosquitto_binary",
    "running_mosquitto",
    "stop_process",
    "wait_for_port",
]
