"""The agent's configuration: a TOML file (``tomllib``), validated whole at start and on every reload.

Every error names the key and the problem (``watch[1].timeout: must be a positive number, not -3``); unknown
keys are errors. Without a file the defaults work on a real dom0 (README "The agent"); the commented
example ``actors/agent/agent.toml`` describes every key.
"""

from __future__ import annotations

import dataclasses
import errno
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..runtime.options import RuntimeOptions
from ..xs.errors import InvalidPath
from ..xs.wire import check_path
from . import DEFAULT_CONTROL
from .schema import (
    ConfigError,
    ConfigPermissionError,
    Listen,
    Problems,
    Table,
    WatchRule,
    parse_listen,
    watch_rule,
)
from .toml_lines import key_lines, line_of

__all__ = ["DEFAULT_CONTROL", "Config", "ConfigError", "ConfigPermissionError", "Overrides", "load_config",
           "parse_config"]  # fmt: skip

LIFECYCLES = ("auto", "mtwatch", "domains")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
PerDomain = Literal["all", "trouble", "none"]
PER_DOMAIN: tuple[PerDomain, ...] = ("all", "trouble", "none")  # [metrics] per_domain: who gets series


@dataclass(frozen=True, slots=True)
class Config:
    """A validated configuration. ``options`` is what the runtime gets; its defaults are the runtime's own
    (:class:`~actors.runtime.options.RuntimeOptions`), so they live in one place."""

    source: str | None = None
    xenstore_socket: str | None = None
    xenbus: bool = False
    options: RuntimeOptions = field(default_factory=RuntimeOptions)
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    metrics: Listen | None = None
    metrics_per_domain: PerDomain = "all"  # which domains get per-domain series: all, trouble, none
    control: str | None = None  # None: DEFAULT_CONTROL, skipped with a warning where it cannot be made
    python_path: tuple[str, ...] = ()
    watches: tuple[WatchRule, ...] = ()

    root = property(lambda self: self.options.root)
    lifecycle = property(lambda self: self.options.lifecycle)
    stop_deadline = property(lambda self: self.options.stop_deadline)

    @property
    def xenstore_text(self) -> str:
        if self.xenbus:
            return "xenbus"
        return self.xenstore_socket or "default socket ($XENSTORED_PATH, /run/xenstored/socket, ...)"

    @property
    def control_path(self) -> str:
        return self.control or DEFAULT_CONTROL

    def restart_required(self, other: Config) -> list[str]:
        """The settings that differ from ``other`` and that only a restart of the agent applies: the
        connection, the endpoints and every runtime option."""
        keys = [key for key, get in _RESTART_KEYS.items() if get(self) != get(other)]
        for option in dataclasses.fields(RuntimeOptions):
            if getattr(self.options, option.name) != getattr(other.options, option.name):
                keys.append(_OPTION_KEYS.get(option.name, f"runtime.{option.name}"))
        return keys


_RESTART_KEYS: dict[str, Callable[[Config], object]] = {
    "xenstore": lambda c: (c.xenstore_socket, c.xenbus),
    "metrics.listen": lambda c: c.metrics,
    "control.socket": lambda c: c.control,
}
_OPTION_KEYS = {"root": "registry.root", "lifecycle": "registry.lifecycle", "restart": "restart"}
_DEFAULTS = RuntimeOptions()


@dataclass(frozen=True, slots=True)
class Overrides:
    """What the command line sets over the file (None: not given)."""

    metrics: str | None = None
    log_json: bool = False
    log_level: str | None = None
    xenstore: str | None = None
    control: str | None = None


# -- the sections -------------------------------------------------------------------------------------------

