"""The one retry policy of upparat: `Backoff` (base, cap, jitter, give-up rule) and its jitter.

Pure: the jitter is not random at run time but drawn from the core's seed and a counter,
so a test that fixes the seed steps through every retry with no real time, and a fleet
whose devices draw different seeds does not retry in lockstep.
"""

from __future__ import annotations

import attrs

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def unit(seed: int, draw: int) -> float:
    """A number in [0, 1) that depends only on `seed` and `draw` (SplitMix64)."""
    z = (seed + (draw + 1) * _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    return (z >> 11) / float(1 << 53)


@attrs.frozen(kw_only=True)
class Backoff:
    """How long to wait before retry number n, and when to stop retrying.

    The delay before retry n (1-based) is `min(cap, base * factor ** (n - 1))`, of which
    the fraction `jitter` is random: `jitter = 0` waits exactly that long, `jitter = 1`
    ("full jitter", AWS Architecture Blog "Exponential Backoff And Jitter") anywhere from
    0 to it. So no delay is ever longer than `cap`, nor shorter than `floor`.

    Give-up rule: no retry after `retries` retries (None: no limit by count), nor once
    `give_up_after` seconds passed since the first failure (None: no limit by time).
    """

    base: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.0
    retries: int | None = None
    give_up_after: float | None = None
    floor: float = 0.0
    """The shortest delay whatever the jitter drew (AWS IoT: one CONNECT per second per
    client id)."""

    def __attrs_post_init__(self) -> None:
        if not (
            0.0 <= self.floor <= self.cap
            and 0.0 <= self.base <= self.cap
            and self.factor >= 1.0
            and 0 <= self.jitter <= 1
        ):
            raise ValueError(f"not a backoff: {self!r}")

    def ceiling(self, retry: int) -> float:
        """The delay before retry `retry` without jitter."""
        exponent = max(0, min(retry - 1, 64))
        return min(self.cap, self.base * self.factor**exponent)

    def delay(self, retry: int, *, seed: int, draw: int) -> float:
        """Seconds to wait before retry `retry` (1-based); `draw` numbers the jitter drawn."""
        ceiling = self.ceiling(retry)
        if self.jitter == 0:
            return max(self.floor, ceiling)
        return max(self.floor, ceiling * (1.0 - self.jitter * unit(seed, draw)))

    def drawn(self, retry: int, *, seed: int, draws: int) -> tuple[float, int]:
        """`delay` with the next jitter of `seed`: the delay and the new count of draws (a
        policy without jitter draws nothing)."""
        if self.jitter == 0:
            return self.delay(retry, seed=seed, draw=0), draws
        return self.delay(retry, seed=seed, draw=draws), draws + 1

    def exhausted(self, *, retries: int, elapsed: float) -> bool:
        """True when no retry is left after `retries` retries, `elapsed` seconds after the
        first failure."""
        if self.retries is not None and retries >= self.retries:
            return True
        return self.give_up_after is not None and elapsed >= self.give_up_after

    def describe(self) -> str:
        """For log lines: what the policy allows."""
        limits = []
        if self.retries is not None:
            limits.append(f"{self.retries} retries")
        if self.give_up_after is not None:
            limits.append(f"{self.give_up_after:g} s")
        return " or ".join(limits) or "no limit"
