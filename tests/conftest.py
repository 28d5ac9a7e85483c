"""Fixtures: a fresh lab root per test, and the busybox store (helpers.py has ``need``)."""
import os

import pytest

from helpers import need


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
