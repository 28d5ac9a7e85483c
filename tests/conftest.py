"""Fixtures: a fresh lab root per test, and `need` for kernel features.

On CI (CI=true) a missing feature fails the test; on a learner's laptop it skips.
"""
import os
import subprocess
import sys

import pytest

ON_CI = os.environ.get("CI") == "true"


def need(ok: bool, what: str) -> None:
    """Fail on CI, skip elsewhere, when ``what`` is not available."""
    if not ok:
        if ON_CI:
            pytest.fail(f"CI must have {what}")
        pytest.skip(f"needs {what}")


@pytest.fixture
def lab_root(tmp_path, monkeypatch):
    """A fresh, empty lab root for one test; checked for leftovers afterwards."""
    need(os.geteuid() == 0, "root")
    root = tmp_path / "lab"
    root.mkdir()
    monkeypatch.setenv("LABKIT_HOME", str(root))
    monkeypatch.setenv("LABKIT_WORKDIR", str(tmp_path / "work"))
    yield root
    from labkit import lab
    from labkit.mountinfo import mounts_under
    left = [str(m.mountpoint) for m in mounts_under(root)]
    lab.reset()
    assert not left, f"the test left mounts behind: {left}"


@pytest.fixture
def busybox(lab_root):
    """The image store of a fresh lab root, holding the busybox base image."""
    from labkit.image import store as st
    from labkit.image.base import base_image
    s = st.Store()
    base_image(s)
    return s


def run_python(code: str, env_home, check=True, **kw) -> subprocess.CompletedProcess:
    """Run a snippet in a fresh interpreter (a separate "Jupyter kernel") with the lab root."""
    env = dict(os.environ, LABKIT_HOME=str(env_home))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=check, timeout=60, **kw)
