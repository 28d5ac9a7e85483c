"""The lab root gate, the ledger, reset after a crash, preflight."""
import io
import os
import stat
import signal
import subprocess
import sys

import pytest

from labkit import kernel, lab, preflight
from labkit.errors import OutsideLabRoot
from labkit.mountinfo import is_mountpoint, mounts_under

from helpers import need, run_python


@pytest.mark.parametrize("path", ["/etc", "/tmp", "/", "{root}/../elsewhere", "{root}"])
def test_inside_refuses_paths_outside_the_root(lab_root, path):
    with pytest.raises(OutsideLabRoot) as e:
        lab.inside(path.format(root=lab_root))
    assert "outside the lab root" in str(e.value) and "LABKIT_HOME" in str(e.value)


def test_inside_follows_symlinks_before_judging(lab_root):
    (lab_root / "sneaky").symlink_to("/etc")
    with pytest.raises(OutsideLabRoot) as e:
        lab.inside(lab_root / "sneaky" / "passwd")
    assert "resolves to /etc/passwd" in str(e.value)


def test_refuses_writes_and_deletes_outside(lab_root, tmp_path):
    from labkit.tree import write_tree
    victim = tmp_path / "victim"
    victim.mkdir()
    with pytest.raises(OutsideLabRoot):
        lab.remove_tree(victim)
    with pytest.raises(OutsideLabRoot):
        write_tree(victim, {"x": "y"})
    assert victim.exists() and not (victim / "x").exists()


