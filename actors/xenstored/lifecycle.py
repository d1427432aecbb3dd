"""Domains coming and going: INTRODUCE, a guest's stream attached and detached, shutdown, death and RELEASE,
and the @introduceDomain / @releaseDomain events they fire (C xenstored's ``domain.c``)."""

from __future__ import annotations

from typing import Final

import trio
from loguru import logger

from actors.xs.wire import INTRODUCE_DOMAIN, RELEASE_DOMAIN

from .connection import Connection
from .core import Core
from .permissions import READ, perm_for
from .store import child_path, parent_path
from .watches import Watch

_INTRODUCE_DOMAIN: Final = INTRODUCE_DOMAIN.encode()
_RELEASE_DOMAIN: Final = RELEASE_DOMAIN.encode()

__all__ = ["attach", "destroy_domain", "detach", "fire_special", "introduce", "shutdown_domain"]


def fire_special(core: Core, path: bytes, domid: int, *, bare: bool = True, with_domid: bool = True) -> None:
    """``fire_special_watches()``: @introduceDomain / @releaseDomain, only to connections allowed to read
    the special path. ``bare``: the watches on the path itself without a depth (4.17: all of them);
    ``with_domid`` (4.22): the event ``<path>/<domid>`` to watches on the path with a depth of 1 or more
    and to watches on ``<path>/<domid>``."""
    perms = core.special_perms[path]
    events: list[tuple[Watch[Connection], bytes]] = []
    if bare:
        events += [(w, path) for w in core.watches.match(path, True) if w.depth is None]
    if with_domid and core.v422:
        named = path + b"/%d" % domid
        events += [(w, named) for w in core.watches.match(path, True) if w.depth]
        events += [(w, named) for w in core.watches.match(named, True)]
        events.sort(key=lambda e: (e[0].conn.seq, e[0].seq))
    for watch, event in events:
        if perm_for(watch.conn, perms, core.any_domain) & READ:
            watch.conn.send_event(event, watch.token)


# -- domains ---------------------------------------------------------------------------------------


def introduce(core: Core, domid: int) -> bool:
    """Introduce ``domid`` (a guest) if it is not yet; returns whether it was new.

    A new domain gets a connection without a stream (a ring nobody reads) and fires @introduceDomain;
    re-introducing a domain resets its connection's watches and transactions, as C does.
    """
    domain = core.domains.introduced(domid)
    if domain is not None:
        if domain.conn is not None:
            core.reset_connection(domain.conn)
        return False
    domain = core.domains.ensure(domid, core.store.generation)
    domain.introduced = True
    domain.shutdown = False
    domain.conn = core.connect(None, domid)
    domain.conn.target = domain.target
    logger.info("domain {} introduced", domid)
    fire_special(core, _INTRODUCE_DOMAIN, domid)
    return True


def attach(core: Core, domid: int, stream: trio.abc.Stream) -> Connection:
    """Make ``stream`` the (introduced) domain's connection, dropping the one it had."""
    domain = core.domains.introduced(domid)
    assert domain is not None
    old = domain.conn
    conn = core.connect(stream, domid)
    conn.target = domain.target
    domain.conn = conn
    if old is not None:
        core.disconnect(old)
    return conn


def detach(core: Core, conn: Connection) -> None:
    """A guest stream went away. Like a ring nobody reads any more, the domain's connection stays, with
    its watches and transactions (events to it are dropped), until the domain is introduced again
    (:meth:`attach`), released or dead."""
    domain = core.domains.introduced(conn.domid)
    if domain is not None and domain.conn is conn and not conn.closed:
        if conn.broken:  # ignore_connection(): its watches and transactions go
            core.reset_connection(conn)
        conn.detach_stream()
    else:
        core.disconnect(conn)


def destroy_domain(core: Core, domid: int) -> None:
    """``destroy_domain()``: drop the domain's connection, remove the nodes it owns, and fire
    @releaseDomain if it had been introduced."""
    domain = core.domains.get(domid)
    if domain is None or domid == 0:
        return
    if domain.conn is not None:
        core.disconnect(domain.conn)
        domain.conn = None
    _remove_owned(core, domid)
    core.domains.remove(domid)
    for path, perms in core.special_perms.items():
        owner = perms[0]
        if owner[1] == domid:
            owner = (owner[0], 0)
        core.special_perms[path] = (owner, *(p for p in perms[1:] if p[1] != domid))
    if core.v422:
        _drop_perms(core, domid)
    if domain.introduced:
        logger.info("domain {} released", domid)
        fire_special(core, _RELEASE_DOMAIN, domid)


def shutdown_domain(core: Core, domid: int) -> None:
    """The hypervisor reports ``domid`` shut down (not dead): once per shutdown (RESUME re-arms), fire
    @releaseDomain (4.22: first ``@releaseDomain/<domid>``, then the bare watches)."""
    domain = core.domains.introduced(domid)
    if domain is None or domid == 0 or domain.shutdown:
        return
    domain.shutdown = True
    fire_special(core, _RELEASE_DOMAIN, domid, bare=False)
    fire_special(core, _RELEASE_DOMAIN, domid, with_domid=False)


def _drop_perms(core: Core, domid: int) -> None:
    """4.22 ``domain_tree_remove()``: permission entries naming a dead domain are removed from every node,
    so a later domain with the same domid inherits nothing."""
    for node in core.store.nodes.values():
        perms = node.perms
        if len(perms) > 1 and any(who == domid for _, who in perms[1:]):
            node.perms = (perms[0], *(p for p in perms[1:] if p[1] != domid))


def _remove_owned(core: Core, domid: int) -> None:
    """``domain_tree_remove()``: remove every node owned by ``domid``, with its subtree."""
    store = core.store
    stack = [b"/"]
    while stack and store.count(domid):
        path = stack.pop()
        node = store.get(path)
        if node is None:
            continue
        if node.owner == domid and path != b"/":
            parent = store.get(parent_path(path))
            if parent is not None:
                core.rm_node(core.view, path, parent)
            continue
        stack.extend(child_path(path, name) for name in reversed(node.children))
