"""RuntimeOptions: one place for the runtime's defaults; open_runtime's keyword arguments override fields."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

import actors
from actors.runtime import RuntimeOptions
from harness.proxy import open_proxy
from harness.servers import Embedded


def test_overrides_replace_fields_and_none_means_the_default_policy() -> None:
    base = RuntimeOptions(stop_deadline=3)
    changed = base.replace(mailbox_size=8, restart=None)
    assert (changed.mailbox_size, changed.stop_deadline) == (8, 3)
    assert changed.restart == actors.RestartPolicy()
    assert base.replace() is base


@pytest.mark.parametrize(
    ("overrides", "error", "text"),
    [
        ({"mailbox_sise": 3}, TypeError, "mailbox_sise"),
        ({"mailbox_size": 0}, ValueError, "mailbox_size"),
        ({"stop_deadline": float("inf")}, ValueError, "stop_deadline"),
        ({"lifecycle": "xl"}, ValueError, "lifecycle"),
        ({"flood_high_water": 0}, ValueError, "flood_high_water"),
        ({"flood_rate": 0}, ValueError, "flood_rate"),
        ({"flood_cooldown": -1}, ValueError, "flood_cooldown"),
        ({"flood_cooldown": 2, "flood_cooldown_max": 1}, ValueError, "flood_cooldown_max"),
    ],
)
def test_bad_options_are_refused_with_their_name(
    overrides: dict[str, object], error: type, text: str
) -> None:
    with pytest.raises(error, match=text):
        RuntimeOptions().replace(**overrides)


async def test_open_runtime_takes_options_and_old_keywords(
    xs: actors.XenStore, autojump_clock: trio.testing.MockClock
) -> None:
    options = RuntimeOptions(lifecycle="domains", stop_deadline=2)
    async with actors.open_runtime(xs, options=options, mailbox_size=7, restart=None) as rt:
        assert rt.options.mailbox_size == 7
        assert rt.options.stop_deadline == 2
        assert rt.lifecycle_name == "domains"
        assert rt.disconnected_since is None
        assert rt.reset_failed() == []
    with pytest.raises(TypeError, match="nonsense"):
        async with actors.open_runtime(xs, nonsense=1):
            pass


async def test_disconnected_since_is_set_while_the_connection_is_down(
    xenstored: Embedded, workdir: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with (
        open_proxy(xenstored.socket_path, os.path.join(workdir, "proxy")) as proxy,
        actors.open_runtime(connect=lambda: actors.connect(proxy.path)) as rt,
    ):
        await rt.ready.wait()
        assert rt.disconnected_since is None
        assert proxy.cut() == 1
        await rt.connected.wait_value(False)
        assert rt.disconnected_since is not None
        await rt.connected.wait_value(True)
        assert rt.disconnected_since is None