_R = _DEFAULTS.restart
# section -> key -> (the Table method that reads and checks it, its arguments after the key)
_SECTIONS: dict[str, dict[str, tuple[Any, ...]]] = {
    "xenstore": {"socket": ("string", None), "xenbus": ("boolean", False)},
    "registry": {
        "root": ("string", _DEFAULTS.root),
        "lifecycle": ("choice", _DEFAULTS.lifecycle, LIFECYCLES),
    },
    "runtime": {
        "mailbox_size": ("integer", _DEFAULTS.mailbox_size, 1),
        "overflow_limit": ("integer", _DEFAULTS.overflow_limit, 1),
        "stop_deadline": ("number", _DEFAULTS.stop_deadline),
        "quota_interval": ("number", _DEFAULTS.quota_interval, False),
        "quota_threshold": ("number", _DEFAULTS.quota_threshold),
        "worker_processes": ("integer", _DEFAULTS.worker_processes, 1),
        "worker_memory_limit": ("integer", _DEFAULTS.worker_memory_limit, 1 << 24),
    },
    "restart": {
        "max_restarts": ("integer", _R.max_restarts, 0),
        "period": ("number", _R.period),
        "backoff_initial": ("number", _R.backoff_initial, False),
        "backoff_max": ("number", _R.backoff_max, False),
    },
    "log": {"format": ("choice", "text", ("text", "json")), "level": ("string", "INFO")},
    "metrics": {"listen": ("string", None), "per_domain": ("choice", "all", PER_DOMAIN)},
    "control": {"socket": ("string", None)},
    "handlers": {"path": ("strings",)},
}


def _sections(top: Table, problems: Problems) -> dict[str, dict[str, Any]]:
    """Every section's keys, read and checked as :data:`_SECTIONS` says (unknown keys are errors); a key in
    error is noted in ``problems`` and taken at its default."""
    values = {}
    for name, keys in _SECTIONS.items():
        table = problems.take(Table({}, name), top.table, name)
        values[name] = {
            key: problems.take(args[0] if args else (), getattr(table, how), key, *args)
            for key, (how, *args) in keys.items()
        }
        problems.take(None, table.done)
    return values


def _options(registry: dict[str, Any], runtime: dict[str, Any], restart: dict[str, Any]) -> RuntimeOptions:
    root = registry["root"] or _DEFAULTS.root
    if not root.startswith("/"):
        raise ConfigError("registry.root", f"{root!r} must be an absolute XenStore path")
    try:
        check_path(root.rstrip("/") or "/")
    except InvalidPath:
        raise ConfigError("registry.root", f"{root!r} is not a valid XenStore path") from None
    if restart["backoff_max"] < restart["backoff_initial"]:
        raise ConfigError(
            "restart.backoff_max",
            f"({restart['backoff_max']:g}) must not be less than backoff_initial ({restart['backoff_initial']:g})",
        )
    policy = dataclasses.replace(_R, **restart)
    runtime = {**runtime, "quota_interval": runtime["quota_interval"] or None}  # 0: no quota telemetry
    return RuntimeOptions(
        root=root.rstrip("/") or "/", lifecycle=registry["lifecycle"], restart=policy, **runtime
    )


