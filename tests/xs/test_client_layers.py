"""The client's layers hold when importing: the wire, the request builder and the protocol load neither trio nor loguru, and the
package face loads its names only when used."""

from __future__ import annotations

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
