"""The client's layers hold when importing: the wire, the request builder and the protocol load neither trio
nor loguru, and the package face loads its names only when used. The client is composed: no mixins, no stubs."""

from __future__ import annotations

from pathlib import Path

import pytest

import actors.xs
from harness.imports import loaded_after


@pytest.mark.parametrize(
    "module",
    ["actors.xs.wire", "actors.xs.builder", "actors.xs.protocol", "actors.xs.errors", "actors.xs.events"],
)
def test_sans_io_modules_load_no_trio_and_no_loguru(module: str) -> None:
    loaded = loaded_after(f"import {module}")
    assert module in loaded
    assert not {name for name in loaded if name.split(".")[0] in ("trio", "trio_util", "loguru", "outcome")}
    assert "actors.xs.client" not in loaded


def test_package_face_is_lazy_and_complete() -> None:
    loaded = loaded_after("import actors.xs")
    assert "actors.xs.client" not in loaded and "trio" not in loaded
    assert "actors.xs.client" in loaded_after("from actors.xs import XenStore")
    for name in actors.xs.__all__:
        assert getattr(actors.xs, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        actors.xs.nothing  # noqa: B018


def test_the_client_is_composed_not_mixed() -> None:
    # XenStore and Transaction share the node operations on one Link; nothing stands in for a sibling class.
    from actors.xs.client import Transaction, XenStore
    from actors.xs.operations import Operations

    assert XenStore.__mro__ == (XenStore, Operations, object)
    assert Transaction.__mro__ == (Transaction, Operations, object)
    package = Path(actors.xs.__file__).parent.parent
    stubs = [
        f"{path.relative_to(package)}:{number}"
        for folder in ("xs", "xenstored")
        for path in sorted((package / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "raise NotImplementedError" in line
    ]
    assert stubs == []
