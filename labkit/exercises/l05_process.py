"""Lesson 05 exercises: pick namespaces, size a memory limit, enter a root with no way back."""
from __future__ import annotations

import socket

from .. import cgroups, lab, ns
from ..errors import LabError
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


@exercise("05.escape", "enter a root with no way back", hints=[
    "pivot_root(2) needs new_root to be a mount point: bind-mount the rootfs onto itself first "
    "(kernel.mount(rootfs, rootfs, None, kernel.MS_BIND | kernel.MS_REC)).",
    "pivot_root(new_root, put_old) with put_old a directory inside new_root; then chdir('/') and "
    "detach the old root (kernel.umount2('/old', kernel.MNT_DETACH)): nothing is left to walk back to.",
    "The leaked-fd attack uses a descriptor opened before your function ran: close every "
    "inherited fd (sandbox.close_fds() keeps only what the sandbox needs).",
])
def check_escape_defence(my_enter, rootfs=None):
    """``my_enter(rootfs)``: make ``rootfs`` this process's root, with system calls. The check runs
    each attack of the lesson (roots.ATTACKS) in a child with a new mount and PID namespace
    that calls your function first, holding an fd opened on the host's /."""
    from .. import roots
    if not callable(my_enter):
        yield False, "define my_enter(rootfs) and pass the function itself"
        return
    rootfs = rootfs or _busybox_rootfs()
    for attack in roots.ATTACKS:
        try:
            a = roots.attempt(rootfs, "yours", attack, pid_ns=True, enter=my_enter)
        except LabError as e:
            yield False, f"{attack}: your function failed in the child: {e}"
            continue
        yield not a.escaped, (f"{attack}: contained (/ holds {', '.join(a.saw[:4])} …)" if not a.escaped else
                              f"{attack}: the child reached the host's files (/ holds {', '.join(a.saw[:4])} …)")


def _busybox_rootfs():
    """busybox unpacked in scratch/05-ex-rootfs (made once per session)."""
    from ..image.base import base_image
    from ..image.store import Store
    d = lab.scratch("05-ex-rootfs", fresh=False)
    if not (d / "bin" / "sh").exists():
        d = lab.scratch("05-ex-rootfs")
        s = Store()
        base_image(s)
        s.flatten("busybox", d)
    return d


CAP_TASK = "chown 1000 /srv/owned && (httpd -f -p 80 -h /srv & sleep 0.3; kill -0 $! && echo bound-80)"


@exercise("05.caps", "the smallest capability set for a task", hints=[
    "Start from none (cap_drop=['ALL']) and add only what the task needs; capabilities(7) says "
    "which capability each privileged operation checks.",
    "Changing a file's owner is one capability; binding a port below 1024 is another.",
    "CAP_CHOWN and CAP_NET_BIND_SERVICE: names go without the CAP_ prefix.",
])
def check_caps(my_caps, image: str = "busybox", store=None):
    """``my_caps``: capability names. The task (chown a file, then serve on port 80) runs as root
    in a busybox container with only those; it must succeed, and fail without any one of them."""
    from .. import confine, container
    if not isinstance(my_caps, (list, tuple, set)) or not my_caps:
        yield False, "answer with a list of capability names, e.g. ['KILL']"
        return
    try:
        caps = sorted({confine._cap(c) for c in my_caps})
    except LabError as e:
        yield False, str(e)
        return

    def task(with_caps):
        script = f"mkdir -p /srv && touch /srv/owned && {CAP_TASK}"
        c, r = container.run(image, ["/bin/sh", "-c", script], store=store, rm=True,
                             cap_drop=["ALL"], cap_add=list(with_caps))
        return r.exit_code == 0 and "bound-80" in r.stdout
    ok = task(caps)
    yield ok, (f"with {caps} the task succeeds" if ok else f"with {caps} the task fails: something is missing")
    if not ok:
        return
    extra = [c for c in caps if task([x for x in caps if x != c])]
    yield not extra, ("and each of them is needed" if not extra else
                      f"{len(extra)} of them can go and the task still succeeds: smaller")
