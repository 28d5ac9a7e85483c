"""Storage drivers on the real kernel: vfs copies, overlay and btrfs share; all clean up."""
import os
import signal
import subprocess
import sys

import pytest

from labkit import drivers, lab, tree
from labkit.image import mutate
from labkit.errors import LabError
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


def test_docker_layouts_rebuilt_from_the_store(lab_root, tmp_path):
    """aufs keeps .wh. files and needs no more inodes than the layers hold; the old overlay
    driver re-creates every directory in every layer; overlay2's lower names the layers below."""
    from labkit import layouts, overlay, tree
    from labkit.image import mutate
    from labkit.image.base import base_image
    from labkit.image.store import Store
    store = Store()
    base_image(store)
    docs = tree.write_tree(lab_root / "docs", {f"d{i}/f": "x" for i in range(40)})
    edit = tree.write_tree(lab_root / "edit", {"etc/motd": "m\n", "bin/": None})
    overlay.make_whiteout(edit / "bin" / "vi")
    mutate.add_layer("busybox", docs, "t/docs", "docs", store=store)
    img = mutate.add_layer("t/docs", edit, "t/layered", "edit", store=store)
    built = {d: layouts.build(d, "t/layered", lab_root / "layouts", store=store) for d in layouts.DRIVERS}
    top = img.chain_ids[-1][7:19]
    assert (built["aufs"].root / "diff" / top / "bin" / ".wh.vi").is_file()
    assert (built["aufs"].root / "layers" / top).read_text().split() == [c[7:19] for c in img.chain_ids[-2::-1]]
    assert overlay.is_whiteout(built["overlay2"].root / top / "diff" / "bin" / "vi")
    assert (built["overlay2"].root / top / "lower").read_text().count("l/") == 2
    old = built["overlay"].root / top / "root"
    assert not (old / "bin" / "vi").exists() and (old / "etc" / "motd").read_text() == "m\n"
    assert os.stat(old / "d1" / "f").st_ino == os.stat(built["overlay"].root / img.chain_ids[1][7:19] / "root" / "d1" / "f").st_ino
    assert built["overlay"].directories >= 2 * 40 > built["aufs"].directories   # the docs dirs, once more
    with pytest.raises(LabError, match="unknown driver layout"):
        layouts.build("devicemapper", "t/layered", lab_root / "x", store=store)


def test_an_overlay_upper_on_an_overlay_is_refused_and_on_a_volume_works(lab_root):
    nested = drivers.overlay_in_a_container(lab_root / "dind")
    assert "EINVAL" in nested["on the container's overlay root"] and nested["on a volume"] == "mounted"
    assert not (lab_root / "dind").exists()


def test_the_checklist_answers_for_this_machine(lab_root):
    rows = drivers.checklist()
    assert len(rows) == 6 and rows[0].points_to == "overlay2" and "overlay" in rows[0].here
