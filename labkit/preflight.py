"""Lesson 00: preflight, the table of what the lab needs and what this machine has.

Privileges, kernel features (OverlayFS, the new mount API, namespaces, user namespaces,
cgroup controllers, trusted xattrs at the lab root) and the tools the lessons call. A line
that is not ok says what to install or enable. ``labkit preflight`` prints the same table.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import cgroups, kernel, lab, mountinfo, overlay
from .errors import LabError


@dataclass
class Check:
    """One line of the preflight table."""
    name: str
    ok: bool
    detail: str
    required: bool = True
    fix: str = ""


class Preflight(list):
    """The preflight table: a list of Check, shown as a table in Jupyter and a terminal."""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self if c.required)

    def missing(self) -> list[Check]:
        return [c for c in self if not c.ok and c.required]

    def advice(self) -> str:
        """What the learner can do on this machine, in two sentences (lesson 00 shows it)."""
        if self.ok:
            return "Everything the lab needs is here: every lesson runs."
        names = ", ".join(c.name for c in self.missing())
        if os.geteuid() != 0:
            return (f"You are not root, so most lessons cannot run here ({names} missing). Lesson "
                    f"{' and '.join(unprivileged_lessons())} runs without root: open it now, and ask for a root "
                    "shell (or the course VM) for the others.")
        return f"Missing: {names}. Follow the 'what to do' column above, then run this cell again."

    def __str__(self) -> str:
        w = max(len(c.name) for c in self)
        lines = []
        for c in self:
            mark = "ok  " if c.ok else ("MISS" if c.required else "warn")
            lines.append(f"{mark}  {c.name:<{w}}  {c.detail}" + ("" if c.ok else f"  -> {c.fix}"))
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from html import escape
        rows = "".join(
            f"<tr><td>{'✅' if c.ok else ('❌' if c.required else '⚠️')}</td><td>{escape(c.name)}</td>"
            f"<td>{escape(c.detail)}</td><td>{'' if c.ok else escape(c.fix)}</td></tr>" for c in self)
        return ("<table><tr><th></th><th>check</th><th>found</th><th>what to do</th></tr>"
                f"{rows}</table>")


TOOLS = {  # command: (Debian package, what needs it)
    "dot": ("graphviz", "pictures in every lesson"),
    "busybox": ("busybox-static", "the offline base image"),
    "skopeo": ("skopeo", "interop checks, lessons 03 and 08"),
    "umoci": ("umoci", "interop checks, lessons 03 and 09"),
    "runc": ("runc", "interop checks, lessons 05 and 09"),
    "mkfs.btrfs": ("btrfs-progs", "lesson 04"),
    "ip": ("iproute2", "lessons 05 and 08"),
}


# What each lesson needs root for; the rest run unprivileged (tests/test_lessons_unprivileged.py
# runs exactly the lessons missing here as user nobody).
NEEDS_ROOT = {"00": "mounts", "01": "overlay mounts", "03": "overlay mounts", "04": "loop devices and mounts",
              "05": "namespaces and cgroups", "06": "pivot_root and mounts", "07": "builds run containers",
              "08": "network namespaces", "09": "containers"}


def unprivileged_lessons() -> list[str]:
    """The lessons a learner without root can run from start to end."""
    return [f"{n:02d}" for n in range(10) if f"{n:02d}" not in NEEDS_ROOT]


def preflight() -> Preflight:
    """Check what the lab needs: privileges, kernel features, cgroup controllers, tools."""
    checks = Preflight()
    add = checks.append
    root_ok = os.geteuid() == 0
    add(Check("root", root_ok, f"euid {os.geteuid()}",
              fix="run as root (sudo -i); without root only lesson 02 runs (" +
                  ", ".join(f"{n}: {why}" for n, why in NEEDS_ROOT.items()) + ")"))
    add(cpu_check())
    fs = Path("/proc/filesystems").read_text().split()
    add(Check("overlay filesystem", "overlay" in fs, "in /proc/filesystems" if "overlay" in fs else "absent",
              fix="modprobe overlay (kernel 3.18+ with CONFIG_OVERLAY_FS)"))
    lp = overlay.lowerdir_plus() if root_ok else False
    add(Check("new mount API, lowerdir+", lp, "fsopen/fsconfig accept lowerdir+" if lp else
              "not checked: it needs root" if not root_ok else "not available",
              required=False, fix="run as root to check it" if not root_ok else
              f"Linux 6.8+ (this is {os.uname().release}); without it long layer stacks are mounted with relative paths"))
    ns = [n for n in kernel.NAMESPACES if Path(f"/proc/self/ns/{n}").exists()]
    add(Check("namespaces", len(ns) == len(kernel.NAMESPACES), " ".join(ns),
              fix="a kernel built with CONFIG_*_NS for every namespace type"))
    add(_userns_check())
    ctl = cgroups.controllers()
    for name in ("memory", "pids", "cpu"):
        c = ctl.get(name)
        add(Check(f"cgroup {name}", c is not None,
                  f"v{c.version} at {c.mountpoint}" if c else "no hierarchy has it",
                  fix=f"enable the {name} controller (cgroup_enable={name} on the kernel command line)"))
    add(lab_root_fs_check())
    add(trusted_xattr_check())
    add(idmap_check())
    for tool, (pkg, why) in TOOLS.items():
        path = shutil.which(tool)
        add(Check(f"tool {tool}", path is not None, path or f"not found ({why})",
                  fix=f"apt-get install {pkg} (scripts/provision.sh does it)"))
    return checks


# x86-64-v2 (the psABI's microarchitecture levels): what numpy 2.4's x86_64 wheels are built
# for; on a CPU without it the first numpy call dies of SIGILL and takes the Jupyter kernel along
X86_64_V2 = ("cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3")


def cpu_check(cpuinfo: str | None = None) -> Check:
    """The CPU offers x86-64-v2 (on x86_64; other machines pass). Checked from /proc/cpuinfo's
    flags, without importing numpy, which would crash the check itself."""
    if os.uname().machine != "x86_64" and cpuinfo is None:
        return Check("CPU features", True, os.uname().machine)
    text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    missing = [f for f in X86_64_V2 if f not in flags]
    return Check("CPU features", not missing, "x86-64-v2" if not missing else "lacks " + " ".join(missing),
                 fix="give the VM a newer CPU model (QEMU: -cpu Nehalem or -cpu host; the Vagrantfile "
                     "does it for LABKIT_LIBVIRT_DRIVER=qemu): numpy's wheels need x86-64-v2")


def _userns_check() -> Check:
    knobs = {"/proc/sys/kernel/unprivileged_userns_clone": "1", "/proc/sys/user/max_user_namespaces": None}
    problems = []
    for knob, want in knobs.items():
        try:
            v = Path(knob).read_text().strip()
        except OSError:
            continue
        if (want and v != want) or (not want and v == "0"):
            problems.append(f"{Path(knob).name}={v}")
    return Check("unprivileged user namespaces", not problems, ", ".join(problems) or "allowed",
                 required=False, fix="sysctl kernel.unprivileged_userns_clone=1 (only non-root learners need it)")


def lab_root_fs_check() -> Check:
    """The lab root must not be on an overlay: an overlay's upper and work dirs cannot lie on
    another overlay (overlayfs.rst, "Upper and Lower"), as in a container's own root file system."""
    m = mountinfo.mount_of(lab.root())
    ok = m.fstype != "overlay"
    return Check("lab root's file system", ok, f"{lab.root()} is on {m.fstype} ({m.mountpoint})",
                 fix="the lab root is on an overlay, a container's root file system? give it a volume: "
                     "-v labkit-home:/var/lib/labkit (README, Without a VM)")


