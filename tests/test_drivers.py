"""Storage drivers on the real kernel: vfs copies, overlay and btrfs share; all clean up."""
import os
import signal
import subprocess
import sys

import pytest

from labkit import drivers, lab, tree
from labkit.image import mutate
from labkit.mountinfo import mounts_under


@pytest.fixture
def fat(busybox):
    s = busybox
    d = lab.scratch("fat")
    tree.write_tree(d, {"data/blob": 16 << 20})
    mutate.add_layer("busybox", d, "fat", "COPY blob", store=s)
    return s


def _loops_on(root):
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(root) in line]


@pytest.mark.parametrize("name", sorted(drivers.DRIVERS))
def test_each_driver_gives_every_container_the_image(fat, name):
    costs = drivers.measure(name, "fat", 3, store=fat)
    assert [c.containers for c in costs] == [1, 2, 3]
    assert all(b.seconds >= a.seconds for a, b in zip(costs, costs[1:]))
    image = 16 << 20
    if name == "vfs":
        assert costs[-1].disk_bytes >= 3 * image
    else:
        assert image <= costs[-1].disk_bytes < 1.5 * image
    assert not mounts_under(lab.root()) and not _loops_on(lab.root()) and lab.entries() == []


def test_containers_are_independent(fat):
    with drivers.Btrfs(fat, "fat", lab.root() / "b") as d:
        a, b = d.create(), d.create()
        (a / "etc" / "motd").write_text("only in a\n")
        assert not (b / "etc" / "motd").exists()


def test_one_byte_write_costs(fat):
    assert drivers.one_byte_write("vfs", "fat", "data/blob", store=fat) == 0
    assert drivers.one_byte_write("overlay", "fat", "data/blob", store=fat) >= 16 << 20
    assert drivers.one_byte_write("btrfs", "fat", "data/blob", store=fat) < 1 << 20


def test_exception_inside_still_detaches_the_loop_device(fat):
    with pytest.raises(RuntimeError):
        with drivers.Btrfs(fat, "fat", lab.root() / "b") as d:
            d.create()
            raise RuntimeError("boom")
    assert not _loops_on(lab.root()) and not mounts_under(lab.root())


def test_reset_detaches_a_crashed_kernels_loop_device(fat):
    code = ("from labkit import drivers; from labkit.image import store as st; from labkit import lab\n"
            "d = drivers.Btrfs(st.Store(), 'fat', lab.root() / 'crash'); d.create(); print('up', flush=True)\n"
            "import time; time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, LABKIT_HOME=str(lab.root())),
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "up"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert _loops_on(lab.root()) and mounts_under(lab.root())
    done = lab.reset()
    assert any("detached /dev/loop" in line for line in done)
    assert not _loops_on(lab.root()) and not mounts_under(lab.root())


def test_exercises(fat):
    from labkit.exercises import l04_drivers as ex
    import fcntl
    import shutil

    def clone(src, dst):
        with open(src, "rb") as s, open(dst, "wb") as d:
            fcntl.ioctl(d.fileno(), 0x40049409, s.fileno())           # FICLONE
    assert ex.check_driver_choice(clone).ok
    assert not ex.check_driver_choice(shutil.copyfile).ok              # a copy takes the blocks
    assert not ex.check_driver_choice("btrfs").ok
    assert ex.check_vfs_prediction(5 * 18, image="fat").ok
    assert not ex.check_vfs_prediction(18, image="fat").ok
