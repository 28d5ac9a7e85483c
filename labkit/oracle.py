"""podman, the oracle the tests and `make bench` measure labkit against (issue 17), in a
directory of its own: its storage, run root and configuration under ``root``, nothing in
/var/lib/containers. On this machine kind (FACTS.md) it needs runc (crun refuses the hybrid
cgroup layout), cgroupfs, and ulimits no higher than the host's: root here lacks
CAP_SYS_RESOURCE, so podman's defaults (nofile and nproc raised) make runc fail. Containers
and builds get no network (no CNI bridge or iptables chains are made).

    with oracle.Podman(tmp) as pm:
        pm.load(store, "busybox")           # the lab's base image, through a docker-archive
        pm("build", "--network", "none", "-t", "localhost/x", ctx)
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .errors import LabError

CONF = """[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
netns = "none"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


class Podman:
    """``podman`` with CONTAINERS_CONF and CONTAINERS_STORAGE_CONF pointing under ``root``;
    call it with podman's arguments. ``close()`` runs `podman system reset`, which unmounts and
    deletes everything it made."""

    def __init__(self, root: str | os.PathLike):
        if not shutil.which("podman"):
            raise LabError("podman is not installed", "apt-get install podman (scripts/provision.sh does it)")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "containers.conf").write_text(CONF)
        (self.root / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{self.root}/graph"\nrunroot = "{self.root}/run"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=str(self.root / "containers.conf"),
                        CONTAINERS_STORAGE_CONF=str(self.root / "storage.conf"))

    def __call__(self, *args, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        r = subprocess.run(["podman", *map(str, args)], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise LabError(f"podman {' '.join(map(str, args))} failed: {r.stderr.strip()[-500:]}",
                           "see podman's message; the configuration is under " + str(self.root))
        return r

    def load(self, store, name: str) -> None:
        """Give podman labkit's image ``name`` (a docker-archive written under the lab root)."""
        from . import lab
        from .image import archive
        self("load", "-i", archive.save(store, name, lab.root() / f"oracle-{name.replace('/', '-')}.tar"))

    def close(self) -> None:
        self("system", "reset", "--force", check=False)

    def __enter__(self) -> "Podman":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
