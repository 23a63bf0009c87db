"""A discrete-event simulation of a fleet: real cores, the real AWS edge, the emulator's model.

Owns simulated time, one priority queue of (time, order, kind, device, payload), the
simulated drivers (broker link, hooks, downloads, reboots) and the per-second counters the
scenarios assert on. Every device runs `upparat.core.machine.step`, the function the daemon
runs; every MQTT message goes through `upparat.aws.build` / `upparat.aws.parse` and the
emulator's `wire.parse` / `JobsModel`, as on the wire. No sockets, no threads, no clock.

Each thing gets a `JobsModel` of its own (one shard per thing): the model's queries scan all
executions, which suits the emulator's handful of things but would make 10,000 things cost
10,000 times more per request, and no rule of the device API crosses things.

Cost, measured (cProfile, 1,000 devices): a device's whole job is about 26 core steps and
9 requests, 2-4 ms of CPU, of which the core's `step` takes ~35 %, the emulator's parse and
model ~20 %, the edge's parse ~18 % and this loop ~12 %. So events are tuples on one heap,
payloads are plain values, and a fleet starts warm (one real boot, its state handed to
every device with its own seed).
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterable
from typing import assert_never, cast

import attrs

from upparat import aws
from upparat.aws import topics as aws_topics
from upparat.core import commands as c
from upparat.core import events as e
from upparat.core.machine import Idle, State, initial_state, step
from upparat.core.model import (
    CallId,
    DownloadFailure,
    HookKind,
    JobId,
    JournalRecord,
    Settings,
    ThingName,
    TimerKind,
)
from upparat.emulator import wire
from upparat.emulator.model import Execution, JobsModel

EPOCH = 1_700_000_000.0
"""The cloud's clock at simulated time 0 (AWS timestamps are epoch seconds)."""

OLD_VERSION = "1.0"


# --- what can go wrong on one device --------------------------------------------------


class Fault:
    """Labels for seeded faulty devices (plain strings keep the device record cheap)."""

    NONE = ""
    INSTALL_FAILS = "install_fails"
    """The install hook answers FAILURE BUNDLE_REJECTED."""
    CORRUPT_DOWNLOAD = "corrupt_download"
    """Every download ends with a sha256 mismatch."""
    BOOTS_OLD_SLOT = "boots_old_slot"
    """The bootloader falls back: after the restart the old version runs."""


@attrs.frozen(kw_only=True)
class Link:
    """Per-device network: one-way latency and the device's own link outages."""

    latency: float = 0.05
    """Seconds one way (device → broker or back)."""
    drops: tuple[tuple[float, float], ...] = ()
    """(start, duration) of outages of this device's own link, in simulated seconds."""
    loss: float = 0.0
    """Share of messages to the device that are lost (a QoS 1 resend the driver dropped)."""


# --- simulated drivers' timing -----------------------------------------------------------


@attrs.frozen(kw_only=True)
class Timing:
    """How long simulated drivers take (seconds)."""

    hook: float = 0.2
    install: tuple[float, float] = (40.0, 90.0)
    download: tuple[float, float] = (20.0, 120.0)
    reboot: tuple[float, float] = (20.0, 45.0)
    detect_loss: float = 1.0
    """A broker that goes away resets the connections: each device notices within this."""
    boot_spread: float = 60.0
    """Cold start: devices boot at uniform times in [0, boot_spread)."""
    reboots: bool = True
    """The restart hook reboots the device (a new daemon process boots from its journal);
    False: a soft restart, the hook answers SUCCESS and the daemon verifies at once."""
    progress: bool = False
    """Report download and install progress half way. Off by default: the core's throttle
    (tests/core) decides what reaches the cloud, and here each report is one more update
    per device, a sixth of the simulation's cost."""


@attrs.frozen(kw_only=True)
class Job:
    job_id: str
    version: str
    size: int
    sha256: str
    url: str = "https://firmware.example.com/fw.raucb"

    def document(self) -> dict[str, object]:
        return {
            "file": "${aws:iot:s3-presigned-url:" + self.url + "}",
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
        }


