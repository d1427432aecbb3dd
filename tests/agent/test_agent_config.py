"""The agent's configuration: defaults, every key, and errors that name the key and the problem."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

import pytest

from actors.agent.config import Config, ConfigError, Overrides, load_config, parse_config
from actors.agent.schema import DEFAULT_TIMEOUT, component_route, parse_listen
from actors.runtime.domain.supervisor import RestartPolicy
from actors.runtime.lifecycle.protocol import MTWATCH_ROOT

FULL = """
[xenstore]
socket = "/run/xs.sock"

[registry]
root = "/local/domain/0/mtw/"
lifecycle = "domains"

[runtime]
mailbox_size = 8
stop_deadline = 3

[restart]
max_restarts = 2
period = 10.0
backoff_initial = 0
backoff_max = 4

[log]
format = "json"
level = "debug"

[metrics]
listen = "[::1]:9100"
per_domain = "trouble"

[[watch]]
path = "/local/domain/{domid}/data/ping"
run = ["/usr/local/bin/on-ping", "{domid}", "{path}"]
timeout = 2
name = "ping"

[[watch]]
path = "/local/domain/{domid}/device"
call = "agent_handlers_mod:handle"

[[watch]]
path = "/vm"
route = "component:2"
run = ["/bin/true"]

[[watch]]
path = "@releaseDomain"
route = "agent_handlers_mod:route"
call = "agent_handlers_mod:Holder.handle"
"""

HANDLERS = """
async def handle(ctx, event):
    pass

def route(path):
    return None

def not_async(ctx, event):
    pass

async def async_route(path):
    return None

class Holder:
    @staticmethod
    async def handle(ctx, event):
        pass

class Callable:
    async def __call__(self, ctx, event):
        pass

