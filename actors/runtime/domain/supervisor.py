"""Restart policy of a domain actor: exponential backoff with jitter, and an intensity limit (OTP's
``intensity``/``period``) past which the domain is marked failed instead of restarted."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["ReconnectPolicy", "RestartPolicy", "RestartTracker", "backoff"]


def backoff(attempt: int, initial: float, maximum: float, jitter: float) -> float:
    """``min(maximum, initial * 2**(attempt-1))`` scaled by a random factor in ``[1 - jitter, 1]``."""
    base = min(maximum, initial * 2.0 ** max(0, attempt - 1))
    return base * (1 - random.uniform(0, jitter))


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """More than ``max_restarts`` failures within ``period`` seconds: the domain goes to state ``failed``.

    The n-th consecutive restart waits ``min(backoff_max, backoff_initial * 2**(n-1))`` seconds, scaled by a
    random factor in ``[1 - jitter, 1]`` so that domains failing together do not restart in lockstep.
    """

    max_restarts: int = 5
    period: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.period <= 0:
            raise ValueError("max_restarts must be >= 0 and period > 0")
        if self.backoff_initial < 0 or self.backoff_max < self.backoff_initial:
            raise ValueError("need 0 <= backoff_initial <= backoff_max")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def delay(self, attempt: int) -> float:
        """Backoff before restart number ``attempt`` (1-based)."""
        return backoff(attempt, self.backoff_initial, self.backoff_max, self.jitter)


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Backoff between attempts to reach xenstored again after the connection was lost."""

    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    jitter: float = 0.25

    def delay(self, attempt: int) -> float:
        return backoff(attempt, self.backoff_initial, self.backoff_max, self.jitter)


class RestartTracker:
    """Failure times within the policy's period; says whether one more restart is allowed and after what
    backoff."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._times: list[float] = []  # a list, not a deque: a deque's first block alone is ~600 bytes
        self.consecutive = 0

    def failure_allows_restart(self, now: float) -> bool:
        """Record a failure at ``now``; True if the domain may restart, False if it must give up."""
        horizon = now - self.policy.period
        self._times = times = [t for t in self._times if t > horizon]
        if len(times) >= self.policy.max_restarts:
            return False
        times.append(now)
        self.consecutive += 1
        return True

    def next_delay(self) -> float:
        """The backoff before the restart that the last allowed failure asks for."""
        return self.policy.delay(self.consecutive)

    def reset(self) -> None:
        """Forget every failure (a new identity, or ``rt.reset``)."""
        self._times.clear()
        self.consecutive = 0
