#!/usr/bin/env python3
"""A scripted xenstored for the bench: it streams watch events as fast as the socket takes them.

    python scripts/stream_xenstored.py --socket PATH --domains N

It speaks the real wire protocol over a unix socket, one thread per connection, standard library only (so its
own cost is a tight ``sendall``), and knows just enough to look like a host with domains ``1..N`` announced
under the mtwatch tree (``/local/domain/0/mtwatch/<domid>``, value ``uuid-<domid>``, perms ``n0``):

- WATCH is answered OK, then fires the watch once (as every xenstored does); UNWATCH is answered OK.
- DIRECTORY, READ and GET_PERMS answer for the mtwatch tree (its root exists, so a runtime follows it); other paths are ENOENT; other ops ENOSYS.
- ``WRITE /bench/prepare <count>`` or ``<count> <rate>``: encode ``count`` events for the connection's
  per-domain watches (those registered at ``/local/domain/<domid>/...``), round robin over the domains in domid
  order, the ``i``-th to ``<watch path>/e<i>`` (every event a distinct path: nothing can be coalesced).
- ``WRITE /bench/go``: answered, then the prepared events follow at once, or paced at ``rate`` events/s.

Exits on SIGTERM; prints ``listening`` on stderr once the socket accepts.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import threading
import time

HEADER = struct.Struct("=IIII")
DIRECTORY, READ, GET_PERMS, WATCH, UNWATCH, WRITE, WATCH_EVENT, ERROR = 1, 2, 3, 4, 5, 11, 15, 16
ROOT = "/local/domain/0/mtwatch"
PACE_BATCH = 1  # events sent together when paced


def frame(op: int, payload: bytes, req_id: int = 0, tx_id: int = 0) -> bytes:
    return HEADER.pack(op, req_id, tx_id, len(payload)) + payload


def event(path: str, token: str) -> bytes:
    return frame(WATCH_EVENT, f"{path}\0{token}\0".encode())


def domid_of(path: str) -> int | None:
    """The domid of a per-domain watch path ``/local/domain/<domid>/...`` (not dom0's mtwatch tree)."""
    parts = path.split("/")
    if len(parts) >= 5 and parts[1:3] == ["local", "domain"] and parts[3].isdigit() and parts[3] != "0":
        return int(parts[3])
    return None


class Connection:
    def __init__(self, sock: socket.socket, domains: int) -> None:
        self.sock = sock
        self.domains = domains
        self.watches: dict[str, str] = {}  # token -> path
        self.frames: list[bytes] = []
        self.rate = 0.0

    def serve(self) -> None:
        buf = bytearray()
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                buf += data
                while len(buf) >= HEADER.size:
                    op, req_id, tx_id, size = HEADER.unpack_from(buf)
                    if len(buf) < HEADER.size + size:
                        break
                    payload = bytes(buf[HEADER.size : HEADER.size + size])
                    del buf[: HEADER.size + size]
                    self.handle(op, req_id, tx_id, payload)
        except OSError:
            return
        finally:
            self.sock.close()

    def reply(self, op: int, req_id: int, tx_id: int, payload: bytes) -> None:
        self.sock.sendall(frame(op, payload, req_id, tx_id))

    def handle(self, op: int, req_id: int, tx_id: int, payload: bytes) -> None:
        parts = [p.decode() for p in payload.rstrip(b"\0").split(b"\0")] if payload else []
        path = parts[0] if parts else ""
        if op == WATCH:
            self.watches[parts[1]] = path
            self.reply(op, req_id, tx_id, b"OK\0")
            self.sock.sendall(event(path, parts[1]))
        elif op == UNWATCH:
            self.watches.pop(parts[1], None)
            self.reply(op, req_id, tx_id, b"OK\0")
        elif op == DIRECTORY and path == ROOT:
            self.reply(op, req_id, tx_id, b"".join(b"%d\0" % d for d in range(1, self.domains + 1)))
        elif op in (READ, GET_PERMS) and path == ROOT:
            self.reply(op, req_id, tx_id, b"n0\0" if op == GET_PERMS else b"")
        elif op in (READ, GET_PERMS) and self.announced(path):
            value = b"n0\0" if op == GET_PERMS else f"uuid-{path.rsplit('/', 1)[1]}".encode()
            self.reply(op, req_id, tx_id, value)
        elif op == WRITE and path == "/bench/prepare":
            self.prepare(op, req_id, tx_id, payload.split(b"\0", 1)[1].decode().split())
        elif op == WRITE and path == "/bench/go":
            self.reply(op, req_id, tx_id, b"OK\0")
            self.stream()
        elif op in (DIRECTORY, READ, GET_PERMS, WRITE):
            self.reply(ERROR, req_id, tx_id, b"ENOENT\0")
        else:
            self.reply(ERROR, req_id, tx_id, b"ENOSYS\0")

    def announced(self, path: str) -> bool:
        prefix, _, name = path.rpartition("/")
        return prefix == ROOT and name.isdigit() and 1 <= int(name) <= self.domains

    def prepare(self, op: int, req_id: int, tx_id: int, args: list[str]) -> None:
        count = int(args[0])
        self.rate = float(args[1]) if len(args) > 1 else 0.0
        targets = sorted(
            ((d, path, token) for token, path in self.watches.items() if (d := domid_of(path)) is not None),
        )
        if not targets:
            self.reply(ERROR, req_id, tx_id, b"EINVAL\0")
            return
        frames = []
        for i in range(count):
            _, path, token = targets[i % len(targets)]
            frames.append(event(f"{path}/e{i}", token))
        self.frames = frames
        self.reply(op, req_id, tx_id, b"OK\0")

    def stream(self) -> None:
        frames, rate = self.frames, self.rate
        if rate <= 0:
            self.sock.sendall(b"".join(frames))
            return
        start = time.monotonic()
        for i in range(0, len(frames), PACE_BATCH):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.sock.sendall(b"".join(frames[i : i + PACE_BATCH]))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--socket", required=True)
    parser.add_argument("--domains", type=int, default=100)
    args = parser.parse_args()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(args.socket)
    listener.listen(64)
    print("listening", file=sys.stderr, flush=True)
    while True:
        sock, _ = listener.accept()
        conn = Connection(sock, args.domains)
        threading.Thread(target=conn.serve, daemon=True).start()


if __name__ == "__main__":
    raise SystemExit(main())
