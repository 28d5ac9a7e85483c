"""Session set-up shared by the unit tests and nbval.

* Every test session gets a fresh lab root and work dir in /tmp (exported, so the
  Jupyter kernels nbval starts inherit it).
* At the end, the session fails if anything the lab made is still there: a mount, an
  overlay, a cgroup, a child process.
"""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION = {}


def pytest_configure(config):
    home = tempfile.mkdtemp(prefix="labkit-test-")   # tests never touch the real lab root
    os.environ["LABKIT_HOME"] = home
    os.environ["LABKIT_WORKDIR"] = os.path.join(home, "work")
    _SESSION["home"] = home
    from labkit.mountinfo import mounts
    _SESSION["mounts before"] = {m.mount_id for m in mounts()}   # e.g. the lab image's /var/lib/labkit volume
    _SESSION["cgroups before"] = set(_labkit_cgroups())     # e.g. the VM's labkit-lab.service (systemd's)


def _labkit_cgroups() -> list[str]:
    found = []
    for dirpath, dirnames, _ in os.walk("/sys/fs/cgroup"):
        found += [f"cgroup {dirpath}/{d}" for d in dirnames if "labkit" in d]
        if dirpath.count("/") > 5:
            dirnames.clear()
    return found


def leftovers(root: str) -> list[str]:
    """What the lab made and did not take down: mounts under root, labkit cgroups, children."""
    from labkit import procfs
    from labkit.mountinfo import mounts
    before = _SESSION.get("mounts before", set())
    found = [f"mount {m.mountpoint} ({m.fstype})" for m in mounts()
             if m.mount_id not in before and (str(m.mountpoint).startswith(root) or "labkit" in str(m.mountpoint))]
    found += [c for c in _labkit_cgroups() if c not in _SESSION.get("cgroups before", set())]
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        f = backing.read_text().strip()
        if f.startswith(root) or "labkit" in f or f.startswith("/tmp/pytest-of-"):
            found.append(f"loop device {backing.parts[3]} on {f}")
    me = str(os.getpid())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            st = procfs.stat(pid)
        except OSError:
            continue
        if str(st.ppid) == me and st.state != "Z":
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
            if "ipykernel" not in cmd:   # nbval's kernels end after the session hook
                found.append(f"process {pid} {cmd}")
    return found


def pytest_sessionfinish(session, exitstatus):
    home = _SESSION.get("home")
    if not home:
        return
    left = leftovers(home)
    if left:
        print("\nThe test session left these behind (labkit must clean up after itself):")
        print("\n".join("  " + x for x in left))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        from labkit import lab
        lab.reset()
    shutil.rmtree(home, ignore_errors=True)