def test_lab_home_too_close_to_slash_is_refused(monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", "/var")
    with pytest.raises(OutsideLabRoot):
        lab.root()


def test_remove_tree_unmounts_before_deleting(lab_root):
    d = lab.scratch("mnt")
    (d / "m").mkdir()
    lab.record("mount", d / "m")
    kernel.mount("none", str(d / "m"), "tmpfs")
    (d / "m" / "file").write_text("x")
    lab.scratch("mnt")          # fresh again: unmount first, then delete
    assert not is_mountpoint(d / "m")
    assert list(d.iterdir()) == [] and lab.entries() == []


def test_reset_cleans_what_a_killed_kernel_left(lab_root):
    """A 'Jupyter kernel' mounts an overlay and is SIGKILLed: reset finds it in the ledger."""
    code = """
import os, time
from labkit import overlay, lab
ov = overlay.stack(lab.scratch('crash'), {'low': {'a': 'a'}})
ov.mount()
print('mounted', flush=True)
time.sleep(60)
"""
    env = dict(os.environ, LABKIT_HOME=str(lab_root))
    p = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "mounted"
    p.send_signal(signal.SIGKILL)
    p.wait()
    merged = lab_root / "scratch" / "crash" / "merged"
    assert is_mountpoint(merged), "the killed process's mount should still be there"
    assert [e.kind for e in lab.entries()] == ["mount"]
    assert f"mount {merged}" in lab.reset(dry_run=True)
    assert is_mountpoint(merged), "dry run removes nothing"
    done = lab.reset()
    assert any(str(merged) in line for line in done)
    assert not mounts_under(lab_root) and lab.entries() == []


def test_reset_also_finds_mounts_nobody_recorded(lab_root):
    d = lab.scratch("stray")
    kernel.mount("none", str(d), "tmpfs")
    assert any("not in the ledger" in line for line in lab.reset())
    assert not mounts_under(lab_root)


def test_interpreter_exit_takes_down_its_mounts(lab_root):
    run_python("from labkit import overlay, lab\n"
               "overlay.stack(lab.scratch('exit'), {'low': {'a': 'a'}}).mount()", lab_root)
    assert not mounts_under(lab_root) and lab.entries() == []


def test_preflight_table():
    report = preflight.preflight()
    names = [c.name for c in report]
    for want in ("root", "overlay filesystem", "namespaces", "cgroup memory", "tool skopeo"):
        assert want in names
    assert "<table>" in report._repr_html_() and "overlay filesystem" in str(report)
    need(report.ok, "everything preflight requires: " + "; ".join(c.name for c in report.missing()))


def test_preflight_reports_a_missing_tool(monkeypatch):
    monkeypatch.setattr(preflight, "TOOLS", {"no-such-tool-xyz": ("nosuchpkg", "a test")})
    report = preflight.preflight()
    bad = report.missing()
    assert [c.name for c in bad if c.name.startswith("tool")] == ["tool no-such-tool-xyz"]
    assert "apt-get install nosuchpkg" in str(report) and not report.ok


def test_reading_the_ledger_creates_nothing(tmp_path):
    """Interpreter exit reads the ledger; it must not re-create a lab root someone removed."""
    gone = tmp_path / "removed-root"
    run_python("from labkit import lab; assert lab.entries() == []", gone)
    assert not gone.exists()


# --- reset and the ledger, tried as a crash and a race would ------------------------------------
def _sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"])


def test_dry_run_changes_nothing_and_a_corrupt_entry_is_still_taken_down(lab_root):
    p = _sleeper()
    e = lab.record("process", p.pid, "a sleeper")
    f = lab_root / "ledger" / f"{e.id}.json"
    f.write_text(f.read_text()[:-20])                      # torn by a crash: no longer JSON
    before = sorted(os.listdir(lab_root / "ledger"))
    plan = lab.reset(dry_run=True)
    assert sorted(os.listdir(lab_root / "ledger")) == before and p.poll() is None
    assert any(line.startswith(f"process {p.pid}") for line in plan)
    assert any("corrupt ledger file" in line for line in plan)
    done = lab.reset()
    assert p.wait(5) == -signal.SIGKILL and not f.exists()
    assert any("corrupt ledger file" in line for line in done)


def test_reset_never_kills_a_reused_pid(lab_root):
    p = _sleeper()
    e = lab.record("process", p.pid, "a sleeper")
    f = lab_root / "ledger" / f"{e.id}.json"
    f.write_text(f.read_text().replace(f'"start": {e.start}', f'"start": {e.start + 12345}'))
    done = lab.reset()                                     # the PID now "belongs" to someone else
    assert p.poll() is None and any("left alone" in line for line in done)
    p.kill()
    p.wait()


def test_a_ledger_file_naming_a_path_outside_the_lab_is_refused(lab_root, tmp_path):
    import json
    (lab_root / "ledger").mkdir(exist_ok=True)
    (lab_root / "ledger" / "evil.json").write_text(json.dumps(
        {"kind": "mount", "path": "/", "owner_pid": 1, "note": "", "created": 0, "id": "evil"}))
    done = lab.reset()
    assert any("refused" in line for line in done)


def test_two_resets_at_once_both_succeed(lab_root):
    for _ in range(5):
        lab.record("process", _sleeper().pid, "a sleeper")
    (lab_root / "scratch" / "x").mkdir(parents=True)
    env = dict(os.environ, LABKIT_HOME=str(lab_root))
    runs = [subprocess.Popen([sys.executable, "-m", "labkit", "reset"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [r.communicate(timeout=60) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs
    assert lab.entries() == [] and not (lab_root / "scratch").exists()


def test_reset_removes_tmp_containers_and_orphaned_active_snapshots(lab_root):
    from labkit.snapshot import Snapshotter
    code = ("from labkit.snapshot import Snapshotter; s = Snapshotter(); m = s.prepare('half-done');"
            " open(m.upperdir / 'f', 'w').write('x'); import os; os._exit(1)")
    run_python(code, lab_root, check=False)                 # a kernel killed in the middle of a build
    (lab_root / "tmp" / "pull-123").mkdir(parents=True)
    (lab_root / "containers" / "abc").mkdir(parents=True)
    r = subprocess.run([sys.executable, "-m", "labkit", "reset"], env=dict(os.environ, LABKIT_HOME=str(lab_root)),
                       capture_output=True, text=True)
    assert r.returncode == 0 and "active snapshot half-done" in r.stdout, r.stdout + r.stderr
    assert not (lab_root / "tmp").exists() and not (lab_root / "containers").exists()
    assert Snapshotter().walk() == [] and os.listdir(lab_root / "snapshots" / "active") == []


def test_setuid_files_from_a_layer_are_out_of_reach_of_other_users(lab_root):
    """The lab root is 0700 (and tightened if an older labkit left it open), so a setuid-root
    program a layer unpacked cannot be run or even seen by a local user."""
    import subprocess
    import tarfile
    from labkit.image import layer
    os.chmod(lab_root, 0o755)
    lab._private.clear()
    d = lab.scratch("suid")
    assert stat.S_IMODE(os.stat(lab_root).st_mode) == 0o700
    with tarfile.open(d / "l.tar", "w") as t:
        info = tarfile.TarInfo("bin/su-like")
        info.mode, info.size = 0o4755, 4
        t.addfile(info, io.BytesIO(b"#!/x"))
    layer.apply(d / "l.tar", d / "rootfs")
    victim = d / "rootfs" / "bin" / "su-like"
    assert os.stat(victim).st_mode & stat.S_ISUID
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "stat", str(victim)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Permission denied" in r.stderr


def test_entries_and_containers_can_be_scoped_to_this_session(lab_root):
    """Two lessons in one lab root: each clean-up checks what *its* kernel made. An entry
    recorded by another process (another kernel) is not ours; one recorded by a child we
    forked is."""
    from labkit import sandbox
    code = ("from labkit import lab; e = lab.record('mount', lab.scratch('other') / 'm', 'another kernel'); "
            "print(e.session, flush=True); import os; os._exit(0)")   # skip atexit: it would take its entry down
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, LABKIT_HOME=str(lab_root)),
                       capture_output=True, text=True, check=True)
    theirs = r.stdout.strip()
    assert theirs != lab.session()
    assert [e.session for e in lab.entries()] == [theirs] and lab.entries(mine=True) == []
    mine = sandbox.run(lambda: lab.record("mount", lab.root() / "scratch" / "other" / "n", "a child of ours").session)
    assert mine == lab.session()
    assert [e.note for e in lab.entries(mine=True)] == ["a child of ours"]
    for e in lab.entries():
        lab.forget(e)


def test_preflight_advice_names_what_runs_without_root():
    """Lesson 00 says what a non-root learner can do; the lessons it names are exactly the ones
    tests/test_lessons_unprivileged.py runs as nobody."""
    from labkit import sandbox

    def as_nobody():
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        r = preflight.preflight()
        return r.ok, r.advice(), next(c.detail for c in r if c.name.startswith("new mount API"))
    ok, advice, lowerdir_plus = sandbox.run(as_nobody, namespaces=())
    assert not ok and "You are not root" in advice and "Lesson 02 runs without root" in advice
    assert "needs root" in lowerdir_plus and "6.8" not in lowerdir_plus
    assert preflight.unprivileged_lessons() == ["02"]


def test_two_kernels_running_one_lesson_get_a_scratch_dir_each(lab_root):
    """The same lesson in two tabs: the second kernel gets ``NAME~2`` (the first one's mounts
    and files are left alone), each kernel finds its own again, a dead kernel's directory is
    taken over, and a lesson with shared names (alone=True) refuses a second live copy."""
    from labkit.errors import LessonBusy
    other = subprocess.Popen([sys.executable, "-c",
                              "from labkit import lab; import sys; d = lab.scratch('01-x'); "
                              "(d / 'theirs').write_text('x'); print(d.name, flush=True); sys.stdin.read()"],
                             env=dict(os.environ, LABKIT_HOME=str(lab_root)),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "01-x"
        mine = lab.scratch("01-x")
        assert mine.name == "01-x~2" and (lab_root / "scratch" / "01-x" / "theirs").exists()
        (mine / "f").write_text("y")
        assert lab.scratch("01-x", fresh=False) == mine and (mine / "f").exists()
        with pytest.raises(LessonBusy, match="another kernel .*Shut Down Kernel"):
            lab.scratch("01-x", alone=True)  # ours is 01-x~2, but 01-x is live: shared names collide
    finally:
        other.stdin.close()
        other.wait(timeout=30)
    assert lab.scratch("01-y", alone=True).name == "01-y"       # nobody else runs 01-y
    fresh = subprocess.run([sys.executable, "-c", "from labkit import lab; print(lab.scratch('01-x').name)"],
                           env=dict(os.environ, LABKIT_HOME=str(lab_root)), capture_output=True, text=True)
    assert fresh.stdout.strip() == "01-x", fresh.stderr             # the first kernel is gone: its place is free
    for bad in ["", "a/b", "..", ".claims", "x~2"]:
        with pytest.raises(lab.LabError, match="not a plain name"):
            lab.scratch(bad)


def test_preflight_refuses_a_lab_root_on_an_overlay(lab_root):
    """As in a container started without a volume for /var/lib/labkit (the lab image): an
    overlay's upper dir cannot lie on another overlay, so preflight says to add a volume."""
    from labkit import overlay, sandbox

    base = lab.scratch("on-overlay")
    for d in ("lower", "upper", "work", "merged"):
        (base / d).mkdir()

    def check():
        overlay.Overlay([base / "lower"], base / "upper", base / "work", base / "merged").mount_here()
        os.environ["LABKIT_HOME"] = str(base / "merged" / "lab")
        lab._private.clear()
        c = preflight.lab_root_fs_check()
        return c.ok, c.detail, c.fix

    ok, detail, fix = sandbox.run(check, namespaces=("mnt",))
    assert not ok and "is on overlay" in detail and "-v labkit-home:/var/lib/labkit" in fix
    assert preflight.lab_root_fs_check().ok           # the test's own lab root is a real fs


def test_reset_keeps_a_volume_mounted_at_the_lab_root(lab_root):
    """Found by `make image-test`: in the lab image /var/lib/labkit is a volume (a mount at the
    lab root itself, as a dedicated disk would be), and the entry point's `labkit reset`
    unmounted it, so the lab then ran on the container's overlay. Reset takes down mounts
    below the root, never the root's own."""
    from labkit import sandbox

    volume, root = lab.scratch("volume"), lab.scratch("mounted-root")

    def reset_on_a_mounted_root():
        kernel.mount(str(volume), str(root), None, kernel.MS_BIND)
        os.environ["LABKIT_HOME"] = str(root)
        lab._private.clear()
        (lab.root() / "scratch").mkdir(exist_ok=True)
        kernel.mount("tmpfs", str(lab.root() / "scratch"), "tmpfs", 0)     # a stray mount below it
        listed = lab.reset(dry_run=True)
        lab.reset()
        return listed, is_mountpoint(root), is_mountpoint(root / "scratch")

    listed, root_mounted, below_mounted = sandbox.run(reset_on_a_mounted_root, namespaces=("mnt",))
    assert f"mount {root}/scratch (not in the ledger)" in listed
    assert not any(line.startswith(f"mount {root} ") for line in listed)
    assert root_mounted and not below_mounted


QEMU64_FLAGS = ("flags\t\t: fpu de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx "
                "fxsr sse sse2 syscall nx lm rep_good nopl cpuid extd_apicid pni cx16 hypervisor lahf_lm svm\n")


def test_preflight_says_when_the_cpu_lacks_x86_64_v2():
    """make vm-test's guest had QEMU's qemu64 CPU (these flags, read in it): numpy 2.4 died of an
    invalid opcode and took the lesson's Jupyter kernel with it. Preflight now says so first."""
    c = preflight.cpu_check(QEMU64_FLAGS)
    assert not c.ok and c.detail == "lacks popcnt sse4_1 sse4_2 ssse3" and "Nehalem" in c.fix
    assert preflight.cpu_check(QEMU64_FLAGS.rstrip() + " ssse3 sse4_1 sse4_2 popcnt\n").ok
    assert "CPU features" in [c.name for c in preflight.preflight()]
