"""A thin ctypes layer over the system calls the lessons use.

Python 3.11 has no os.unshare, os.setns or mount at all, so we call libc (and, for
calls glibc 2.36 does not wrap, syscall(2)) directly. Each wrapper turns a failure
into a :class:`~labkit.errors.KernelError` naming the call, the path and the likely
cause. These wrappers do not check paths: callers go through ``labkit.lab`` which
refuses anything outside the lab root.

Man pages: mount(2), umount2(2), unshare(2), setns(2), pivot_root(2), and for the
new mount API fsopen(2), fsconfig(2), fsmount(2), move_mount(2).
"""
from __future__ import annotations

import ctypes
import errno
import os

from .errors import KernelError

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# --- flags (include/uapi/linux/sched.h, mount.h) --------------------------------------
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080          # Linux 5.6
NAMESPACES = {"mnt": CLONE_NEWNS, "uts": CLONE_NEWUTS, "ipc": CLONE_NEWIPC,
              "user": CLONE_NEWUSER, "pid": CLONE_NEWPID, "net": CLONE_NEWNET,
              "cgroup": CLONE_NEWCGROUP, "time": CLONE_NEWTIME}

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2

# Syscall numbers for the calls glibc 2.36 does not wrap. pivot_root differs between
# x86_64 and arm64 (asm-generic); the mount API calls (424 and up) are the same everywhere.
SYS_pivot_root = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine)
SYS_open_tree = 428
SYS_move_mount = 429
SYS_fsopen = 430
SYS_fsconfig = 431
SYS_fsmount = 432
SYS_openat2 = 437
SYS_mount_setattr = 442              # Linux 5.12
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_IDMAP = 0x00100000
MOVE_MOUNT_T_EMPTY_PATH = 0x40
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]
FSOPEN_CLOEXEC = 1
FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100

# Why a call usually fails, by errno, for the messages a learner sees.
_CAUSES = {
    errno.EPERM: ("the process lacks CAP_SYS_ADMIN", "run the lab as root (sudo -i) or inside a user namespace"),
    errno.EACCES: ("permission denied on a path", "check the owner and mode of the directories involved"),
    errno.ENOENT: ("a directory named in the call does not exist", "create it first (mkdir -p)"),
    errno.ENOTDIR: ("a path that must be a directory is not one", "give a directory"),
    errno.EBUSY: ("the target is busy or already mounted", "unmount it first, or run `labkit reset`"),
    errno.ENODEV: ("the kernel does not know this filesystem type", "load its module (modprobe overlay)"),
    errno.EXDEV: ("the operation would cross a layer or filesystem boundary", "see redirect_dir in the OverlayFS lesson"),
    errno.ENOSYS: ("this kernel lacks the system call", "use a newer kernel (5.2+ for the new mount API)"),
}


def _check(ret: int, call: str, path: str = "", kernel_log: str = "", cause: str = "") -> int:
    """Raise a KernelError for a -1 return, keeping errno; return ret otherwise."""
    if ret == -1:
        err = ctypes.get_errno()
        default_cause, fix = _CAUSES.get(err, ("", "see the man page of " + call.split("(")[0]))
        raise KernelError(call, err, path, cause or default_cause, fix, kernel_log)
    return ret


def _b(s: str | os.PathLike | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


# --- classic calls ----------------------------------------------------------------------
def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2). The option string ``data`` is cut by the kernel at one page (4095 bytes)."""
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
           f"mount(-t {fstype or 'none'})", str(target))


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2); ``flags=MNT_DETACH`` detaches now and cleans up when no longer busy."""
    _check(_libc.umount2(_b(target), flags), "umount2", str(target))


