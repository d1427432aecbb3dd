"""Debian's oxenstored (Xen 4.17's OCaml xenstored), run without a hypervisor, for tests.

It runs under the same preload library as C xenstored (see :mod:`harness.cxenstored`): the library moves its
fixed socket folder /var/run/xenstored into the workdir and lets its RLIMIT_NOFILE raise fail softly. It
reads its settings from ``workdir/oxenstored.conf``, written here; its own log goes to ``workdir/oxenstored-log``
and every request to ``workdir/access-log``. Guests, domain death and stopping work as for C xenstored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from harness.build import PROJECT_ROOT, Daemon
from harness.cxenstored import CXenStored, open_cxenstored, probe_cxenstored

__all__ = ["O_XENSTORED", "open_oxenstored", "probe_oxenstored"]

OXENSTORED_CANDIDATES: Final = (
    PROJECT_ROOT / ".cache/xen/usr/lib/xen-4.17/bin/oxenstored",
    Path("/usr/lib/xen-4.17/bin/oxenstored"),
)


def _config(work: Path) -> str:
    # Without xenstored-kva/-port it opens "" and dies; the log files' folder must exist. Its quotas stay at
    # their defaults: the tests pin how they differ from C xenstored's.
    return "\n".join(
        [
            "xenstored-kva = /proc/xen/xsd_kva",
            "xenstored-port = /proc/xen/xsd_port",
            f"pid-file = {work / 'pid'}",
            f"xenstored-log-file = {work / 'oxenstored-log'}",
            f"access-log-file = {work / 'access-log'}",
            "persistent = false",
            "",
        ]
    )


def _command(work: Path, binary: Path, trace: bool) -> list[str]:
    del trace  # its access log always records every request
    config = work / "oxenstored.conf"
    config.write_text(_config(work))
    return [str(binary), "--no-fork", "--config-file", str(config)]


O_XENSTORED: Final = Daemon("oxenstored", "oxenstored", "MTW_OXENSTORED", OXENSTORED_CANDIDATES, _command)


def probe_oxenstored() -> None:
    """:func:`harness.cxenstored.probe_cxenstored` for oxenstored."""
    probe_cxenstored(O_XENSTORED)


@asynccontextmanager
async def open_oxenstored(workdir: str) -> AsyncIterator[CXenStored]:
    """Run oxenstored with its socket at ``workdir/socket`` for the body's duration (see
    :func:`harness.cxenstored.open_cxenstored`); the server's ``name`` is "oxenstored"."""
    async with open_cxenstored(workdir, daemon=O_XENSTORED) as server:
        yield server
