"""Where ``actors.connect()`` goes without a socket: the xenbus device when present, a clear error otherwise.

The device here is a FIFO standing in for /dev/xen/xenbus: what the client writes comes back to it, so a
READ request is read back as a READ "reply" carrying the request's own payload: real I/O through the device
path, one frame per write.
"""

from __future__ import annotations

import os

import pytest
import trio

import actors
from actors.xs import transport


@pytest.fixture
def no_sockets(monkeypatch: pytest.MonkeyPatch, workdir: str) -> str:
    """No socket anywhere the client looks; returns a folder for a device."""
    monkeypatch.delenv("XENSTORED_PATH", raising=False)
    monkeypatch.delenv("XENSTORED_RUNDIR", raising=False)
    monkeypatch.setattr(transport, "DEFAULT_SOCKETS", (os.path.join(workdir, "run-socket"),))
    monkeypatch.setattr(transport, "XENBUS_DEVICES", (os.path.join(workdir, "xenbus"),))
    return workdir


async def test_connect_falls_back_to_the_xenbus_device(no_sockets: str) -> None:
    device = os.path.join(no_sockets, "xenbus")
    os.mkfifo(device)
    async with actors.connect() as xs:
        assert xs.name == f"xenbus ({device})"
        assert xs.xenbus
        with trio.fail_after(5):
            assert await xs.read("/looped") == b"/looped\0"


async def test_neither_socket_nor_device_is_a_clear_error(no_sockets: str) -> None:
    with pytest.raises(
        actors.XenStoreUnavailable, match=r"no xenstored socket .*run-socket.* and no xenbus device"
    ):
        async with actors.connect():
            pass


async def test_a_chosen_socket_never_falls_back(no_sockets: str, monkeypatch: pytest.MonkeyPatch) -> None:
    os.mkfifo(os.path.join(no_sockets, "xenbus"))
    missing = os.path.join(no_sockets, "chosen")
    monkeypatch.setenv("XENSTORED_PATH", missing)
    with pytest.raises(actors.XenStoreUnavailable, match=f"no xenstored socket at {missing}"):
        async with actors.connect():
            pass


async def test_a_socket_at_the_standard_path_wins(xenstored: object, monkeypatch: pytest.MonkeyPatch) -> None:
    path = xenstored.socket_path  # type: ignore[attr-defined]
    monkeypatch.delenv("XENSTORED_PATH", raising=False)
    monkeypatch.delenv("XENSTORED_RUNDIR", raising=False)
    monkeypatch.setattr(transport, "DEFAULT_SOCKETS", (path,))
    monkeypatch.setattr(transport, "XENBUS_DEVICES", ("/dev/null",))
    async with actors.connect() as xs:
        assert xs.name == path and not xs.xenbus
        await xs.write("/a", "1")
