"""The agent's configuration: a TOML file (``tomllib``), validated whole at start and on every reload.

Every error names the key and the problem (``watch[1].timeout: must be a positive number, not -3``); unknown
keys are errors. Without a file, the defaults work on a real dom0: the client's own socket resolution
(``$XENSTORED_PATH``, then the standard sockets), the mtwatch registry under ``/local/domain/0/mtwatch``, text
logs at INFO on stderr, no metrics endpoint, no watch rules.

The schema::

    [xenstore]      # socket = "PATH"  | xenbus = true        (neither: the client's own resolution)
    [registry]      # root = "/local/domain/0/mtwatch"; lifecycle = "mtwatch" | "domains"
    [runtime]       # mailbox_size = 64; stop_deadline = 10.0
    [restart]       # max_restarts = 5; period = 60.0; backoff_initial = 0.5; backoff_max = 30.0
    [log]           # format = "text" | "json"; level = "INFO"
    [metrics]       # listen = "127.0.0.1:9477"   (absent: no metrics endpoint)
    [[watch]]       # path = "..."; run = [...] | call = "m:f"; timeout = 5.0; route = "..."; name = "..."

A ``[[watch]]`` rule: ``path`` is a watch path with ``{domid}`` (one watch per live domain, handled by that
domain's actor) or without (one global watch: its events go to the domain ``route`` names, else to the
default actor, domid 0). ``route`` is ``"package.module:function"`` (a sync ``fn(path) -> domid | None``) or
``"component:N"`` (the N-th ``/``-separated component of the path is the domid: for ``/local/domain/5/x``,
``component:3`` is ``5``). Exactly one of ``run`` (argv of a command run per event, see
:mod:`actors.agent.rules`) and ``call`` (``"package.module:function"``, an ``async def handler(ctx, event)``).
``timeout`` (seconds, default 5.0) bounds one handler call: overrunning it is a failure of the domain.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import math
import string
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from ..runtime.lifecycle import MTWATCH_ROOT
from ..runtime.supervisor import RestartPolicy
from ..xs.errors import InvalidDomid, InvalidPath
from ..xs.wire import check_domid, check_path, check_watch_path

__all__ = [
    "DEFAULT_TIMEOUT",
    "Config",
    "ConfigError",
    "ConfigPermissionError",
    "Listen",
    "Overrides",
    "WatchRule",
    "component_route",
    "load_config",
    "parse_config",
    "parse_listen",
    "resolve",
]

DEFAULT_TIMEOUT = 5.0
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")

Route = Callable[[str], "int | None"]


class ConfigError(Exception):
    """An invalid configuration: ``key`` (dotted, ``""`` for the file itself) and what is wrong with it."""

    def __init__(self, key: str, problem: str, *, source: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}" if key else f"{where}{problem}")


class ConfigPermissionError(ConfigError):
    """The configuration file exists but may not be read."""


@dataclass(frozen=True, slots=True)
class Listen:
    """A metrics listen address: ``host`` None means every interface."""

    host: str | None
    port: int
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class WatchRule:
    """One ``[[watch]]`` rule, validated, with ``call`` and ``route`` resolved to callables."""

    index: int
    path: str
    run: tuple[str, ...] | None = None
    call: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    route: str | None = None
    name: str = ""
    handler: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    route_fn: Route | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> tuple[object, ...]:
        """What makes two rules the same rule (a reload keeps a rule whose key did not change)."""
        return (self.path, self.run, self.call, self.timeout, self.route, self.name)

    @property
    def label(self) -> str:
        return self.name or self.path


@dataclass(frozen=True, slots=True)
class Config:
    source: str | None = None
    xenstore_socket: str | None = None
    xenbus: bool = False
    root: str = MTWATCH_ROOT
    lifecycle: Literal["mtwatch", "domains"] = "mtwatch"
    mailbox_size: int = 64
    stop_deadline: float = 10.0
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    metrics: Listen | None = None
    watches: tuple[WatchRule, ...] = ()

    @property
    def xenstore_text(self) -> str:
        if self.xenbus:
            return "xenbus"
        return self.xenstore_socket or "default socket ($XENSTORED_PATH, /run/xenstored/socket, ...)"

    def restart_required(self, other: Config) -> list[str]:
        """The settings that differ from ``other`` and that only a restart of the agent applies."""
        fields = {
            "xenstore": (self.xenstore_socket, self.xenbus),
            "registry.root": self.root,
            "registry.lifecycle": self.lifecycle,
            "runtime.mailbox_size": self.mailbox_size,
            "runtime.stop_deadline": self.stop_deadline,
            "restart": self.restart,
            "metrics.listen": self.metrics,
        }
        theirs = {
            "xenstore": (other.xenstore_socket, other.xenbus),
            "registry.root": other.root,
            "registry.lifecycle": other.lifecycle,
            "runtime.mailbox_size": other.mailbox_size,
            "runtime.stop_deadline": other.stop_deadline,
            "restart": other.restart,
            "metrics.listen": other.metrics,
        }
        return [key for key, value in fields.items() if theirs[key] != value]


@dataclass(frozen=True, slots=True)
class Overrides:
    """What the command line sets over the file (None: not given)."""

    metrics: str | None = None
    log_json: bool = False
    log_level: str | None = None
    xenstore: str | None = None


# -- helpers ---------------------------------------------------------------------------------------------


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Table:
    """A TOML table being validated: take keys one by one, then :meth:`done` complains about the rest."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(where, f"must be a table, not {_describe(data)}")
        self.data: dict[str, object] = data
        self.where = where
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> object:
        self.seen.add(name)
        return self.data.get(name)

    def string(self, name: str, default: str | None = None) -> str | None:
        if name not in self.data:
            self.seen.add(name)
            return default
        value = self.raw(name)
        if not isinstance(value, str):
            raise ConfigError(self.key(name), f"must be a string, not {_describe(value)}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        if name not in self.data:
            self.seen.add(name)
            return default
        value = self.raw(name)
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), f"must be true or false, not {_describe(value)}")
        return value

    def integer(self, name: str, default: int, minimum: int) -> int:
        if name not in self.data:
            self.seen.add(name)
            return default
        value = self.raw(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), f"must be an integer, not {_describe(value)}")
        if value < minimum:
            raise ConfigError(self.key(name), f"must be at least {minimum}, not {value}")
        return value

    def number(self, name: str, default: float, *, positive: bool = True) -> float:
        if name not in self.data:
            self.seen.add(name)
            return default
        value = self.raw(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(self.key(name), f"must be a number of seconds, not {_describe(value)}")
        number = float(value)
        if not math.isfinite(number):
            raise ConfigError(self.key(name), f"must be a finite number, not {value}")
        if positive and number <= 0:
            raise ConfigError(self.key(name), f"must be a positive number, not {value}")
        if not positive and number < 0:
            raise ConfigError(self.key(name), f"must not be negative, not {value}")
        return number

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            also = ", ".join(self.key(name) for name in unknown[1:])
            raise ConfigError(self.key(unknown[0]), "unknown key" + (f" (and {also})" if also else ""))

    def table(self, name: str) -> _Table:
        """A sub-table (absent: an empty one)."""
        value = self.raw(name)
        return _Table({} if value is None else value, self.key(name))


def parse_listen(text: str, key: str = "metrics.listen") -> Listen:
    """``HOST:PORT``, ``[V6ADDR]:PORT`` or ``:PORT`` (every interface); port 0 picks a free one."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(key, f"{text!r} is not [ADDRESS]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError(key, f"{text!r} is not HOST:PORT")
        if ":" in host:
            raise ConfigError(key, f"{text!r}: write an IPv6 address in brackets, [ADDRESS]:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(key, f"{text!r}: the port must be a number 0..65535")
    if any(c.isspace() for c in host):
        raise ConfigError(key, f"{text!r}: invalid host")
    return Listen(host or None, int(port_text), text)


def resolve(reference: str, key: str) -> Any:
    """``"package.module:attribute[.attribute...]"`` -> the object; ConfigError naming ``key`` otherwise."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(key, f'{reference!r} is not "package.module:function"')
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(key, f"cannot import {module_name!r}: {exc}") from None
    except Exception as exc:  # the module's own code failed: say how, in one line
        raise ConfigError(key, f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(key, f"module {module_name!r} has no {attribute!r}") from None
    return target


def component_route(n: int) -> Route:
    """``route = "component:N"``: the N-th ``/``-separated component of the path (counted from 1, the leading
    ``/`` ignored: for absolute paths that is ``path.split("/")[N]``) is the domid, if it is a guest domid."""

    def route(path: str) -> int | None:
        parts = path.lstrip("/").split("/")
        if len(parts) < n:
            return None
        try:
            return check_domid(parts[n - 1], guest_only=True)
        except InvalidDomid:
            return None

    route.__name__ = f"component_{n}"
    return route


def _is_async_callable(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004  # an instance with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _template_fields(path: str, key: str) -> set[str]:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(path) if f is not None}
    except ValueError as exc:
        raise ConfigError(key, f"{path!r}: {exc}") from None


def _watch_rule(index: int, data: object) -> WatchRule:
    table = _Table(data, f"watch[{index}]")
    path = table.string("path")
    if path is None:
        raise ConfigError(table.key("path"), "missing (every [[watch]] needs a path)")
    fields = _template_fields(path, table.key("path"))
    if fields - {"domid"}:
        bad = ", ".join(sorted("{" + f + "}" for f in fields - {"domid"}))
        raise ConfigError(table.key("path"), f"{path!r}: only {{domid}} may be filled in, not {bad}")
    per_domain = "domid" in fields
    try:
        check_watch_path(path.format(domid=1) if per_domain else path)
    except InvalidPath as exc:
        raise ConfigError(table.key("path"), f"{path!r} is not a valid XenStore watch path ({exc})") from None

    has_run, has_call = table.has("run"), table.has("call")
    if has_run == has_call:
        raise ConfigError(
            f"watch[{index}]",
            'needs exactly one of run = [...] and call = "module:function"'
            + (" (both given)" if has_run else ""),
        )
    run: tuple[str, ...] | None = None
    call: str | None = None
    handler: Callable[..., Any] | None = None
    if has_run:
        argv = table.raw("run")
        if isinstance(argv, str):
            raise ConfigError(
                table.key("run"), f"must be a list of strings (argv, no shell), like [{argv!r}]"
            )
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ConfigError(table.key("run"), f"must be a non-empty list of strings, not {_describe(argv)}")
        if not argv[0]:
            raise ConfigError(table.key("run"), "the command (run[0]) is empty")
        if any("\0" in a for a in argv):
            raise ConfigError(table.key("run"), "an argument contains a NUL character")
        run = tuple(cast(list[str], argv))
    else:
        call = table.string("call")
        assert call is not None
        handler = resolve(call, table.key("call"))
        if not callable(handler) or not _is_async_callable(handler):
            raise ConfigError(
                table.key("call"), f"{call!r} is not an async function (async def handler(ctx, event))"
            )

    timeout = table.number("timeout", DEFAULT_TIMEOUT)
    route = table.string("route")
    route_fn: Route | None = None
    if route is not None:
        if per_domain:
            raise ConfigError(
                table.key("route"), "is for a global path; a path with {domid} is per domain already"
            )
        kind, sep, arg = route.partition(":")
        if kind == "component" and sep:
            if not arg.isdigit() or int(arg) < 1:
                raise ConfigError(table.key("route"), f"{route!r}: N in component:N must be 1 or more")
            route_fn = component_route(int(arg))
        else:
            target = resolve(route, table.key("route"))
            if not callable(target) or _is_async_callable(target):
                raise ConfigError(table.key("route"), f"{route!r} is not a plain (sync) function fn(path)")
            route_fn = target
    name = table.string("name", "") or ""
    table.done()
    return WatchRule(
        index=index,
        path=path,
        run=run,
        call=call,
        timeout=timeout,
        route=route,
        name=name,
        handler=handler,
        route_fn=route_fn,
    )


# -- the whole file ----------------------------------------------------------------------------------------


def parse_config(
    data: Mapping[str, object], overrides: Overrides | None = None, *, source: str | None = None
) -> Config:
    """Validate a parsed TOML document (and the command line's overrides) into a :class:`Config`."""
    try:
        return _parse(dict(data), overrides or Overrides(), source)
    except ConfigError as exc:
        if exc.source is None and source is not None:
            raise ConfigError(exc.key, exc.problem, source=source) from None
        raise


def _parse(data: dict[str, object], overrides: Overrides, source: str | None) -> Config:
    top = _Table(data, "")

    xs = top.table("xenstore")
    socket = xs.string("socket")
    xenbus = xs.boolean("xenbus", False)
    xs.done()
    if socket is not None and not socket:
        raise ConfigError("xenstore.socket", "must not be empty")
    if socket and xenbus:
        raise ConfigError("xenstore", "socket and xenbus = true exclude each other: choose one")
    if overrides.xenstore is not None:
        if not overrides.xenstore:
            raise ConfigError("--xenstore", "must not be empty")
        socket, xenbus = overrides.xenstore, False

    registry = top.table("registry")
    root = registry.string("root", MTWATCH_ROOT) or MTWATCH_ROOT
    lifecycle = registry.string("lifecycle", "mtwatch")
    registry.done()
    if not root.startswith("/"):
        raise ConfigError("registry.root", f"{root!r} must be an absolute XenStore path")
    try:
        check_path(root.rstrip("/") or "/")
    except InvalidPath:
        raise ConfigError("registry.root", f"{root!r} is not a valid XenStore path") from None
    if lifecycle not in ("mtwatch", "domains"):
        raise ConfigError("registry.lifecycle", f'must be "mtwatch" or "domains", not {lifecycle!r}')

    runtime = top.table("runtime")
    mailbox_size = runtime.integer("mailbox_size", 64, minimum=1)
    stop_deadline = runtime.number("stop_deadline", 10.0)
    runtime.done()

    restart_table = top.table("restart")
    defaults = RestartPolicy()
    max_restarts = restart_table.integer("max_restarts", defaults.max_restarts, minimum=0)
    period = restart_table.number("period", defaults.period)
    backoff_initial = restart_table.number("backoff_initial", defaults.backoff_initial, positive=False)
    backoff_max = restart_table.number("backoff_max", defaults.backoff_max, positive=False)
    restart_table.done()
    if backoff_max < backoff_initial:
        raise ConfigError(
            "restart.backoff_max",
            f"({backoff_max:g}) must not be less than backoff_initial ({backoff_initial:g})",
        )
    restart = RestartPolicy(
        max_restarts=max_restarts, period=period, backoff_initial=backoff_initial, backoff_max=backoff_max
    )

    log = top.table("log")
    log_format = log.string("format", "text")
    log_level = (log.string("level", "INFO") or "").upper()
    log.done()
    if log_format not in ("text", "json"):
        raise ConfigError("log.format", f'must be "text" or "json", not {log_format!r}')
    if overrides.log_json:
        log_format = "json"
    if overrides.log_level is not None:
        log_level = overrides.log_level.upper()
        if log_level not in LOG_LEVELS:
            raise ConfigError(
                "--log-level", f"unknown level {overrides.log_level!r} (one of {', '.join(LOG_LEVELS)})"
            )
    if log_level not in LOG_LEVELS:
        raise ConfigError("log.level", f"unknown level {log_level!r} (one of {', '.join(LOG_LEVELS)})")

    metrics: Listen | None = None
    if top.has("metrics"):
        table = top.table("metrics")
        listen = table.string("listen")
        table.done()
        if listen is not None:
            metrics = parse_listen(listen)
    if overrides.metrics is not None:
        metrics = parse_listen(overrides.metrics, "--metrics")

    watches_raw = top.raw("watch")
    if watches_raw is None:
        watches_raw = []
    if not isinstance(watches_raw, list):
        raise ConfigError("watch", "must be an array of tables: write each rule as [[watch]]")
    watches = tuple(_watch_rule(i, item) for i, item in enumerate(watches_raw))

    top.done()
    return Config(
        source=source,
        xenstore_socket=socket,
        xenbus=xenbus,
        root=root.rstrip("/") or "/",
        lifecycle=cast(Literal["mtwatch", "domains"], lifecycle),
        mailbox_size=mailbox_size,
        stop_deadline=stop_deadline,
        restart=restart,
        log_format=cast(Literal["text", "json"], log_format),
        log_level=log_level,
        metrics=metrics,
        watches=watches,
    )


def load_config(path: str | None, overrides: Overrides | None = None) -> Config:
    """Read and validate ``path`` (None: the defaults and the overrides only)."""
    if path is None:
        return parse_config({}, overrides)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("", "no such file", source=path) from None
    except PermissionError:
        raise ConfigPermissionError("", "permission denied (cannot read the file)", source=path) from None
    except IsADirectoryError:
        raise ConfigError("", "is a directory, not a file", source=path) from None
    except OSError as exc:
        raise ConfigError(
            "", f"cannot read: {exc.strerror or errno.errorcode.get(exc.errno or 0)}", source=path
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"invalid TOML: {exc}", source=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "", f"invalid TOML: not UTF-8 ({exc.reason} at byte {exc.start})", source=path
        ) from None
    return parse_config(data, overrides, source=path)
