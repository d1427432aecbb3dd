"""The runtime's face for messages to domain actors: ``rt.on_message``, ``rt.send``, ``rt.ask``."""

from __future__ import annotations

import math
from typing import Any

import trio

from .domain.actor import DomainActor
from .domain.context import State
from .domain.messages import AskTimeout, DomainNotRunning, MailboxFull, Message, MessageError, Reply
from .domain.owner import MessageHandler
from .options import RuntimeOptions

__all__ = ["Messaging"]


class Messaging:
    """Mixed into :class:`~.runtime.Runtime`."""

    _actors: dict[int, DomainActor]
    options: RuntimeOptions
    message_handler: MessageHandler | None

    def on_message(self, handler: MessageHandler) -> MessageHandler:
        """``async def handler(ctx, message)`` handles what :meth:`send` and :meth:`ask` deliver, in the
        domain's actor, in order with its watch events; usable as a decorator. One per runtime (a second
        replaces the first). What it raises is a failure of that domain (and the asker's exception)."""
        self.message_handler = handler
        return handler

    def send(self, domid: int, message: object) -> None:
        """Deliver ``message`` to domain ``domid``'s message handler; never blocks. Raises DomainNotRunning
        (no actor, or not running), MailboxFull (``message_limit`` waiting), MessageError (no handler)."""
        self._post_message(domid, Message(message, None))

    async def ask(self, domid: int, message: object, *, timeout: float | None = 30.0) -> Any:  # noqa: ASYNC109 (the issue asks for timeout=)
        """Deliver ``message`` like :meth:`send` and return what the handler returns (or raise what it
        raised). DomainNotRunning if the domain stops before it handles it; AskTimeout past ``timeout``
        seconds (None: no limit; the message stays queued and is still handled)."""
        reply = Reply()
        self._post_message(domid, Message(message, reply))
        with trio.move_on_after(math.inf if timeout is None else timeout):
            await reply.wait()
        if not reply.done:
            raise AskTimeout(f"domain {domid} did not answer within {timeout:g} s")
        if reply.error is not None:
            raise reply.error
        return reply.result

    def _post_message(self, domid: int, message: Message) -> None:
        if self.message_handler is None:
            raise MessageError("no message handler: register one with rt.on_message")
        actor = self._actors.get(domid)
        if actor is None:
            raise DomainNotRunning(f"no domain actor for domid {domid}")
        if not actor.post_message(message):
            if actor.state in (State.STARTING, State.RUNNING):
                raise MailboxFull(f"domain {domid} has {self.options.message_limit} messages waiting")
            raise DomainNotRunning(f"domain {domid} is {actor.state}")
