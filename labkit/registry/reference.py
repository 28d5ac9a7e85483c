"""Registries in processes of their own, for comparing them: Debian's docker-registry
(distribution 2.8), the reference the lab measures itself against, and labkit's registry
started the same way (`labkit registry serve`), so each can be measured apart from its client.

    with reference.docker_registry(lab.root() / "docker-registry") as address:
        client.push("busybox", f"{address}/lab/busybox:v1", store=store)
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

from .. import lab
from ..errors import LabError


@contextmanager
def docker_registry(root):
    """Run docker-registry on a free loopback port, storing under ``root``; yields HOST:PORT."""
    if not shutil.which("docker-registry"):
        raise LabError("docker-registry is not installed", "apt-get install docker-registry (provision.sh does it)")
    root = lab.fresh_dir(root)
    port = free_port()
    (root / "config.yml").write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
                                     f"http:\n  addr: 127.0.0.1:{port}\n")
    with _process(["docker-registry", "serve", str(root / "config.yml")], port, "docker-registry") as address:
        yield address


@contextmanager
def labkit_registry(root):
    """Run `labkit registry serve` in its own process on a free loopback port; yields HOST:PORT."""
    port = free_port()
    argv = [sys.executable, "-m", "labkit.cli", "registry", "serve", "--addr", f"127.0.0.1:{port}",
            "--root", str(lab.inside(root))]
    with _process(argv, port, "labkit registry") as address:
        yield address


@contextmanager
def _process(argv: list[str], port: int, what: str):
    """Start a server process (in the lab's ledger until it is stopped) and wait for its port."""
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    entry = lab.record("process", str(p.pid), what)
    try:
        wait_for_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        p.terminate()
        p.wait()
        lab.forget(entry)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (bind to port 0, read it back)."""
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def wait_for_port(port: int, seconds: float = 10) -> None:
    """Return once something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise LabError(f"nothing listens on 127.0.0.1:{port} after {seconds:.0f} s",
                   "look at the server's output; is the port taken by another program?")
