"""Every op of the embedded xenstored, over a real unix socket, with the error names of C xenstored 4.17."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from actors.xenstored import XenStored
from actors.xenstored.testing import RawClient, serving
from actors.xs.wire import Op, join


@pytest.fixture(params=["4.17", "4.22"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[tuple[XenStored, RawClient]]:
    async with serving(compat=request.param) as (server, path), await RawClient.connect(path) as client:
        yield server, client


async def test_initial_tree_is_that_of_c_xenstored(env: tuple[XenStored, RawClient]) -> None:
    server, c = env
    assert await c.ls("/") == [b"tool"]
    assert await c.ls("/tool") == [b"xenstored"]
    assert await c.ls("/tool/xenstored") == []
    for path in ("/", "/tool", "/tool/xenstored"):
        assert await c.get_perms(path) == [b"n0"]
        assert await c.read(path) == b""
    assert len(server.store) == 3
    assert await c.error(Op.READ, join("/local")) == "ENOENT"


async def test_write_read_directory_mkdir_rm(env: tuple[XenStored, RawClient]) -> None:
    _, c = env
    await c.write("/a/b/c", "value")
    assert await c.read("/a/b/c") == b"value"
    assert await c.read("/a/b") == b""  # parents made implicitly, empty
    assert await c.ls("/a") == [b"b"]
    await c.write("/a/b/c", b"")  # empty value
    assert await c.read("/a/b/c") == b""
    await c.write("/a/bin", b"\x00\x01\xff with NULs\x00")
    assert await c.read("/a/bin") == b"\x00\x01\xff with NULs\x00"
    await c.mkdir("/a/d")
    await c.mkdir("/a/d")  # existing: fine
    assert await c.ls("/a") == [b"b", b"bin", b"d"]  # creation order
    await c.rm("/a/b")
    assert await c.ls("/a") == [b"bin", b"d"]
    await c.rm("/a/b")  # missing, parent exists: fine
    assert await c.error(Op.RM, join("/a/b/c")) == "ENOENT"  # missing parent
    assert await c.error(Op.RM, join("/")) == "EINVAL"
    await c.rm("/a")
    assert await c.ls("/") == [b"tool"]


async def test_relative_paths_are_under_local_domain_0(env: tuple[XenStored, RawClient]) -> None:
    _, c = env
    await c.write("rel/x", "1")
    assert await c.read("/local/domain/0/rel/x") == b"1"
    assert await c.read("rel/x") == b"1"
    assert await c.ls("rel") == [b"x"]


@pytest.mark.parametrize(
    "path",
    ["", "/a/", "//a", "/a//b", "/a b", "/a.b", "/a\xe9", "@introduceDomain", "/" + "x" * 2048, "a/"],
)
async def test_invalid_paths_are_einval(env: tuple[XenStored, RawClient], path: str) -> None:
    server, c = env
    raw = path.encode("latin-1")
    ops = [Op.READ, Op.DIRECTORY, Op.MKDIR, Op.RM]
    if not (server.compat == "4.22" and path.startswith("@")):  # 4.22 lists a special node's permissions
        ops.append(Op.GET_PERMS)
    for op in ops:
        assert await c.error(op, raw + b"\0") == "EINVAL", op
    assert await c.error(Op.WRITE, raw + b"\0v") == "EINVAL"


async def test_path_length_limit_is_relative_to_the_domain_home(env: tuple[XenStored, RawClient]) -> None:
    _, c = env
    await c.write("/" + "x" * 2047, "ok")
    await c.write("/local/domain/5/" + "y" * 2048, "ok")  # 2048 past /local/domain/5/
    assert await c.error(Op.WRITE, join("/local/domain/5/" + "y" * 2049, "no", terminate=False)) == "EINVAL"


async def test_malformed_arguments_are_einval(env: tuple[XenStored, RawClient]) -> None:
    _, c = env
    await c.write("/a", "1")
    assert await c.error(Op.READ, b"/a") == "EINVAL"  # no NUL
    assert await c.error(Op.READ, b"/a\0extra") == "EINVAL"  # more than one argument
    assert await c.error(Op.READ, b"") == "EINVAL"
    assert await c.error(Op.WRITE, b"/a") == "EINVAL"  # WRITE needs path\0
    assert await c.error(Op.WATCH, b"/a\0") == "EINVAL"
    assert await c.error(Op.WATCH, b"/a\0t\0x\0y\0") == "EINVAL"  # three arguments are a depth (4.22)
    assert await c.error(Op.UNWATCH, b"/a\0") == "EINVAL"
    assert await c.error(Op.SET_PERMS, b"/a\0") == "EINVAL"
    assert await c.error(Op.DIRECTORY_PART, b"/a\0") == "EINVAL"
    assert await c.error(Op.TRANSACTION_END, b"X\0") == "EINVAL"
    assert await c.error(Op.INTRODUCE, b"5\0") == "EINVAL"
    assert await c.error(Op.SET_TARGET, b"5\0") == "EINVAL"
    assert await c.error(Op.DEBUG, b"") == "EINVAL"


async def test_unknown_ops_are_enosys(env: tuple[XenStored, RawClient]) -> None:
    _, c = env
    for op in (20, Op.WATCH_EVENT, Op.ERROR, 27, 99, 0xFFFFFFFF):
        assert await c.error(op, b"/\0") == "ENOSYS"
    assert await c.read("/") == b""


async def test_replies_echo_type_req_id_and_tx_id(env: tuple[XenStored, RawClient]) -> None:
    _, c = env
    await c.send(Op.READ, join("/"), req_id=0xDEADBEEF)
    frame = await c.recv_frame()
    assert (frame.op, frame.req_id, frame.tx_id, frame.payload) == (Op.READ, 0xDEADBEEF, 0, b"")
    tx = await c.start()
    await c.send(Op.READ, join("/nope"), tx_id=tx, req_id=7)
    frame = await c.recv_frame()
    assert (frame.op, frame.req_id, frame.tx_id, frame.payload) == (Op.ERROR, 7, tx, b"ENOENT\0")


async def test_pipelined_requests_are_answered_in_order(env: tuple[XenStored, RawClient]) -> None:
    _, c = env
    data = b"".join(
        RawClient.frame(Op.WRITE, join(f"/p/{i}", str(i), terminate=False), req_id=i) for i in range(1, 301)
    )
    await c.send_raw(data)
    ids = [(await c.recv_frame()).req_id for _ in range(300)]
    assert ids == list(range(1, 301))
    assert len(await c.ls("/p")) == 300


async def test_permissions_strings(env: tuple[XenStored, RawClient]) -> None:
    server, c = env
    await c.write("/p", "")
    await c.set_perms("/p", "n0", "r5", "w6", "b7")
    assert await c.get_perms("/p") == [b"n0", b"r5", b"w6", b"b7"]
    await c.set_perms("/p", "b0x10", "r010")  # C strtol(..., 0)
    assert await c.get_perms("/p") == [b"b16", b"r8"]
    await c.set_perms("/p", "n0", "r-1", "r4294967297", "r 5")  # ids are C unsigned ints, printed with %i
    assert await c.get_perms("/p") == [b"n0", b"r-1", b"r1", b"r5"]
    for bad in (["x1"], ["r"], ["rabc"], ["r1", "q"], ["r1x"]):
        assert await c.error(Op.SET_PERMS, join("/p", *bad)) == "EINVAL", bad
    assert await c.error(Op.SET_PERMS, join("/nope", "n0")) == "ENOENT"
    assert await c.error(Op.SET_PERMS, join("@bogus", "n0")) == "EINVAL"
    await c.set_perms("@releaseDomain", "n0", "r5")
    if server.compat == "4.17":  # not a node there
        assert await c.error(Op.GET_PERMS, join("@releaseDomain")) == "EINVAL"
    else:
        assert await c.get_perms("@releaseDomain") == [b"n0", b"r5"]


async def test_children_inherit_parent_permissions(env: tuple[XenStored, RawClient]) -> None:
    _, c = env
    await c.write("/q", "")
    await c.set_perms("/q", "n5", "r7")
    await c.write("/q/x/y", "1")  # dom0 writes: permissions copied from the parent, owner included
    assert await c.get_perms("/q/x") == [b"n5", b"r7"]
    assert await c.get_perms("/q/x/y") == [b"n5", b"r7"]


async def test_domain_ops(env: tuple[XenStored, RawClient]) -> None:
    server, c = env
    assert await c.call(Op.GET_DOMAIN_PATH, b"7\0") == b"/local/domain/7\0"
    assert await c.call(Op.GET_DOMAIN_PATH, b"abc\0") == b"/local/domain/0\0"  # C atoi()
    assert await c.error(Op.GET_DOMAIN_PATH, b"7") == "EINVAL"
    assert await c.call(Op.IS_DOMAIN_INTRODUCED, b"0\0") == b"T\0"
    assert await c.call(Op.IS_DOMAIN_INTRODUCED, b"7\0") == b"F\0"
    assert await c.call(Op.IS_DOMAIN_INTRODUCED, b"32752\0") == b"T\0"  # DOMID_SELF
    assert await c.error(Op.INTRODUCE, b"7\x000\x000\0") == "EINVAL"  # port 0
    assert await c.error(Op.INTRODUCE, b"32752\x000\x001\0") == "EINVAL"
    assert await c.error(Op.RELEASE, b"7\0") == "ENOENT"
    assert await c.error(Op.RESUME, b"7\0") == "ENOENT"
    assert await c.error(Op.SET_TARGET, b"7\x008\0") == "ENOENT"
    assert await c.call(Op.INTRODUCE, b"7\x000\x001\0") == b"OK\0"
    assert await c.call(Op.INTRODUCE, b"8\x0012\x002\0") == b"OK\0"
    assert server.is_introduced(7)
    assert await c.call(Op.IS_DOMAIN_INTRODUCED, b"7\0") == b"T\0"
    assert await c.call(Op.RESUME, b"7\0") == b"OK\0"
    assert await c.call(Op.SET_TARGET, b"7\x008\0") == b"OK\0"
    assert await c.error(Op.RELEASE, b"0\0") == "EINVAL"
    assert await c.error(Op.RELEASE, b"x\0") == "EINVAL"  # atoi("x") is dom0
    assert await c.call(Op.RELEASE, b"7\0") == b"OK\0"
    assert await c.call(Op.IS_DOMAIN_INTRODUCED, b"7\0") == b"F\0"
    assert await c.error(Op.RELEASE, b"7\0") == "ENOENT"


async def test_release_removes_the_domains_nodes(env: tuple[XenStored, RawClient]) -> None:
    server, c = env
    await c.call(Op.INTRODUCE, b"9\x000\x001\0")
    await c.write("/local/domain/9/name", "vm")
    await c.set_perms("/local/domain/9", "n9")
    await c.write("/local/domain/9/device/vif", "")  # inherits owner 9
    await c.write("/backend/vif/9", "")
    await c.set_perms("/backend/vif/9", "n0", "r9")  # dom0's: stays
    await c.call(Op.RELEASE, b"9\0")
    assert await c.ls("/local/domain") == []
    assert await c.ls("/backend/vif") == [b"9"]
    # 4.17 keeps listing the dead domain's entry (ignored); 4.22 removes it.
    expected = [b"n0", b"r9"] if server.compat == "4.17" else [b"n0"]
    assert await c.get_perms("/backend/vif/9") == expected


async def test_control(env: tuple[XenStored, RawClient]) -> None:
    _, c = env
    assert await c.call(Op.DEBUG, b"check\0") == b"OK\0"
    help_text = await c.call(Op.DEBUG, b"help\0")
    assert help_text.startswith(b"check\t\nlog\ton|off\nlive-update\t") and help_text.endswith(b"help\t\n\0")
    quota = await c.call(Op.DEBUG, b"quota\0")
    assert quota.startswith(b"Quota settings:\n") and b"nodes            :     1000" in quota
    assert await c.call(Op.DEBUG, b"quota\0set\0nodes\x00500\0") == b"OK\0"
    assert b":      500" in await c.call(Op.DEBUG, b"quota\0")
    assert (await c.call(Op.DEBUG, b"quota\x000\0")).startswith(b"Domain 0:\n")
    assert await c.error(Op.DEBUG, b"quota\x0077\0") == "ENOENT"
    assert await c.error(Op.DEBUG, b"bogus\0") == "EINVAL"
    assert await c.error(Op.DEBUG, b"check\0x\0") == "EINVAL"
    assert await c.call(Op.DEBUG, b"log\0on\0") == b"OK\0"
    assert await c.call(Op.DEBUG, b"print\0hello\0") == b"OK\0"


async def test_directory_part_of_1500_children(env: tuple[XenStored, RawClient]) -> None:
    _, c = env
    names = [f"child-number-{i:05d}" for i in range(1500)]
    await c.send_raw(
        b"".join(RawClient.frame(Op.MKDIR, join(f"/big/{n}"), req_id=i + 1) for i, n in enumerate(names))
    )
    for _ in names:
        assert (await c.recv_frame()).payload == b"OK\0"
    assert await c.error(Op.DIRECTORY, join("/big")) == "E2BIG"  # listing > 4096 bytes
    got: list[bytes] = []
    offset = 0
    generation = None
    chunks = 0
    while True:
        reply = await c.call(Op.DIRECTORY_PART, join("/big", str(offset)))
        assert len(reply) <= 4096
        gen, _, rest = reply.partition(b"\0")
        assert generation in (None, gen)
        generation = gen
        chunks += 1
        if rest.endswith(b"\0\0") or rest == b"\0":
            got.extend(rest[:-2].split(b"\0") if rest != b"\0" else [])
            break
        got.extend(rest[:-1].split(b"\0"))
        offset += len(rest)
    assert [n.decode() for n in got] == names
    assert chunks > 1
    # past the end: the generation and an empty list
    assert await c.call(Op.DIRECTORY_PART, join("/big", "999999")) == generation + b"\0\0"
    # a change of the node changes its generation
    await c.mkdir("/big/another")
    assert (await c.call(Op.DIRECTORY_PART, join("/big", "0"))).partition(b"\0")[0] != generation
    assert (
        await c.call(Op.DIRECTORY_PART, join("/tool/xenstored", "0"))
        == b"%s\0\0" % ((await c.call(Op.DIRECTORY_PART, join("/tool/xenstored", "0"))).partition(b"\0")[0])
    )
    assert await c.error(Op.DIRECTORY_PART, join("/nope", "0")) == "ENOENT"


async def test_release_of_a_set_target_target_drops_a_reference_first(
    env: tuple[XenStored, RawClient],
) -> None:
    server, c = env
    await c.call(Op.INTRODUCE, b"3\x000\x001\0")
    await c.call(Op.INTRODUCE, b"4\x000\x001\0")
    await c.call(Op.SET_TARGET, b"4\x003\0")  # 4's connection now holds a reference to 3's
    await c.watch("@releaseDomain", "rel")
    assert await c.event() == (b"@releaseDomain", b"rel")
    assert await c.call(Op.RELEASE, b"3\0") == b"OK\0"  # as C: only the reference goes
    assert server.is_introduced(3)
    await c.no_event()
    assert await c.call(Op.RELEASE, b"3\0") == b"OK\0"
    assert not server.is_introduced(3)
    assert await c.event() == (b"@releaseDomain", b"rel")
