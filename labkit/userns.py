"""Lesson 05: ``--userns``, a container whose root is nobody on the host.

A user namespace maps user and group IDs (user_namespaces(7)): with the map
``0 1000000000 65536`` uid 0 inside is uid 1000000000 outside. A process that is root in
such a namespace has every capability, but only over what that namespace owns: its own
mount, UTS and IPC namespaces, not the host's disks, kernel modules or /proc/sys. That is
what docker's ``userns-remap`` and podman's ``--userns=auto`` give a container.

The image's files are owned by uid 0 on disk, which inside the namespace would be nobody
(65534). An **idmapped mount** (mount_setattr(2), MOUNT_ATTR_IDMAP, Linux 5.12; overlayfs
on idmapped layers since 5.19) shows them through the namespace's map instead: on disk 0
is seen as 1000000000, which the container calls 0. Nothing on disk is chowned, so a layer
written by such a container commits with the same owners as any other.

What the runtime does, in container.py's PID 1:

1. :func:`create`: a user namespace with the map (its owner, root on the host, writes
   /proc/PID/uid_map and gid_map for a helper that unshared it);
2. :func:`idmap_onto`: each image layer and the container's own directory get an
   idmapped bind mount on themselves (in PID 1's private mount namespace only);
3. the overlay is mounted by :func:`as_ns_root`, with the file-system ids of the
   namespace's root, so that what it writes to the upper layer maps back to on-disk 0;
4. after pivot_root, :func:`enter`: setns(2) into the namespace, become its root, and
   unshare new mount, UTS and IPC namespaces that the user namespace owns.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import kernel, procfs
from .errors import LabError

FIRST = 1_000_000_000          # the first host uid labkit hands out, far above any real user's
SIZE = 65536                   # ids per container: 0..65535 inside, as podman and docker give
SLOTS = 4096


class UsernsError(LabError):
    """A user namespace that cannot be made or used."""


@dataclass(frozen=True)
class IdRange:
    """One line of /proc/PID/uid_map: ``inside`` ids from ``outside`` on, ``count`` of them."""
    outside: int
    count: int = SIZE
    inside: int = 0

    def line(self) -> str:
        return f"{self.inside} {self.outside} {self.count}"

    def to_host(self, uid: int) -> int:
        """The host uid a container uid is (e.g. 0 -> 1000000000)."""
        return self.outside + uid - self.inside


def allocate(claims: Path, owner: Path) -> IdRange:
    """A range of SIZE host ids that no other container of this lab root holds, as podman's
    --userns=auto picks one. Each range is claimed by a symlink ``claims/<first host id>`` to
    its container's directory (``owner``, which must exist); a claim whose container is gone
    is taken over. A lock keeps two lessons starting containers at once from taking the same."""
    claims.mkdir(parents=True, exist_ok=True)
    with open(claims / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for slot in range(SLOTS):
            outside = FIRST + slot * SIZE
            claim = claims / str(outside)
            if claim.is_symlink() and claim.exists():
                continue                        # its container is still there
            claim.unlink(missing_ok=True)
            claim.symlink_to(owner)
            return IdRange(outside)
    raise UsernsError(f"all {SLOTS} id ranges for --userns are taken", "remove old containers: labkit rm, or labkit reset")


def create(ids: IdRange) -> int:
    """A new user namespace whose ids are ``ids``; returns an fd of it (/proc/PID/ns/user),
    which keeps it alive. A child unshares it and waits; we (root on the host, so allowed to
    map any range) write its uid_map and gid_map, open its ns file, and let it exit."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    done_r, done_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(done_w)        # else our own copy would keep the read below waiting
            kernel.unshare(kernel.CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    try:
        os.close(ready_w)
        if os.read(ready_r, 1) != b"1":
            raise UsernsError("could not make a user namespace", "run `labkit preflight`")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(ids.line())
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(done_w)
        os.waitpid(pid, 0)
        for fd in (ready_r, done_r):
            os.close(fd)


def idmapped(path: str | os.PathLike, userns_fd: int) -> int:
    """A detached bind mount of ``path`` whose owners are seen through ``userns_fd``'s map
    (open_tree(2) OPEN_TREE_CLONE, then mount_setattr(2) MOUNT_ATTR_IDMAP); attach it with
    kernel.move_mount."""
    fd = kernel.open_tree(str(path))
    try:
        kernel.mount_setattr_idmap(fd, userns_fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def idmap_onto(path: str | os.PathLike, userns_fd: int) -> None:
    """Mount an idmapped view of ``path`` on ``path`` itself (call it in a private mount namespace)."""
    fd = idmapped(path, userns_fd)
    try:
        kernel.move_mount(fd, str(path))
    finally:
        os.close(fd)


@contextlib.contextmanager
def as_ns_root(ids: IdRange):
    """Run the block with the file-system ids of the namespace's root (setfsuid(2)) and our
    capabilities still in effect: an overlay mounted here creates its work and copied-up files
    as that host uid, which an idmapped upper layer stores as uid 0 on disk (the mounter's
    own uid 0 has no place in the map: the kernel would refuse with EOVERFLOW)."""
    caps = int(procfs.status()["CapEff"], 16)
    kernel.setfsid(ids.outside, ids.outside)
    kernel.capset(caps, int(procfs.status()["CapPrm"], 16), 0)   # setfsuid dropped the file caps
    try:
        yield
    finally:
        kernel.setfsid(0, 0)        # back to fsuid 0: the kernel raises the file caps again


def enter(userns_fd: int) -> None:
    """Join the user namespace (setns(2)), become its root (uid and gid 0 inside, no
    supplementary groups), then unshare a mount, UTS and IPC namespace that it owns, so the
    container's root may change its hostname or mount a tmpfs, yet nothing of the host's."""
    kernel.setns(userns_fd, kernel.CLONE_NEWUSER)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    os.setgroups([])
    kernel.unshare(kernel.CLONE_NEWNS | kernel.CLONE_NEWUTS | kernel.CLONE_NEWIPC)


_CAN_IDMAP: dict[str, bool] = {}


def can_idmap(path: str | os.PathLike) -> bool:
    """Whether the file system at ``path`` takes idmapped mounts here (asked once per process)."""
    key = str(path)
    if key not in _CAN_IDMAP:
        ns_fd = mnt = None
        try:
            ns_fd = create(IdRange(FIRST))
            mnt = idmapped(path, ns_fd)
            _CAN_IDMAP[key] = True
        except LabError:
            _CAN_IDMAP[key] = False
        finally:
            for fd in (mnt, ns_fd):
                if fd is not None:
                    os.close(fd)
    return _CAN_IDMAP[key]


def shift_owners(root: str | os.PathLike, delta: int) -> None:
    """Add ``delta`` to the owner and group of every file below ``root`` (lchown(2), never
    following a symlink); the setuid and setgid bits chown clears are set again."""
    paths = [str(root)]
    for d, dirs, files in os.walk(root):         # symlinks to directories are listed, not followed
        paths += [os.path.join(d, n) for n in dirs + files]
    for p in paths:
        st = os.lstat(p)
        os.chown(p, max(st.st_uid + delta, 0), max(st.st_gid + delta, 0), follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(p, stat.S_IMODE(st.st_mode))


def shifted_copy(src: str | os.PathLike, dst: Path, ids: IdRange) -> Path:
    """Where the kernel cannot idmap (tmpfs before Linux 6.3, old kernels): a copy of the layer
    ``src`` whose owners are shifted into ``ids`` (uid u becomes outside + u on disk), made once
    per range under ``dst`` (cp --reflink where the file system can share blocks). File
    capabilities do not survive the chown."""
    done = dst / "tree"
    if (dst / ".complete").exists():
        return done
    tmp = dst.with_name(dst.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subprocess.run(["cp", "-a", "--reflink=auto", f"{src}/.", str(tmp / "tree")], check=True, capture_output=True)
    shift_owners(tmp / "tree", ids.outside)
    (tmp / ".complete").touch()
    try:
        tmp.rename(dst)
    except OSError:             # another container of the same range made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return done


def uid_map(pid: int | str = "self") -> list[IdRange]:
    """/proc/PID/uid_map as IdRanges (one per line: inside, outside, count)."""
    out = []
    for line in Path(f"/proc/{pid}/uid_map").read_text().splitlines():
        inside, outside, count = map(int, line.split())
        out.append(IdRange(outside, count, inside))
    return out
