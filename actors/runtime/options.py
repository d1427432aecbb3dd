"""Every default of the actor runtime in one place: :class:`RuntimeOptions`, given to ``open_runtime``."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from .domain.supervisor import ReconnectPolicy, RestartPolicy
from .lifecycle.protocol import MTWATCH_ROOT, LifecycleSource

__all__ = ["RuntimeOptions"]


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """How a runtime behaves. ``open_runtime(xs, options=RuntimeOptions(...), stop_deadline=5)``: keyword
    arguments of ``open_runtime`` override single fields.

    - ``root``, ``lifecycle``: where the set of live domains comes from (``"auto"``, the default: ``root``
      whenever it exists, else the host's domains; ``"mtwatch"`` follows ``root``,
      ``"domains"`` a stock host's domains, or a LifecycleSource object).
    - ``mailbox_size``, ``overflow_limit``: a domain's mailbox (events past ``mailbox_size`` are coalesced per
      path; past ``overflow_limit`` distinct paths into one re-read hint per watch).
    - ``message_limit``: messages (``rt.send``/``rt.ask``) waiting in one domain's mailbox at most; past it
      ``send`` raises MailboxFull (messages are never coalesced or dropped silently).
    - ``stop_deadline``: seconds a domain's stop (running handler, per-domain tasks, on_stop hooks) may take;
      ``stop_warn_every``: past the deadline, a warning naming what still runs, every this many seconds.
    - ``restart``: the supervisor's backoff and intensity; ``reconnect``: backoff between connection attempts.
    - ``request_timeout``, ``stall_after``, ``stall_limit``: set on every connection the runtime serves (see
      ``XenStore``): a request's deadline; the silence after which the daemon counts as stalled (handler
      timeouts and errors during a stall are interruptions, not failures, and the event is handled again
      once the daemon answers); the silence after which the connection counts as lost (None: never).
    - ``silent_after``: a handler that fails (its timeout runs out, or it raises) while the daemon is silent
      (requests pending, nothing received) is interrupted, not failed, if that silence lasts ``silent_after``
      seconds (the verdict waits that long at most; a frame before then means the daemon answers, and the
      failure is the handler's): a stopped daemon is never charged to a guest, whatever the handler's
      timeout and without waiting for ``stall_after``. The event is handled again once the daemon answers.
    - ``block_threshold``: the watchdog thread reports a loop that did not run for this long and charges the
      block to the domain whose code ran (None: no watchdog); ``worker_threads``: the pool of plain ``def``
      handlers (a bound on threads, abandoned ones included).
    - ``worker_processes``: the pool of worker processes of ``isolation="process"`` handlers, shared by every
      domain (at most one per domain at a time; default: the number of CPUs); ``worker_memory_limit``: bytes
      of heap a worker may take (RLIMIT_DATA; past it the call fails with WorkerMemoryExceeded; None: no cap;
      default 1 GiB); ``worker_grace``: seconds past a process handler's timeout before its worker is killed;
      ``worker_nice``: how much lower the workers' CPU priority is than the runtime's (0..19; default 10: a
      spinning worker gives way to the runtime's loop).
    - ``flood_high_water``, ``flood_high_water_for``, ``flood_rate``: flood control throttles a domain whose
      mailbox stayed at or over ``flood_high_water`` items for ``flood_high_water_for`` seconds, or that got
      more than ``flood_rate`` events in one second (None: no such limit; both None: no flood control). A throttled domain is unwatched for
      ``flood_cooldown`` seconds, then watched again (the resync event: the handler re-reads); throttled again
      before twice ``flood_cooldown_max`` passed calm, its cool-down doubles, up to ``flood_cooldown_max``.
      A cool-down's end first probes the domain's paths for a tenth of a second: a guest still over the
      rate gets another cool-down instead of a resync (re-read at least every 5 s all the same), so a flood's
      last value waits at most ``flood_cooldown_max`` plus the probe plus the resync after its end. Until
      the calm period has passed, the rate is counted over a tenth of a second and a mailbox at its
      high-water mark throttles at once. Messages are never throttled.
    - ``quota_interval``: every this many seconds, each live domain's XenStore quota use and limits are read
      (``rt.quotas``; None: never); ``quota_threshold``: the share of any limit (0.9: 90%) at which a domain
      is logged and listed as above its quota threshold.
    - ``gc_freeze_at``: with at least this many live actors, the runtime calls ``gc.freeze()`` as it starts
      more (process-wide: see :mod:`actors.runtime.collector`, which says what it costs), so that the
      collector's full collections stop walking the long-lived actors; None: never.
    """

    root: str = MTWATCH_ROOT
    lifecycle: str | LifecycleSource = "auto"
    mailbox_size: int = 64
    overflow_limit: int = 1024
    message_limit: int = 1024
    stop_deadline: float = 10.0
    stop_warn_every: float = 5.0
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    request_timeout: float | None = 30.0
    stall_after: float = 2.0
    stall_limit: float | None = 60.0
    silent_after: float = 0.1
    block_threshold: float | None = 0.5
    worker_threads: int = 16
    worker_processes: int = field(default_factory=lambda: os.cpu_count() or 1)
    worker_memory_limit: int | None = 1 << 30
    worker_grace: float = 0.5
    worker_nice: int = 10
    flood_high_water: int | None = 64
    flood_high_water_for: float = 2.0
    flood_rate: float | None = 1000.0
    flood_cooldown: float = 0.1
    flood_cooldown_max: float = 0.3
    quota_interval: float | None = 30.0
    quota_threshold: float = 0.9
    gc_freeze_at: int | None = 1000

    def __post_init__(self) -> None:
        for name in (
            "mailbox_size",
            "overflow_limit",
            "message_limit",
            "worker_threads",
            "worker_processes",
            "flood_high_water",
            "gc_freeze_at",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"RuntimeOptions.{name} must be at least 1, not {getattr(self, name)}")
        optional = (
            "request_timeout",
            "stall_limit",
            "block_threshold",
            "flood_rate",
            "quota_interval",
        )  # None: off
        seconds = (
            "stop_deadline",
            "stop_warn_every",
            "stall_after",
            "silent_after",
            "flood_high_water_for",
            "flood_cooldown",
            "quota_threshold",
            "worker_grace",
        )
        for name in (*seconds, "flood_cooldown_max", *optional):
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"RuntimeOptions.{name} must be a positive finite number, not {value}")
        if self.worker_memory_limit is not None and self.worker_memory_limit < 1 << 24:
            raise ValueError(
                f"RuntimeOptions.worker_memory_limit must be None or at least 16 MiB, not {self.worker_memory_limit}"
            )
        if not 0 <= self.worker_nice <= 19:
            raise ValueError(f"RuntimeOptions.worker_nice must be 0..19, not {self.worker_nice}")
        if self.flood_cooldown_max < self.flood_cooldown:
            raise ValueError("RuntimeOptions.flood_cooldown_max must be at least flood_cooldown")
        if isinstance(self.lifecycle, str) and self.lifecycle not in ("auto", "mtwatch", "domains"):
            raise ValueError(
                f"RuntimeOptions.lifecycle must be 'auto', 'mtwatch' or 'domains', not {self.lifecycle!r}"
            )

    def replace(self, **overrides: Any) -> RuntimeOptions:
        """A copy with some fields changed. None for ``restart`` or ``reconnect`` means the default policy
        (what ``open_runtime``'s old keyword arguments meant). An unknown name is a TypeError."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown runtime option(s): {', '.join(unknown)}")
        if "restart" in overrides and overrides["restart"] is None:
            overrides["restart"] = RestartPolicy()
        if "reconnect" in overrides and overrides["reconnect"] is None:
            overrides["reconnect"] = ReconnectPolicy()
        return dataclasses.replace(self, **overrides) if overrides else self
