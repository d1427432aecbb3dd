"""The configuration's building blocks: :class:`ConfigError`, the table validator, Python references and the
``[[watch]]`` rule (see :mod:`actors.agent.config` for the file)."""

from __future__ import annotations

import importlib
import inspect
import math
import os
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, cast

from ..xs.errors import InvalidDomid, InvalidPath
from ..xs.wire import check_domid, check_watch_path

__all__ = [
    "DEFAULT_TIMEOUT",
    "ConfigError",
    "ConfigPermissionError",
    "Listen",
    "Problems",
    "Table",
    "WatchRule",
    "component_route",
    "parse_listen",
    "resolve",
    "watch_rule",
]

DEFAULT_TIMEOUT = 5.0

T = TypeVar("T")
D = TypeVar("D")

Route = Callable[[str], "int | None"]


class ConfigError(Exception):
    """An invalid configuration: ``key`` (dotted, ``""`` for the file itself) and what is wrong with it;
    ``line``, where the file has the key (None: not in a file, or not found). ``errors`` is every error found
    in the file, this one first (validation goes on past the first: see :class:`Problems`)."""

    def __init__(self, key: str, problem: str, *, source: str | None = None, line: int | None = None) -> None:
        self.key = key
        self.problem = problem
        self.source = source
        self.line = line
        self.errors: list[ConfigError] = [self]
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}" if key else f"{where}{problem}")

    def located(self) -> str:
        """``FILE:LINE: key: problem`` (as compilers write it), with what is known of the place."""
        place = ":".join(str(part) for part in (self.source, self.line) if part is not None)
        text = f"{self.key}: {self.problem}" if self.key else self.problem
        return f"{place}: {text}" if place else text

    def placed(self, source: str | None, line: int | None) -> ConfigError:
        """This error, in ``source`` at ``line`` (a copy of the same class; unchanged what is known already)."""
        copy = type(self)(self.key, self.problem, source=self.source or source, line=self.line or line)
        return copy


class ConfigPermissionError(ConfigError):
    """The configuration file exists but may not be read."""


class Problems:
    """The errors found so far: each check runs through :meth:`take`, which notes its error and carries on with
    a default, so that one validation reports every error at once (:meth:`check` raises them together)."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def take(self, default: D, fn: Callable[..., T], *args: Any) -> T | D:
        try:
            return fn(*args)
        except ConfigError as exc:
            self.errors.extend(exc.errors)
            return default

    def check(self) -> None:
        """Raise the first error, carrying every one (``errors``), if there is any."""
        if self.errors:
            first = self.errors[0]
            first.errors = list(self.errors)
            raise first


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
    initial: bool = True
    isolation: str | None = None  # "process": the call runs in a worker process
    handler: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    route_fn: Route | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> tuple[object, ...]:
        """What makes two rules the same rule (every field but the index and the derived route function; a
        reload keeps a rule whose key did not change; a re-imported handler is a new function: a new rule)."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name not in ("index", "route_fn"))

    @property
    def label(self) -> str:
        return self.name or self.path


# -- one table at a time ----------------------------------------------------------------------------------


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Table:
    """A TOML table being validated: take keys one by one, then :meth:`done` complains about the rest."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(where, f"must be a table, not {_describe(data)}")
        self.data: dict[str, object] = data
        self.where = where
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def raw(self, name: str) -> object:
        self.seen.add(name)
        return self.data.get(name)

    def _typed(self, name: str, default: Any, ok: Callable[[object], bool], what: str) -> Any:
        value = self.raw(name)
        if value is None:
            return default
        if not ok(value):
            raise ConfigError(self.key(name), f"must be {what}, not {_describe(value)}")
        return value

    def string(self, name: str, default: str | None = None) -> str | None:
        return cast("str | None", self._typed(name, default, lambda v: isinstance(v, str), "a string"))

    def boolean(self, name: str, default: bool) -> bool:
        return cast(bool, self._typed(name, default, lambda v: isinstance(v, bool), "true or false"))

    def integer(self, name: str, default: int, minimum: int) -> int:
        value = cast(int, self._typed(name, default, _is_int, "an integer"))
        if value < minimum:
            raise ConfigError(self.key(name), f"must be at least {minimum}, not {value}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default)
        if value not in choices:
            quoted = " or ".join(f'"{choice}"' for choice in choices)
            raise ConfigError(self.key(name), f"must be {quoted}, not {value!r}")
        return value

    def number(self, name: str, default: float, positive: bool = True) -> float:
        value = self._typed(name, default, _is_number, "a number of seconds")
        number = float(value)
        if not math.isfinite(number):
            raise ConfigError(self.key(name), f"must be a finite number, not {value}")
        if positive and number <= 0:
            raise ConfigError(self.key(name), f"must be a positive number, not {value}")
        if number < 0:
            raise ConfigError(self.key(name), f"must not be negative, not {value}")
        return number

    def strings(self, name: str) -> tuple[str, ...]:
        value = self._typed(name, [], lambda v: isinstance(v, list), "a list of strings")
        if not all(isinstance(item, str) and item for item in value):
            raise ConfigError(self.key(name), f"must be a list of non-empty strings, not {_describe(value)}")
        return tuple(value)

    def table(self, name: str) -> Table:
        """A sub-table (absent: an empty one)."""
        value = self.raw(name)
        return Table({} if value is None else value, self.key(name))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            also = ", ".join(self.key(name) for name in unknown[1:])
            raise ConfigError(self.key(unknown[0]), "unknown key" + (f" (and {also})" if also else ""))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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


# -- Python references ------------------------------------------------------------------------------------

_IMPORTED: dict[str, float] = {}  # module name -> its file's mtime when this configuration imported it


def _import(module_name: str, fresh: bool) -> Any:
    """Import ``module_name``; with ``fresh``, import it again if its file changed since we imported it."""
    module = sys.modules.get(module_name)
    if module is None:
        importlib.invalidate_caches()  # a module file added since the last import
        module = importlib.import_module(module_name)
    elif fresh and _mtime(module) != _IMPORTED.get(module_name, _mtime(module)):
        module = importlib.reload(module)
    _IMPORTED[module_name] = _mtime(module)
    return module


def _mtime(module: Any) -> float:
    try:
        return os.stat(module.__file__).st_mtime
    except (OSError, TypeError):
        return 0.0


def resolve(reference: str, key: str, *, fresh: bool = False) -> Any:
    """``"package.module:attribute[.attribute...]"`` -> the object; ConfigError naming ``key`` otherwise."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(key, f'{reference!r} is not "package.module:function"')
    try:
        target: Any = _import(module_name, fresh)
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


