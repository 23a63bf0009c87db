"""AWS IoT's published limits the fleet scenarios are held to, and the ceilings derived from them.

Owns the numbers and where they come from; the scenarios import them and never restate them.
"""

from __future__ import annotations

CONNECTS_PER_SECOND_PER_ACCOUNT = 500
"""AWS IoT Core message broker, "Connect requests per second per account": 500 (adjustable;
lower in some Regions). https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits
(the same table as https://docs.aws.amazon.com/iot/latest/developerguide/limits-iot.html)."""

CONNECTS_PER_SECOND_PER_CLIENT_ID = 1
"""Same table, "Connect requests per second per client ID": 1 (not adjustable)."""

ROLLOUT_PER_MINUTE = 1000
"""AWS IoT Jobs rolls out job executions "at a rate of 1000 devices per minute" (AWS IoT
Jobs limits, active and concurrent jobs):
https://docs.aws.amazon.com/iot/latest/developerguide/job-limits.html"""

FLEET_SHARE = 0.5
"""One fleet of 10,000 may use at most half of the account's connect quota: the account
serves other devices and applications too."""

CONNECT_CEILING = int(CONNECTS_PER_SECOND_PER_ACCOUNT * FLEET_SHARE)
"""Reconnects per second the fleet must stay under after a broker outage (250)."""

GET_CEILING = CONNECT_CEILING
"""Pending-jobs requests (GetPendingJobExecutions) per second after an outage. The Jobs
device API rates are account quotas of AWS IoT Device Management
(https://docs.aws.amazon.com/general/latest/gr/iot_device_management.html#iot_device_management_quotas;
job-limits.html above lists only the pending-execution counts). A reconnect costs exactly one
get, so the get rate follows the connect rate and gets the same ceiling."""
