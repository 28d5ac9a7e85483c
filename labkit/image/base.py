"""The lab's offline base image: busybox-static from the host, as a one-layer image.

No registry is reachable from the lab, so the first image comes from the host itself:
``/bin/busybox`` (Debian's busybox-static), one symlink per applet, a minimal /etc.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from .. import lab
from . import mutate
from .store import Image, Store, StoreError

BUSYBOX = "/bin/busybox"


def busybox_rootfs(dest: str | os.PathLike) -> Path:
    """A minimal root filesystem from the host's static busybox: /bin/busybox, a symlink
    per applet, /etc/passwd and group, and the usual empty directories."""
    if not Path(BUSYBOX).is_file():
        raise StoreError(f"{BUSYBOX} is missing", "apt-get install busybox-static (scripts/provision.sh does it)")
    d = lab.fresh_dir(dest)
    for sub in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "var", "home"):
        (d / sub).mkdir()
    os.chmod(d / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, d / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        if a != "busybox" and "/" not in a:
            (d / "bin" / a).symlink_to("busybox")
    (d / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    (d / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    return d


def base_image(store: Store | None = None, name: str = "busybox") -> Image:
    """The lab's offline base image (made from busybox-static on first use)."""
    store = store or Store()
    if name in store.refs():
        return store.image(name)
    # two lessons starting at once both get here: one makes it, the other waits and reads it
    with open(lab.root() / ".base-image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if name in store.refs():
            return store.image(name)
        rootfs = busybox_rootfs(lab.root() / "tmp" / f"busybox-rootfs-{os.getpid()}")
        try:
            return mutate.import_rootfs(rootfs, name, created_by="busybox-static from the host",
                                        config={"Cmd": ["/bin/sh"], "WorkingDir": "/"}, store=store)
        finally:
            lab.remove_tree(rootfs)
