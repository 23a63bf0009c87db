"""The AWS IoT Jobs protocol edge: topic names, inbound payloads → core events, commands → payloads.

Pure: no I/O, no clock, no logging. The MQTT driver (`upparat.io.mqtt`) is its only caller
on the wire side; every JSON payload is parsed here, once.
"""

from upparat.aws.inbound import InboundEvent, parse
from upparat.aws.outbound import InvalidCommandError, build
from upparat.aws.topics import (
    is_job_id,
    job_id_or_none,
    subscription_batches,
    subscription_filters,
)

__all__ = [
    "InboundEvent",
    "InvalidCommandError",
    "build",
    "is_job_id",
    "job_id_or_none",
    "parse",
    "subscription_batches",
    "subscription_filters",
]