def _sign(url: str, expires_in: int) -> str:
    # Deterministic stand-in for S3 pre-signing (the real DefaultSigner draws randomness).
    return f"{url}?X-Amz-Expires={expires_in}&X-Amz-Signature=simulated"


# --- the cloud ----------------------------------------------------------------------------


@attrs.define
class Cloud:
    """The Jobs service: one `JobsModel` per thing, a throttle, and request counters."""

    rng: random.Random
    throttle: float = 0.0
    """Share of device requests answered RequestThrottled (what the service sends on MQTT
    when a rate limit is hit: AWS-IOT-JOBS.md, jobs-api error codes)."""
    throttle_until: float = float("inf")
    """Simulated time after which nothing is throttled any more."""
    shards: dict[ThingName, JobsModel] = attrs.field(factory=dict)
    requests: Counter[tuple[str, int]] = attrs.field(factory=Counter)
    """(operation, simulated second) → requests received."""
    throttled: Counter[tuple[str, int]] = attrs.field(factory=Counter)

    def shard(self, thing: ThingName) -> JobsModel:
        found = self.shards.get(thing)
        if found is None:
            found = self.shards[thing] = JobsModel()
        return found

    def queue(self, job: Job, thing: ThingName, now: float) -> list[tuple[str, bytes]]:
        """CreateJob reaching one target thing; the notifications it publishes."""
        publishes = self.shard(thing).create_job(
            job.job_id, job.document(), [thing], EPOCH + now, _sign
        )
        return [(p.topic, p.body.encode()) for p in publishes]

    def handle(self, topic: str, payload: bytes, now: float) -> list[tuple[str, bytes]]:
        parsed = wire.parse(topic, payload)
        if isinstance(parsed, wire.Ignored):
            return []
        thing = ThingName(parsed.thing)
        model = self.shard(thing)
        second = int(now)
        if isinstance(parsed, wire.BadRequest):
            result = model.handle(parsed, EPOCH + now, _sign)
        else:
            operation = type(parsed).__name__
            self.requests[operation, second] += 1
            if self.throttle and now < self.throttle_until and self.rng.random() < self.throttle:
                self.throttled[operation, second] += 1
                result = model.reject(
                    parsed, wire.ErrorCode.REQUEST_THROTTLED, "Rate exceeded", EPOCH + now
                )
            else:
                result = model.handle(parsed, EPOCH + now, _sign)
        return [(p.topic, p.body.encode()) for p in result.publishes]

    def execution(self, job_id: str, thing: ThingName) -> Execution | None:
        return self.shard(thing).execution(wire.JobId(job_id), wire.ThingName(thing))


# --- one device --------------------------------------------------------------------------


class Device:
    """One process of the daemon on one device (a reboot makes a new one)."""

    __slots__ = (
        "alive",
        "connected",
        "fault",
        "index",
        "journal",
        "link",
        "running",
        "session",
        "settings",
        "slot",
        "state",
        "subscribed",
        "thing",
        "timers",
    )

    def __init__(
        self,
        *,
        index: int,
        thing: ThingName,
        settings: Settings,
        link: Link,
        fault: str,
        running: str,
        slot: str,
        journal: JournalRecord | None,
    ) -> None:
        self.index = index
        self.thing = thing
        self.settings = settings
        self.state: State = initial_state(settings)
        self.link = link
        self.fault = fault
        self.running = running
        """The version that runs now."""
        self.slot = slot
        """The version the next boot runs (the installer writes it)."""
        self.journal = journal
        self.timers: dict[TimerKind, int] = {}
        self.alive = True
        self.connected = False
        self.subscribed = False
        self.session = 0
        """Counts connections; a message of an earlier one is lost."""


# Event kinds of the queue (ints: compared never, dispatched once per event).
_FEED = 0  # payload: a core event
_TIMER = 1  # payload: (TimerKind, token)
_ARRIVE = 2  # payload: (session, topic, bytes), at the broker
_DELIVER = 3  # payload: (session, topic, bytes), at the device
_CONNECT = 4  # payload: None: the answer to one ConnectMqtt
_SUBACK = 6  # payload: session
_LOST = 7  # payload: None: the device notices its connection is gone
_GLOBAL = 8  # payload: a callable run at that time
_LINK_DOWN = 9  # payload: how long the device's own link stays down

