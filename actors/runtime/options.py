"""Every default of the actor runtime in one place: :class:`RuntimeOptions`, given to ``open_runtime``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .lifecycle import MTWATCH_ROOT, LifecycleSource
from .supervisor import ReconnectPolicy, RestartPolicy

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

    def __post_init__(self) -> None:
        for name in ("mailbox_size", "overflow_limit", "message_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"RuntimeOptions.{name} must be at least 1, not {getattr(self, name)}")
        for name in ("stop_deadline", "stop_warn_every"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"RuntimeOptions.{name} must be a positive number of seconds, not {value}")
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
