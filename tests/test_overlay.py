"""OverlayFS on the real kernel: the seed's example, many layers, whiteouts, opaque dirs,
copy-up, EXDEV and redirect_dir, metacopy, volatile, userxattr, and the lab-root gate."""
import os
import random
import shutil
import stat

import pytest

from labkit import lab, overlay
from labkit.errors import KernelError, OutsideLabRoot
from labkit.mountinfo import is_mountpoint, mounts_under
from labkit.overlay import Overlay, OverlayError
from labkit.tree import read_tree, write_tree

MATERIALS = {"material2": {"concrete": "good concrete\n", "marble": "marble\n"},
             "material": {"concrete": "bad concrete\n", "rebar": "rebar\n"}}


@pytest.mark.parametrize("api", ["mount", "new"])
def test_the_seeds_building(lab_root, api):
    ov = overlay.stack(lab.scratch("b"), MATERIALS, upper="build")
    ov.api = api
    with ov:
        assert ov.used_api == api
        assert read_tree(ov.merged) == {"concrete": "good concrete\n", "marble": "marble\n", "rebar": "rebar\n"}
        (ov.merged / "frame").write_text("main structure\n")
        assert (ov.upperdir / "frame").read_text() == "main structure\n"
        os.unlink(ov.merged / "marble")
        st = os.lstat(ov.upperdir / "marble")
        assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 0 and os.minor(st.st_rdev) == 0
        assert (ov.lowerdirs[0] / "marble").read_text() == "marble\n"
        assert ov.serving_map() == {"concrete": "material2", "frame": "build", "rebar": "material"}
        assert ov.hidden_paths() == {"marble": "whiteout marble in build"}
        assert [(c.path, c.kind) for c in ov.changes()] == [("frame", "new"), ("marble", "whiteout")]
        assert overlay.whiteouts(ov.upperdir) == ["marble"]
    assert not is_mountpoint(ov.merged) and lab.entries() == []


def test_leftmost_lowerdir_is_the_top(lab_root):
    """The seed lists material first and expects good concrete; the kernel says leftmost wins."""
    d = lab.scratch("order")
    ov = overlay.stack(d, MATERIALS, upper=None)
    seeds_order = Overlay([d / "material", d / "material2"], None, None, d / "merged")
    assert ov.peek()["concrete"] == "good concrete\n"
    assert seeds_order.peek()["concrete"] == "bad concrete\n"


def test_500_layers_need_the_new_api(lab_root):
    d = lab.scratch("tall")
    layers = {f"layer{i:03d}": {f"f{i:03d}": str(i), "who": str(i)} for i in range(overlay.MAX_LOWER)}
    ov = overlay.stack(d, layers)
    assert len(ov.option_string()) > overlay.MAX_OPTIONS
    with ov:
        assert ov.used_api == "new"
        names = os.listdir(ov.merged)
        assert len(names) == 501 and (ov.merged / "who").read_text() == "0"
        assert ov.which_layer("f499").name == "layer499"
    ov.api = "mount"
    with pytest.raises(OverlayError, match="even with relative paths"):
        ov.mount()
    assert lab.entries() == []


def test_long_stack_with_short_names_uses_relative_paths(lab_root):
    d = lab.scratch("rel")
    ov = overlay.stack(d, {str(i): {f"f{i}": ""} for i in range(300)}, api="mount")
    assert len(ov.option_string()) > overlay.MAX_OPTIONS
    with ov:
        assert ov.used_api == "mount" and len(os.listdir(ov.merged)) == 300


def test_without_lowerdir_plus_auto_mounts_500_short_names_relatively(lab_root, monkeypatch):
    """Debian 12's 6.1 (the course VM) has no lowerdir+: lesson 01's 500-layer stack must still
    mount, through mount(2) with relative paths (make vm-test found it failing there)."""
    monkeypatch.setattr(overlay, "lowerdir_plus", lambda: False)
    ov = overlay.stack(lab.scratch("tall61"), {f"L{i:03d}": {f"file{i:03d}": ""} for i in range(500)})
    assert len(ov.option_string()) > overlay.MAX_OPTIONS
    with ov:
        assert ov.used_api == "mount" and len(os.listdir(ov.merged)) == 500


def test_more_than_500_is_refused_before_the_kernel(lab_root):
    d = lab.scratch("too")
    with pytest.raises(OverlayError, match="more than the kernel's 500"):
        Overlay([d / str(i) for i in range(501)], None, None, d / "m")