_TimerPayload = tuple[TimerKind, int]
_Message = tuple[int, str, bytes]
"""(session it belongs to, topic, payload)."""


@attrs.define
class Metrics:
    connects: Counter[int] = attrs.field(factory=Counter)
    """Simulated second → CONNECTs accepted by the broker."""
    attempts: Counter[int] = attrs.field(factory=Counter)
    """Simulated second → connect attempts (also those that found the broker down)."""
    min_connect_gap: float = float("inf")
    """Shortest time between two CONNECTs of one client id that reached the broker."""
    steps: int = 0
    events: int = 0
    reboots: int = 0
    drops: int = 0
    """Connections lost to a device's own link outage."""
    hook_calls: Counter[HookKind] = attrs.field(factory=Counter)
    downloads: int = 0


class Fleet:
    """The simulator: devices, broker, cloud, queue and clock."""

    def __init__(
        self,
        *,
        size: int,
        seed: int,
        shared_seed: int | None = None,
        settings: Settings | None = None,
        timing: Timing | None = None,
        faults: dict[int, str] | None = None,
        links: dict[int, Link] | None = None,
        throttle: float = 0.0,
        warm: bool = True,
    ) -> None:
        """`warm`: every device starts where one real boot left the daemon (Idle, subscribed,
        its first pending-jobs fetch answered), instead of booting each at a random time in
        [0, timing.boot_spread); each device gets that state with its own settings (seed)."""
        self.rng = random.Random(seed)
        self.now = 0.0
        self.settings = settings or Settings()
        self.timing = timing or Timing()
        self.shared_seed = shared_seed
        self.broker_up = True
        self.cloud = Cloud(rng=random.Random(seed + 1), throttle=throttle)
        self.metrics = Metrics()
        self._queue: list[tuple[float, int, int, Device | None, object]] = []
        self._order = 0
        self._routes: dict[str, bool] = {}
        self.last_connect: dict[int, float] = {}
        self.jobs: dict[JobId, Job] = {}
        faults = faults or {}
        links = links or {}
        self.devices: list[Device] = []
        template = self._booted() if warm else None
        for index in range(size):
            thing = ThingName(f"device-{index:05d}")
            device = Device(
                index=index,
                thing=thing,
                settings=self._own(),
                link=links.get(index, Link()),
                fault=faults.get(index, Fault.NONE),
                running=OLD_VERSION,
                slot=OLD_VERSION,
                journal=None,
            )
            self.devices.append(device)
            self.cloud.shard(thing)
            for start, duration in device.link.drops:
                self._push(start, _LINK_DOWN, device, duration)
            if template is None:
                self._boot(device, self.rng.uniform(0.0, self.timing.boot_spread))
            else:
                state, timers = template
                device.state = attrs.evolve(state, settings=device.settings)
                device.connected = device.subscribed = True
                device.session = 1
                for kind, token, due in timers:
                    device.timers[kind] = token
                    self._push(due, _TIMER, device, (kind, token))

    def _own(self) -> Settings:
        """A device's settings: its own jitter seed, as the daemon draws one per process,
        or `shared_seed` for all (then every device draws the same jitter)."""
        seed = self.rng.getrandbits(63) if self.shared_seed is None else self.shared_seed
        return attrs.evolve(self.settings, seed=seed)

    def _booted(self) -> tuple[State, list[tuple[TimerKind, int, float]]]:
        """Boot one device with nothing pending through the real core and edge, until Idle."""
        probe = Fleet(
            size=1,
            seed=0,
            settings=self.settings,
            timing=attrs.evolve(self.timing, boot_spread=0.0),
            warm=False,
        )
        probe.run(until=10.0)
        booted = probe.devices[0]
        assert isinstance(booted.state.stage, Idle), booted.state.stage
        timers = []
        for at, _, kind, _, payload in probe._queue:
            if kind == _TIMER:
                timer, token = cast(_TimerPayload, payload)
                if booted.timers.get(timer) == token:
                    timers.append((timer, token, at - probe.now))
        return booted.state, timers

    # --- scheduling -----------------------------------------------------------------------

    def _push(self, at: float, kind: int, device: Device | None, payload: object) -> None:
        self._order += 1
        heapq.heappush(self._queue, (at, self._order, kind, device, payload))

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run `action` at simulated time `when` (a scenario's script)."""
        self._push(when, _GLOBAL, None, action)

    def run(self, until: float) -> None:
        """Process every event up to simulated time `until`."""
        queue = self._queue
        pop = heapq.heappop
        while queue and queue[0][0] <= until:
            at, _, kind, device, payload = pop(queue)
            self.now = at
            self.metrics.events += 1
            if device is None:
                assert callable(payload)
                payload()
                continue
            if not device.alive:
                if kind == _ARRIVE:  # sent before the process died: the cloud still gets it
                    self._arrive(device, payload)
                continue
            if kind == _FEED:
                self._feed(device, cast(e.Event, payload))
            elif kind == _TIMER:
                timer, token = cast(_TimerPayload, payload)
                if device.timers.get(timer) == token:
                    del device.timers[timer]
                    self._feed(device, e.TimerFired(timer=timer, token=token))
            elif kind == _ARRIVE:
                self._arrive(device, payload)
            elif kind == _DELIVER:
                session, topic, body = cast(_Message, payload)
                if session == device.session and device.connected and device.subscribed:
                    self._feed(device, aws.parse(device.thing, topic, body))
            elif kind == _CONNECT:
                self._connect_answer(device)
            elif kind == _SUBACK:
                if payload == device.session and device.connected:
                    device.subscribed = True
                    self._feed(device, e.SubscriptionsAcked())
            elif kind == _LOST:
                self._feed(device, e.MqttDisconnected(reason="connection lost (simulated)"))
            elif kind == _LINK_DOWN:
                self._link_down(device, cast(float, payload))
        self.now = max(self.now, until)

    # --- the device side --------------------------------------------------------------------

    def _feed(self, device: Device, event: e.Event) -> None:
        self.metrics.steps += 1
        device.state, commands = step(device.state, event, self.now)
        for command in commands:
            self._execute(device, command)
            if not device.alive:
                return  # Restart ended the process: the rest is never carried out

    def _execute(self, device: Device, command: c.Command) -> None:
        now = self.now
        match command:
            case c.Log() | c.SignalReady():
                pass
            case c.RequestPendingJobs() | c.DescribeJob() | c.UpdateJob():
                if device.connected:
                    topic, payload = aws.build(device.thing, command)
                    self._push(
                        now + device.link.latency,
                        _ARRIVE,
                        device,
                        (device.session, topic, payload),
                    )
            case c.ConnectMqtt():
                self._dial(device)
            case c.SubscribeJobTopics():
                if device.connected:
                    self._push(now + 2 * device.link.latency, _SUBACK, device, device.session)
            case c.SetTimer(timer=kind, token=token, delay=delay):
                device.timers[kind] = token
                self._push(now + delay, _TIMER, device, (kind, token))
            case c.Persist(record=record):
                device.journal = record
            case c.AskHookInfo():
                # The hook server implements every hook (GetInfo over the socket).
                info = e.HookServerInfo(hooks=frozenset(HookKind), server_name="simulated")
                self._later(device, self.timing.hook, info)
            case c.CallHook():
                self._hook(device, command)
            case c.CancelHook() | c.CancelDownload() | c.DiscardDownload():
                pass  # the core ignores the answers of what it cancelled
            case c.GetPackageShadow() | c.UpdatePackageShadow():
                pass  # the fleet runs without [service] package_name: never sent
            case c.StartDownload():
                self._download(device, command)
            case c.Exit():
                device.alive = False
            case _:
                assert_never(command)

    def _later(self, device: Device, delay: float, event: e.Event) -> None:
        self._push(self.now + delay, _FEED, device, event)

    def _hook(self, device: Device, call: c.CallHook) -> None:
        timing = self.timing
        self.metrics.hook_calls[call.hook] += 1
        result: e.HookResult = e.HookSuccess()
        delay = timing.hook
        match call.hook:
            case HookKind.VERSION:
                result = e.HookSuccess(value=device.running)
            case HookKind.DOWNLOAD | HookKind.READY:
                pass
            case HookKind.INSTALL:
                delay = self.rng.uniform(*timing.install)
                if device.fault == Fault.INSTALL_FAILS:
                    result = e.HookFailure(
                        reason="BUNDLE_REJECTED", message="rauc: signature of the bundle is invalid"
                    )
                else:
                    device.slot = self.jobs[call.context.job_id].version
                if timing.progress and device.fault != Fault.INSTALL_FAILS:
                    self._later(
                        device,
                        delay / 2,
                        e.HookProgressed(call_id=call.call_id, line="50%", percent=50),
                    )
            case HookKind.RESTART:
                if timing.reboots:
                    self._restart(device)
                    return
                # A soft restart (an application, not the OS): the hook returns and the
                # daemon lives on, running what was installed.
                device.running = device.slot
            case _:
                assert_never(call.hook)
        self._later(
            device, delay, e.HookFinished(call_id=call.call_id, hook=call.hook, result=result)
        )

    def _download(self, device: Device, start: c.StartDownload) -> None:
        self.metrics.downloads += 1
        took = self.rng.uniform(*self.timing.download)
        done: e.Event
        if device.fault == Fault.CORRUPT_DOWNLOAD:
            done = e.DownloadFailed(
                download_id=start.download_id,
                failure=DownloadFailure.VERIFICATION_FAILED,
                message=f"sha256 of the download differs from the job document's {start.sha256}",
            )
        else:
            done = e.DownloadCompleted(
                download_id=start.download_id,
                path=f"/var/lib/upparat/{start.job_id}",
                size=start.size or 0,
                sha256=start.sha256 or "",
            )
            half = (start.size or 0) // 2
            if self.timing.progress:
                self._later(
                    device,
                    took / 2,
                    e.DownloadProgressed(
                        download_id=start.download_id, bytes_done=half, total=start.size
                    ),
                )
        self._later(device, took, done)

    def _restart(self, device: Device) -> None:
        """The restart hook reboots the device: this process ends now, a new one boots."""
        self.metrics.reboots += 1
        device.alive = False
        device.connected = False
        running = OLD_VERSION if device.fault == Fault.BOOTS_OLD_SLOT else device.slot
        reborn = Device(
            index=device.index,
            thing=device.thing,
            settings=device.settings,
            link=device.link,
            fault=device.fault,
            running=running,
            slot=running,
            journal=device.journal,
        )
        self.devices[device.index] = reborn
        self._boot(reborn, self.now + self.rng.uniform(*self.timing.reboot))

    def _boot(self, device: Device, at: float) -> None:
        self._push(at, _FEED, device, e.Started(journal=device.journal))

    # --- the link ---------------------------------------------------------------------------

    def _reachable(self, device: Device) -> bool:
        return self.broker_up and not _in_drop(device.link, self.now)

    def _dial(self, device: Device) -> None:
        """ConnectMqtt: one attempt; the broker answers after a round trip (a CONNACK, or a
        refused or reset connection when it is away)."""
        self.metrics.attempts[int(self.now)] += 1
        self._push(self.now + 2 * device.link.latency, _CONNECT, device, None)

    def _connect_answer(self, device: Device) -> None:
        if device.connected:
            return
        if not self._reachable(device):
            self._feed(device, e.MqttConnectFailed(reason="connection refused (simulated)"))
            return
        second = int(self.now)
        last = self.last_connect.get(device.index)
        if last is not None:
            self.metrics.min_connect_gap = min(self.metrics.min_connect_gap, self.now - last)
        self.last_connect[device.index] = self.now
        self.metrics.connects[second] += 1
        device.connected = True
        device.subscribed = False
        device.session += 1
        self._feed(device, e.MqttConnected())

    def _drop_connection(self, device: Device, notice: float) -> None:
        if not device.connected:
            return
        device.connected = False
        device.subscribed = False
        device.session += 1
        self._push(self.now + notice, _LOST, device, None)

    def _link_down(self, device: Device, duration: float) -> None:
        if device.connected:
            self.metrics.drops += 1
        self._drop_connection(device, min(duration, self.timing.detect_loss))

    def broker_down(self) -> None:
        self.broker_up = False
        detect = self.timing.detect_loss
        for device in self.devices:
            if device.alive:
                self._drop_connection(device, self.rng.uniform(0.0, detect))

    def broker_back(self) -> None:
        self.broker_up = True

    def _arrive(self, device: Device, payload: object) -> None:
        session, topic, body = cast(_Message, payload)
        if not self.broker_up:
            return
        current = self.devices[device.index]
        for reply_topic, reply in self.cloud.handle(topic, body, self.now):
            self._deliver(current, reply_topic, reply, session if current is device else -1)

    def _subscribed_to(self, thing: ThingName, topic: str) -> bool:
        """Does one of the filters the driver subscribes (`SubscribeJobTopics`) match?"""
        # Every filter is `$aws/things/<thing>/jobs/...` for the device's own thing, so the
        # answer depends only on what follows that prefix: one match per distinct rest.
        prefix = aws_topics.prefix(thing)
        if not topic.startswith(prefix):
            return False
        rest = topic[len(prefix) :]
        known = self._routes.get(rest)
        if known is None:
            filters = aws.subscription_filters(thing)
            known = self._routes[rest] = any(_matches(f, topic) for f in filters)
        return known

    def _deliver(self, device: Device, topic: str, body: bytes, session: int) -> None:
        if not self._subscribed_to(device.thing, topic):
            return
        loss = device.link.loss
        if loss and self.rng.random() < loss:
            return
        self._push(self.now + device.link.latency, _DELIVER, device, (session, topic, body))

    # --- scenario helpers ------------------------------------------------------------------

    def create_job(self, job: Job, *, per_minute: int, start: float) -> None:
        """CreateJob for every device, rolled out at `per_minute` executions a minute."""
        gap = 60.0 / per_minute
        self.jobs[JobId(job.job_id)] = job

        def queue_one(device_index: int) -> Callable[[], None]:
            def run() -> None:
                device = self.devices[device_index]
                for topic, body in self.cloud.queue(job, device.thing, self.now):
                    if self.broker_up and device.connected:
                        self._deliver(device, topic, body, device.session)

            return run

        for index in range(len(self.devices)):
            self.at(start + index * gap, queue_one(index))

    def statuses(self, job_id: str) -> Counter[tuple[str, str]]:
        """(execution status, statusDetails state) → how many devices."""
        out: Counter[tuple[str, str]] = Counter()
        for device in self.devices:
            found = self.cloud.execution(job_id, device.thing)
            if found is None:
                out["none", ""] += 1
            else:
                out[found.status.value, found.details.get("state", "")] += 1
        return out

    def by_device(self, job_id: str, indexes: Iterable[int]) -> dict[int, Execution | None]:
        return {i: self.cloud.execution(job_id, self.devices[i].thing) for i in indexes}


def _in_drop(link: Link, now: float) -> bool:
    return any(start <= now < start + duration for start, duration in link.drops)


def _matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 section 4.7 topic matching, for the filters upparat uses (`+`, `#`)."""
    levels = topic.split("/")
    parts = topic_filter.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= len(levels) or (part != "+" and part != levels[i]):
            return False
    return len(parts) == len(levels)


def per_second(counter: Counter[int], start: int, end: int) -> list[int]:
    return [counter.get(s, 0) for s in range(start, end)]


def peak(counter: Counter[int], start: int = 0) -> tuple[int, int]:
    """(highest count in one second at or after `start`, that second)."""
    best = (0, start)
    for second, count in counter.items():
        if second >= start and count > best[0]:
            best = (count, second)
    return best


_ = CallId  # re-exported for scenarios that answer hooks by hand
