"""The `labkit` command: exit status 0 on success, one clear line and 1 on failure."""
import os
import subprocess
import sys

from conftest import need


def labkit(*args, home):
    env = dict(os.environ, LABKIT_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "labkit", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_preflight(lab_root):
    r = labkit("preflight", home=lab_root)
    assert "overlay filesystem" in r.stdout
    need(r.returncode == 0, "every required preflight item:\n" + r.stdout + r.stderr)
    assert "everything it needs" in r.stdout


def test_preflight_fails_with_a_fix_when_something_is_missing(lab_root):
    env = dict(os.environ, LABKIT_HOME=str(lab_root), PATH="/nonexistent")
    r = subprocess.run([sys.executable, "-m", "labkit", "preflight"], env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert "apt-get install graphviz" in r.stdout and "provision.sh" in r.stderr


def test_reset_and_dry_run(lab_root):
    code = "from labkit import lab; from labkit.kernel import mount; mount('none', str(lab.scratch('x')), 'tmpfs')"
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ, LABKIT_HOME=str(lab_root)), check=True)
    r = labkit("reset", "--dry-run", home=lab_root)
    assert r.returncode == 0 and "would remove mount" in r.stdout
    r = labkit("reset", home=lab_root)
    assert r.returncode == 0 and "removed mount" in r.stdout and "is clean" in r.stdout
    assert "0 item(s) removed" in labkit("reset", home=lab_root).stdout


def test_errors_are_one_line_with_status_1(lab_root):
    r = labkit("notebook", "reset", "99-nothing", home=lab_root)
    assert r.returncode == 1
    assert r.stderr.startswith("labkit: no single course notebook") and r.stderr.count("\n") == 1


def test_progress(lab_root):
    r = labkit("progress", home=lab_root)
    assert r.returncode == 0 and "01.whiteout" in r.stdout
