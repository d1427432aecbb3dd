"""The runtime's own requests for its domain actors (each starting actor's name, each actor's per-domain
watches), pipelined for many actors at once.

32,751 domains announced at once start 32,751 actors, and each asks the daemon for its name and registers its
watches. One request at a time per actor costs each request a trio event, a park and a wake-up, more than the
wire does; here a worker task sends the requests of up to ``BATCH`` actors in one
:class:`~actors.xs.pipeline.Pipeline`. Two workers, so that one batch's answers are handled while the next is on
the wire; the in-flight requests are bounded by the batches (this also bounds the memory a boot storm costs).

A new actor (without on_start hooks) is *prestarted*: its requests go first and its task is started once they
are done (:meth:`StartRequests.prestart`), so that 32,000 new actors never all wait at once, each holding its
waiting state (which the garbage collector would promote, then collect in full). Any other start, and every
later attach (a reconnect, a new watch rule, the end of a throttle), hands its requests over and parks once
(:meth:`StartRequests.ask`) until its batch's answers are in.

What each actor gets is what it would get asking alone: its name or None (absent, refused, connection down);
each watch registered, or skipped with a warning if refused, or nothing on a lost connection (the reconnect
attaches again). A watch registration runs under the domain's :class:`~.domain.registrations.Registrations` turn, taken when
the batch is sent, so an actor's detach (stop, failure) waits for it and then undoes it; an actor whose wait is
cancelled before its batch is sent is left out of the batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Final, Protocol

import trio

from ..._log import logger
from ...xs.errors import ConnectionLost, XenStoreError
from ...xs.pipeline import Answer, Pipeline
from ..watch_rules import Watch
from .registrations import Poster, Registrations, Sink

if TYPE_CHECKING:
    from ...xs.client import XenStore

__all__ = ["StartRequests"]

BATCH: Final = 128  # actors per pipeline
WORKERS: Final = 2


class StartingLife(Protocol):
    """What the start requests read of a domain actor's life (:class:`~.life.Life`)."""

    @property
    def identity(self) -> bytes: ...

    @property
    def desired(self) -> bytes | None: ...

    @property
    def generation(self) -> int: ...


class Starting(Protocol):
    """What the start requests need of a domain actor (:class:`~.actor.DomainActor`)."""

    domid: int
    name: str | None
    watches: Registrations

    @property
    def life(self) -> StartingLife: ...

    @property
    def inbox(self) -> Poster: ...

    @property
    def may_attach(self) -> bool: ...

    async def run(self, prestarted: bool = False) -> None: ...


class _Job:
    """One actor's requests: what to ask, then (in a pipeline) the name's READ and each watch's WATCH with what
    it registers."""

    __slots__ = (
        "actor",
        "asked_name",
        "asked_watches",
        "attach",
        "cancelled",
        "generation",
        "name",
        "spawn",
        "yours",
    )

    def __init__(self, actor: Starting, name: bool, attach: bool, spawn: bool = False) -> None:
        self.actor = actor
        self.name = name
        self.attach = attach
        self.spawn = spawn  # a new actor whose task is started once its requests are done
        self.generation = actor.life.generation
        self.cancelled = False
        self.yours = False  # the watches are the actor's to register: another attach or detach held the turn
        self.asked_name: Answer[bytes] | None = None
        self.asked_watches: list[tuple[Watch, str, str, Answer[None]]] | None = None


class _Batch:
    __slots__ = ("done", "jobs")

    def __init__(self) -> None:
        self.jobs: list[_Job] = []
        self.done = trio.Event()


