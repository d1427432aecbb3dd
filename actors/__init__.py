"""mtwatch: a dom0 watch runtime for Xen hosts, one supervised trio actor per guest domain.

The names below are loaded on first use (PEP 562), so that importing one layer (``actors.xs.wire``, the
embedded ``actors.xenstored``) does not load the others; type checkers and IDEs see them through the
``TYPE_CHECKING`` imports. Logging: the ``actors`` loggers are disabled until ``logger.enable("actors")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_face
from .xs import errors as _errors  # sans-IO, light: its names are the error list below

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        [
            "MTWATCH_ROOT",
            "DomainContext",
            "DomainSnapshot",
            "HandlerError",
            "HandlerTimeout",
            "ReconnectPolicy",
            "RestartPolicy",
            "Runtime",
            "State",
            "Watch",
            "open_runtime",
            "RuntimeOptions",
            "AskTimeout",
            "DomainNotRunning",
            "MailboxFull",
            "MessageError",
            "AutoSource",
            "DomainsSource",
            "MtwatchSource",
            "NotSettled",
            "ProcessContext",
            "WorkerDied",
            "WorkerMemoryExceeded",
        ],
        "actors.runtime",
    ),
    **dict.fromkeys(["announce_domain", "retire_domain"], "actors.toolstack"),
    **dict.fromkeys(
        [
            "Capabilities",
            "Feature",
            "Subscription",
            "Transaction",
            "WatchEvent",
            "XenStore",
            "connect",
            "open_xenstore",
            "SyncXenStore",
        ],
        "actors.xs",
    ),
    **dict.fromkeys((name for name in _errors.__all__ if name[0].isupper()), "actors.xs.errors"),
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_face(__name__, globals(), _EXPORTS)


if TYPE_CHECKING:
    from .runtime import MTWATCH_ROOT as MTWATCH_ROOT
    from .runtime import AskTimeout as AskTimeout
    from .runtime import AutoSource as AutoSource
    from .runtime import DomainContext as DomainContext
    from .runtime import DomainNotRunning as DomainNotRunning
    from .runtime import DomainSnapshot as DomainSnapshot
    from .runtime import DomainsSource as DomainsSource
    from .runtime import HandlerError as HandlerError
    from .runtime import HandlerTimeout as HandlerTimeout
    from .runtime import MailboxFull as MailboxFull
    from .runtime import MessageError as MessageError
    from .runtime import MtwatchSource as MtwatchSource
    from .runtime import NotSettled as NotSettled
    from .runtime import ProcessContext as ProcessContext
    from .runtime import ReconnectPolicy as ReconnectPolicy
    from .runtime import RestartPolicy as RestartPolicy
    from .runtime import Runtime as Runtime
    from .runtime import RuntimeOptions as RuntimeOptions
    from .runtime import State as State
    from .runtime import Watch as Watch
    from .runtime import WorkerDied as WorkerDied
    from .runtime import WorkerMemoryExceeded as WorkerMemoryExceeded
    from .runtime import open_runtime as open_runtime
    from .toolstack import announce_domain as announce_domain
    from .toolstack import retire_domain as retire_domain
    from .xs import Capabilities as Capabilities
    from .xs import Feature as Feature
    from .xs import Subscription as Subscription
    from .xs import SyncXenStore as SyncXenStore
    from .xs import Transaction as Transaction
    from .xs import WatchEvent as WatchEvent
    from .xs import XenStore as XenStore
    from .xs import connect as connect
    from .xs import open_xenstore as open_xenstore
    from .xs.errors import AlreadyExists as AlreadyExists
    from .xs.errors import ConflictDeadline as ConflictDeadline
    from .xs.errors import ConnectionLost as ConnectionLost
    from .xs.errors import ConnectionStalled as ConnectionStalled
    from .xs.errors import InvalidArgument as InvalidArgument
    from .xs.errors import InvalidDomid as InvalidDomid
    from .xs.errors import InvalidPath as InvalidPath
    from .xs.errors import InvalidPermission as InvalidPermission
    from .xs.errors import NotFound as NotFound
    from .xs.errors import OperationFailed as OperationFailed
    from .xs.errors import PayloadTooLarge as PayloadTooLarge
    from .xs.errors import PermissionDenied as PermissionDenied
    from .xs.errors import ProtocolError as ProtocolError
    from .xs.errors import QuotaExceeded as QuotaExceeded
    from .xs.errors import RequestTimeout as RequestTimeout
    from .xs.errors import TokenInUse as TokenInUse
    from .xs.errors import TransactionConflict as TransactionConflict
    from .xs.errors import Unsupported as Unsupported
    from .xs.errors import XenStoreError as XenStoreError
    from .xs.errors import XenStoreUnavailable as XenStoreUnavailable
