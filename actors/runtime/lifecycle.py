"""Where the set of live guest domains comes from: the lifecycle sources.

- ``mtwatch`` (:mod:`.mtwatch_tree`): the xenwatch-multithreading nodes under ``/local/domain/0/mtwatch``.
- ``domains`` (:mod:`.host_domains`): a stock Xen host's domains, as its daemon knows them.

The protocol between a source and the registry, and the tools sources share, are in :mod:`.source`.
"""

from __future__ import annotations

from .host_domains import DomainsSource
from .mtwatch_tree import MtwatchSource
from .source import MTWATCH_ROOT, LifecycleSink, LifecycleSource, gather_bounded, owner_of

__all__ = [
    "MTWATCH_ROOT",
    "DomainsSource",
    "LifecycleSink",
    "LifecycleSource",
    "MtwatchSource",
    "gather_bounded",
    "owner_of",
]
