"""Exercises: checks say what is right and wrong, hints come one at a time, progress is kept."""
import json
import os
import stat

import pytest

from labkit import exercises, lab
from labkit.exercises import hint, l00_welcome, l01_overlayfs as ex01, progress


def states():
    return {r.id: r.state for r in progress()}


def test_catalogue_lists_every_exercise_in_lesson_order(lab_root):
    ids = [r.id for r in progress()]
    assert ids[:2] == ["00.hello", "01.order"] and len(ids) >= 5
    assert set(states().values()) == {"not started"}


def test_hello_wrong_then_right(lab_root):
    d = lab.scratch("00-welcome")
    v = l00_welcome.check_hello(None)
    assert not v.ok and "pass the path" in str(v) and "not counted as a try" in str(v)
    assert states()["00.hello"] == "not started"
    (d / "hello.txt").write_text("hello kernel")
    v = l00_welcome.check_hello(d / "hello.txt")
    assert not v.ok and "not 'hello, kernel'" in str(v)
    assert states()["00.hello"] == "tried"
    (d / "hello.txt").write_text("hello, kernel\n")
    v = l00_welcome.check_hello(d / "hello.txt")
    assert v.ok and "Solved" in str(v) and "✅" in v._repr_html_()
    assert states()["00.hello"] == "solved"
    assert l00_welcome.check_hello("/etc/hello.txt").ok is False


def test_hints_come_one_at_a_time_and_only_after_a_try(lab_root):
    first = hint("01.order")
    assert first.startswith("Hint 1 of 3") and "Hint 2" not in first
    again = hint("01.order")                 # Run All again: no try in between, no new hint
    assert "Hint 2" not in again and "next hint comes after your next check" in again
    ex01.setup_order()
    ex01.check_layer_order(["material"])
    assert "Hint 2 of 3" in hint("01.order")
    ex01.check_layer_order(["material2"])
    hint("01.order")
    ex01.check_layer_order(["material3"])
    last = hint("01.order")
    assert "Hint 3 of 3" in last and "No more hints: all 3 are above" in last
    assert [r.hints for r in progress() if r.id == "01.order"] == [3]
    with pytest.raises(lab.LabError, match="no exercise"):
        hint("99.nope")
    lab.reset()


def test_a_try_counts_only_for_a_new_non_empty_answer(lab_root):
    ex01.setup_order()
    for _ in range(5):                       # Run All five times with the placeholder
        v = ex01.check_layer_order([])
        assert not v.ok and "not counted as a try" in str(v)
    assert [r.attempts for r in progress() if r.id == "01.order"] == [0]
    ex01.check_layer_order(["material"])
    ex01.check_layer_order(["material"])     # the same answer run again
    ex01.check_layer_order(["material2"])
    assert [(r.attempts, r.state) for r in progress() if r.id == "01.order"] == [(2, "tried")]
    v = ex01.check_layer_order("material")   # a string where a list belongs
    assert "give a list of the layers" in str(v) and "not one of the layers" not in str(v)
    lab.reset()


def test_order(lab_root):
    layers = ex01.setup_order()
    wrong = ex01.check_layer_order(["material", "material2", "material3"])
    assert not wrong.ok and any("bad concrete" in m for m in wrong.wrong)
    assert not ex01.check_layer_order(["material2", "material2", "material"]).ok
    assert not ex01.check_layer_order(["steel"]).ok
    right = ex01.check_layer_order([layers["material2"], layers["material3"], layers["material"]])
    assert right.ok, str(right)
    assert not lab.entries()


def test_whiteout(lab_root):
    paths = ex01.setup_whiteout()
    v = ex01.check_whiteout(paths)
    assert not v.ok and any("missing" in m for m in v.wrong)
    (paths["upper"] / "rebar").write_text("")          # a plain file is not a whiteout
    v = ex01.check_whiteout(paths)
    assert not v.ok and any("not a char device 0/0" in m for m in v.wrong)
    os.unlink(paths["upper"] / "rebar")
    os.mknod(paths["upper"] / "rebar", stat.S_IFCHR, os.makedev(0, 0))
    assert ex01.check_whiteout(paths).ok


def test_opaque(lab_root):
    paths = ex01.setup_opaque()
    v = ex01.check_opaque(paths)
    assert not v.ok and any("a.ini" in m for m in v.wrong)
    os.setxattr(paths["upper"] / "conf", "trusted.overlay.opaque", b"y")
    assert ex01.check_opaque(paths).ok


def test_secret(lab_root):
    ov = ex01.setup_secret()
    try:
        assert not ex01.check_secret(ov, "").ok
        found = (ov.lowerdirs[-1] / "etc" / "db-password").read_text()
        assert ex01.check_secret(ov, found).ok
    finally:
        ov.unmount()


def test_a_broken_answer_is_reported_not_raised(lab_root):
    ex01.setup_order()
    class Odd:
        def __str__(self):
            raise TypeError("no name")
    v = ex01.check_layer_order([Odd()])
    assert not v.ok and "TypeError" in str(v)
    assert "give a list" in str(ex01.check_layer_order(42))


