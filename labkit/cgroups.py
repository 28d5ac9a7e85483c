"""cgroups: which version of each controller this host runs, and where it is mounted.

A host may mount every controller in the unified v2 tree (/sys/fs/cgroup), every
controller in its own v1 hierarchy, or a mix ("hybrid": this lab's CI machine has
memory, pids and cpu on v1 and an empty v2 tree beside them). So we never hard-code
a path: we read /proc/self/mountinfo (proc(5)) and the v2 root's cgroup.controllers
(Documentation/admin-guide/cgroup-v2.rst, "Controlling Controllers").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .mountinfo import mounts


@dataclass(frozen=True)
class Controller:
    name: str       # memory, pids, cpu ...
    version: int    # 1 or 2
    mountpoint: Path


def controllers() -> dict[str, Controller]:
    """Each available controller, v1 where a v1 hierarchy claims it, else v2."""
    found: dict[str, Controller] = {}
    v2_roots = []
    for m in mounts():
        if m.fstype == "cgroup":
            for opt in m.super_options.split(","):
                if opt in KNOWN:
                    found.setdefault(opt, Controller(opt, 1, m.mountpoint))
        elif m.fstype == "cgroup2":
            v2_roots.append(m.mountpoint)
    for root in v2_roots:
        try:
            names = (root / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        for name in names:
            found.setdefault(name, Controller(name, 2, root))
    return found


KNOWN = ("cpu", "cpuacct", "cpuset", "memory", "pids", "io", "blkio", "freezer",
         "devices", "hugetlb", "perf_event", "net_cls", "net_prio", "rdma", "misc")
