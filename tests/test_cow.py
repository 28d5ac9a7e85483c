"""Copy-on-write after fork, measured on the real kernel, as root and as an ordinary user."""
import os
import signal
import time

import pytest

from labkit import cow, lab, sandbox


def test_private_buffer_is_copied_on_write_and_shared_mmap_is_not(lab_root):
    with cow.Buffer(4) as buf:
        buf.touch(1)
        with cow.Child(buf) as child:
            child.write([0], 9)
            assert buf.map[0] == 1                 # the child's write stayed in the child
    import mmap
    shared = mmap.mmap(-1, cow.PAGE)               # Python's default: MAP_SHARED
    pid = os.fork()
    if pid == 0:
        shared[0] = 9
        os._exit(0)
    os.waitpid(pid, 0)
    assert shared[0] == 9                          # a shared mapping is never copied


def test_pagemap_after_fork_and_after_one_write(lab_root):
    with cow.Buffer(8) as buf:
        buf.touch()
        mine = cow.pagemap("self", buf.address, 8)
        assert all(p.present and p.exclusive and p.pfn for p in mine)
        with cow.Child(buf) as child:
            before = cow.compare(buf, child)
            assert all(r.shared and r.mapcount == 2 for r in before)
            assert all(r.parent_pfn == r.child_pfn for r in before)
            assert child.write([3]) >= 1
            after = cow.compare(buf, child)
        assert [r.index for r in after if not r.shared] == [3]
        assert after[3].parent_pfn == before[3].parent_pfn and after[3].child_pfn != before[3].child_pfn
        assert after[3].mapcount == 1 and after[3].parent_exclusive and after[3].child_exclusive
        assert "0x" in cow.format_pages(after)


def test_kpagecount_counts_mappings(lab_root):
    with cow.Buffer(2) as buf:
        buf.touch()
        pfns = [p.pfn for p in cow.pagemap("self", buf.address, 2)]
        assert cow.kpagecount(pfns) == [1, 1]
        with cow.Child(buf):
            assert cow.kpagecount(pfns) == [2, 2]


@pytest.mark.parametrize("writes", [0, 100, 1000])
def test_n_writes_cost_about_n_faults(lab_root, writes):
    f = cow.faults_for_writes(2048, writes)
    assert writes <= f <= writes + 32
    assert cow.faults_for_writes(2048, writes, repeat=3) <= writes + 32


def test_faults_for_too_many_writes_is_refused():
    with pytest.raises(cow.CowError, match="writes <= pages"):
        cow.faults_for_writes(4, 5)


def test_dirty_story_in_kib(lab_root):
    s = {x.when: x for x in cow.dirty_story(pages=1024, child_writes=256)}
    assert s["before fork"].parent_private == 4096
    assert s["after fork"].parent_shared == 4096 and s["after fork"].child_private == 0
    w = s["child wrote 256 pages"]
    assert (w.child_private, w.child_shared, w.parent_private, w.parent_shared) == (1024, 3072, 1024, 3072)
    assert s["child exited"].parent_private == 4096


def test_smaps_of_a_closed_buffer_says_what_to_do(lab_root):
    buf = cow.Buffer(1)
    addr = buf.address
    buf.close()
    with pytest.raises(cow.CowError, match="still open"):
        cow.smaps("self", addr)


def test_spawn_cost_runs_in_a_throwaway_child(lab_root):
    before = cow.rollup()["Rss"]
    c = cow.spawn_cost(64, repeat=2)
    assert c.mib == 64 and c.fork_s > 0 and c.posix_spawn_s > 0
    assert cow.rollup()["Rss"] - before < 32 * 1024   # the 64 MiB never lived here


def test_refcounts_dirty_pages_and_freeze_only_helps_the_collector(lab_root):
    r = cow.refcount_story(200_000)
    assert r["child does nothing"] < 2
    assert r["child reads every object"] > 8
    assert r["child runs gc.collect()"] > 8
    assert r["gc.freeze(), child runs gc.collect()"] < 2
    assert r["gc.freeze(), child reads every object"] > 8


def test_write_at_rate_samples_and_stops(lab_root):
    import threading
    with cow.Buffer(256) as buf:
        buf.touch()
        with cow.Child(buf) as child:
            seen = []
            samples = cow.write_at_rate(child, 256, rate=2560, on_sample=seen.append, tick=0.02)
            assert samples == seen and samples[-1].written == 256
            assert samples[-1].private_kib == 1024 and samples[-1].faults >= 256
            stop = threading.Event()
            stop.set()
            assert cow.write_at_rate(child, 256, rate=100, stop=stop) == []


