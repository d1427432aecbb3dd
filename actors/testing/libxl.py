"""What libxl does to XenStore for a domain's life, as far as a dom0 watcher can see it.

Creation (``libxl__domain_make``, then ``libxl__build_post``): in one transaction the domain's directory with
permissions ``n0 r<domid>`` (dom0 owns it, the guest may read it), ``/vm/<uuid>`` and ``/libxl/<domid>``, the name
and the vm link, ``control`` read-only for the guest with its ``shutdown`` and feature nodes the guest may write,
and ``data``, ``drivers``, ``feature``, ``attr`` and ``error`` owned by the guest; with the seed's patch (the
mtwatch lifecycle) the domain's mtwatch node in that same transaction. Then, in a second transaction, the
``domid``, ``memory`` and ``store`` nodes; then INTRODUCE, which fires ``@introduceDomain``.

Destruction (``devices_destroy_cb``, then the hypervisor): ``/vm/<uuid>``, the domain's directory and
``/libxl/<domid>`` removed one by one, outside any transaction; the domain dies (the daemon drops its connection,
removes what it owns and fires ``@releaseDomain``); with the seed's patch, the mtwatch node removed last.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

from ..toolstack import announce_domain, retire_domain
from ..xs.client import Transaction, XenStore
from ..xs.errors import NotFound

__all__ = ["STORE_PORT", "DomainSpec", "make_domain", "remove_domain"]

STORE_PORT = 1  # the event channel of the domain's XenStore ring (any non-zero number does for the daemon)
_STORE_MFN = 0xFEFFF  # the ring's frame, as INTRODUCE carries it (the embedded daemon maps nothing)
_MEMORY_KB = 1048576


@dataclass(frozen=True, slots=True)
class DomainSpec:
    domid: int
    name: str
    uuid: str
    mtwatch: bool  # the seed's patch: an mtwatch node for the domain

    @property
    def path(self) -> str:
        return f"/local/domain/{self.domid}"

    @property
    def vm(self) -> str:
        return f"/vm/{self.uuid}"


async def _node(tx: Transaction, path: str, perms: list[str], value: str = "") -> None:
    """``libxl__xs_mknod``: a node with ``value`` and ``perms``."""
    await tx.write(path, value)
    await tx.set_perms(path, perms)


async def make_domain(xs: XenStore, spec: DomainSpec) -> None:
    """Create the domain's nodes and introduce it, as libxl does; see the module docstring."""
    d, path, vm = spec.domid, spec.path, spec.vm
    ro, rw, no = ["n0", f"r{d}"], [f"n{d}"], ["n0"]

    async def domain_make(tx: Transaction) -> None:
        for stale in (path, vm, f"/libxl/{d}"):
            with suppress(NotFound):
                await tx.rm(stale)
        await _node(tx, path, ro)
        await _node(tx, vm, ro)
        await _node(tx, f"/libxl/{d}", no)
        await _node(tx, f"/libxl/{d}/device", no)
        await tx.write(f"{path}/vm", vm)
        await tx.write(f"{path}/name", spec.name)
        await tx.write(f"{path}/control/platform-feature-multiprocessor-suspend", "1")
        await tx.write(f"{path}/control/platform-feature-xs_reset_watches", "1")
        await _node(tx, f"{path}/device", ro)
        await _node(tx, f"{path}/control", ro)
        for node in ("shutdown", "feature-poweroff", "feature-reboot", "feature-suspend", "sysrq"):
            await _node(tx, f"{path}/control/{node}", rw)
        for node in ("data", "drivers", "feature", "attr", "error"):
            await _node(tx, f"{path}/{node}", rw)
        await tx.write(f"{vm}/uuid", spec.uuid)
        await tx.write(f"{vm}/name", spec.name)
        if spec.mtwatch:
            await announce_domain(tx, d, identity=spec.uuid)

    async def build_post(tx: Transaction) -> None:
        await tx.write(f"{path}/domid", str(d))
        await tx.write(f"{path}/memory/static-max", str(_MEMORY_KB))
        await tx.write(f"{path}/memory/target", str(_MEMORY_KB))
        await tx.write(f"{path}/store/port", str(STORE_PORT))
        await tx.write(f"{path}/store/ring-ref", str(_STORE_MFN))

    await xs.run_transaction(domain_make)
    await xs.run_transaction(build_post)
    await xs.introduce(d, _STORE_MFN, STORE_PORT)


async def remove_domain(xs: XenStore, spec: DomainSpec) -> None:
    """The toolstack's removals before the domain dies (``devices_destroy_cb``); see the module docstring."""
    for node in (spec.vm, spec.path, f"/libxl/{spec.domid}"):
        with suppress(NotFound):
            await xs.rm(node)


async def retire(xs: XenStore, spec: DomainSpec) -> None:
    """The seed's patch: the mtwatch node goes last, after the domain died."""
    if spec.mtwatch:
        await retire_domain(xs, spec.domid)
