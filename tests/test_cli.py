"""The `labkit` command: exit status 0 on success, one clear line and 1 on failure."""
import os
import subprocess
import sys

from helpers import need


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


def test_layer_and_image_commands(lab_root):
    from labkit.tree import write_tree
    up = write_tree(lab_root / "up", {"hello": "hi\n"})
    r = labkit("layer", "create", str(up), "-o", str(lab_root / "l.tar"), home=lab_root)
    assert r.returncode == 0 and "DiffID sha256:" in r.stdout
    r = labkit("layer", "apply", str(lab_root / "l.tar"), str(lab_root / "out"), home=lab_root)
    assert r.returncode == 0 and (lab_root / "out" / "hello").read_text() == "hi\n"
    assert labkit("image", "import", "--busybox", home=lab_root).returncode == 0
    assert labkit("image", "import", str(up), "-t", "hello", home=lab_root).returncode == 0
    ls = labkit("image", "ls", home=lab_root).stdout
    assert "busybox" in ls and "hello" in ls
    assert "busybox-static from the host" in labkit("image", "history", "busybox", home=lab_root).stdout
    assert '"chain_ids"' in labkit("image", "inspect", "hello", home=lab_root).stdout
    r = labkit("image", "save", "hello", "--oci", f"{lab_root}/saved:v1", home=lab_root)
    assert r.returncode == 0
    assert labkit("image", "rm", "hello", home=lab_root).returncode == 0
    r = labkit("image", "load", "--oci", f"{lab_root}/saved:v1", "-t", "back", home=lab_root)
    assert r.returncode == 0 and "loaded back" in r.stdout


def test_image_errors_are_one_line(lab_root, tmp_path):
    r = labkit("image", "history", "nothing", home=lab_root)
    assert r.returncode == 1 and "there is no image called 'nothing'" in r.stderr
    r = labkit("layer", "create", str(lab_root), "-o", str(tmp_path / "x.tar"), home=lab_root)
    assert r.returncode == 1 and "outside the lab root" in r.stderr and not (tmp_path / "x.tar").exists()
    r = labkit("image", "load", "--oci", "no-tag-here", home=lab_root)
    assert r.returncode == 1 and "DIR:TAG" in r.stderr
