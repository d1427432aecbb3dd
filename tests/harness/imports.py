"""What importing a module loads, seen from a fresh interpreter (the layers hold when importing, not only in
the source)."""

from __future__ import annotations

import json
import subprocess
import sys

__all__ = ["loaded_after"]


def loaded_after(statement: str) -> set[str]:
    """The top-level and actors.* modules a fresh interpreter has loaded after ``statement``."""
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))
