"""XenStore on trio: the sans-IO wire format (:mod:`actors.xs.wire`) and client protocol
(:mod:`actors.xs.protocol`), and a trio-native client (:mod:`actors.xs.client`).

The names below are loaded on first use (PEP 562): importing :mod:`actors.xs.wire` loads neither trio nor
loguru. Type checkers and IDEs see them through the ``TYPE_CHECKING`` imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_face

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Capabilities": "actors.xs.capabilities",
    "ClientProtocol": "actors.xs.protocol",
    "Feature": "actors.xs.wire",
    "Subscription": "actors.xs.subscription",
    "SyncXenStore": "actors.xs.sync",
    "Transaction": "actors.xs.client",
    "WatchEvent": "actors.xs.events",
    "XenStore": "actors.xs.client",
    "connect": "actors.xs.client",
    "open_xenstore": "actors.xs.client",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_face(__name__, globals(), _EXPORTS)


if TYPE_CHECKING:
    from .capabilities import Capabilities as Capabilities
    from .client import Transaction as Transaction
    from .client import XenStore as XenStore
    from .client import connect as connect
    from .client import open_xenstore as open_xenstore
    from .events import WatchEvent as WatchEvent
    from .protocol import ClientProtocol as ClientProtocol
    from .subscription import Subscription as Subscription
    from .sync import SyncXenStore as SyncXenStore
    from .wire import Feature as Feature