def unshare(flags: int) -> None:
    """unshare(2): move the calling process into new namespaces (CLONE_NEW*)."""
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace behind ``fd`` (a /proc/PID/ns/* file or a pidfd)."""
    _check(_libc.setns(fd, nstype), "setns")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2): make ``new_root`` the root mount and move the old one to ``put_old``."""
    if SYS_pivot_root is None:
        raise KernelError("pivot_root", errno.ENOSYS, str(new_root),
                          cause=f"labkit does not know pivot_root's syscall number on {os.uname().machine}",
                          fix="add it to SYS_pivot_root in labkit/kernel.py (see syscall(2) tables)")
    _check(_libc.syscall(SYS_pivot_root, _b(new_root), _b(put_old)), "pivot_root", str(new_root))


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2) (Linux 5.6+): open ``path`` relative to ``dirfd`` with RESOLVE_* rules, e.g.
    RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS: the kernel refuses (EXDEV, ELOOP) any path that
    would leave ``dirfd`` or pass through a symlink, at the moment of the call."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    ret = _libc.syscall(SYS_openat2, dirfd, _b(path), ctypes.byref(how), ctypes.sizeof(how))
    leaves = ret == -1 and ctypes.get_errno() in (errno.ELOOP, errno.EXDEV)
    return _check(ret, "openat2", path, cause="the path leaves its root or goes through a symlink" if leaves else "")


PR_SET_PDEATHSIG = 1


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1     # include/uapi/linux/sockios.h, if.h
_IFREQ = "16sH22x"                                           # struct ifreq: name, then ifr_flags


def link_up(name: str) -> None:
    """Set IFF_UP on the network interface ``name`` of this network namespace, what
    `ip link set NAME up` does, with two ioctls on any socket (netdevice(7): SIOCGIFFLAGS,
    SIOCSIFFLAGS) instead of a process."""
    import fcntl
    import socket
    import struct
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        _, flags = struct.unpack(_IFREQ, fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack(_IFREQ, name.encode(), 0)))
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(_IFREQ, name.encode(), flags | IFF_UP))


def set_parent_death_signal(sig: int) -> None:
    """prctl(2) PR_SET_PDEATHSIG: the kernel sends ``sig`` to us when our parent exits."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def prctl(option: int, arg2: int = 0, arg3: int = 0, name: str = "prctl") -> int:
    """prctl(2) with up to two arguments (PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, ...)."""
    return _check(_libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), 0, 0), f"prctl({name})")


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) for this thread, with 64-bit masks (_LINUX_CAPABILITY_VERSION_3: two
    {effective, permitted, inheritable} structs, low 32 bits first)."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    m = (effective, permitted, inheritable)
    data = (ctypes.c_uint32 * 6)(*(x & 0xFFFFFFFF for x in m), *(x >> 32 for x in m))
    _check(_libc.syscall(SYS_CAPSET, header, data), "capset")


SYS_CAPSET = {"x86_64": 126, "aarch64": 91}.get(os.uname().machine)


def make_private(path: str = "/") -> None:
    """Stop mount events propagating to and from the parent namespace (mount_namespaces(7))."""
    mount(None, path, None, MS_REC | MS_PRIVATE)


# --- the new mount API (Linux 5.2+) ----------------------------------------------------
def fsopen(fstype: str) -> int:
    """fsopen(2): a filesystem context fd; the kernel writes its error messages into it."""
    return _check(_libc.syscall(SYS_fsopen, _b(fstype), FSOPEN_CLOEXEC), f"fsopen({fstype})")


def read_fs_log(fd: int) -> str:
    """Read the messages the kernel queued on a filesystem context fd (fsopen(2), "Message")."""
    lines = []
    while True:
        try:
            msg = os.read(fd, 4096)
        except OSError:  # ENODATA: the queue is empty
            break
        if not msg:
            break
        lines.append(msg.decode(errors="replace").strip())
    return "; ".join(lines)


def fsconfig(fd: int, key: str, value: str | int | None = None, *, what: str = "") -> None:
    """fsconfig(2): set one parameter: a flag (value None), a string, or an fd (value int)."""
    if value is None:
        ret = _libc.syscall(SYS_fsconfig, fd, FSCONFIG_SET_FLAG, _b(key), None, 0)
    elif isinstance(value, int):
        ret = _libc.syscall(SYS_fsconfig, fd, FSCONFIG_SET_FD, _b(key), None, value)
    else:
        ret = _libc.syscall(SYS_fsconfig, fd, FSCONFIG_SET_STRING, _b(key), _b(value), 0)
    if ret == -1:  # ctypes keeps errno privately, so reading the log first does not lose it
        _check(ret, f"fsconfig({key})", what or (value if isinstance(value, str) else ""),
               read_fs_log(fd))


def fsconfig_create(fd: int, what: str = "") -> None:
    """FSCONFIG_CMD_CREATE: build the superblock from the parameters set so far."""
    ret = _libc.syscall(SYS_fsconfig, fd, FSCONFIG_CMD_CREATE, None, None, 0)
    if ret == -1:
        _check(ret, "fsconfig(create)", what, read_fs_log(fd))


def fsmount(fd: int, attr_flags: int = 0) -> int:
    """fsmount(2): turn a created context into a detached mount, returned as an fd."""
    return _check(_libc.syscall(SYS_fsmount, fd, FSMOUNT_CLOEXEC, attr_flags), "fsmount")


def move_mount(mount_fd: int, target: str | None = None, target_fd: int | None = None) -> None:
    """move_mount(2): attach the detached mount ``mount_fd`` at ``target``, or on the
    directory an O_PATH ``target_fd`` holds (no path looked up again)."""
    if target_fd is not None:
        ret = _libc.syscall(SYS_move_mount, mount_fd, b"", target_fd, b"",
                            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)
    else:
        ret = _libc.syscall(SYS_move_mount, mount_fd, b"", AT_FDCWD, _b(target), MOVE_MOUNT_F_EMPTY_PATH)
    _check(ret, "move_mount", str(target or f"fd {target_fd}"))


def open_tree(path: str) -> int:
    """open_tree(2) with OPEN_TREE_CLONE: a detached copy of the mount at ``path`` (a bind
    mount not yet attached anywhere), as an fd for mount_setattr(2) and move_mount(2)."""
    return _check(_libc.syscall(SYS_open_tree, AT_FDCWD, _b(path), OPEN_TREE_CLONE | os.O_CLOEXEC),
                  "open_tree", str(path))


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr_idmap(mount_fd: int, userns_fd: int) -> None:
    """mount_setattr(2) MOUNT_ATTR_IDMAP: the detached mount ``mount_fd`` shows its files'
    owners through the ID map of the user namespace ``userns_fd`` (on disk uid 0 is seen as
    that namespace's root). The file system must allow it (ext4, btrfs, xfs; tmpfs since 6.3)."""
    attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    ret = _libc.syscall(SYS_mount_setattr, mount_fd, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr))
    why = "this file system or kernel cannot make idmapped mounts" if ret == -1 and ctypes.get_errno() == errno.EINVAL else ""
    _check(ret, "mount_setattr(MOUNT_ATTR_IDMAP)", cause=why)


def setfsid(uid: int, gid: int) -> None:
    """setfsuid(2) and setfsgid(2): the ids this thread creates and checks files with. Going
    from fsuid 0 to another clears CAP_CHOWN, CAP_DAC_OVERRIDE and the like from the effective set."""
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)


# --- the kernel log -----------------------------------------------------------------------
class KernelLog:
    """The kernel log (/dev/kmsg) from now on: open it before a call, read what the call logged.

    Some filesystems (overlayfs among them) explain a refused mount only here, in the log
    dmesg(1) prints. Opening /dev/kmsg and seeking to its end skips every older record;
    records read "prio,seq,usec,flags;text" (Documentation/ABI/testing/dev-kmsg).
    """

    def __init__(self):
        try:
            self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.fd = None           # not root, or no /dev/kmsg: errors just lack the log line

    def read(self, match: str = "") -> list[str]:
        """New records since opening (or the last read) that contain ``match``."""
        out = []
        while self.fd is not None:
            try:
                rec = os.read(self.fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except OSError:      # EPIPE: a record was overwritten while we read; go on
                continue
            text = rec.partition(";")[2].strip()
            if match in text:
                out.append(text)
        return out

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "KernelLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def explain_with_log(err: KernelError, log: KernelLog, match: str) -> KernelError:
    """The same error with what the kernel logged about it (lines containing ``match``)."""
    if err.kernel_log:
        return err
    lines = log.read(match)
    if not lines:
        return err
    return KernelError(err.call, err.errno, err.path, "", err.fix, "; ".join(lines))
