"""Library code never configures logging: loguru is disabled for ``actors`` until the application enables it,
and then every line inside a domain's scope carries its domid."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
import trio.testing
from loguru import logger

import actors
from actors import DomainContext, State, WatchEvent


@pytest.fixture
def records() -> Iterator[list[dict[str, object]]]:
    seen: list[dict[str, object]] = []
    sink = logger.add(lambda message: seen.append(dict(message.record)), level="DEBUG")
    try:
        yield seen
    finally:
        logger.remove(sink)
        logger.disable("actors")


async def test_silent_until_enabled_then_every_domain_line_has_its_domid(
    xs: actors.XenStore, records: list[dict[str, object]], autojump_clock: trio.testing.MockClock
) -> None:
    async def handler(ctx: DomainContext, event: WatchEvent) -> None:
        ctx.log.info("handled {}", event.path)
        logger.info("a line through the global logger, inside the domain's task")

    async with actors.open_runtime(xs) as rt:
        rt.watch("/local/domain/{domid}/data", handler)
        await actors.announce_domain(xs, 3)
        await rt.wait_domain(3, State.RUNNING)
        await trio.sleep(1)
    ours = [r for r in records if str(r["name"]).startswith("actors")]
    assert ours == []  # the library said nothing: disabled by default

    logger.enable("actors")
    async with actors.open_runtime(xs) as rt:
        rt.watch("/local/domain/{domid}/data", handler)
        await rt.wait_domain(3, State.RUNNING)
        await xs.write("/local/domain/3/data/x", "1")
        await trio.sleep(1)
    in_domain = [r for r in records if "handled" in str(r["message"]) or "global logger" in str(r["message"])]
    assert in_domain
    assert all(r["extra"].get("domid") == 3 for r in in_domain)  # type: ignore[attr-defined]
    starting = [r for r in records if "domain actor starting" in str(r["message"])]
    assert starting and all(r["extra"].get("domid") == 3 for r in starting)  # type: ignore[attr-defined]


async def test_xenbus_without_xen_names_the_devices() -> None:
    with pytest.raises(actors.XenStoreUnavailable, match="/dev/xen/xenbus"):
        async with actors.connect(xenbus=True):
            pass
