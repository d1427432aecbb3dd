"""``mtwatch top``: the agent's domains, live, in a curses screen fitted to the terminal: the header pinned, the
rows scrolling with the selection, sorted by trouble then activity (``s`` cycles the sort). ``r`` resets the
selected domain, ``R`` every failed one, ``q`` (Ctrl-C, SIGTERM) quits; a lost agent is retried, a busy one
waited for (its last screen stays, marked).

Each refresh asks for :data:`ROWS` rows (trouble first, then by domid; ``--rows`` sets it) rather than every
domain: at 32,751 domains the whole document is megabytes each second for a screen of fifty lines. The totals
line counts every domain whatever the rows.
"""

from __future__ import annotations

import contextlib
import curses
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from .control import AgentBusy, Connection, ControlUnavailable
from .exits import Exit
from .quotas import quota_labels
from .status import COLUMNS, SORTS, header, rates_between, rows, totals

__all__ = ["run_top"]

KEYS = "q quit  s sort  up/down select  r reset  R reset all failed"
ROWS = 500  # rows asked for at each refresh


class _Stop(Exception):
    """SIGTERM: leave curses in order."""


@dataclass
class View:
    """What the screen shows, between refreshes."""

    path: str
    limit: int | None = ROWS
    doc: dict[str, Any] | None = None
    rates: dict[int, float | None] | None = None
    taken_at: float = 0.0
    sort: str = "trouble"
    selected: int | None = None  # a domid
    offset: int = 0
    message: str = ""
    order: list[int] = field(default_factory=list)

    def refresh(self, conn: Connection) -> None:
        try:
            doc = conn.ask({"op": "status", "limit": self.limit})
        except AgentBusy as exc:  # alive: keep the last screen
            self.message = f"busy: {exc}"
            return
        except ControlUnavailable as exc:
            self.doc, self.rates, self.message = None, None, f"reconnecting: {exc}"
            return
        now = time.monotonic()
        self.rates = rates_between(self.doc, doc, now - self.taken_at) if self.doc is not None else None
        self.doc, self.taken_at = doc, now
        if self.message.startswith(("reconnecting: ", "busy: ")):
            self.message = ""

    def lines(self) -> tuple[list[str], list[tuple[int, str]]]:
        """The pinned header and the rows."""
        title = f"mtwatch top - sort: {self.sort} - {time.strftime('%H:%M:%S')} - {self.path}"
        if self.doc is None:
            return [title, "", "no agent"], []
        table = rows(self.doc, self.rates, labels=quota_labels(self.doc), sort=self.sort)
        return [title, *header(self.doc), totals(self.doc), "", COLUMNS], table

    def key(self, key: int, conn: Connection) -> bool:
        """Act on a key; False to quit."""
        if key in (ord("q"), ord("Q")):
            return False
        if key == ord("s"):
            names = list(SORTS)
            self.sort = names[(names.index(self.sort) + 1) % len(names)]
        elif key in (curses.KEY_DOWN, ord("j"), curses.KEY_UP, ord("k")) and self.order:
            step = 1 if key in (curses.KEY_DOWN, ord("j")) else -1
            at = self.order.index(self.selected) if self.selected in self.order else -step
            self.selected = self.order[max(0, min(len(self.order) - 1, at + step))]
        elif key in (ord("r"), ord("R")):
            request: dict[str, Any] = {"op": "reset", "failed": True}
            if key == ord("r"):
                if self.selected is None:
                    self.message = "select a domain first (up/down)"
                    return True
                request = {"op": "reset", "domid": self.selected}
            self.message = _reset(conn, request)
        return True


def _reset(conn: Connection, request: dict[str, Any]) -> str:
    try:
        answer = conn.ask(request)
    except ControlUnavailable as exc:
        return str(exc)
    if not answer.get("ok"):
        return str(answer.get("error"))
    return f"reset {', '.join(map(str, answer['reset']))}" if answer.get("reset") else "no failed domain"


def draw(screen: curses.window, view: View) -> None:
    height, width = screen.getmaxyx()
    screen.erase()
    head, table = view.lines()
    head = head[: max(0, height - 1)]
    view.order = [domid for domid, _ in table]
    room = max(0, height - len(head) - 1)
    at = view.order.index(view.selected) if view.selected in view.order else 0
    view.offset = min(max(view.offset, at - room + 1), at, max(0, len(table) - room))
    view.offset = max(0, view.offset)
    for y, text in enumerate(head):
        _put(screen, y, text, width, curses.A_BOLD if y == 0 else 0)
    for i, (domid, text) in enumerate(table[view.offset : view.offset + room]):
        _put(screen, len(head) + i, text, width, curses.A_REVERSE if domid == view.selected else 0)
    shown = f"rows {view.offset + 1}-{view.offset + min(room, len(table))} of {len(table)}" if table else ""
    _put(screen, height - 1, "  ".join(p for p in (view.message, shown, KEYS) if p), width, curses.A_DIM)
    screen.refresh()


def _put(screen: curses.window, y: int, text: str, width: int, attr: int) -> None:
    with contextlib.suppress(curses.error):  # the bottom-right cell cannot be written without scrolling
        screen.addnstr(y, 0, text, max(0, width - 1), attr)


def _loop(screen: curses.window, path: str, interval: float, limit: int | None) -> None:
    with contextlib.suppress(curses.error):
        curses.curs_set(0)
    screen.keypad(True)
    screen.timeout(int(interval * 1000))
    view = View(path, limit)
    conn = Connection(path, timeout=max(1.0, min(5.0, interval * 2)))
    try:
        next_refresh = 0.0
        while True:
            if time.monotonic() >= next_refresh:
                view.refresh(conn)
                next_refresh = time.monotonic() + interval
            draw(screen, view)
            key = screen.getch()
            if key == curses.KEY_RESIZE:
                continue
            if key != -1 and not view.key(key, conn):
                return
            if key not in (-1, curses.KEY_RESIZE):
                next_refresh = 0.0  # show what the key did at once
    finally:
        conn.close()


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_top(path: str, interval: float, limit: int | None = ROWS) -> int:
    """Run the screen until ``q``, Ctrl-C or SIGTERM."""
    if not sys.stdout.isatty() or not sys.stdin.isatty():
        print(
            "mtwatch top: needs a terminal (for scripts: mtwatch domains, mtwatch status --json)",
            file=sys.stderr,
        )
        return Exit.USAGE
    try:
        with _sigterm_stops():
            curses.wrapper(_loop, path, interval, limit)
    except KeyboardInterrupt:
        print("mtwatch top: interrupted", file=sys.stderr)
    except _Stop:
        print("mtwatch top: SIGTERM received, stopping", file=sys.stderr)
    return Exit.OK
