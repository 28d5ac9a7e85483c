"""Lesson 04: storage drivers, three ways to give N containers their own root filesystem.

* **vfs**: no copy-on-write at all: every container gets a full copy of the image's files
  (Docker's vfs driver, the fallback that works everywhere).
* **overlay**: the image's layers are shared read-only lowerdirs; each container has only an
  upper and a work dir, and one overlay mount (Docker's overlay2, containerd's default).
* **btrfs**: the image is unpacked once into a btrfs subvolume; each container is a
  *snapshot* of it, which shares every extent until written (Docker's btrfs driver). The
  btrfs filesystem lives in an image file under the lab root, attached to a loop device.

Each driver measures itself: time to create the i-th container and disk used so far.
Everything (mounts, the loop device) is in the lab's ledger and taken down by close().
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import lab, overlay, snapshot
from .errors import LabError
from .image import store as st
from .tree import du


class DriverError(LabError):
    """A storage driver that cannot be set up here."""


@dataclass(frozen=True)
class Cost:
    """The i-th container created: how long it took and the disk used by all so far."""
    driver: str
    containers: int
    seconds: float
    disk_bytes: int


class Driver:
    """Create container root filesystems for one image under ``root``."""
    name = "?"

    def __init__(self, store: st.Store, image: str, root: Path):
        self.store, self.image, self.root = store, image, lab.fresh_dir(root)
        self.containers: list[Path] = []

    def create(self) -> Path:
        """One more container; returns the directory its processes would see as /."""
        raise NotImplementedError

    def disk_used(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        lab.remove_tree(self.root)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VFS(Driver):
    name = "vfs"

    def __init__(self, store, image, root):
        super().__init__(store, image, root)
        self.base = store.flatten(image, self.root / "image")

    def create(self) -> Path:
        dest = self.root / f"c{len(self.containers)}"
        subprocess.run(["cp", "-a", "--reflink=never", str(self.base), str(dest)], check=True)
        self.containers.append(dest)
        return dest

    def disk_used(self) -> int:
        return du(*self.containers)


class Overlay(Driver):
    name = "overlay"

    def __init__(self, store, image, root):
        super().__init__(store, image, root)
        self.lowers = snapshot.unpack(image, store)
        self.mounts: list[overlay.Overlay] = []

    def create(self) -> Path:
        d = self.root / f"c{len(self.containers)}"
        ov = overlay.Overlay(self.lowers, d / "upper", d / "work", d / "merged").mount()
        self.mounts.append(ov)
        self.containers.append(ov.merged)
        return ov.merged

    def disk_used(self) -> int:
        """The shared layers once, plus each container's upper and work dirs."""
        return du(*self.lowers) + du(*(ov.upperdir for ov in self.mounts), *(ov.workdir for ov in self.mounts))

    def close(self) -> None:
        for ov in self.mounts:
            ov.unmount()
        super().close()


class Btrfs(Driver):
    name = "btrfs"
    SIZE = 2 << 30          # a sparse file: only what btrfs writes takes disk

    def __init__(self, store, image, root):
        super().__init__(store, image, root)
        for tool in ("mkfs.btrfs", "btrfs", "losetup"):
            if not shutil.which(tool):
                raise DriverError(f"{tool} is missing", "apt-get install btrfs-progs util-linux")
        self.file = self.root / "btrfs.img"
        with open(self.file, "wb") as f:
            f.truncate(self.SIZE)
        self.loop_entry = lab.record("loop", self.file, "btrfs for lesson 04")
        self.device = _run("losetup", "--find", "--show", str(self.file)).strip()
        _run("mkfs.btrfs", "-q", self.device)
        self.mnt = self.root / "mnt"
        self.mnt.mkdir()
        self.mount_entry = lab.record("mount", self.mnt, "btrfs on a loop device")
        _run("mount", "-t", "btrfs", self.device, str(self.mnt))
        self.empty = self._used()
        _run("btrfs", "subvolume", "create", str(self.mnt / "image"))
        store.flatten(image, self.mnt / "image")
        _run("btrfs", "filesystem", "sync", str(self.mnt))

    def create(self) -> Path:
        dest = self.mnt / f"c{len(self.containers)}"
        _run("btrfs", "subvolume", "snapshot", str(self.mnt / "image"), str(dest))
        self.containers.append(dest)
        return dest

    def _used(self) -> int:
        os.sync()
        v = os.statvfs(self.mnt)
        return (v.f_blocks - v.f_bfree) * v.f_frsize

    def disk_used(self) -> int:
        """Blocks the filesystem uses beyond an empty one: the image once, plus metadata."""
        _run("btrfs", "filesystem", "sync", str(self.mnt))
        return self._used() - self.empty

    def close(self) -> None:
        lab.release(self.mount_entry)
        lab.release(self.loop_entry)
        super().close()


DRIVERS = {"vfs": VFS, "overlay": Overlay, "btrfs": Btrfs}