def _level(text: str, key: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise ConfigError(key, f"unknown level {text!r} (one of {', '.join(LOG_LEVELS)})")
    return text.upper()


def _xenstore(v: dict[str, dict[str, Any]], overrides: Overrides) -> tuple[str | None, bool]:
    socket, xenbus = v["xenstore"]["socket"], v["xenstore"]["xenbus"]
    if socket is not None and not socket:
        raise ConfigError("xenstore.socket", "must not be empty")
    if socket and xenbus:
        raise ConfigError("xenstore", "socket and xenbus = true exclude each other: choose one")
    if overrides.xenstore is not None:
        if not overrides.xenstore:
            raise ConfigError("--xenstore", "must not be empty")
        socket, xenbus = overrides.xenstore, False
    return socket, xenbus


def _log_level(v: dict[str, dict[str, Any]], overrides: Overrides) -> str:
    if overrides.log_level is not None:
        return _level(overrides.log_level, "--log-level")
    return _level(v["log"]["level"] or "", "log.level")


def _metrics(v: dict[str, dict[str, Any]], overrides: Overrides) -> Listen | None:
    if overrides.metrics is not None:
        return parse_listen(overrides.metrics, "--metrics")
    listen = v["metrics"]["listen"]
    return parse_listen(listen) if listen is not None else None


def _control(v: dict[str, dict[str, Any]]) -> str | None:
    control: str | None = v["control"]["socket"]
    if control is not None and not control.startswith("/"):
        raise ConfigError("control.socket", f"{control!r} must be an absolute path")
    return control


def _rules(top: Table, fresh: bool, problems: Problems) -> tuple[WatchRule, ...]:
    raw = top.raw("watch")
    if raw is not None and not isinstance(raw, list):
        raise ConfigError("watch", "must be an array of tables: write each rule as [[watch]]")
    rules = (problems.take(None, watch_rule, i, item, fresh) for i, item in enumerate(raw or []))
    return tuple(rule for rule in rules if rule is not None)


def _values(
    v: dict[str, dict[str, Any]], overrides: Overrides, fresh: bool, top: Table, problems: Problems
) -> dict[str, Any]:
    """The Config fields besides ``options``, with the command line's overrides applied; errors are noted in
    ``problems`` (the field then at its default)."""
    socket, xenbus = problems.take((None, False), _xenstore, v, overrides)
    python_path = v["handlers"]["path"]
    for folder in reversed(python_path):  # before site-packages, in the order given
        if folder not in sys.path:
            sys.path.insert(0, folder)
    control = problems.take(None, _control, v)
    return {
        "xenstore_socket": socket,
        "xenbus": xenbus,
        "log_format": "json" if overrides.log_json else v["log"]["format"],
        "log_level": problems.take("INFO", _log_level, v, overrides),
        "metrics": problems.take(None, _metrics, v, overrides),
        "metrics_per_domain": v["metrics"]["per_domain"],
        "control": overrides.control or control,
        "python_path": python_path,
        "watches": problems.take((), _rules, top, fresh, problems),
    }


def parse_config(
    data: Mapping[str, object],
    overrides: Overrides | None = None,
    *,
    source: str | None = None,
    fresh: bool = False,
) -> Config:
    """Validate a parsed TOML document (and the command line's overrides) into a :class:`Config`. With
    ``fresh`` (a reload), handler modules whose file changed are imported again."""
    overrides = overrides or Overrides()
    problems = Problems()
    top = Table(dict(data), "")
    v = _sections(top, problems)
    options = problems.take(_DEFAULTS, _options, v["registry"], v["runtime"], v["restart"])
    values = _values(v, overrides, fresh, top, problems)
    problems.take(None, top.done)
    if problems.errors and source is not None:
        problems.errors = [error.placed(source, None) for error in problems.errors]
    problems.check()
    return Config(source=source, options=options, **values)


def load_config(path: str | None, overrides: Overrides | None = None, *, fresh: bool = False) -> Config:
    """Read and validate ``path`` (None: the defaults and the overrides only)."""
    if path is None:
        return parse_config({}, overrides)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode()
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError("", "no such file", source=path) from None
    except PermissionError:
        raise ConfigPermissionError("", "permission denied (cannot read the file)", source=path) from None
    except IsADirectoryError:
        raise ConfigError("", "is a directory, not a file", source=path) from None
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0)
        raise ConfigError("", f"cannot read: {reason}", source=path) from None
    except tomllib.TOMLDecodeError as exc:
        at = re.search(r"at line (\d+)", str(exc))
        raise ConfigError("", f"invalid TOML: {exc}", source=path, line=int(at[1]) if at else None) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "", f"invalid TOML: not UTF-8 ({exc.reason} at byte {exc.start})", source=path
        ) from None
    try:
        return parse_config(data, overrides, source=path, fresh=fresh)
    except ConfigError as exc:
        lines = key_lines(text)
        errors = [error.placed(path, line_of(error.key, lines)) for error in exc.errors]
        errors[0].errors = errors
        raise errors[0] from None
