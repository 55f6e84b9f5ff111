"""Fault-injection points for the reliability tests: `RLTOOL_FAULT=<point>` SIGKILLs the process there.

The checkpoint code calls `point("ckpt:model")`, `point("ckpt:rename")`, ... at each phase of a
write, so a test can kill a real training process at exactly that moment and check what resume
finds. A real SIGKILL, not an exception: no `finally`, no atexit, no flush, as in an OOM kill.
Unset (always, outside tests) it costs one dict lookup per call.
"""
from __future__ import annotations

import os
import signal

POINTS = ("ckpt:actors", "ckpt:trainer_state", "ckpt:rename", "ckpt:latest", "ckpt:prune")
"""In write order: actors' files written; trainer state written (not yet renamed); renamed into
place (latest not yet updated); latest updated (not yet pruned); one old checkpoint pruned."""


_calls: dict[str, int] = {}


def point(name: str) -> None:
    fault = os.environ.get("RLTOOL_FAULT")
    if not fault:
        return
    where, _, nth = fault.partition("@")
    if nth and not (nth.isdigit() and int(nth) > 0):
        raise ValueError(f"RLTOOL_FAULT={fault!r}: expected <point> or <point>@<n>, n a positive integer")
    if where == name:
        _calls[name] = _calls.get(name, 0) + 1
        if _calls[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
