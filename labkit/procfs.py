"""The one reader of ``/proc/PID/stat`` and ``/proc/PID/status`` (proc(5)).

In ``stat`` the second field is the command name in parentheses, and a name may itself hold
spaces and ``)``: split after the *last* ``)``, then count fields from there. ``status`` is
one ``Key:\tvalue`` per line (CapEff, Seccomp, NoNewPrivs, Uid ...).
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Stat:
    pid: int
    comm: str
    state: str            # R running, S sleeping, Z zombie ...
    ppid: int
    minflt: int           # minor faults (field 10)
    majflt: int           # major faults (field 12)
    utime: int            # clock ticks in user mode (field 14)
    stime: int            # clock ticks in kernel mode (field 15)
    starttime: int        # clock ticks after boot when the process started (field 22)

    @property
    def cpu_seconds(self) -> float:
        return (self.utime + self.stime) / os.sysconf("SC_CLK_TCK")


def stat(pid: int | str = "self") -> Stat:
    """Parse ``/proc/PID/stat``; raises OSError (ENOENT) when there is no such process."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    head, _, tail = text.rpartition(")")
    pid_s, _, comm = head.partition(" (")
    f = tail.split()           # f[0] is field 3 (state)
    return Stat(int(pid_s), comm, f[0], int(f[1]), int(f[7]), int(f[9]), int(f[11]), int(f[12]), int(f[19]))


def parse_status(text: str) -> dict[str, str]:
    """``{key: value}`` of a ``/proc/PID/status`` text, e.g. one a container printed."""
    out = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            out[key] = value.strip()
    return out


def status(pid: int | str = "self") -> dict[str, str]:
    """``/proc/PID/status`` as a dict; raises OSError (ENOENT) when there is no such process."""
    with open(f"/proc/{pid}/status") as f:
        return parse_status(f.read())


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return stat(pid).state != "Z"
    except OSError:
        return False
