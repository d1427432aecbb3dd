"""A control handler that raises answers that request with an error; the server goes on serving."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import trio

from actors.agent.control import ask, serve_control


async def ask_async(path: str, request: dict[str, object]) -> dict[str, Any]:
    return await trio.to_thread.run_sync(ask, path, request, abandon_on_cancel=True)


async def test_a_failing_handler_is_an_error_reply_and_the_server_goes_on(tmp_path: Path) -> None:
    path = str(tmp_path / "control")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()

    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        if request["op"] == "boom":
            raise RuntimeError("broken handler")
        return {"ok": True}

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, sock, handle)
        reply = await ask_async(path, {"op": "boom"})
        assert reply["ok"] is False
        assert "RuntimeError: broken handler" in reply["error"]
        assert await ask_async(path, {"op": "fine"}) == {"ok": True}
        nursery.cancel_scope.cancel()
