"""Lesson 05 exercises: pick namespaces, size a memory limit, close an escape."""
from __future__ import annotations

import socket

from .. import cgroups, ns
from . import exercise


@exercise("05.namespaces", "a new hostname, the same network", hints=[
    "The hostname lives in the UTS namespace.",
    "Whatever type you do not list stays shared with this notebook: leave net out.",
])
def check_namespaces(types):
    """``types``: namespace types for a process that can set its own hostname but must
    share this notebook's network namespace."""
    if not types:
        yield False, "list the namespace types, e.g. ['uts']"
        return
    bad = [t for t in types if t not in ns.TYPES]
    if bad:
        yield False, f"{bad} are not namespace types; pick from {list(ns.TYPES)}"
        return
    with ns.Process(tuple(types), hostname="exercise" if "uts" in types else None) as p:
        host = p.run(socket.gethostname)
        same_net = p.links()["net"] == ns.links()["net"]
    yield host == "exercise" and host != socket.gethostname(), (
        "it has its own hostname" if host == "exercise" else "it could not get its own hostname")
    yield same_net, "it shares our network namespace" if same_net else "it has a network namespace of its own"


@exercise("05.memory", "a memory limit between two programs", hints=[
    "The limit is in bytes; the program that must survive needs 24 MiB plus a little for itself.",
    "Anything between about 32 and 56 MiB works: 40 << 20, for example.",
])
def check_limit_between(limit):
    """``limit`` (bytes): a program allocating 24 MiB must survive, one allocating 64 MiB must not."""
    if not limit:
        yield False, "give a limit in bytes, e.g. 100 << 20"
        return
    small = cgroups.memory_trace(int(limit), step=4 << 20, interval=0, most=24 << 20)
    big = cgroups.memory_trace(int(limit), step=4 << 20, interval=0, most=64 << 20)
    yield not small.killed_by, "the 24 MiB program survives" if not small.killed_by else \
        f"the 24 MiB program was killed ({small.killed_by}): the limit is too low"
    yield big.oom_kills > 0, "the 64 MiB program is stopped by the OOM killer" if big.oom_kills else \
        "the 64 MiB program survived: the limit is too high"


@exercise("05.escape", "which defence closes the leaked-fd escape?", hints=[
    "The attack uses a file descriptor the process still holds, opened before the root changed.",
    "Look at the table: which single defence turns 'leaked-fd' from ESCAPED to contained?",
])
def check_escape_defence(answer):
    """``answer``: "pid namespace", "close fds" or "pivot_root"."""
    a = (answer or "").lower().replace("_", " ")
    ok = "fd" in a and "close" in a
    yield ok, "closing inherited fds before exec takes the host fd away" if ok else (
        f"{answer!r} leaves the fd open: the table shows the attack still escapes" if answer
        else 'answer "pid namespace", "close fds" or "pivot_root"')
