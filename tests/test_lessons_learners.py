"""Lessons as learners run them: stopped midway and started again, and two at once.

`make test` already runs every lesson twice in one lab root (in order, then in reverse), and in
the second pass each lesson is first stopped at 60 % of its cells (tests/lessons_solved.py). Here:

* a lesson stopped midway (its kernel killed) and then a different lesson run in full;
* two different lessons run at the same moment in one lab root (05 and 06 both make and remove
  containers; 03 and 07 both add and remove images in the one store);
* the same lesson in two tabs: lessons whose work all lies in their scratch dir (00, 01, 02) run
  side by side (the second kernel gets ``NAME~2``); a lesson whose images have fixed names in the
  shared store stops the second copy at its first cell with a one-line LessonBusy.

Every cell's own assertions must hold; nbval's output comparison is not used here (the first
pass of `make test` does that).
"""
import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from helpers import need, run_lesson

REPO = Path(__file__).resolve().parents[1]


def _run(stem: str, home: Path, upto: float = 1.0, kill: bool = False) -> int:
    """Run the first ``upto`` of lesson ``stem``'s code cells in a new kernel (helpers.run_lesson)."""
    return run_lesson(nbformat.read(REPO / "notebooks" / f"{stem}.ipynb", as_version=4), home, upto, kill)


@pytest.fixture
def shared_root(tmp_path, monkeypatch):
    need(os.geteuid() == 0, "root")
    home = tmp_path / "lab"
    yield home
    from labkit import lab
    monkeypatch.setenv("LABKIT_HOME", str(home))
    lab.reset()


def test_another_lesson_runs_in_full_after_a_lesson_stopped_midway(shared_root):
    """Lesson 07 stopped at 60 % leaves its images (lab/toolchain, lesson07/...) in the store;
    lesson 03's clean-up then checked the whole store and failed. It checks its own names."""
    _run("07-building-images", shared_root, upto=0.6, kill=True)
    assert _run("03-image-layers", shared_root) > 0


@pytest.mark.parametrize("pair", [("05-container-process", "06-container-rootfs"),
                                  ("03-image-layers", "07-building-images"),
                                  ("04-storage-drivers", "08-registries")])
def test_two_lessons_at_once_in_one_lab_root(shared_root, pair):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        done = [pool.submit(_run, stem, shared_root) for stem in pair]
        for f in done:
            assert f.result() > 0


@pytest.mark.parametrize("stem", ["00-welcome", "01-overlayfs"])
def test_the_same_lesson_in_two_tabs_at_once(shared_root, stem):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        done = [pool.submit(_run, stem, shared_root) for _ in range(2)]
        for f in done:
            assert f.result() > 0


def test_a_second_copy_of_a_lesson_with_shared_names_is_stopped_at_its_first_cell(shared_root):
    from labkit import lab
    env = {**os.environ, "LABKIT_HOME": str(shared_root)}
    first = subprocess.Popen([sys.executable, "-c", "from labkit import lab; import sys; "
                              "lab.scratch('03-image-layers', alone=True); print('ok', flush=True); sys.stdin.read()"],
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "ok"
        with pytest.raises(CellExecutionError, match="03-image-layers is already running in another kernel"):
            _run("03-image-layers", shared_root, upto=0.01)
        assert not lab.entries()
    finally:
        first.stdin.close()
        first.wait(timeout=30)
