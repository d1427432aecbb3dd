"""XenStore on trio: the sans-IO wire format (:mod:`actors.xs.wire`) and client protocol
(:mod:`actors.xs.protocol`), and a trio-native client (:mod:`actors.xs.client`).

The names below are loaded on first use (PEP 562): importing :mod:`actors.xs.wire` loads neither trio nor
loguru. Type checkers and IDEs see them through the ``TYPE_CHECKING`` imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Capabilities": "actors.xs.daemon",
    "ClientProtocol": "actors.xs.protocol",
    "Feature": "actors.xs.daemon",
    "Subscription": "actors.xs.subscription",
    "Transaction": "actors.xs.operations",
    "WatchEvent": "actors.xs.events",
    "XenStore": "actors.xs.client",
    "connect": "actors.xs.client",
    "open_xenstore": "actors.xs.client",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'actors.xs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from .client import XenStore as XenStore
    from .client import connect as connect
    from .client import open_xenstore as open_xenstore
    from .daemon import Capabilities as Capabilities
    from .daemon import Feature as Feature
    from .events import WatchEvent as WatchEvent
    from .operations import Transaction as Transaction
    from .protocol import ClientProtocol as ClientProtocol
    from .subscription import Subscription as Subscription
