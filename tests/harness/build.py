"""Which real daemons there are and how each starts, and the preload library that lets them run without Xen
(compiled once per source version, cached under ``tests/harness/_build/``)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

import trio

__all__ = [
    "C_XENSTORED",
    "PROJECT_ROOT",
    "CXenStoredUnavailable",
    "Daemon",
    "build_preload",
    "build_preload_sync",
    "find_xenstored",
    "skip_or_fail",
]

HERE: Final = Path(__file__).resolve().parent
PROJECT_ROOT: Final = HERE.parent.parent
PRELOAD_SOURCE: Final = HERE / "preload.c"
BUILD_DIR: Final = HERE / "_build"
XENSTORED_CANDIDATES: Final = (
    PROJECT_ROOT / ".cache/xen/usr/lib/xen-4.17/bin/xenstored",
    Path("/usr/lib/xen-4.17/bin/xenstored"),
)
# Libraries of the unpacked package, if it carries any (Debian's carries none: the daemon links against the
# libxen* runtime libraries that libxen-dev pulls in). Added to LD_LIBRARY_PATH when present.
EXTRA_LIB_DIRS: Final = (
    PROJECT_ROOT / ".cache/xen/usr/lib/x86_64-linux-gnu",
    PROJECT_ROOT / ".cache/xen/lib/x86_64-linux-gnu",
)
GCC_FLAGS: Final = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra")
GCC_LIBS: Final = ("-ldl", "-pthread")


class CXenStoredUnavailable(Exception):
    """A real daemon (C xenstored or oxenstored) cannot run here; ``reason`` says why (binary missing, gcc missing, compile failed...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        text = reason if not detail else f"{reason}\n{detail.rstrip()}"
        super().__init__(text)


def skip_or_fail(exc: CXenStoredUnavailable) -> NoReturn:
    """In a test: skip because of ``exc``, or fail when the environment variable CI is "true"."""
    import pytest  # only tests call this

    message = f"real xenstored unavailable: {exc}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass(frozen=True)
class Daemon:
    """One kind of real xenstored: where its binary is and how it is started in a workdir.

    ``command(work, binary, trace)`` returns the command line; it may write files into ``work`` (a config).
    The preload library moves a daemon's fixed socket folder (/var/run/xenstored) into ``work``, so every
    kind ends up with its socket at ``work/socket``.
    """

    name: str
    label: str  # for messages: "C xenstored", "oxenstored"
    override: str  # environment variable naming the binary
    candidates: tuple[Path, ...]
    command: Callable[[Path, Path, bool], list[str]]


def _c_command(work: Path, binary: Path, trace: bool) -> list[str]:
    command = [str(binary), "--no-fork", "--pid-file", str(work / "pid")]
    if trace:
        command += ["--trace-file", str(work / "trace"), "--verbose"]
    return command


C_XENSTORED: Final = Daemon("cxenstored", "C xenstored", "MTW_CXENSTORED", XENSTORED_CANDIDATES, _c_command)


def find_xenstored(daemon: Daemon = C_XENSTORED) -> Path:
    """The daemon binary: $MTW_CXENSTORED (or the daemon's own variable), else the unpacked package under
    .cache/xen, else the system's."""
    override = os.environ.get(daemon.override)
    candidates = (Path(override),) if override else daemon.candidates
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise CXenStoredUnavailable(
        f"{daemon.name} binary not found (run scripts/install-xen-deps)",
        "looked at: " + ", ".join(str(p) for p in candidates),
    )


def build_preload_sync() -> Path:
    """Compile preload.c once per source version; returns the shared library's path."""
    try:
        source = PRELOAD_SOURCE.read_bytes()
    except OSError as exc:
        raise CXenStoredUnavailable(f"cannot read {PRELOAD_SOURCE}: {exc}") from exc
    digest = hashlib.sha256(source + "\0".join(GCC_FLAGS + GCC_LIBS).encode()).hexdigest()[:16]
    target = BUILD_DIR / f"preload-{digest}.so"
    if target.is_file():
        return target
    gcc = shutil.which("gcc")
    if gcc is None:
        raise CXenStoredUnavailable("gcc not found (run scripts/install-xen-deps)")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    command = [gcc, *GCC_FLAGS, "-o", str(partial), str(PRELOAD_SOURCE), *GCC_LIBS]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise CXenStoredUnavailable(
            "compiling preload.c failed (libxen-dev headers missing? run scripts/install-xen-deps)",
            result.stderr.decode(errors="replace"),
        )
    os.replace(partial, target)  # atomic: parallel builds of the same source are harmless
    return target


async def build_preload() -> Path:
    """:func:`build_preload_sync` in a worker thread."""
    return await trio.to_thread.run_sync(build_preload_sync)