class StartRequests:
    """See the module docstring. :meth:`run` is a task of the runtime's root nursery."""

    def __init__(self, watches: Callable[[], list[Watch]], spawn: Callable[[Starting], None]) -> None:
        self._watches_of = watches
        self._spawn = spawn
        self._batches: deque[_Batch] = deque()
        self._wake = trio.Event()

    def _add(self, job: _Job) -> _Batch:
        batches = self._batches
        if not batches or len(batches[-1].jobs) >= BATCH:
            batches.append(_Batch())
            self._wake.set()
        batch = batches[-1]
        batch.jobs.append(job)
        return batch

    def prestart(self, actor: Starting) -> None:
        """A new actor without on_start hooks: its name is read and its watches registered (for the generation
        it already has) first, and its task is started (``spawn``) once they are done, so that it never waits
        for them. 32,000 actors announced at once then never all wait at once, each with its waiting state."""
        self._add(_Job(actor, True, True, spawn=True))

    async def ask(self, actor: Starting, *, name: bool, attach: bool) -> bool:
        """Read the actor's name (into ``actor.name``) and/or register its missing per-domain watches. False if
        another attach or detach of the domain held its turn when the batch was sent (rare): the caller waits
        for the turn and asks again (see ``DomainActor.attach``)."""
        job = _Job(actor, name, attach)
        batch = self._add(job)
        try:
            await batch.done.wait()
        except BaseException:
            job.cancelled = True  # not sent yet: left out; sent: its registrations are undone by the detach
            raise
        return not job.yours

    async def run(self, connection: Callable[[], XenStore | None]) -> None:
        """The workers, forever (cancelled with the runtime). ``connection()`` is the runtime's current one."""
        async with trio.open_nursery() as nursery:
            for _ in range(WORKERS):
                nursery.start_soon(self._work, connection)

    async def _work(self, connection: Callable[[], XenStore | None]) -> None:
        while True:
            while not self._batches:
                self._wake = trio.Event()
                await self._wake.wait()
            batch = self._batches.popleft()
            try:
                await self._send(connection(), batch.jobs)
            except Exception:  # a bug here must not leave actors waiting forever, nor end the runtime
                logger.opt(exception=True).critical("the runtime's start requests failed: a bug in mtwatch")
            finally:
                batch.done.set()
                for job in batch.jobs:
                    if job.spawn:
                        self._spawn(job.actor)

    async def _send(self, xs: XenStore | None, jobs: list[_Job]) -> None:
        if xs is None or xs.is_lost:
            for job in jobs:
                if job.name:
                    job.actor.name = None
            return
        pipe = xs.pipeline()
        watches = self._watches_of()
        sent: list[_Job] = []
        try:
            for job in jobs:
                if not job.cancelled and self._queue(xs, pipe, job, watches):
                    sent.append(job)
            # Lost: every answer not in holds it: no name, nothing registered (the reconnect attaches).
            with suppress(ConnectionLost):
                await pipe.send()
        finally:  # every turn taken is given back, whatever happened
            for job in sent:
                self._settle(xs, job)

    def _queue(self, xs: XenStore, pipe: Pipeline, job: _Job, watches: list[Watch]) -> bool:
        """Add the job's requests to ``pipe`` (True if any); the watches only with the domain's registrations'
        turn taken."""
        actor = job.actor
        if job.spawn and actor.life.desired != actor.life.identity:
            return False  # gone or renamed before its task began: the task sees to it (nothing to register)
        if job.name:
            job.asked_name = pipe.read(f"/local/domain/{actor.domid}/name")
        if job.attach and actor.life.generation == job.generation and actor.may_attach:
            registrations = actor.watches
            missing = registrations.missing(xs, watches)
            if missing and registrations.take_turn():
                domid, generation = actor.domid, job.generation
                job.asked_watches = asked = []
                try:
                    for watch in missing:
                        path, token = watch.path(domid), watch.token(domid, generation)
                        answer = pipe.watch(path, token, Sink(actor.inbox, watch, generation, path))
                        asked.append((watch, path, token, answer))
                except BaseException:
                    job.asked_watches = None
                    registrations.give_turn()
                    raise
            elif missing:
                job.yours = True
        return job.asked_name is not None or job.asked_watches is not None

    @staticmethod
    def _settle(xs: XenStore, job: _Job) -> None:
        actor = job.actor
        if job.asked_name is not None:
            name, job.asked_name = job.asked_name, None
            actor.name = None if name.failed else name.result().decode(errors="replace")
        if job.asked_watches is None:
            return
        asked, job.asked_watches = job.asked_watches, None
        registrations = actor.watches
        try:
            for watch, path, token, answer in asked:
                if not answer.failed:  # (failed: refused, timed out, lost, or never sent)
                    registrations.record(watch, xs, path, token)
                elif isinstance(answer.error, XenStoreError) and not isinstance(answer.error, ConnectionLost):
                    logger.bind(domid=actor.domid).warning("cannot watch {}: {}", path, answer.error)
        finally:
            registrations.give_turn()
