"""Read /proc/self/mountinfo: the kernel's own list of what is mounted where.

Format (proc(5), "/proc/pid/mountinfo"):
    36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    id parent major:minor root mountpoint options [optional fields...] - fstype source super-options
Spaces, tabs, newlines and backslashes in paths are escaped as octal (\\040 ...).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Mount:
    mount_id: int
    parent_id: int
    root: str
    mountpoint: Path
    options: str
    fstype: str
    source: str
    super_options: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts(pid: str | int = "self") -> list[Mount]:
    """Every mount visible to process ``pid``, in the kernel's order (parents first)."""
    out = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            left, right = line.rstrip("\n").split(" - ", 1)
            a = left.split(" ")
            fstype, source, super_opts = (right.split(" ") + ["", ""])[:3]
            out.append(Mount(int(a[0]), int(a[1]), _unescape(a[3]), Path(_unescape(a[4])),
                             a[5], fstype, _unescape(source), super_opts))
    return out


def mounts_under(path: Path | str, pid: str | int = "self") -> list[Mount]:
    """Mounts at or below ``path``, deepest first: the order to unmount them in."""
    base = Path(path)
    below = [m for m in mounts(pid) if m.mountpoint == base or base in m.mountpoint.parents]
    return sorted(below, key=lambda m: (len(m.mountpoint.parts), m.mount_id), reverse=True)


def is_mountpoint(path: Path | str) -> bool:
    """True when something is mounted exactly at ``path``."""
    p = Path(path)
    return any(m.mountpoint == p for m in mounts())


def mount_of(path: Path | str, pid: str | int = "self") -> Mount:
    """The mount a path lies on: the last one (the top of any stack) at the deepest mountpoint
    that is the path or one of its parents (mountinfo lists parents before children)."""
    p = Path(os.path.realpath(path))
    under = [m for m in mounts(pid) if m.mountpoint == p or m.mountpoint in p.parents]
    return max(under, key=lambda m: len(m.mountpoint.parts))
