"""The handler of CONTROL (alias DEBUG): the commands of C xenstored's ``control.c`` this daemon has."""

from __future__ import annotations

import dataclasses
import os
from typing import Final

from loguru import logger

from actors.xs.wire import Frame

from ..connection import Connection
from ..core import Core
from ..failure import EBADF, EINVAL, ENOENT, Fail
from ..permissions import atoi
from ..transactions import Transaction, View
from .common import OK, domid_arg, strings

__all__ = ["do_control"]

_HARD_QUOTAS: Final = (
    ("nodes", "nodes", "Nodes per domain"),
    ("watches", "watches", "Watches per domain"),
    ("transactions", "transactions", "Transactions per domain"),
    ("outstanding", "outstanding", "Outstanding requests per domain"),
    ("transaction-nodes", "transaction_nodes", "Max. number of accessed nodes per transaction"),
    ("memory", "memory", "Total Xenstore memory per domain (error level)"),
    ("node-size", "node_size", "Max. size of a node"),
    ("path-max", "path_length", "Max. length of a node path"),
    ("permissions", "permissions", "Max. number of permissions per node"),
)
_SOFT_QUOTAS: Final = (("memory", "memory_soft", "Total Xenstore memory per domain (warning level)"),)
_COMMANDS: Final = (
    ("check", ""),
    ("log", "on|off"),
    ("live-update", "[-c <cmdline>] [-F] [-t <timeout>] <file>\n    Default timeout is 60 seconds."),
    ("logfile", "<file>"),
    ("memreport", "[<file>]"),
    ("print", "<string>"),
    ("quota", "[set <name> <val>|<domid>]"),
    ("quota-soft", "[set <name> <val>]"),
    ("help", ""),
)


def _quota_show(core: Core, table: tuple[tuple[str, str, str], ...]) -> bytes:
    lines = ["Quota settings:\n"]
    for name, attr, descr in table:
        lines.append(f"{name:<17s}: {int(getattr(core.quotas, attr)):8d} {descr}\n")
    return "".join(lines).encode() + b"\0"


def _quota_set(core: Core, args: list[bytes], table: tuple[tuple[str, str, str], ...]) -> bytes:
    if len(args) != 2:
        raise Fail(EINVAL)
    value = atoi(args[1])
    if value < 1:
        raise Fail(EINVAL)
    for name, attr, _ in table:
        if args[0] == name.encode():
            core.quotas = dataclasses.replace(core.quotas, **{attr: value})
            return OK
    raise Fail(EINVAL)


def _memory(core: Core, domid: int, conns: list[Connection]) -> int:
    """Roughly C's per-domain memory accounting: node records and keys, watches, queued output."""
    nodes = sum(node.size() + len(path) for path, node in core.store.nodes.items() if node.owner == domid)
    watches = sum(len(w.path) + len(w.token) for c in conns for w in c.watches.values())
    return nodes + watches + sum(c.queued_bytes for c in conns)


def _quota_domain(core: Core, raw: bytes) -> bytes:
    domid = domid_arg(raw)
    domain = core.domains.get(domid)
    if domain is None:
        raise Fail(ENOENT)
    conns = [c for c in core.connections.values() if c.domid == domid]
    rows = (
        ("nodes", core.store.count(domid)),
        ("watches", sum(len(c.watches) for c in conns)),
        ("transactions", sum(len(c.transactions) for c in conns)),
        ("outstanding", 0),
        ("memory", _memory(core, domid, conns)),
    )
    text = f"Domain {domid}:\n" + "".join(f"{name:<16s}: {value:8d}\n" for name, value in rows)
    return text.encode() + b"\0"


def do_control(core: Core, conn: Connection, frame: Frame, tx: Transaction | None, view: View) -> bytes:
    args = strings(frame.payload)
    if not args:
        raise Fail(EINVAL)
    cmd, rest = args[0], args[1:]
    if cmd == b"check":
        if rest:
            raise Fail(EINVAL)
        return OK
    if cmd == b"log":
        if len(rest) != 1 or rest[0] not in (b"on", b"off"):
            raise Fail(EINVAL)
        return OK
    if cmd == b"logfile":
        if len(rest) != 1:
            raise Fail(EINVAL)
        return OK
    if cmd == b"memreport":
        if len(rest) > 1:
            raise Fail(EINVAL)
        if not rest:
            raise Fail(EBADF)  # no trace file
        try:
            with open(os.fsdecode(rest[0]), "a") as fp:
                fp.write(f"xenstored: {len(core.store)} nodes, {len(core.connections)} connections\n")
        except OSError:
            raise Fail(EBADF) from None
        return OK
    if cmd == b"print":
        if len(rest) != 1:
            raise Fail(EINVAL)
        logger.info("control: {}", rest[0].decode("utf-8", "replace"))
        return OK
    if cmd == b"quota":
        if not rest:
            return _quota_show(core, _HARD_QUOTAS)
        if rest[0] == b"set":
            return _quota_set(core, rest[1:], _HARD_QUOTAS)
        if len(rest) != 1:
            raise Fail(EINVAL)
        return _quota_domain(core, rest[0])
    if cmd == b"quota-soft":
        if not rest:
            return _quota_show(core, _SOFT_QUOTAS)
        if rest[0] == b"set":
            return _quota_set(core, rest[1:], _SOFT_QUOTAS)
        raise Fail(EINVAL)
    if cmd == b"live-update":  # not supported here; C answers EINVAL to a bare "live-update" too
        raise Fail(EINVAL)
    if cmd == b"help":
        if rest:
            raise Fail(EINVAL)
        return "".join(f"{name}\t{pars}\n" for name, pars in _COMMANDS).encode() + b"\0"
    raise Fail(EINVAL)
