"""Lesson 05: what makes a container more than namespaces. Docker's default confinement, laid
on a container's PID 1 after its root is set up and just before it runs the command, in the
order runc uses (runc's libcontainer/init_linux.go, the OCI runtime spec's config.md):

1. /proc and /sys: runc's **masked paths** (a /dev/null or an empty read-only tmpfs mounted
   over them) and **read-only paths** (/proc/sys, sysrq-trigger ...); /sys mounted read-only,
   with the container's own cgroups at /sys/fs/cgroup (read-only, through its cgroup namespace);
2. the **devices cgroup** (set up by the parent, cgroups.Group.allow_devices): a device node
   may be made, but only null, zero, full, random, urandom, tty, ptmx and ptys may be opened;
3. **no_new_privs** (prctl(2) PR_SET_NO_NEW_PRIVS): no exec can gain privileges (setuid bits
   and file capabilities are ignored), as runc's default spec sets;
4. the **capability sets** (capabilities(7)): every capability outside Docker's default 14 is
   dropped from the bounding set; once the process is the user it runs as, effective and
   permitted are set to those 14 (root) or left empty (any other user), and the inheritable
   and ambient sets are emptied (as docker since 20.10.14, CVE-2022-24769);
5. a **seccomp** filter (seccomp(2), through libseccomp's Python binding pyseccomp) last, so
   that the set-up above may still mount: it refuses with EPERM the system calls Docker's
   default profile leaves out (mount, pivot_root, kexec_load, init_module, bpf, keyctl ...,
   and clone or unshare asking for a new namespace).

``Confinement`` says which of these a container gets; ``--privileged`` turns them all off.
"""
from __future__ import annotations

import errno
import os
from dataclasses import asdict, dataclass, field

from . import kernel, procfs
from .errors import LabError

CAPS = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
        "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
        "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
        "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
        "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
        "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE")
# moby's oci/caps/defaults.go: what `docker run` and podman give a container (CapEff 00000000a80425fb)
DOCKER_CAPS = frozenset({"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID",
                         "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL",
                         "AUDIT_WRITE"})
# runc's default spec (`runc spec`): masked and read-only paths
MASKED = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
          "/sys/devices/virtual/powercap")
READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# the effect of moby's profiles/seccomp/default.json for a container without CAP_SYS_ADMIN & co.:
# these are not in its allow list (docs.docker.com, "Significant syscalls blocked by the default
# profile"), plus the new mount API, which it allows only with CAP_SYS_ADMIN
BLOCKED = ("acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
           "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "get_kernel_syms", "get_mempolicy",
           "init_module", "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl",
           "lookup_dcookie", "mbind", "mount", "mount_setattr", "move_mount", "move_pages",
           "name_to_handle_at", "nfsservctl", "open_by_handle_at", "open_tree", "perf_event_open",
           "pivot_root", "process_vm_readv", "process_vm_writev", "query_module", "quotactl",
           "quotactl_fd", "reboot", "request_key", "set_mempolicy", "setns", "settimeofday", "stime",
           "swapoff", "swapon", "sysfs", "_sysctl", "umount", "umount2", "unshare", "uselib",
           "userfaultfd", "ustat", "vm86", "vm86old")
NEW_NAMESPACE_FLAGS = tuple(v for k, v in kernel.NAMESPACES.items() if k != "time")

PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 24, 47, 4


class ConfinementError(LabError):
    """A confinement option that does not exist."""


@dataclass
class Confinement:
    """What a container is allowed: ``caps`` (names as in capabilities(7), without CAP_),
    and whether the seccomp filter, no_new_privs, the masked /proc and the devices cgroup
    apply. The default is Docker's (with no_new_privs, as runc's default spec)."""
    caps: list[str] = field(default_factory=lambda: sorted(DOCKER_CAPS))
    seccomp: bool = True
    no_new_privs: bool = True
    masked_paths: bool = True
    devices: bool = True
    privileged: bool = False
    userns: bool = False        # root inside is an unprivileged host uid (userns.py)

    @classmethod
    def from_options(cls, privileged: bool = False, cap_add=(), cap_drop=(), security_opt=(),
                     userns: str = "host") -> "Confinement":
        """``docker run``'s options: --privileged, --cap-add/--cap-drop NAME (or ALL),
        --security-opt seccomp=unconfined | no-new-privileges=false; and podman's
        --userns=auto (a user namespace of its own) or host (none, the default)."""
        if userns not in ("host", "auto"):
            raise ConfinementError(f"unknown --userns {userns!r}", "use --userns auto, or leave it out (host)")
        if privileged:
            return cls(caps=list(CAPS), seccomp=False, no_new_privs=False, masked_paths=False,
                       devices=False, privileged=True, userns=userns == "auto")
        c = cls(userns=userns == "auto")
        caps = set(c.caps)
        for name in cap_drop:
            caps = set() if _cap(name) == "ALL" else caps - {_cap(name)}
        for name in cap_add:
            caps = set(CAPS) if _cap(name) == "ALL" else caps | {_cap(name)}
        c.caps = sorted(caps)
        for opt in security_opt:
            if opt in ("seccomp=unconfined", "seccomp:unconfined"):
                c.seccomp = False
            elif opt in ("no-new-privileges=false", "no-new-privileges:false"):
                c.no_new_privs = False
            elif opt in ("no-new-privileges", "no-new-privileges=true"):
                c.no_new_privs = True
            else:
                raise ConfinementError(f"unknown --security-opt {opt!r}",
                                       "use seccomp=unconfined or no-new-privileges=false")
        return c

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict | None) -> "Confinement":
        return cls(**d) if d else cls()


