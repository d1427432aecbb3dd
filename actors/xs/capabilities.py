"""What the daemon can do, probed once per connection, and the operations on domains and the daemon itself
(INTRODUCE, RELEASE, ..., CONTROL, and Xen 4.21/4.22's GET/SET_FEATURE and GET/SET_QUOTA).

How the daemon is told apart, without sending anything it may leave unanswered: GET_FEATURE answers with a
bitmap on C xenstored 4.21+ and the embedded one, ENOSYS on older ones and on oxenstored. DIRECTORY_PART
answers ENOSYS only on oxenstored, and oxenstored alone lists ``@introduceDomain`` in ``DIRECTORY /``. So
oxenstored is known by either sign, and RESET_WATCHES (which oxenstored never answers) is never sent to it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import overload

from .errors import ErrorReply, ProtocolError, Unsupported
from .pipeline import WINDOW, Answer, Pipeline
from .wire import Op, check_domid, introduced, join, split

__all__ = ["Capabilities", "DaemonOperations", "Feature"]


class Feature(enum.IntFlag):
    """GET_FEATURE's bits (Xen 4.21+)."""

    RECONNECTION = 1
    ERROR = 2
    WATCHDEPTH = 4
    DOMID_ANY = 8


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What this connection's daemon answers, probed once (:meth:`XenStore.capabilities`).

    ``features``: this connection's feature bits (0 where GET_FEATURE is ENOSYS). ``directory_part``: the
    daemon answers DIRECTORY_PART. ``reset_watches``: RESET_WATCHES gets an answer (not on oxenstored).
    ``daemon``: "oxenstored", or "cxenstored" for a daemon that answers as C xenstored does (the embedded
    xenstored does so by design, and is named so); best effort. ``feature_ops``: GET/SET_FEATURE and
    GET/SET_QUOTA exist (Xen 4.21+).
    """

    features: Feature
    directory_part: bool
    reset_watches: bool
    daemon: str
    feature_ops: bool = False


def _payload_or_error_reply(answer: Answer[bytes]) -> bytes | ErrorReply:
    """The answer's payload, or its error reply (an answer of its own to the probe); anything else (a lost
    connection, a timeout) is raised."""
    error = answer.error
    return error if isinstance(error, ErrorReply) else answer.result()


def _number(reply: bytes, what: str) -> int:
    text = reply.rstrip(b"\0")
    if not text.isdigit() or len(text) > 20:
        raise ProtocolError(f"{what}: expected a decimal number, got {reply[:80]!r}")
    return int(text)


class DaemonOperations:
    """Domains, CONTROL, features and quotas; mixed into :class:`~actors.xs.client.XenStore`."""

    async def _request(self, op: Op, payload: bytes, tx_id: int = 0, path: str | None = None) -> bytes:
        raise NotImplementedError

    def pipeline(self, window: int = WINDOW) -> Pipeline:
        raise NotImplementedError

    async def capabilities(self) -> Capabilities:
        raise NotImplementedError

    async def _probe(self) -> Capabilities:
        """Probe what the daemon answers: three requests every daemon answers, in one write.

        GET_FEATURE goes out with an empty payload, and oxenstored reads a frame with an empty payload only
        when more bytes follow: in the same write, DIRECTORY does.
        """
        pipe = self.pipeline()
        asked = [
            pipe.request(Op.DIRECTORY_PART, join("/", "0"), "/"),
            pipe.request(Op.GET_FEATURE, b""),
            pipe.request(Op.DIRECTORY, join("/"), "/"),
        ]
        await pipe.send()  # queued at once: one write
        part, feature, root = (_payload_or_error_reply(answer) for answer in asked)
        # ENOSYS: the op does not exist; any other answer (a guest may be refused "/") says it does.
        directory_part = not isinstance(part, Unsupported)
        feature_ops = not isinstance(feature, Unsupported)
        bits = 0 if isinstance(feature, ErrorReply) else _number(feature, "GET_FEATURE")
        features = Feature(bits)
        names = [] if isinstance(root, ErrorReply) else split(root)
        oxenstored = not directory_part or b"@introduceDomain" in names
        # The embedded xenstored answers as C xenstored does, by design: on the wire it is "cxenstored".
        daemon = "oxenstored" if oxenstored else "cxenstored"
        return Capabilities(features, directory_part, not oxenstored, daemon, feature_ops)

    async def _feature_ops(self, op: str) -> None:
        """Unsupported, with nothing sent, where the probe found no GET_FEATURE (a daemon before Xen 4.21, or
        oxenstored, which would also leave an empty-payload request unread)."""
        if not (await self.capabilities()).feature_ops:
            raise Unsupported(op=op, why="the daemon has no Xen 4.21 feature and quota ops (probed)")

    # -- domains -------------------------------------------------------------------------------------------

    async def get_domain_path(self, domid: int) -> str:
        reply = await self._request(Op.GET_DOMAIN_PATH, join(str(check_domid(domid))))
        return reply.rstrip(b"\0").decode("utf-8", "surrogateescape")

    async def introduce(self, domid: int, mfn: int, port: int) -> None:
        """Tell xenstored about a new domain's ring page (``mfn``) and event channel (``port``)."""
        await self._request(Op.INTRODUCE, join(str(check_domid(domid)), str(int(mfn)), str(int(port))))

    async def release(self, domid: int) -> None:
        await self._request(Op.RELEASE, join(str(check_domid(domid))))

    async def is_domain_introduced(self, domid: int) -> bool:
        return introduced(await self._request(Op.IS_DOMAIN_INTRODUCED, join(str(check_domid(domid)))))

    async def resume(self, domid: int) -> None:
        await self._request(Op.RESUME, join(str(check_domid(domid))))

    async def set_target(self, domid: int, target: int) -> None:
        await self._request(Op.SET_TARGET, join(str(check_domid(domid)), str(check_domid(target))))

    async def control(self, *args: str | bytes) -> bytes:
        """XS_CONTROL (``check``, ``quota``, ``help``, ...): the daemon's reply, trailing NUL removed."""
        return (await self._request(Op.DEBUG, join(*args) if args else b"\0")).rstrip(b"\0")

    # -- Xen 4.21/4.22: features and quotas ----------------------------------------------------------------

    async def features(self, domid: int | None = None) -> Feature:
        """This connection's features, or domain ``domid``'s (dom0 only). Unsupported before Xen 4.21."""
        payload = b"" if domid is None else join(str(check_domid(domid)))
        await self._feature_ops("GET_FEATURE")
        return Feature(_number(await self._request(Op.GET_FEATURE, payload), "GET_FEATURE"))

    async def set_features(self, domid: int, bits: int) -> None:
        """Set a domain's features, before it is introduced (EBUSY after). Unsupported before Xen 4.21."""
        await self._feature_ops("SET_FEATURE")
        await self._request(Op.SET_FEATURE, join(str(check_domid(domid)), str(int(bits))))

    @overload
    async def quota(self, name: None = None, domid: None = None) -> list[str]: ...

    @overload
    async def quota(self, name: str, domid: int | None = None) -> int: ...

    async def quota(self, name: str | None = None, domid: int | None = None) -> int | list[str]:
        """Without ``name``: the quota names the daemon has. With it: the global value, or domain ``domid``'s.
        InvalidArgument for a name the daemon lacks; Unsupported before Xen 4.21."""
        if name is None and domid is not None:
            raise ValueError("a domain's quota needs the quota's name")
        await self._feature_ops("GET_QUOTA")
        if name is None:
            reply = await self._request(Op.GET_QUOTA, b"")
            return reply.rstrip(b"\0").decode("ascii", "replace").split()
        args = [name] if domid is None else [str(check_domid(domid)), name]
        return _number(await self._request(Op.GET_QUOTA, join(*args)), f"GET_QUOTA {name}")

    async def set_quota(self, name: str, value: int, domid: int | None = None) -> None:
        """Set a quota globally, or for domain ``domid``. Unsupported before Xen 4.21."""
        args = [name, str(int(value))] if domid is None else [str(check_domid(domid)), name, str(int(value))]
        await self._feature_ops("SET_QUOTA")
        await self._request(Op.SET_QUOTA, join(*args))
