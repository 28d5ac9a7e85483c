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

from . import cgroups, kernel, lab, overlay


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


def preflight() -> Preflight:
    """Check what the lab needs: privileges, kernel features, cgroup controllers, tools."""
    checks = Preflight()
    add = checks.append
    root_ok = os.geteuid() == 0
    add(Check("root", root_ok, f"euid {os.geteuid()}",
              fix="run as root (sudo -i); lessons 02, 03 and parts of 05 also work unprivileged"))
    fs = Path("/proc/filesystems").read_text().split()
    add(Check("overlay filesystem", "overlay" in fs, "in /proc/filesystems" if "overlay" in fs else "absent",
              fix="modprobe overlay (kernel 3.18+ with CONFIG_OVERLAY_FS)"))
    lp = overlay.lowerdir_plus() if root_ok else False
    add(Check("new mount API, lowerdir+", lp, "fsopen/fsconfig accept lowerdir+" if lp else "not available",
              required=False, fix="Linux 6.8+; without it long layer stacks are mounted with relative paths"))
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
    add(_trusted_xattr_check())
    for tool, (pkg, why) in TOOLS.items():
        path = shutil.which(tool)
        add(Check(f"tool {tool}", path is not None, path or f"not found ({why})",
                  fix=f"apt-get install {pkg} (scripts/provision.sh does it)"))
    return checks


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


def _trusted_xattr_check() -> Check:
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
