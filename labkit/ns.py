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
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from . import kernel, lab, sandbox
from .errors import LabError

TYPES = tuple(kernel.NAMESPACES)       # mnt uts ipc user pid net cgroup


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

    With "pid" it is PID 1 of its namespace (a second fork); ``pid`` is its number in
    ours. It is in the lab's ledger until stop().
    """
    namespaces: tuple[str, ...]
    hostname: str | None = None
    pid: int = 0

    def __post_init__(self):
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(r)
            try:
                sandbox.enter(self.namespaces)
                if self.hostname and "uts" in self.namespaces:
                    import socket
                    socket.sethostname(self.hostname)
                if "pid" in self.namespaces and os.fork():
                    os._exit(0)                  # the grandchild is PID 1; init adopts it
                # /proc is still the host's, so /proc/self names us by our host PID
                os.write(w, os.readlink("/proc/self").encode() + b"\n")
                os.close(w)
                while True:
                    time.sleep(3600)
            finally:
                os._exit(1)
        os.close(w)
        data = b""
        while not data.endswith(b"\n"):
            chunk = os.read(r, 64)
            if not chunk:
                break
            data += chunk
        os.close(r)
        if "pid" in self.namespaces or not data:
            os.waitpid(child, 0)                 # the middle child has exited (or failed)
        if not data:
            raise NamespaceError(f"could not make namespaces {self.namespaces}", "run `labkit preflight`")
        self.pid = int(data)
        self._entry = lab.record("process", str(self.pid), f"namespaces {' '.join(self.namespaces)}")

    def links(self) -> dict[str, int]:
        return links(self.pid)

    def run(self, fn: Callable, *args, types: Iterable[str] | None = None):
        """Call ``fn(*args)`` in a child that has joined this process's namespaces (setns(2)
        through a pidfd), and return its result."""
        return join(self.pid, fn, *args, types=types or self.namespaces)

    def stop(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if "pid" not in self.namespaces:
                os.waitpid(self.pid, 0)      # our own child; a PID-namespace init was adopted
            for _ in range(200):             # ...and is reaped by its new parent: wait for that
                try:
                    if Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                        break
                except OSError:
                    break
                time.sleep(0.005)
            lab.forget(self._entry)
            self.pid = 0

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


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


def in_user_ns(fn: Callable, *args, namespaces: Iterable[str] = ()):
    """Run ``fn(*args)`` as uid 0 of a new user namespace (works for non-root users too)."""
    return sandbox.run(fn, *args, namespaces=("user", *[n for n in namespaces if n != "user"]))


def identity() -> dict:
    """Who this process is: uids, capabilities in effect, and its user namespace."""
    status = Path("/proc/self/status").read_text().splitlines()
    get = lambda key: next(l.split(":", 1)[1].split() for l in status if l.startswith(key))
    return {"uid": os.getuid(), "euid": os.geteuid(), "CapEff": get("CapEff")[0],
            "user_ns": links()["user"], "uid_map": Path("/proc/self/uid_map").read_text().split()}