def test_child_is_reaped_on_keyboard_interrupt(lab_root):
    with cow.Buffer(1) as buf:
        with pytest.raises(KeyboardInterrupt):
            with cow.Child(buf) as child:
                pid = child.pid
                raise KeyboardInterrupt
    assert not os.path.exists(f"/proc/{pid}")
    assert lab.entries() == []


def test_interrupt_while_waiting_for_the_child_kills_it(lab_root):
    """Ctrl-C in the middle of a call (the child is busy): the child is killed and reaped."""
    with cow.Buffer(1) as buf:
        child = cow.Child(buf)
        pid = child.pid
        old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        try:
            with pytest.raises(KeyboardInterrupt):
                child.run(_sleep)
        finally:
            signal.signal(signal.SIGALRM, old)
        assert child.pid is None and not os.path.exists(f"/proc/{pid}")
    assert lab.entries() == []


def _sleep(buf):
    time.sleep(30)


def test_lambda_cannot_go_to_the_child(lab_root):
    with cow.Buffer(1) as buf, cow.Child(buf) as child:
        with pytest.raises(cow.CowError, match="not a lambda"):
            child.run(lambda b: None)


def test_errors_in_the_child_come_back(lab_root):
    with cow.Buffer(1) as buf, cow.Child(buf) as child:
        with pytest.raises(IndexError):
            child.write([5])                 # page 5 of a 1-page buffer
        assert child.write([0]) >= 1         # and the child still answers


def test_a_killed_child_is_cleaned_by_reset(lab_root):
    buf = cow.Buffer(1)
    child = cow.Child(buf)
    [entry] = lab.entries()
    assert entry.kind == "process" and entry.path == str(child.pid)
    lab.reset()
    os.waitpid(child.pid, 0)
    assert not os.path.exists(f"/proc/{child.pid}")
    buf.close()


def test_exclusive_bit_works_without_root(lab_root):
    """A non-root learner: no PFNs, no kpagecount, but the exclusive bit tells the story."""
    import shutil
    import tempfile
    home = tempfile.mkdtemp(prefix="labkit-nobody-")      # a lab root the learner owns
    os.chown(home, 65534, 65534)

    def as_nobody():
        os.environ["LABKIT_HOME"] = home
        os.setgid(65534)
        os.setuid(65534)
        import ctypes   # setuid made us non-dumpable, so /proc/self is root's; a login is not
        ctypes.CDLL(None).prctl(4, 1)   # PR_SET_DUMPABLE
        with cow.Buffer(8) as buf:
            buf.touch()
            with cow.Child(buf) as child:
                before = cow.compare(buf, child)
                child.write([3])
                after = cow.compare(buf, child)
        return before, after, cow.faults_for_writes(64, 16)
    try:
        before, after, faults = sandbox.run(as_nobody, namespaces=())
    finally:
        shutil.rmtree(home)
    assert all(r.parent_pfn is None and r.mapcount is None for r in before)
    assert all(r.shared for r in before)
    assert [r.index for r in after if not r.shared] == [3]
    assert 16 <= faults <= 48


def test_progress_knows_lesson_02(lab_root):
    from labkit.exercises import progress
    assert {"02.predict", "02.exactly", "02.who"} <= {r.id for r in progress()}


def test_exercises(lab_root):
    from labkit.exercises import l02_cow as ex
    assert not ex.check_fault_prediction(None).ok
    assert ex.check_fault_prediction(32).ok and not ex.check_fault_prediction(64).ok
    assert ex.check_dirty_exactly(_five).ok
    v = ex.check_dirty_exactly(_two)
    assert not v.ok and "[0, 1]" in str(v)
    assert ex.check_who_copies(_entry).ok
    assert not ex.check_who_copies(lambda pid, address: 1 << 63).ok   # "present", but not the kernel's entry
    assert not ex.check_who_copies("child").ok and not ex.check_who_copies(None).ok


def _entry(pid, address):
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(address // 4096 * 8)
        return int.from_bytes(f.read(8), "little")


def _five(buf):
    buf.write([0, 1, 2, 3, 4, 4, 0])


def _two(buf):
    buf.write([0, 1])


def _room(ch):
    from labkit import cgroups
    ch.send((cgroups.memory_room(), cow.spawn_sizes()))


def test_spawn_sizes_stay_within_a_memory_limit(lab_root):
    """Issue 19: in a class container limited to 2 GiB, lesson 02 touched 4 GiB before forking
    and its child was OOM-killed. Sizes now stop at half of what the lab's cgroup still allows."""
    from labkit import cgroups
    with cgroups.Group("t-room") as g:
        g.set_memory(256 << 20)
        with sandbox.Child(_room, cgroup=g) as child:
            room, sizes = child.recv(timeout=60)
    assert 128 << 20 < room <= 256 << 20
    assert sizes == [1, 64]
    assert cgroups.memory_room() > 256 << 20 and cow.spawn_sizes()[0] == 1
