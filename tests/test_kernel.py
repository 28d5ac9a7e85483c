"""The ctypes layer: errors name the call, the path, the cause and the fix."""
import errno
import os
import pickle

import pytest

from labkit import kernel
from labkit.errors import KernelError, LabError
from labkit.overlay import Overlay


def test_mount_on_missing_target_names_call_path_and_fix(lab_root):
    target = lab_root / "does-not-exist"
    with pytest.raises(KernelError) as e:
        kernel.mount("none", str(target), "tmpfs")
    err = e.value
    assert err.errno == errno.ENOENT
    assert "mount(-t tmpfs)" in str(err) and str(target) in str(err)
    assert "create it first" in str(err)


def test_unknown_filesystem_says_load_the_module(lab_root):
    with pytest.raises(KernelError) as e:
        kernel.fsopen("no-such-fs")
    assert e.value.errno == errno.ENODEV
    assert "modprobe" in str(e.value)


def test_fsconfig_error_names_the_parameter(lab_root):
    fd = kernel.fsopen("overlay")
    try:
        with pytest.raises(KernelError) as e:
            kernel.fsconfig(fd, "lowerdir+", str(lab_root / "missing"))
        assert "fsconfig(lowerdir+)" in str(e.value) and "missing" in str(e.value)
    finally:
        os.close(fd)


def test_overlay_refusal_quotes_the_kernel_log(lab_root):
    """overlayfs explains some refusals only in dmesg; the error carries that line."""
    (lab_root / "low").mkdir()
    (lab_root / "up" / "work").mkdir(parents=True)
    ov = Overlay([lab_root / "low"], lab_root / "up", lab_root / "up" / "work", lab_root / "m")
    with pytest.raises(KernelError) as e:
        ov.mount()
    assert "overlayfs:" in e.value.kernel_log, str(e.value)
    assert not ov.mounted


def test_errors_survive_pickling():
    err = KernelError("mount", errno.EBUSY, "/x", "busy", "unmount it", "log line")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is KernelError and back.errno == errno.EBUSY
    assert str(back) == str(err) and back.kernel_log == "log line"
    plain = pickle.loads(pickle.dumps(LabError("problem", "fix")))
    assert str(plain) == "problem. fix"


def test_unshare_then_private_mount_in_a_child(lab_root):
    pid = os.fork()
    if pid == 0:
        try:
            kernel.unshare(kernel.CLONE_NEWNS | kernel.CLONE_NEWUTS)
            kernel.make_private("/")
            kernel.mount("none", str(lab_root), "tmpfs")
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    from labkit.mountinfo import is_mountpoint
    assert not is_mountpoint(lab_root)       # the child's tmpfs never reached this namespace


def test_setns_returns_to_the_first_namespace(lab_root):
    """Leave for a new UTS namespace, rename the host, then setns back: the old name is there."""
    import socket
    from labkit import sandbox

    def trip():
        original = os.open("/proc/self/ns/uts", os.O_RDONLY)
        kernel.unshare(kernel.CLONE_NEWUTS)
        socket.sethostname("elsewhere")
        inside = socket.gethostname()
        kernel.setns(original, kernel.CLONE_NEWUTS)
        return inside, socket.gethostname()
    assert sandbox.run(trip, namespaces=()) == ("elsewhere", socket.gethostname())


def test_pivot_root_swaps_the_root_in_a_child(lab_root):
    from labkit import sandbox
    new = lab_root / "newroot"
    (new / "old").mkdir(parents=True)
    (new / "marker").write_text("new root")

    def pivot():
        kernel.mount(str(new), str(new), None, kernel.MS_BIND)   # pivot_root needs a mount point
        kernel.pivot_root(str(new), str(new / "old"))
        os.chdir("/")
        kernel.umount2("/old", kernel.MNT_DETACH)
        return sorted(os.listdir("/")), open("/marker").read()
    assert sandbox.run(pivot) == (["marker", "old"], "new root")
    with pytest.raises(KernelError) as e:   # still in a child: never pivot the test's own root
        sandbox.run(kernel.pivot_root, str(new), str(new / "old"))   # not a mount point: refused
    assert e.value.errno in (errno.EINVAL, errno.EBUSY) and "pivot_root" in str(e.value)