instance = Callable()
"""


@pytest.fixture
def handlers_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "agent_handlers_mod.py").write_text(HANDLERS)
    (tmp_path / "agent_broken_mod.py").write_text("raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "agent_handlers_mod"
    for name in ("agent_handlers_mod", "agent_broken_mod"):
        sys.modules.pop(name, None)


def config_of(text: str, overrides: Overrides | None = None) -> Config:
    return parse_config(tomllib.loads(text), overrides)


def error_of(text: str, overrides: Overrides | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config_of(text, overrides)
    return info.value


def test_defaults_without_a_file() -> None:
    config = load_config(None)
    assert config.xenstore_socket is None and not config.xenbus  # the client's own resolution
    assert config.root == MTWATCH_ROOT
    assert config.lifecycle == "auto"
    assert config.options.mailbox_size == 64
    assert config.stop_deadline == 10.0
    assert config.options.restart == RestartPolicy()
    assert (config.log_format, config.log_level) == ("text", "INFO")
    assert config.metrics is None
    assert config.metrics_per_domain == "all"
    assert config.watches == ()


def test_every_key(handlers_module: str) -> None:
    config = config_of(FULL)
    assert config.xenstore_socket == "/run/xs.sock"
    assert config.root == "/local/domain/0/mtw"
    assert config.lifecycle == "domains"
    assert (config.options.mailbox_size, config.stop_deadline) == (8, 3.0)
    assert config.options.restart == RestartPolicy(
        max_restarts=2, period=10, backoff_initial=0, backoff_max=4
    )
    assert (config.log_format, config.log_level) == ("json", "DEBUG")
    assert config.metrics is not None and (config.metrics.host, config.metrics.port) == ("::1", 9100)
    assert config.metrics_per_domain == "trouble"
    ping, device, vm, release = config.watches
    assert ping.run == ("/usr/local/bin/on-ping", "{domid}", "{path}")
    assert (ping.timeout, ping.name, ping.label) == (2.0, "ping", "ping")
    assert device.call == "agent_handlers_mod:handle" and device.handler is not None
    assert device.timeout == DEFAULT_TIMEOUT and device.label == device.path
    assert vm.route_fn is not None and vm.route_fn("/vm/12/name") == 12
    assert release.route_fn is not None and release.route_fn("@releaseDomain") is None
    assert release.handler is sys.modules["agent_handlers_mod"].Holder.handle


def test_command_line_overrides_the_file(handlers_module: str) -> None:
    overrides = Overrides(metrics=":9200", log_json=False, log_level="warning", xenstore="/tmp/other")
    config = config_of(FULL, overrides)
    assert config.metrics is not None and (config.metrics.host, config.metrics.port) == (None, 9200)
    assert config.log_level == "WARNING" and config.log_format == "json"
    assert config.xenstore_socket == "/tmp/other"
    assert config_of("[xenstore]\nxenbus = true\n", overrides).xenbus is False
    assert config_of("", Overrides(log_json=True)).log_format == "json"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("bogus = 1", "bogus", "unknown key"),
        ("[runtime]\nmailbox_sz = 3", "runtime.mailbox_sz", "unknown key"),
        ("[log]\nlevel = 'INFO'\ncolour = true\nzebra = 1", "log.colour", "and log.zebra"),
        ("runtime = 3", "runtime", "must be a table"),
        ("[xenstore]\nsocket = 5", "xenstore.socket", "must be a string"),
        ("[xenstore]\nsocket = ''", "xenstore.socket", "must not be empty"),
        ("[xenstore]\nxenbus = 'yes'", "xenstore.xenbus", "true or false"),
        ("[xenstore]\nsocket = '/x'\nxenbus = true", "xenstore", "exclude each other"),
        ("[registry]\nroot = 'local/x'", "registry.root", "absolute"),
        ("[registry]\nroot = '/a b'", "registry.root", "not a valid XenStore path"),
        ("[registry]\nlifecycle = 'xl'", "registry.lifecycle", '"auto" or "mtwatch" or "domains"'),
        ("[runtime]\nmailbox_size = 0", "runtime.mailbox_size", "at least 1"),
        ("[runtime]\nmailbox_size = 2.5", "runtime.mailbox_size", "must be an integer"),
        ("[runtime]\nmailbox_size = true", "runtime.mailbox_size", "must be an integer"),
        ("[runtime]\nstop_deadline = 0", "runtime.stop_deadline", "positive"),
        ("[runtime]\nstop_deadline = 'ten'", "runtime.stop_deadline", "number of seconds"),
        ("[runtime]\nstop_deadline = inf", "runtime.stop_deadline", "finite"),
        ("[restart]\nmax_restarts = -1", "restart.max_restarts", "at least 0"),
        ("[restart]\nperiod = -5", "restart.period", "positive"),
        ("[restart]\nbackoff_initial = -1", "restart.backoff_initial", "negative"),
        ("[restart]\nbackoff_initial = 5\nbackoff_max = 1", "restart.backoff_max", "backoff_initial"),
        ("[log]\nformat = 'xml'", "log.format", '"text" or "json"'),
        ("[log]\nlevel = 'LOUD'", "log.level", "unknown level"),
        ("[metrics]\nlisten = '9477'", "metrics.listen", "HOST:PORT"),
        ("[metrics]\nlisten = 'localhost:http'", "metrics.listen", "port"),
        ("[metrics]\nlisten = 'localhost:70000'", "metrics.listen", "port"),
        ("[metrics]\nlisten = '::1:80'", "metrics.listen", "brackets"),
        ("[metrics]\nport = 80", "metrics.port", "unknown key"),
        ("[metrics]\nper_domain = 'some'", "metrics.per_domain", '"all" or "trouble" or "none"'),
        ("watch = 'x'", "watch", "array of tables"),
        ("[[watch]]\nrun = ['/bin/true']", "watch[0].path", "missing"),
        ("[[watch]]\npath = '/x/{domid}'", "watch[0]", "exactly one of run"),
        ("[[watch]]\npath = '/x/{domid}'\nrun = ['a']\ncall = 'm:f'", "watch[0]", "both given"),
        ("[[watch]]\npath = '/x/{domid}'\nrun = '/bin/true'", "watch[0].run", "list of strings"),
        ("[[watch]]\npath = '/x/{domid}'\nrun = []", "watch[0].run", "non-empty list"),
        ("[[watch]]\npath = '/x/{domid}'\nrun = ['a', 3]", "watch[0].run", "non-empty list"),
        ("[[watch]]\npath = '/x/{domid}'\nrun = ['']", "watch[0].run", "empty"),
        ("[[watch]]\npath = '/x/{dom}'\nrun = ['a']", "watch[0].path", "only {domid}"),
        ("[[watch]]\npath = '/x/{domid'\nrun = ['a']", "watch[0].path", "'/x/{domid'"),
        ("[[watch]]\npath = '/x y/{domid}'\nrun = ['a']", "watch[0].path", "not a valid XenStore watch path"),
        ("[[watch]]\npath = '/x/{domid}'\nrun = ['a']\ntimeout = 0", "watch[0].timeout", "positive"),
        ("[[watch]]\npath = '/x/{domid}'\nrun = ['a']\ntimeout = '5s'", "watch[0].timeout", "number"),
        (
            "[[watch]]\npath = '/x/{domid}'\nrun = ['a']\nroute = 'component:3'",
            "watch[0].route",
            "global path",
        ),
        ("[[watch]]\npath = '/x'\nrun = ['a']\nroute = 'component:0'", "watch[0].route", "1 or more"),
        (
            "[[watch]]\npath = '/x'\nrun = ['a']\nroute = 'nocolon'",
            "watch[0].route",
            "package.module:function",
        ),
        ("[[watch]]\npath = '/x'\nrun = ['a']\nname = 3", "watch[0].name", "must be a string"),
        ("[[watch]]\npath = '/x'\nrun = ['a']\nretries = 3", "watch[0].retries", "unknown key"),
        (
            "[[watch]]\npath = '/x'\nrun = ['a']\n[[watch]]\npath = '/y'\ncall = 'no_such_module_xyz:f'",
            "watch[1].call",
            "cannot import 'no_such_module_xyz'",
        ),
    ],
)
def test_errors_name_the_key_and_the_problem(text: str, key: str, problem: str) -> None:
    error = error_of(text)
    assert error.key == key
    assert problem in str(error)
    assert str(error).startswith(f"{key}: ")


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        ("agent_handlers_mod:missing", "has no 'missing'"),
        ("agent_handlers_mod:not_async", "not an async function"),
        ("agent_broken_mod:f", "RuntimeError: broken on import"),
    ],
)
def test_call_references_are_resolved_at_validation(handlers_module: str, call: str, problem: str) -> None:
    error = error_of(f"[[watch]]\npath = '/x/{{domid}}'\ncall = '{call}'")
    assert error.key == "watch[0].call"
    assert problem in error.problem


def test_call_accepts_an_instance_with_an_async_call(handlers_module: str) -> None:
    (rule,) = config_of("[[watch]]\npath = '/x/{domid}'\ncall = 'agent_handlers_mod:instance'").watches
    assert rule.handler is sys.modules["agent_handlers_mod"].instance


def test_route_must_be_a_sync_function(handlers_module: str) -> None:
    error = error_of("[[watch]]\npath = '/x'\nrun = ['a']\nroute = 'agent_handlers_mod:async_route'")
    assert error.key == "watch[0].route" and "sync" in error.problem


def test_bad_overrides_name_the_flag() -> None:
    assert error_of("", Overrides(metrics="nowhere")).key == "--metrics"
    assert error_of("", Overrides(log_level="chatty")).key == "--log-level"
    assert error_of("", Overrides(xenstore="")).key == "--xenstore"


def test_component_route() -> None:
    route = component_route(3)
    assert route("/local/domain/5/data") == 5
    assert route("local/domain/5") == 5  # a leading / or not, the same components
    assert route("/local/domain") is None
    assert route("/local/domain/0/x") is None  # dom0 is not a guest
    assert route("/local/domain/05/x") is None  # not canonical
    assert route("/local/domain/40000/x") is None


def test_parse_listen() -> None:
    assert (parse_listen("127.0.0.1:9477").host, parse_listen("127.0.0.1:9477").port) == ("127.0.0.1", 9477)
    assert parse_listen("[::]:0").host == "::"
    assert parse_listen(":1").host is None


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=r"missing\.toml: no such file"):
        load_config(str(missing))
    broken = tmp_path / "broken.toml"
    broken.write_text("[runtime\nmailbox_size = 1\n")
    with pytest.raises(ConfigError, match=r"broken.toml: invalid TOML: .*line 1"):
        load_config(str(broken))
    bad = tmp_path / "bad.toml"
    bad.write_text("[runtime]\nmailbox_size = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(bad))
    assert str(info.value) == f"{bad}: runtime.mailbox_size: must be at least 1, not 0"
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path))


def test_unreadable_file_is_a_permission_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import actors.agent.config as config_module
    from actors.agent.config import ConfigPermissionError

    def denied(path: str, mode: str = "r") -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(config_module, "open", denied, raising=False)  # as root, chmod 0 would not do
    with pytest.raises(ConfigPermissionError, match=r"secret\.toml: permission denied"):
        load_config(str(tmp_path / "secret.toml"))


def test_handlers_from_a_configured_path_are_imported_again_when_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "handlers"
    folder.mkdir()
    module = folder / "site_handlers_xyz.py"
    module.write_text("async def handle(ctx, event):\n    return 1\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "site_handlers_xyz", raising=False)
    config_file = tmp_path / "agent.toml"
    config_file.write_text(
        f'[handlers]\npath = ["{folder}"]\n[[watch]]\npath = "/x/{{domid}}"\ncall = "site_handlers_xyz:handle"\n'
    )
    first = load_config(str(config_file)).watches[0]
    assert sys.path[0] == str(folder) and first.handler is not None
    assert load_config(str(config_file), fresh=True).watches[0].key == first.key  # unchanged: the same rule
    module.write_text("async def handle(ctx, event):\n    return 2\n")
    os.utime(module, (module.stat().st_atime, module.stat().st_mtime + 10))
    again = load_config(str(config_file), fresh=True).watches[0]
    assert again.handler is not first.handler and again.key != first.key  # a reload replaces the rule
    assert error_of('[handlers]\npath = "/x"').key == "handlers.path"
    monkeypatch.delitem(sys.modules, "site_handlers_xyz")