def measure(driver: str, image: str, n: int, *, store: st.Store | None = None) -> list[Cost]:
    """Create ``n`` containers of ``image`` with ``driver``; one Cost after each."""
    store = store or st.Store()
    out = []
    with DRIVERS[driver](store, image, lab.root() / "scratch" / f"driver-{driver}") as d:
        total = 0.0
        for i in range(1, n + 1):
            t = time.perf_counter()
            root = d.create()
            total += time.perf_counter() - t
            if not (root / "bin" / "busybox").exists():
                raise DriverError(f"{driver} container {i} has no /bin/busybox", "the driver is broken")
            out.append(Cost(driver, i, total, d.disk_used()))
    return out


def _run(*argv: str) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode:
        raise DriverError(f"{' '.join(argv)} failed: {r.stderr.strip()[:300]}",
                          "run `labkit preflight`; loop devices need root and the loop module")
    return r.stdout


def one_byte_write(driver: str, image: str, path: str, *, store: st.Store | None = None) -> int:
    """Disk the driver uses more after one container overwrites one byte of ``path``.

    overlay copies the whole file up; btrfs copies only the extent block written; vfs has
    already paid (the container owns a full copy)."""
    store = store or st.Store()
    with DRIVERS[driver](store, image, lab.root() / "scratch" / f"driver-{driver}-write") as d:
        root = d.create()
        before = d.disk_used()
        with open(root / path, "r+b") as f:
            f.write(b"!")
        os.sync()
        return d.disk_used() - before


# --- which driver? ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Criterion:
    """One question of the driver choice, answered for this machine."""
    question: str
    here: str
    points_to: str


def checklist(root: str | os.PathLike | None = None) -> list[Criterion]:
    """The questions to ask before choosing a storage driver (seed 001; Docker's "select a
    storage driver" guide), answered for this kernel and the file system under ``root``
    (the lab root by default, where Docker would have its data root)."""
    from . import preflight
    from .mountinfo import mounts
    root = Path(root or lab.root()).resolve()
    kernel_fs = set(Path("/proc/filesystems").read_text().split())
    under = max((m for m in mounts() if root == m.mountpoint or m.mountpoint in root.parents),
                key=lambda m: len(str(m.mountpoint)))
    release = os.uname().release
    major, minor = (int(x) for x in release.split(".")[:2])
    xattrs = preflight.trusted_xattr_check()
    union = [fs for fs in ("overlay", "aufs", "btrfs", "zfs") if fs in kernel_fs]
    return [
        Criterion("Which copy-on-write file systems does the kernel have?", ", ".join(union) or "none",
                  "overlay2" if "overlay" in union else "vfs (nothing else works)"),
        Criterion("Several lowerdirs in one mount (overlay2 needs Linux 4.0+)?", f"Linux {release}",
                  "overlay2" if (major, minor) >= (4, 0) else "overlay (one lowerdir, hard links)"),
        Criterion("What file system holds the data root?", f"{under.fstype} at {under.mountpoint}",
                  {"btrfs": "btrfs (or overlay2)", "zfs": "zfs", "overlay": "vfs: no overlay upper on overlay",
                   "tmpfs": "overlay2"}.get(under.fstype, "overlay2" if under.fstype in ("ext4", "xfs") else "check the docs")),
        Criterion("Does it keep trusted.* xattrs (whiteouts and opaque dirs in an upper dir)?",
                  "yes" if xattrs.ok else xattrs.found, "overlay2" if xattrs.ok else "vfs"),
        Criterion("Are big files rewritten in place (databases, logs)?",
                  "your workload: overlay copies a whole file up on its first write (section 5)",
                  "a volume for that data, or btrfs/zfs (block-level copy)"),
        Criterion("Does the distribution support it?", "Debian, Ubuntu, Fedora, SUSE: overlay2 by default",
                  "overlay2"),
    ]


def overlay_in_a_container(root: str | os.PathLike) -> dict[str, str]:
    """Docker-in-Docker's storage problem, on the kernel: a container's root is an overlay, and
    an inner engine whose data root is on it cannot mount overlays of its own (the kernel
    refuses an overlay file system as upperdir); on a volume (a bind mount of a host directory,
    seed 004's wrapdocker advice) it can. Runs in a throwaway child (private mount namespace);
    returns ``{where the inner data root is: "mounted" or the kernel's refusal}``."""
    from . import kernel, sandbox
    root = lab.fresh_dir(root)

    def inside():
        outer = overlay.Overlay([root / "image"], root / "upper", root / "work", root / "rootfs")
        results = {}
        with outer:
            (root / "volume").mkdir()
            (outer.merged / "volume").mkdir()
            kernel.mount(str(root / "volume"), str(outer.merged / "volume"), None, kernel.MS_BIND)
            for where, data_root in (("on the container's overlay root", outer.merged / "var-lib-docker"),
                                     ("on a volume", outer.merged / "volume")):
                (data_root / "lower").mkdir(parents=True)
                inner = overlay.Overlay([data_root / "lower"], data_root / "upper", data_root / "work",
                                        data_root / "merged")
                try:
                    with inner:
                        results[where] = "mounted"
                except LabError as e:
                    results[where] = str(e)
        return results
    (root / "image").mkdir()
    try:
        return sandbox.run(inside)
    finally:
        lab.remove_tree(root)
