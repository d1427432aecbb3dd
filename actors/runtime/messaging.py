"""Messages to domain actors: what ``rt.on_message``, ``rt.send`` and ``rt.ask`` do."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import trio

from .domain.context import State
from .domain.life import ACCEPTING
from .domain.messages import AskTimeout, DomainNotRunning, MailboxFull, Message, MessageError, Reply
from .domain.owner import MessageHandler

__all__ = ["MessageInbox", "MessageTarget", "Messaging"]


class MessageInbox(Protocol):
    def post_message(self, message: Message) -> bool: ...


class MessageTarget(Protocol):
    """What messaging needs of a domain actor."""

    @property
    def state(self) -> State: ...

    @property
    def inbox(self) -> MessageInbox: ...


class Messaging:
    """The runtime's message handler and the way messages are posted; owned by the runtime, which lends it the
    lookup of a live actor."""

    def __init__(self, live_actor: Callable[[int], MessageTarget | None], message_limit: int) -> None:
        self._live_actor = live_actor
        self._message_limit = message_limit
        self.handler: MessageHandler | None = None

    def send(self, domid: int, message: object) -> None:
        self._post(domid, Message(message, None))

    async def ask(self, domid: int, message: object, timeout: float | None) -> Any:  # noqa: ASYNC109 (the issue asks for timeout=)
        reply = Reply()
        self._post(domid, Message(message, reply))
        with trio.move_on_after(math.inf if timeout is None else timeout):
            await reply.wait()
        if not reply.done:
            raise AskTimeout(f"domain {domid} did not answer within {timeout:g} s")
        if reply.error is not None:
            raise reply.error
        return reply.result

    def _post(self, domid: int, message: Message) -> None:
        if self.handler is None:
            raise MessageError("no message handler: register one with rt.on_message")
        actor = self._live_actor(domid)
        if actor is None:
            raise DomainNotRunning(f"no domain actor for domid {domid}")
        if not actor.inbox.post_message(message):
            if actor.state in ACCEPTING:
                raise MailboxFull(f"domain {domid} has {self._message_limit} messages waiting")
            raise DomainNotRunning(f"domain {domid} is {actor.state}")
