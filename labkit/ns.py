"""Lesson 05: namespaces, the kernel's way of giving a process its own view.

Each process points at one namespace of each type; ``/proc/PID/ns/<type>`` is a link
whose target names it (``mnt:[4026531841]``): two processes in the same namespace show
the same number (namespaces(7)). unshare(2) moves the caller into new ones; setns(2)
joins an existing one, given a /proc/PID/ns file or (Linux 5.8+) a pidfd of a process
that is in it. A *user* namespace maps user IDs: inside, a process can be root (uid 0)
while outside it stays an ordinary user (user_namespaces(7)).
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from . import kernel, procfs, sandbox
from .errors import LabError

TYPES = tuple(kernel.NAMESPACES)       # mnt uts ipc user pid net cgroup time


class NamespaceError(LabError):
    """A namespace operation that cannot be done here."""


def links(pid: int | str = "self") -> dict[str, int]:
    """``{type: namespace inode}`` for process ``pid``, from /proc/PID/ns/*."""
    out = {}
    for t in TYPES:
        target = os.readlink(f"/proc/{pid}/ns/{t}")     # e.g. "mnt:[4026531841]"
        out[t] = int(target.split("[")[1].rstrip("]"))
    return out


@dataclass
class Process:
    """A process sleeping in new namespaces, so the lesson can look at it and join it.

    With "pid" it is PID 1 of its namespace; ``pid`` is its number in ours. It is a
    sandbox.Child, in the lab's ledger until close().
    """
    namespaces: tuple[str, ...]
    hostname: str | None = None
    pid: int = 0

    def __post_init__(self):
        self._child = sandbox.Child(_sleep, self.hostname if "uts" in self.namespaces else None,
                                    namespaces=self.namespaces, note=f"namespaces {' '.join(self.namespaces)}")
        try:
            self.pid = self._child.recv(timeout=10)
        except BaseException as e:
            self._child.close()
            if isinstance(e, LabError):
                raise
            raise NamespaceError(f"could not make namespaces {self.namespaces}: {e}", "run `labkit preflight`") from e

    def links(self) -> dict[str, int]:
        return links(self.pid)

    def run(self, fn: Callable, *args, types: Iterable[str] | None = None):
        """Call ``fn(*args)`` in a child that has joined this process's namespaces (setns(2)
        through a pidfd), and return its result."""
        return join(self.pid, fn, *args, types=types or self.namespaces)

    def close(self) -> None:
        if self.pid:
            self._child.close()
            self.pid = 0

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _sleep(ch: sandbox.Channel, hostname: str | None) -> None:
    """In the child: set the hostname, say who we are, sleep until killed."""
    if hostname:
        socket.sethostname(hostname)
    ch.send(int(os.readlink("/proc/self")))      # /proc is still the host's: our host PID
    while True:
        time.sleep(3600)


def join(pid: int, fn: Callable, *args, types: Iterable[str] = TYPES):
    """Run ``fn(*args)`` in a forked child after setns(2) into ``pid``'s namespaces."""
    flags = 0
    for t in types:
        flags |= kernel.NAMESPACES[t]

    def inside():
        fd = os.pidfd_open(pid)
        try:
            kernel.setns(fd, flags)
        finally:
            os.close(fd)
        if "pid" in types:                  # CLONE_NEWPID applies to children: fork once more
            return sandbox.run(fn, *args, namespaces=())
        return fn(*args)
    return sandbox.run(inside, namespaces=())


def in_time_ns(fn: Callable, *args, boottime: float = 0, monotonic: float = 0):
    """Run ``fn(*args)`` in a new time namespace whose CLOCK_BOOTTIME and CLOCK_MONOTONIC run
    ``boottime`` and ``monotonic`` seconds ahead of ours. time_namespaces(7): the offsets are
    written to /proc/self/timens_offsets after unshare(CLONE_NEWTIME) and before the first
    child, and only children live in the new namespace, so ``fn`` runs in a child's child.
    CLOCK_REALTIME (the wall clock) has no offset: it stays the host's."""
    def inside():
        kernel.unshare(kernel.NAMESPACES["time"])
        with open("/proc/self/timens_offsets", "w") as f:
            f.write(f"monotonic {int(monotonic)} 0\nboottime {int(boottime)} 0\n")
        return sandbox.run(fn, *args, namespaces=())
    return sandbox.run(inside, namespaces=())


def in_user_ns(fn: Callable, *args, namespaces: Iterable[str] = ()):
    """Run ``fn(*args)`` as uid 0 of a new user namespace (works for non-root users too)."""
    return sandbox.run(fn, *args, namespaces=("user", *[n for n in namespaces if n != "user"]))


def identity() -> dict:
    """Who this process is: uids, capabilities in effect, and its user namespace."""
    return {"uid": os.getuid(), "euid": os.geteuid(), "CapEff": procfs.status()["CapEff"],
            "user_ns": links()["user"], "uid_map": Path("/proc/self/uid_map").read_text().split()}
