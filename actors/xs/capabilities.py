"""What the daemon can do, probed once per connection (:func:`probe`, for :meth:`XenStore.capabilities`).

How the daemon is told apart, without sending anything it may leave unanswered: GET_FEATURE answers with a
bitmap on C xenstored 4.21+ and the embedded one, ENOSYS on older ones and on oxenstored. DIRECTORY_PART
answers ENOSYS only on oxenstored, and oxenstored alone lists ``@introduceDomain`` in ``DIRECTORY /``. So
oxenstored is known by either sign, and RESET_WATCHES (which oxenstored never answers) is never sent to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from . import builder
from .errors import ErrorReply, Unsupported
from .pipeline import Answer, Pipeline
from .wire import INTRODUCE_DOMAIN, Feature

T = TypeVar("T")

__all__ = ["Capabilities", "Feature", "probe"]  # Feature: wire.Feature, here too


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


def _result_or_error_reply(answer: Answer[T]) -> T | ErrorReply:
    """The answer, or its error reply (an answer of its own to the probe); anything else (a lost connection,
    a timeout) is raised."""
    error = answer.error
    return error if isinstance(error, ErrorReply) else answer.result()


async def probe(pipe: Pipeline) -> Capabilities:
    """Probe what the daemon answers: three requests every daemon answers, in one write (``pipe``, empty).

    GET_FEATURE goes out with an empty payload, and oxenstored reads a frame with an empty payload only
    when more bytes follow: in the same write, DIRECTORY does.
    """
    asked_part = pipe.call(builder.directory_part(builder.directory_part_payload(b"/", 0), "/"))
    asked_feature = pipe.call(builder.get_feature())
    asked_root = pipe.call(builder.directory("/"))
    await pipe.send()  # queued at once: one write
    part = _result_or_error_reply(asked_part)
    feature = _result_or_error_reply(asked_feature)
    root = _result_or_error_reply(asked_root)
    # ENOSYS: the op does not exist; any other answer (a guest may be refused "/") says it does.
    directory_part = not isinstance(part, Unsupported)
    feature_ops = not isinstance(feature, Unsupported)
    features = Feature(0 if isinstance(feature, ErrorReply) else feature)
    oxenstored = not directory_part or (not isinstance(root, ErrorReply) and INTRODUCE_DOMAIN in root)
    # The embedded xenstored answers as C xenstored does, by design: on the wire it is "cxenstored".
    daemon = "oxenstored" if oxenstored else "cxenstored"
    return Capabilities(features, directory_part, not oxenstored, daemon, feature_ops)