def trusted_xattr_check() -> Check:
    if os.geteuid() != 0:             # trusted.* is for root only: nothing to learn without it
        return Check("trusted xattrs at the lab root", False, "not checked: it needs root",
                     fix="run as root")
    probe = lab.root() / ".xattr-probe"
    try:
        probe.touch()
        os.setxattr(probe, "trusted.labkit", b"1")
        return Check("trusted xattrs at the lab root", True, f"{lab.root()} keeps trusted.* xattrs")
    except OSError as e:
        return Check("trusted xattrs at the lab root", False, f"{lab.root()}: {e.strerror}",
                     fix="put LABKIT_HOME on ext4, xfs, btrfs or tmpfs, and run as root")
    finally:
        probe.unlink(missing_ok=True)


def idmap_check() -> Check:
    """Whether the lab root's file system takes idmapped mounts (what --userns auto needs):
    a detached clone of the lab root given a user namespace's map, then closed."""
    from . import userns
    if os.geteuid() != 0:
        return Check("idmapped mounts at the lab root", False, "not checked: it needs root",
                     required=False, fix="run as root")
    ns_fd = mnt = None
    try:
        ns_fd = userns.create(userns.IdRange(userns.FIRST))
        mnt = userns.idmapped(lab.root(), ns_fd)
        return Check("idmapped mounts at the lab root", True, f"{lab.root()} can be idmapped (--userns auto)",
                     required=False)
    except LabError as e:
        return Check("idmapped mounts at the lab root", False, str(e).splitlines()[0], required=False,
                     fix="put LABKIT_HOME on ext4, xfs or btrfs (tmpfs needs Linux 6.3) for --userns auto")
    finally:
        for fd in (mnt, ns_fd):
            if fd is not None:
                os.close(fd)
