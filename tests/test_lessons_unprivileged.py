"""Lesson 02 runs for a learner who is not root: every code cell, check cells included.

The cells run in a forked child of this test process that has become user nobody (so
the interpreter and labkit are already loaded and no file of the checkout needs to be
readable by nobody); what cannot be seen without root (PFNs, kpagecount) is replaced
by the pagemap's exclusive bit, and the lesson's own assertions must still hold.
"""
import ctypes
import os
import shutil
import tempfile
from pathlib import Path

import jupytext
import pytest

from labkit import sandbox

REPO = Path(__file__).resolve().parents[1]
from labkit import preflight
UNPRIVILEGED_LESSONS = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]-*.ipynb")
                              if p.stem[:2] in preflight.unprivileged_lessons())   # what preflight promises


def _run_cells_as_nobody(cells: list[str], home: str) -> int:
    os.environ["LABKIT_HOME"] = home
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    ctypes.CDLL(None).prctl(4, 1)      # PR_SET_DUMPABLE: /proc/self is ours again, as after a login
    assert os.geteuid() != 0
    ns = {"__name__": "__main__", "display": lambda *a, **k: None}
    for i, src in enumerate(cells):
        code = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            exec(compile(code, f"<cell {i}>", "exec"), ns)
        except Exception as e:
            raise AssertionError(f"cell {i} failed for a non-root learner: {type(e).__name__}: {e}\n{src}")
    return len(cells)


@pytest.mark.parametrize("name", UNPRIVILEGED_LESSONS)
def test_lesson_runs_without_root(name, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import graphviz, ipywidgets, matplotlib.pyplot  # noqa: F401 - loaded before dropping root
    from labkit import viz, widgets  # noqa: F401
    from labkit.exercises import progress
    progress()                                          # loads every lesson's exercises
    cells = [c.source for c in jupytext.read(REPO / "notebooks" / "src" / f"{name}.py").cells
             if c.cell_type == "code"]
    home = tempfile.mkdtemp(prefix="labkit-nobody-")
    os.chown(home, 65534, 65534)
    try:
        ran = sandbox.run(_run_cells_as_nobody, cells, home, namespaces=(), timeout=600)
    finally:
        shutil.rmtree(home)
    assert ran == len(cells)