def test_progress_survives_reset_and_can_be_forgotten(lab_root):
    l00_welcome.check_hello("/etc/hello.txt")
    lab.reset()
    assert states()["00.hello"] == "tried"
    exercises.forget_progress("00.hello")
    assert states()["00.hello"] == "not started"


def test_reset_notebook_keeps_the_learners_copy(lab_root, tmp_path, monkeypatch):
    orig, work = tmp_path / "orig", tmp_path / "work"
    orig.mkdir()
    (orig / "01-overlayfs.ipynb").write_text(json.dumps({"v": "original"}))
    (orig / "00-welcome.ipynb").write_text("{}")
    monkeypatch.setenv("LABKIT_NOTEBOOKS", str(orig))
    monkeypatch.setenv("LABKIT_WORKDIR", str(work))
    assert exercises.sync_notebooks() == ["00-welcome.ipynb", "01-overlayfs.ipynb"]
    assert exercises.sync_notebooks() == []
    (work / "01-overlayfs.ipynb").write_text(json.dumps({"v": "mine"}))
    exercises.reset_notebook("01")
    assert json.loads((work / "01-overlayfs.ipynb").read_text()) == {"v": "original"}
    [backup] = (work / ".backup").iterdir()
    assert json.loads(backup.read_text()) == {"v": "mine"}
    with pytest.raises(lab.LabError, match="use one of: 00-welcome, 01-overlayfs"):
        exercises.reset_notebook("0")


# --- lesson 09 -------------------------------------------------------------------------------------
def test_memory_limit_check_measures_the_boundary(busybox):
    from labkit.exercises import l09_capstone as ex09
    works = next(m for m in range(16, 136, 8) if ex09.try_limit("busybox", m).exit_code == 0)
    assert ex09.check_smallest_limit(works).ok
    assert not ex09.check_smallest_limit(works + 8).ok          # works too, but is not the smallest
    assert not ex09.check_smallest_limit(works - 8).ok          # dd is OOM-killed there
    assert not ex09.check_smallest_limit("40").ok and not ex09.check_smallest_limit(None).ok


def test_upload_count_check_reads_the_trace(lab_root):
    from labkit.exercises import l09_capstone as ex09
    from labkit.registry.client import Event
    trace = [Event("HEAD layer 1/2", "HEAD", "/", 0, 0, 200), Event("HEAD layer 2/2", "HEAD", "/", 0, 0, 404),
             Event("finish layer 2/2", "PUT", "/", 0, 0, 201), Event("HEAD config", "HEAD", "/", 0, 0, 404),
             Event("finish config", "PUT", "/", 0, 0, 201), Event("manifest", "PUT", "/", 0, 0, 201)]
    v = ex09.check_uploaded(2, trace)
    assert v.ok and "1 were already there" in str(v)
    assert not ex09.check_uploaded(3, trace).ok


def test_course_progress_widget_has_a_bar_per_lesson_and_refreshes(lab_root):
    from labkit import widgets
    view = widgets.course_progress()
    refresh, bars, table = view.children
    lessons = {r.id.split(".")[0] for r in progress()}
    assert len(bars.children) == len(lessons) and all(b.value == 0 for b in bars.children)
    hello = lab.scratch("hello") / "hello.txt"
    hello.write_text("hello, kernel\n")
    assert l00_welcome.check_hello(hello).ok
    refresh.click()
    assert bars.children[0].value == 1 and "✅" in table.value


def test_memory_limit_runner_reacts_to_its_slider(busybox):
    from labkit import widgets
    view = widgets.memory_limit_runner("busybox")
    limit = view.children[1].children[0]
    verdict = view.children[2]
    assert "exit 0" in verdict.value                  # 64 MiB at the start
    limit.value = 16
    assert "OOM-killed" in verdict.value and "16 MiB" in verdict.value


def test_learner_copies_start_without_the_authors_outputs(lab_root, tmp_path, monkeypatch):
    """Originals keep their outputs (nbval compares against them); the copies in work/ are
    blank, so a learner does not see another machine's PFNs and paths before running a cell."""
    import shutil
    from pathlib import Path
    orig, work = tmp_path / "orig", tmp_path / "work"
    orig.mkdir()
    repo_nb = Path(exercises.__file__).resolve().parents[2] / "notebooks" / "02-cow-fork.ipynb"
    shutil.copy(repo_nb, orig / repo_nb.name)
    monkeypatch.setenv("LABKIT_NOTEBOOKS", str(orig))
    monkeypatch.setenv("LABKIT_WORKDIR", str(work))
    exercises.sync_notebooks()
    before = json.loads((orig / repo_nb.name).read_text())
    after = json.loads((work / repo_nb.name).read_text())
    assert any(c.get("outputs") for c in before["cells"])
    assert all(c.get("outputs") == [] and c.get("execution_count") is None
               for c in after["cells"] if c["cell_type"] == "code")
    assert [c["source"] for c in after["cells"]] == [c["source"] for c in before["cells"]]


def test_a_solved_exercise_spends_no_more_hints(lab_root):
    """The solution bot's second pass (and a learner who solved first) runs hint() again."""
    from labkit.exercises import hint, l01_overlayfs as ex
    hint("01.order")
    assert ex.check_layer_order(["material2", "material3", "material"]).ok
    again = hint("01.order")
    assert "Hint 2" not in again and "Solved already" in again