# -- [[watch]] --------------------------------------------------------------------------------------------


def _watch_path(table: Table) -> tuple[str, bool]:
    """The rule's path and whether it is per domain (has ``{domid}``)."""
    key = table.key("path")
    path = table.string("path")
    if path is None:
        raise ConfigError(key, "missing (every [[watch]] needs a path)")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(path) if f is not None}
    except ValueError as exc:
        raise ConfigError(key, f"{path!r}: {exc}") from None
    if fields - {"domid"}:
        bad = ", ".join(sorted("{" + f + "}" for f in fields - {"domid"}))
        raise ConfigError(key, f"{path!r}: only {{domid}} may be filled in, not {bad}")
    per_domain = "domid" in fields
    try:
        check_watch_path(path.format(domid=1) if per_domain else path)
    except InvalidPath as exc:
        raise ConfigError(key, f"{path!r} is not a valid XenStore watch path ({exc})") from None
    return path, per_domain


def _run_argv(table: Table) -> tuple[str, ...]:
    key, argv = table.key("run"), table.raw("run")
    if isinstance(argv, str):
        raise ConfigError(key, f"must be a list of strings (argv, no shell), like [{argv!r}]")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ConfigError(key, f"must be a non-empty list of strings, not {_describe(argv)}")
    if not argv[0]:
        raise ConfigError(key, "the command (run[0]) is empty")
    if any("\0" in a for a in argv):
        raise ConfigError(key, "an argument contains a NUL character")
    return tuple(argv)


def _call_handler(table: Table, fresh: bool, isolation: str | None) -> tuple[str, Callable[..., Any]]:
    call = cast(str, table.string("call"))
    handler = resolve(call, table.key("call"), fresh=fresh)
    if isolation == "process":
        if not inspect.isfunction(handler) or _is_async_callable(handler):
            raise ConfigError(
                table.key("call"),
                f'{call!r} is not a plain function (def handler(ctx, event)): isolation = "process" runs one'
                " in a worker process",
            )
        return call, handler
    if not callable(handler) or not _is_async_callable(handler):
        raise ConfigError(
            table.key("call"), f"{call!r} is not an async function (async def handler(ctx, event))"
        )
    return call, handler


def _isolation(table: Table, has_call: bool) -> str | None:
    if "isolation" not in table.data:
        return None
    isolation = table.choice("isolation", "inline", ("inline", "process"))
    if not has_call:
        raise ConfigError(
            table.key("isolation"), "is for a call rule (a run rule's command is a process already)"
        )
    return None if isolation == "inline" else isolation


def _route(table: Table, per_domain: bool, fresh: bool) -> tuple[str | None, Route | None]:
    key, route = table.key("route"), table.string("route")
    if route is None:
        return None, None
    if per_domain:
        raise ConfigError(key, "is for a global path; a path with {domid} is per domain already")
    kind, sep, arg = route.partition(":")
    if kind == "component" and sep:
        if not arg.isdigit() or int(arg) < 1:
            raise ConfigError(key, f"{route!r}: N in component:N must be 1 or more")
        return route, component_route(int(arg))
    target = resolve(route, key, fresh=fresh)
    if not callable(target) or _is_async_callable(target):
        raise ConfigError(key, f"{route!r} is not a plain (sync) function fn(path)")
    return route, target


def watch_rule(index: int, data: object, fresh: bool) -> WatchRule:
    """The rule ``watch[index]``; ConfigError carrying every error of the rule (``errors``)."""
    table = Table(data, f"watch[{index}]")
    problems = Problems()
    path, per_domain = problems.take(("", False), _watch_path, table)
    has_run, has_call = "run" in table.data, "call" in table.data
    if has_run == has_call:
        problems.errors.append(
            ConfigError(
                table.where,
                'needs exactly one of run = [...] and call = "module:function"'
                + (" (both given)" if has_run else ""),
            )
        )
    run = problems.take(None, _run_argv, table) if has_run else None
    isolation = problems.take(None, _isolation, table, has_call)
    call, handler = (
        problems.take((None, None), _call_handler, table, fresh, isolation) if has_call else (None, None)
    )
    timeout = problems.take(DEFAULT_TIMEOUT, table.number, "timeout", DEFAULT_TIMEOUT)
    route, route_fn = problems.take((None, None), _route, table, per_domain, fresh)
    name = problems.take("", table.string, "name", "") or ""
    initial = problems.take(True, table.boolean, "initial", True)
    problems.take(None, table.done)
    problems.check()
    return WatchRule(index, path, run, call, timeout, route, name, initial, isolation, handler, route_fn)
