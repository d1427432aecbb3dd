"""A real XenStore for the tests of handlers and rules: ``actors.testing.sandbox()`` runs the embedded xenstored
(answering as C xenstored 4.22, or 4.17) on a fresh private socket, with the toolstack's side (domains made and
destroyed as libxl does) and a guest's side (a connection with a domain's own permissions)::

    async with actors.testing.sandbox(compat="4.22") as box:
        async with box.runtime() as rt:
            rt.watch("/local/domain/{domid}/data/x", handler)
            await box.create_domain(5, name="guest-5")
            async with box.guest(5) as g:
                await g.write("/local/domain/5/data/x", "1")
            await rt.settle()
            await box.destroy_domain(5)

The pytest plugin (:mod:`actors.testing.pytest_plugin`, registered as an entry point) gives the fixtures
``mtwatch_sandbox`` and ``mtwatch_runtime``. Nothing here is loaded by ``import actors``; this module is cheap to
import (its names are loaded on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_face

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["Sandbox", "SandboxDomain", "sandbox"], "actors.testing.box"),
    **dict.fromkeys(["NotSettled"], "actors.runtime.settling"),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_face(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from ..runtime.settling import NotSettled as NotSettled
    from .box import Sandbox as Sandbox
    from .box import SandboxDomain as SandboxDomain
    from .box import sandbox as sandbox