def test_long_paths_go_as_fds(lab_root):
    deep = lab.scratch("x" * 200) / ("y" * 100)
    ov = overlay.stack(deep, {"low": {"a": "a"}, "low2": {"b": "b"}}, api="new")
    with ov:
        assert sorted(os.listdir(ov.merged)) == ["a", "b"]


@pytest.mark.parametrize("bad", [
    dict(merged="/mnt/outside"), dict(upperdir="/tmp/up", workdir="{d}/work"),
    dict(workdir="/var/tmp/work", upperdir="{d}/up")])
def test_refuses_to_mount_or_write_outside_the_root(lab_root, bad):
    d = lab.scratch("gate")
    args = dict(lowerdirs=[d], upperdir=None, workdir=None, merged=d / "m")
    args.update({k: v.format(d=d) for k, v in bad.items()})
    with pytest.raises(OutsideLabRoot):
        Overlay(**args)
    assert not os.path.exists("/mnt/outside")


def test_bad_options_are_named(lab_root):
    d = lab.scratch("opts")
    with pytest.raises(OverlayError, match="unknown overlay option 'redirect'"):
        Overlay([d], None, None, d / "m", {"redirect": "on"})
    with pytest.raises(OverlayError, match="metacopy takes on or off"):
        Overlay([d], None, None, d / "m", {"metacopy": "yes"})
    with pytest.raises(OverlayError, match="go together"):
        Overlay([d], d / "u", None, d / "m")


def test_opaque_directory_after_rm_and_mkdir(lab_root):
    ov = overlay.stack(lab.scratch("op"), {"low": {"conf/a": "1", "conf/b": "2", "keep": "k"}})
    with ov:
        shutil.rmtree(ov.merged / "conf")
        (ov.merged / "conf").mkdir()
        (ov.merged / "conf" / "c").write_text("3")
        assert os.getxattr(ov.upperdir / "conf", "trusted.overlay.opaque") == b"y"
        assert overlay.opaque_dirs(ov.upperdir) == ["conf"]
        assert sorted(os.listdir(ov.merged / "conf")) == ["c"]
        assert ov.hidden_paths() == {"conf/a": "opaque directory conf in upper",
                                     "conf/b": "opaque directory conf in upper"}
        assert ov.which_layer("conf/a") is None and ov.which_layer("keep").name == "low"


def test_copy_up_marks_origin_and_copies_everything(lab_root):
    row = overlay.measure_copy_up(lab.root() / "scratch" / "cu", 8 << 20)
    assert row.upper_before_write == 0
    assert row.upper_bytes >= 8 << 20
    ov = overlay.stack(lab.scratch("origin"), {"low": {"f": "x"}})
    with ov:
        with open(ov.merged / "f") as f:   # read-only: no copy-up
            f.read()
        assert not (ov.upperdir / "f").exists()
        with open(ov.merged / "f", "a") as f:
            f.write("y")
        assert os.getxattr(ov.upperdir / "f", "trusted.overlay.origin")
        assert [(c.path, c.kind) for c in ov.changes()] == [("f", "copy-up")]
        assert (ov.lowerdirs[0] / "f").read_text() == "x"


def test_rename_lower_dir_exdev_then_redirect_dir(lab_root):
    spec = {"low": {"dir/x": "x"}}
    ov = overlay.stack(lab.scratch("ren"), spec)
    with ov:
        assert overlay.try_rename(ov.merged / "dir", ov.merged / "dir2") == "EXDEV"
    ov = overlay.stack(lab.scratch("ren2"), spec, redirect_dir="on")
    with ov:
        assert overlay.try_rename(ov.merged / "dir", ov.merged / "dir2") == "ok"
        assert os.getxattr(ov.upperdir / "dir2", "trusted.overlay.redirect")
        assert {c.path: c.kind for c in ov.changes()} == {"dir": "whiteout", "dir2": "redirect"}
        assert ov.which_layer("dir2/x").name == "low"
        assert (ov.merged / "dir2" / "x").read_text() == "x"


def test_metacopy_copies_metadata_only(lab_root):
    ov = overlay.stack(lab.scratch("meta"), {"low": {"big": 16 << 20}}, redirect_dir="on", metacopy="on")
    with ov:
        os.chmod(ov.merged / "big", 0o600)
        up = os.lstat(ov.upperdir / "big")
        assert up.st_blocks * 512 < 1 << 20 and up.st_size == 16 << 20
        assert [c.kind for c in ov.changes()] == ["metacopy"]
        with open(ov.merged / "big", "r+b") as f:
            f.write(b"!")
        assert os.lstat(ov.upperdir / "big").st_blocks * 512 >= 16 << 20


