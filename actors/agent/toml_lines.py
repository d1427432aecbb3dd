"""Where a TOML file writes each key, so that a configuration error names its line (``tomllib`` keeps no
positions). A line scanner, enough for configuration files: table headers ``[a.b]`` and ``[[watch]]`` (the n-th
of an array is ``watch[n]``, as the errors name it) and ``key = value`` lines, dotted keys included; the lines
inside multi-line strings and arrays are skipped."""

from __future__ import annotations

import re

__all__ = ["key_lines", "line_of"]

_HEADER = re.compile(r"\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"""\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)
_PART = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")


def _dotted(text: str) -> str:
    return ".".join(part.strip("\"'") for part in _PART.findall(text))


def key_lines(text: str) -> dict[str, int]:
    """Dotted key (``runtime.stop_deadline``, ``watch[1].timeout``, ``watch[1]`` for the rule's header) -> the
    1-based line that writes it (the first, if written twice)."""
    lines: dict[str, int] = {}
    arrays: dict[str, int] = {}
    table = ""
    open_quote: str | None = None  # inside a multi-line string
    depth = 0  # inside a multi-line array or inline table
    for number, line in enumerate(text.splitlines(), 1):
        if open_quote is not None:
            if line.count(open_quote) % 2:
                open_quote = None
            continue
        if depth:
            depth = max(0, depth + line.count("[") + line.count("{") - line.count("]") - line.count("}"))
            continue
        header = _HEADER.match(line)
        if header and not _KEY.match(line):
            name = _dotted(header.group(2))
            if header.group(1) == "[[":
                index = arrays[name] = arrays.get(name, -1) + 1
                table = f"{name}[{index}]"
            else:
                table = name
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key is None:
            continue
        full = f"{table}.{_dotted(key.group(1))}" if table else _dotted(key.group(1))
        lines.setdefault(full, number)
        value = line[key.end() :]
        for quote in ('"""', "'''"):
            if value.count(quote) % 2:
                open_quote = quote
        if open_quote is None and not value.lstrip().startswith(("'", '"')):
            depth = max(0, value.count("[") + value.count("{") - value.count("]") - value.count("}"))
    return lines


def line_of(key: str, lines: dict[str, int]) -> int | None:
    """The line of ``key``, else of the nearest table that holds it (``watch[1]`` for ``watch[1].run``)."""
    while key:
        if key in lines:
            return lines[key]
        key = key.rpartition(".")[0]
    return None
