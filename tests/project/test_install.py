"""``scripts/install`` and ``scripts/uninstall`` into a temporary prefix: a venv with the package (pip from this
source tree), a unit that ``systemd-analyze verify`` accepts without a word on this host's systemd, the example
configuration (never overwritten), ``mtwatch`` on the given PATH folder, the Grafana dashboard and the alert rules
under the prefix's share folder; run twice, then removed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from actors.agent.config import load_config
from harness.build import PROJECT_ROOT

ROOT = PROJECT_ROOT
pytestmark = pytest.mark.slow


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (./scripts/test installs Debian's systemd package)")
        pytest.skip("systemd-analyze is missing here (Debian: apt-get install systemd)")
    return tool


async def sh(*argv: str | Path) -> str:
    with trio.fail_after(600):
        result = await trio.run_process([str(a) for a in argv], capture_stdout=True, stderr=subprocess.STDOUT)
    return result.stdout.decode()


async def test_install_verify_reinstall_uninstall(tmp_path: Path) -> None:
    tool = analyze()
    prefix, units, etc, bin_dir = (tmp_path / name for name in ("opt", "units", "etc", "bin"))
    dirs = ["--prefix", prefix, "--unit-dir", units, "--config-dir", etc, "--bin-dir", bin_dir]
    out = await sh(ROOT / "scripts" / "install", *dirs)
    assert "skipped systemctl daemon-reload" in out  # no systemd running in a test
    assert (await sh(bin_dir / "mtwatch", "--version")).strip().startswith("mtwatch ")

    unit = units / "mtwatch-agent.service"
    text = unit.read_text()
    assert f"ExecStart={prefix}/bin/mtwatch agent --config {etc}/agent.toml" in text
    assert "@" not in text.replace("$MAINPID", "")  # every placeholder filled in
    version = int((await sh("systemctl", "--version")).split()[1]) if shutil.which("systemctl") else 0
    if version >= 253:
        assert "Type=notify-reload" in text and "ExecReload" not in text
    else:
        assert "Type=notify\n" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
    with trio.fail_after(60):
        verify = await trio.run_process(
            [tool, "verify", str(unit)], capture_stdout=True, stderr=subprocess.STDOUT, check=False
        )
    assert (verify.returncode, verify.stdout.decode()) == (0, "")  # not even a warning

    share = (
        prefix / "share" / "mtwatch"
    )  # the dashboard and the alert rules, as `mtwatch contrib` prints them
    contrib = ROOT / "actors" / "agent" / "contrib"
    for name in ("grafana-dashboard.json", "prometheus-alerts.yml"):
        assert (share / name).read_text() == (contrib / name).read_text()

    config = etc / "agent.toml"
    assert load_config(str(config)).watches == ()  # the commented example is a valid configuration
    config.write_text(config.read_text() + '\n[log]\nlevel = "DEBUG"\n'.replace("[log]", "# edited"))
    edited = config.read_text()
    out = await sh(ROOT / "scripts" / "install", *dirs)  # again: an upgrade in place
    assert f"keeping the existing {config}" in out and config.read_text() == edited
    assert (bin_dir / "mtwatch").resolve() == (prefix / "bin" / "mtwatch").resolve()

    out = await sh(ROOT / "scripts" / "uninstall", *dirs[:6], "--bin-dir", bin_dir)
    assert not prefix.exists() and not unit.exists() and not (bin_dir / "mtwatch").is_symlink()
    assert config.read_text() == edited and "--purge" in out
