"""The actors: a registry following the lifecycle source, one supervised actor per guest domain.

The package is laid out as an event travels (see the README's layout): :mod:`.runtime` is the root (the
connection, the registry's sink, the router, the default actor, the domain actors); :mod:`.lifecycle` says which
domains are live; :mod:`.domain` is one domain's actor (mailbox, flood gate, supervisor, handler calls).

The names below are loaded on first use (PEP 562), so that importing one module of the runtime (the toolstack's
``MTWATCH_ROOT``) does not load the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_face

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "AskTimeout": "actors.runtime.domain.messages",
    "AutoSource": "actors.runtime.lifecycle.auto",
    "DomainContext": "actors.runtime.domain.context",
    "DomainNotRunning": "actors.runtime.domain.messages",
    "DomainSnapshot": "actors.runtime.domain.context",
    "DomainsSource": "actors.runtime.lifecycle.domains",
    "HandlerError": "actors.runtime.domain.calls",
    "HandlerTimeout": "actors.runtime.domain.calls",
    "MTWATCH_ROOT": "actors.runtime.lifecycle.protocol",
    "Mailbox": "actors.runtime.domain.mailbox",
    "MailboxFull": "actors.runtime.domain.messages",
    "MessageError": "actors.runtime.domain.messages",
    "MtwatchSource": "actors.runtime.lifecycle.mtwatch",
    "NotSettled": "actors.runtime.settling",
    "ReconnectPolicy": "actors.runtime.domain.supervisor",
    "RestartPolicy": "actors.runtime.domain.supervisor",
    "Runtime": "actors.runtime.runtime",
    "RuntimeOptions": "actors.runtime.options",
    "State": "actors.runtime.domain.context",
    "Watch": "actors.runtime.watch_rules",
    "open_runtime": "actors.runtime.runtime",
    "ProcessContext": "actors.runtime.workers.context",
    "WorkerDied": "actors.runtime.workers.pool",
    "WorkerMemoryExceeded": "actors.runtime.workers.pool",
    "WorkerPoolSnapshot": "actors.runtime.workers.pool",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_face(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from .domain.calls import HandlerError as HandlerError
    from .domain.calls import HandlerTimeout as HandlerTimeout
    from .domain.context import DomainContext as DomainContext
    from .domain.context import DomainSnapshot as DomainSnapshot
    from .domain.context import State as State
    from .domain.mailbox import Mailbox as Mailbox
    from .domain.messages import AskTimeout as AskTimeout
    from .domain.messages import DomainNotRunning as DomainNotRunning
    from .domain.messages import MailboxFull as MailboxFull
    from .domain.messages import MessageError as MessageError
    from .domain.supervisor import ReconnectPolicy as ReconnectPolicy
    from .domain.supervisor import RestartPolicy as RestartPolicy
    from .lifecycle.auto import AutoSource as AutoSource
    from .lifecycle.domains import DomainsSource as DomainsSource
    from .lifecycle.mtwatch import MtwatchSource as MtwatchSource
    from .lifecycle.protocol import MTWATCH_ROOT as MTWATCH_ROOT
    from .options import RuntimeOptions as RuntimeOptions
    from .runtime import Runtime as Runtime
    from .runtime import open_runtime as open_runtime
    from .settling import NotSettled as NotSettled
    from .watch_rules import Watch as Watch
    from .workers.context import ProcessContext as ProcessContext
    from .workers.pool import WorkerDied as WorkerDied
    from .workers.pool import WorkerMemoryExceeded as WorkerMemoryExceeded
    from .workers.pool import WorkerPoolSnapshot as WorkerPoolSnapshot