def test_volatile_refuses_remount_until_cleared(lab_root):
    ov = overlay.stack(lab.scratch("vol"), {"low": {"a": "a"}}, volatile=None)
    with ov:
        (ov.merged / "b").write_text("b")
    with pytest.raises(KernelError) as e:
        ov.mount()
    assert "clear_volatile" in str(e.value)   # the kernel's log line may be rate-limited
    overlay.clear_volatile(ov.workdir)
    with ov:
        assert (ov.merged / "b").read_text() == "b"


def test_userxattr_uses_user_namespace_xattrs(lab_root):
    ov = overlay.stack(lab.scratch("ux"), {"low": {"d/a": "a"}}, userxattr=None)
    with ov:
        shutil.rmtree(ov.merged / "d")
        (ov.merged / "d").mkdir()
        assert os.getxattr(ov.upperdir / "d", "user.overlay.opaque") == b"y"
        assert ov.xattr_prefix == "user.overlay." and [c.kind for c in ov.changes()] == ["opaque"]


def test_exception_inside_with_still_unmounts(lab_root):
    ov = overlay.stack(lab.scratch("exc"), {"low": {"a": "a"}})
    with pytest.raises(RuntimeError):
        with ov:
            raise RuntimeError("learner's bug")
    assert not mounts_under(lab_root) and lab.entries() == []


def test_hand_made_whiteout_and_opaque_in_a_lower_layer(lab_root):
    """Layers unpacked in overlay form carry their own whiteouts and opaque marks."""
    d = lab.scratch("hand")
    write_tree(d / "base", {"a": "a", "dir/old": "old", "keep": "k"})
    write_tree(d / "mid", {"dir/new": "new"})
    overlay.make_whiteout(d / "mid" / "a")
    overlay.make_opaque(d / "mid" / "dir")
    ov = Overlay([d / "mid", d / "base"], None, None, d / "m")
    assert ov.peek() == {"dir": None, "dir/new": "new", "keep": "k"}


def test_which_layer_agrees_with_the_kernel_on_random_stacks(lab_root):
    """Our reading of the lookup rules, checked against what the kernel serves."""
    rnd = random.Random(7)
    names = ["a", "b", "c"]
    for trial in range(12):
        d = lab.scratch(f"rnd{trial}")
        n = rnd.randint(2, 5)
        lowers = [d / f"L{i}" for i in range(n)]   # L0 is the top layer
        for i, layer in enumerate(lowers):
            layer.mkdir()
            for top in names:
                r = rnd.random()
                if r < 0.35:
                    (layer / top).write_text(f"{layer.name}:{top}")
                elif r < 0.6:
                    (layer / top).mkdir()
                    for sub in names[:2]:
                        if rnd.random() < 0.6:
                            (layer / top / sub).write_text(f"{layer.name}:{top}/{sub}")
                    if i < n - 1 and rnd.random() < 0.3:
                        overlay.make_opaque(layer / top)
                elif r < 0.7 and i < n - 1:
                    overlay.make_whiteout(layer / top)
        ov = Overlay(lowers, None, None, d / "m")
        seen = ov.peek()
        every = {str(p.relative_to(l)) for l in lowers for p in l.rglob("*")}
        for rel in sorted(every):
            layer = ov.which_layer(rel)
            if layer is None:
                assert rel not in seen, (trial, rel)
                continue
            assert rel in seen, (trial, rel, layer.name)
            if seen[rel] is not None:   # a file: same bytes as the layer we named
                assert seen[rel] == (layer.path / rel).read_text(), (trial, rel)


def test_the_stack_picture_of_a_wide_image_wraps_instead_of_shrinking(lab_root):
    """Lesson 06's explorer over busybox: 300 entries and a 64-hex layer name. The picture keeps
    its text size (no graphviz scale below 0.9), shows the highlighted deep path in merged and
    in the layer that serves it, with the red arrow between them."""
    import re
    from labkit import viz
    key = "0123456789abcdef" * 4
    ov = overlay.stack(lab.scratch("wide"), {"init": {"etc/hostname": "x\n"},
                                             key: {**{f"bin/t{i}": "x" for i in range(300)},
                                                   **{f"{d}/f": "x" for d in "abcdefghijklmnop"}}})
    with ov:
        g = viz.overlay_stack(ov, highlight="etc/hostname")
        svg = g.pipe(format="svg").decode()
    scale = re.search(r"scale\(([\d.]+)", svg)
    assert scale is None or float(scale.group(1)) >= 0.9, scale.group(1)
    assert "n0_etc_hostname -> n2_etc_hostname" in g.source and "color=red" in g.source
    assert key not in g.source and "0123456789ab…" in g.source
