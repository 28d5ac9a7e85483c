"""What a guest (the lab's image build, a container, the course VM) needs to reach the same
package registries this machine reaches: pip's configuration files, the local paths they name
(find-links, file:// indexes, a constraints file, a CA bundle) and the PIP_* environment.
Read from this machine at test time; nothing here names a host."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path


def pip_files() -> list[Path]:
    """pip's configuration files that exist here (`pip config debug`), and every local path
    their values or PIP_* variables name."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "debug"], capture_output=True, text=True).stdout
    files = [Path(m) for m in re.findall(r"^\s+(/\S+), exists: True$", out, re.M)]
    values = [v for line in out.splitlines() if ":" in line and "exists:" not in line
              for v in re.findall(r"(?:file://)?(/[^\s']+)", line.split(":", 1)[1])]
    named = {Path(v).parent if v.endswith("/simple") else Path(v) for v in values}
    return sorted({*files, *(p for p in named if p.exists())})


def pip_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("PIP_")}


def podman_args() -> list[str]:
    """``-v PATH:PATH:ro`` for each of pip_files() and ``--env`` for each PIP_* variable."""
    args = []
    for p in pip_files():
        args += ["-v", f"{p}:{p}:ro"]
    for k, v in pip_env().items():
        args += ["--env", f"{k}={v}"]
    return args


def free_port() -> int:
    """A TCP port free on this host's loopback now (the kernel picks it: bind to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