def devices_cgroup() -> bool:
    """Whether this host has the v1 devices controller, where runc's device rules go."""
    from . import cgroups
    return getattr(cgroups.controllers().get("devices"), "version", 0) == 1


def caps_in_force(c: Confinement) -> list[str]:
    """The capabilities a container with ``c`` gets on this host: ``c.caps``, less MKNOD where
    no devices cgroup stops a device node from being opened (cgroup v2: runc loads a
    BPF_CGROUP_DEVICE program there; labkit has none, so no node may be made)."""
    if c.devices and not c.privileged and "MKNOD" in c.caps and not devices_cgroup():
        return [x for x in c.caps if x != "MKNOD"]
    return list(c.caps)


def mask(caps) -> str:
    """['CHOWN', 'KILL'] -> '0000000000000021', as /proc/PID/status prints CapEff."""
    return f"{sum(1 << CAPS.index(c) for c in caps):016x}"


def _cap(name: str) -> str:
    n = name.upper().removeprefix("CAP_")
    if n != "ALL" and n not in CAPS:
        raise ConfinementError(f"{name!r} is not a capability", "see capabilities(7): e.g. NET_ADMIN, SYS_ADMIN")
    return n


# --- in the container's PID 1 -------------------------------------------------------------------
def set_no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS, 1): execve(2) can no longer add privileges (a setuid binary
    runs with the caller's ids); also what lets an unprivileged process load a seccomp filter."""
    kernel.prctl(PR_SET_NO_NEW_PRIVS, 1, name="PR_SET_NO_NEW_PRIVS")


def drop_bounding_set(keep: list[str]) -> None:
    """capabilities(7): drop every capability outside ``keep`` from the bounding set (so no
    exec can get it back, even as root) and clear the ambient set. The effective set is left
    as it is, so the user can still be changed (setuid(2) needs CAP_SETUID) even when
    --cap-drop took it away: runc does the same."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    have = int(procfs.status()["CapPrm"], 16)        # cannot keep what this process lacks
    wanted = {CAPS.index(c) for c in keep if have >> CAPS.index(c) & 1}
    for cap in range(last + 1):
        if cap not in wanted:
            kernel.prctl(PR_CAPBSET_DROP, cap, name=f"PR_CAPBSET_DROP {cap}")
    kernel.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, name="PR_CAP_AMBIENT_CLEAR_ALL")


def set_capabilities(keep: list[str]) -> None:
    """capset(2): effective and permitted to those of ``keep`` this process still has (a
    process that became another user than root has none left: setuid(2) cleared them), and
    inheritable to nothing. The kernel itself never fills the inheritable set; a filled one
    hands its capabilities to any program whose file has them inheritable (CVE-2022-24769:
    docker, podman and runc's default spec all leave it empty)."""
    have = int(procfs.status()["CapPrm"], 16)        # cannot keep what this process lacks
    bits = sum(1 << CAPS.index(c) for c in keep if have >> CAPS.index(c) & 1)
    kernel.capset(bits, bits, 0)


def seccomp_filter():
    """A libseccomp filter (not loaded) with the effect of Docker's default profile: EPERM for
    every name in BLOCKED this kernel knows, for clone(2) with any CLONE_NEW* flag, ENOSYS for
    clone3(2) (whose flags sit in memory a filter cannot read, so libc falls back to clone).
    Only this architecture's calls are let through: an i386 or x32 call kills the process,
    so no other numbering can get round the list."""
    import pyseccomp as sc
    f = sc.SyscallFilter(sc.ALLOW)
    for name in BLOCKED:
        try:
            f.add_rule(sc.ERRNO(errno.EPERM), name)
        except (OSError, ValueError, RuntimeError):
            pass                              # a name this libseccomp or architecture lacks
    for flag in NEW_NAMESPACE_FLAGS:
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    return f


def confine(c: Confinement) -> None:
    """Step 3 and the first half of 4 in PID 1 after its mounts and pivot_root: no_new_privs,
    the bounding set. Changing user comes next, then :func:`capabilities`, and last the seccomp
    filter (it refuses mount and setns): :func:`load`."""
    if c.privileged:
        return
    if c.no_new_privs:
        set_no_new_privs()
    drop_bounding_set(c.caps)


def capabilities(c: Confinement) -> None:
    """The second half of step 4, once the process is the user it runs as: the capability sets."""
    if not c.privileged:
        set_capabilities(c.caps)


def load(c: Confinement, seccomp_filter_) -> None:
    """Load the seccomp filter (seccomp(2) SECCOMP_SET_MODE_FILTER): the last step before exec."""
    if not c.privileged and c.seccomp and seccomp_filter_ is not None:
        seccomp_filter_.load()


def mask_paths(proc_fd: int, sys_fd: int | None) -> None:
    """Step 1, through fds of the container's fresh /proc and /sys mounts (never a path that a
    symlink in the image could send elsewhere): masked paths get /dev/null (a file) or an
    empty read-only tmpfs (a directory); read-only paths are bind-mounted on themselves and
    remounted read-only."""
    roots = {"/proc": proc_fd, "/sys": sys_fd}
    for path in MASKED:
        top, rest = path[:5] if path.startswith("/proc") else path[:4], path.split("/", 2)[2]
        fd = roots[top]
        if fd is None:
            continue
        target = f"/proc/self/fd/{fd}/{rest}"
        if not os.path.lexists(target):
            continue
        if os.path.isdir(target):
            kernel.mount("tmpfs", target, "tmpfs", kernel.MS_RDONLY | kernel.MS_NOSUID | kernel.MS_NODEV
                         | kernel.MS_NOEXEC)
        else:
            kernel.mount("/dev/null", target, None, kernel.MS_BIND)
    for path in READONLY:
        target = f"/proc/self/fd/{proc_fd}/{path.split('/', 2)[2]}"
        if os.path.lexists(target):
            kernel.mount(target, target, None, kernel.MS_BIND | kernel.MS_REC)
            kernel.mount(None, target, None, kernel.MS_BIND | kernel.MS_REMOUNT | kernel.MS_RDONLY
                         | kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC)


def cap_names(hex_mask: str) -> list[str]:
    """'00000000a80425fb' -> ['CHOWN', 'DAC_OVERRIDE', ...] (capabilities(7) numbering)."""
    m = int(hex_mask, 16)
    return [name for i, name in enumerate(CAPS) if m >> i & 1]


_FILTER = []


def default_filter():
    """The seccomp filter, built once per process (libseccomp compiles it when loaded; a
    forked container PID 1 loads the parent's copy)."""
    if not _FILTER:
        _FILTER.append(seccomp_filter())
    return _FILTER[0]


# --- lesson 05: namespaces are not enough ------------------------------------------------------------
ATTACKS = {
    # read a disk's raw blocks: a device node made inside, opened (the target is a loop device
    # backed by a file under the lab root, standing in for the host's disk)
    "raw disk": "mknod /dev/target b {major} {minor} && head -c 11 /dev/target",
    # /proc/sys is the host's kernel (core_pattern runs a program as root on the host on a crash).
    # The write here is harmless: kernel/hostname, written with its own value, belongs to the
    # container's UTS namespace; a read-only /proc/sys refuses it like any other knob.
    "/proc/sys": "cat /proc/sys/kernel/hostname > /tmp/h && cat /tmp/h > /proc/sys/kernel/hostname && echo writable",
    # mounting a cgroup v1 hierarchy is the first step of CVE-2022-0492 (release_agent)
    "cgroupfs": "mkdir -p /cgm && mount -t cgroup -o memory cgroup /cgm && echo mounted",
    # a new namespace (user, mount ...) from inside: the kernel attack surface docker keeps closed
    "unshare": "unshare -m true && echo unshared",
}
MARKER = "host-secret"


def attacks() -> dict:
    """The ATTACKS this host is open to at all: the cgroup v1 mount only where the memory
    controller runs on v1. On a pure cgroup v2 host no v1 hierarchy can be mounted (v2 holds
    every controller: EBUSY) and there is no release_agent, so CVE-2022-0492 has no door."""
    from . import cgroups
    mem = cgroups.controllers().get("memory")
    return {k: v for k, v in ATTACKS.items() if k != "cgroupfs" or (mem is not None and mem.version == 1)}


@dataclass
class Rung:
    """What /proc/self/status says inside a container, and which attack got through
    (``{attack: True}`` if it did)."""
    status: dict
    escaped: dict


def ladder() -> list[tuple[str, Confinement]]:
    """From --privileged to Docker's default, one defence added at a time (the lesson's table);
    then the default with CAP_SYS_ADMIN given back (seccomp alone still refuses mount and
    unshare), and last --privileged again inside a user namespace (userns.py)."""
    everything = Confinement.from_options(privileged=True)
    steps = [("--privileged: none", everything)]
    c = Confinement(caps=sorted(DOCKER_CAPS), seccomp=False, no_new_privs=False, masked_paths=False, devices=False)
    steps.append(("+ docker's 14 capabilities (no CAP_SYS_ADMIN)", c))
    c = Confinement(caps=c.caps, seccomp=True, no_new_privs=True, masked_paths=False, devices=False)
    steps.append(("+ no_new_privs and seccomp", c))
    c = Confinement(caps=c.caps, seccomp=True, no_new_privs=True, masked_paths=True, devices=False)
    steps.append(("+ masked and read-only /proc, /sys", c))
    steps.append(("+ devices cgroup: docker's default", Confinement()))
    steps.append(("docker's default, --cap-add SYS_ADMIN", Confinement.from_options(cap_add=["SYS_ADMIN"])))
    steps.append(("--privileged --userns auto", Confinement.from_options(privileged=True, userns="auto")))
    return steps


def try_attacks(image: str, confinement: Confinement, disk, store=None) -> Rung:
    """Run every attack of attacks() in a container of ``image`` under ``confinement``; ``disk``
    is a :class:`DisposableDisk`. Each attack runs in its own container, which is removed."""
    from . import container
    escaped = {}
    for name, script in attacks().items():
        _, r = container.run(image, ["/bin/sh", "-c", script.format(major=disk.major, minor=disk.minor)],
                             timeout=60, rm=True, store=store, confinement=confinement)
        escaped[name] = r.exit_code == 0 and (MARKER in r.stdout if name == "raw disk" else bool(r.stdout.strip()))
    _, r = container.run(image, ["cat", "/proc/self/status"], rm=True, store=store, confinement=confinement)
    inside = procfs.parse_status(r.stdout)
    return Rung({k: inside[k] for k in ("CapEff", "Seccomp", "NoNewPrivs")}, escaped)


class DisposableDisk:
    """A 1 MiB file under the lab root, attached to a loop device (in the ledger), whose first
    bytes are MARKER: the "host disk" the raw-disk attack reads, so no real disk is touched."""

    def __init__(self, path):
        import subprocess
        from . import lab
        self.file = lab.inside(path)
        self.file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.file, "wb") as f:
            f.write(MARKER.encode().ljust(1 << 20, b"\0"))
        self.entry = lab.record("loop", self.file, "lesson 05's disposable disk")
        self.device = subprocess.run(["losetup", "--find", "--show", str(self.file)], check=True,
                                     capture_output=True, text=True).stdout.strip()
        st_ = os.stat(self.device)
        self.major, self.minor = os.major(st_.st_rdev), os.minor(st_.st_rdev)

    def close(self) -> None:
        from . import lab
        lab.release(self.entry)
        self.file.unlink(missing_ok=True)

    def __enter__(self) -> "DisposableDisk":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def mount_cgroupfs(sys_fd: int, writable: bool = False) -> list[str]:
    """The container's view of its cgroups at /sys/fs/cgroup, as docker gives it: inside the
    container's cgroup namespace each hierarchy's root is the container's own group, so the
    limits set for it can be read from inside; read-only unless ``writable`` (--privileged).
    A tmpfs holds one mount per v1 hierarchy the host has (cgroup v1) or the cgroup2 file
    system (pure v2). Returns the hierarchies mounted; one that cannot be is left out."""
    from .mountinfo import mounts
    ro = 0 if writable else kernel.MS_RDONLY
    quiet = kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC
    top = f"/proc/self/fd/{sys_fd}/fs/cgroup"
    host = [m for m in mounts() if m.fstype in ("cgroup", "cgroup2") and str(m.mountpoint).startswith("/sys/fs/cgroup")]
    if any(m.fstype == "cgroup2" and str(m.mountpoint) == "/sys/fs/cgroup" for m in host):
        kernel.mount("cgroup2", top, "cgroup2", quiet | ro)
        return ["cgroup2"]
    kernel.mount("tmpfs", top, "tmpfs", quiet, "mode=755,size=64k")
    done = []
    for m in host:
        name = m.mountpoint.name
        opts = ",".join(o for o in m.super_options.split(",") if o not in ("rw", "ro"))
        try:
            os.mkdir(f"{top}/{name}")
            kernel.mount("cgroup", f"{top}/{name}", m.fstype, quiet | ro, opts or None)
            done.append(name)
        except (OSError, LabError):
            pass
    kernel.mount(None, top, None, kernel.MS_REMOUNT | quiet | ro, "mode=755,size=64k")
    return done
