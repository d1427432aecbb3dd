"""Hang forensics over the control socket: ``{"op": "stack", "domid": N}`` (``mtwatch stack N``), and the
stacks ``status --json`` carries of the handlers busy for more than half their timeout."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from ..runtime.domain.messages import DomainNotRunning
from ..runtime.domain.stacks import DomainStacks, TaskStack
from ..runtime.slices import in_slices
from .status import BUSY_NOTABLE, format_seconds

if TYPE_CHECKING:
    from ..runtime.runtime import Runtime

__all__ = ["add_busy_stacks", "format_stacks", "stack_answer"]


def _task(task: TaskStack) -> dict[str, Any]:
    return {
        "task": task.task,
        "what": task.what,
        "waited": task.waited,
        "timeout": task.timeout,
        "stack": task.stack,
    }


def _domain(stacks: DomainStacks) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "domid": stacks.domid,
        "state": stacks.state.value,
        "tasks": [_task(t) for t in stacks.tasks],
    }
    if stacks.worker_since is not None:
        held = max(0.0, trio.current_time() - stacks.worker_since)
        doc["worker"] = {"pid": stacks.worker_pid, "busy": round(held, 3)}
    return doc


def stack_answer(rt: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    """The control socket's ``stack`` op."""
    domid = request.get("domid")
    if not isinstance(domid, int) or isinstance(domid, bool):
        return {"ok": False, "error": 'stack needs "domid": N'}
    try:
        return {"ok": True, **_domain(rt.stacks(domid))}
    except DomainNotRunning as exc:
        return {"ok": False, "error": str(exc)}


async def add_busy_stacks(doc: dict[str, Any], rt: Runtime) -> None:
    """``doc["stacks"]``: every domain whose handler has been busy for more than half its watch's timeout
    (more than BUSY_NOTABLE seconds for a watch without one), with all its tasks' stacks. Only busy domains
    are looked at (``busy_since``) for their stacks; finding them reads every domain, in slices that give the
    loop back (32,751 domains are a tenth of a second of the loop's time)."""
    now = trio.current_time()
    found = []
    async for domid, snapshot in in_slices(rt.domains.items()):
        if snapshot.busy_since is None:
            continue
        busy = now - snapshot.busy_since
        try:
            stacks = rt.stacks(domid)
        except DomainNotRunning:
            continue
        handler = next((t for t in stacks.tasks if t.what.startswith("handler of ")), None)
        limit = BUSY_NOTABLE if handler is None or handler.timeout is None else handler.timeout / 2
        if busy > limit:
            found.append({**_domain(stacks), "busy": round(busy, 3)})
    doc["stacks"] = sorted(found, key=lambda d: d["domid"])


def format_stacks(answer: dict[str, Any]) -> str:
    """``mtwatch stack``'s text: the domain and its state, then each task, what it runs for how long, and
    its await stack."""
    lines = [f"domain {answer['domid']}: {answer['state']}"]
    if answer["state"] != "running":
        lines[0] += " (not running: its actor waits, its handlers do not run)"
    for task in answer["tasks"]:
        waited = "" if task["waited"] is None else f", for {format_seconds(task['waited'])}"
        timeout = "" if task["timeout"] is None else f" (timeout {format_seconds(task['timeout'])})"
        lines.append(f"task {task['task']!r}: {task['what']}{waited}{timeout}")
        lines.extend("  " + line for line in task["stack"].rstrip("\n").splitlines())
    worker = answer.get("worker")
    if worker is not None:
        pid = worker["pid"] or "?"
        lines.append(
            f"worker process pid {pid}: runs this domain's handler, for {format_seconds(worker['busy'])} "
            "(its own stack is in that process)"
        )
    return "\n".join(lines)
