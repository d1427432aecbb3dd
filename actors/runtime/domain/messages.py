"""Messages to domain actors (``rt.send``, ``rt.ask``): they travel in the domain's mailbox, in order with its
watch events, and are never coalesced or dropped without a word (an asker always gets an answer)."""

from __future__ import annotations

from typing import Any

import trio

__all__ = ["AskTimeout", "DomainNotRunning", "MailboxFull", "Message", "MessageError", "Reply"]


class MessageError(Exception):
    """A message could not be delivered or answered."""


class DomainNotRunning(MessageError):
    """The domain has no actor, or its actor is not running (backoff, failed, stopping), or it stopped
    before it handled the message."""


class MailboxFull(MessageError):
    """The domain has ``message_limit`` messages waiting already; nothing was queued."""


class AskTimeout(MessageError, TimeoutError):
    """No answer within the ``timeout`` of ``rt.ask`` (the message stays queued and is still handled)."""


class Reply:
    """Where the answer to one ``ask`` goes: a result or an exception, set once."""

    __slots__ = ("_done", "error", "result")

    def __init__(self) -> None:
        self._done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def succeed(self, result: Any) -> None:
        if not self.done:
            self.result = result
            self._done.set()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.error = error
            self._done.set()

    async def wait(self) -> None:
        await self._done.wait()


class Message:
    """One message in a mailbox, with the reply an ``ask`` waits for (None for ``send``). Compared by
    identity: two messages are never one."""

    __slots__ = ("body", "reply")

    def __init__(self, body: object, reply: Reply | None) -> None:
        self.body = body
        self.reply = reply

    def abandon(self, domid: int) -> None:
        """The message will not be handled: its asker learns so at once."""
        if self.reply is not None:
            self.reply.fail(DomainNotRunning(f"domain {domid} stopped before it handled the message"))
