"""Layers as changesets: upper dir -> tar -> directory, reproducibly, and hostile tars refused."""
import io
import os
import shutil
import stat
import subprocess
import tarfile

import pytest

from labkit import lab, overlay
from labkit.image import digest, layer
from labkit.image.layer import LayerError
from labkit.tree import read_tree, write_tree

from helpers import need


def changed_stack(base_dir):
    """An overlay whose upper dir holds one of each kind of change."""
    ov = overlay.stack(base_dir, {"base": {"etc/motd": "hi\n", "etc/passwd": "root\n",
                                           "conf/a": "a", "conf/b": "b", "keep": "k"}})
    ov.mount()
    os.unlink(ov.merged / "etc" / "motd")                      # whiteout
    (ov.merged / "etc" / "hostname").write_text("lab\n")        # new file
    with open(ov.merged / "etc" / "passwd", "a") as f:          # copy-up
        f.write("nobody\n")
    shutil.rmtree(ov.merged / "conf")                           # opaque dir
    (ov.merged / "conf").mkdir()
    (ov.merged / "conf" / "c").write_text("c")
    (ov.merged / "h1").write_text("x")                          # a real hard link
    os.link(ov.merged / "h1", ov.merged / "h2")
    os.symlink("/bin/sh", ov.merged / "sh")
    return ov


def test_upper_dir_to_layer_and_back(lab_root):
    d = lab.scratch("rt")
    ov = changed_stack(d)
    try:
        info = layer.create(ov.upperdir, d / "l.tar")
        want = read_tree(ov.merged)
    finally:
        ov.unmount()
    names = [m.name for m in tarfile.open(d / "l.tar")]
    assert "etc/.wh.motd" in names and "conf/.wh..wh..opq" in names
    assert info.whiteouts == 1 and info.opaque_dirs == 1
    members = {m.name: m for m in tarfile.open(d / "l.tar")}
    assert members["h2"].islnk() and members["h2"].linkname == "h1"
    assert not any("overlay" in k for m in members.values() for k in m.pax_headers)
    assert info.diff_id == digest.of_file(d / "l.tar")[0]
    # flattened onto a copy of the lower layer: the same tree as the live merged view
    shutil.copytree(d / "base", d / "flat", symlinks=True)
    report = layer.apply(d / "l.tar", d / "flat")
    assert read_tree(d / "flat") == want
    assert sorted(report.removed) == ["conf/a", "conf/b", "etc/motd"]
    assert os.stat(d / "flat" / "h1").st_ino == os.stat(d / "flat" / "h2").st_ino
    # in overlay form: a lowerdir that gives the same merged tree again
    layer.apply(d / "l.tar", d / "ovl", overlay_form=True)
    assert overlay.is_whiteout(d / "ovl" / "etc" / "motd")
    assert os.getxattr(d / "ovl" / "conf", "trusted.overlay.opaque") == b"y"
    assert overlay.Overlay([d / "ovl", d / "base"], None, None, d / "m").peek() == want


def test_same_tree_same_digest_unless_mtimes_are_kept(lab_root):
    d = lab.scratch("repro")
    write_tree(d / "t", {"a": "1", "b/c": "2"})
    one = layer.create(d / "t", d / "1.tar")
    os.utime(d / "t" / "a", (12345, 12345))
    two = layer.create(d / "t", d / "2.tar")
    assert one.diff_id == two.diff_id
    assert layer.create(d / "t", d / "3.tar", mtime=None).diff_id != one.diff_id


def test_whiteouts_only_hide_lower_layers(lab_root):
    """image-spec: a whiteout never hides an entry of its own layer."""
    d = lab.scratch("own")
    write_tree(d / "dest", {"x": "lower", "dir/old": "lower"})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in [("x", b"same layer"), (".wh.x", b""), ("dir/new", b"n"), ("dir/.wh..wh..opq", b"")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    (d / "l.tar").write_bytes(buf.getvalue())
    layer.apply(d / "l.tar", d / "dest")
    assert read_tree(d / "dest") == {"x": "same layer", "dir": None, "dir/new": "n"}


def test_umoci_repack_layer_applies_the_same(lab_root):
    """A layer umoci makes from a changed rootfs gives labkit the same tree as umoci."""
    from labkit.image import store as st
    from labkit.image.base import base_image
    s = st.Store()
    base_image(s)
    out = lab.root() / "interop"
    s.save(out, "v1", "busybox")
    bundle = out.parent / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{out}:v1", str(bundle)], check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    (rootfs / "etc" / "motd").write_text("changed by umoci\n")
    os.unlink(rootfs / "bin" / "vi")
    shutil.rmtree(rootfs / "home")
    subprocess.run(["umoci", "repack", "--image", f"{out}:v2", str(bundle)], check=True, capture_output=True)
    img = s.load(out, "v2", "repacked")
    assert len(img.layers) == 2 and img.layers[1].media_type.endswith("gzip")
    flat = s.flatten("repacked", lab.root() / "flat")
    assert read_tree(flat) == read_tree(rootfs)


# --- hostile layers ----------------------------------------------------------------------------
def _tar(path, entries):
    """entries: (name, kind, extra); kind is file/dir/sym/lnk/chr/fifo/pax/xattr, or
    sparse (a GNU sparse file claiming ``extra`` bytes), paxname (``extra`` replaces the name
    in a PAX header), cut (the archive is cut to ``extra`` bytes once written)."""
    cut = None
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            data = None
            if kind == "file":
                info.size, data = len(extra or b""), io.BytesIO(extra or b"")
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == "lnk":
                info.type, info.linkname = tarfile.LNKTYPE, extra
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "pax":
                info.pax_headers["comment"] = "x" * extra
            elif kind == "paxname":
                info.pax_headers["path"] = extra
            elif kind == "xattr":
                info.pax_headers["SCHILY.xattr.trusted.overlay.opaque"] = "y"
                info.type = tarfile.DIRTYPE
            elif kind == "sparse":      # GNU sparse 0.1: one byte of data, the rest a hole
                info.pax_headers.update({"GNU.sparse.map": "0,1", "GNU.sparse.size": str(extra)})
                info.size, data = 1, io.BytesIO(b"x")
            elif kind == "cut":
                cut = extra
                continue
            t.addfile(info, data)
    if cut is not None:
        os.truncate(path, cut)


HOSTILE = {
    "dotdot": ([("../escaped", "file", b"x")], "climbs out"),
    "dotdot-deep": ([("a/../../escaped", "file", b"x")], "climbs out"),
    "absolute": ([("/tmp/escaped-abs", "file", b"x")], "absolute"),
    "symlink-then-write": ([("link", "sym", "{outside}"), ("link/escaped", "file", b"x")], "symlink"),
    "symlink-relative-up": ([("up", "sym", "../../.."), ("up/escaped", "file", b"x")], "symlink"),
    "hardlink-outside": ([("pw", "lnk", "/etc/passwd")], "outside the layer"),
    "hardlink-dotdot": ([("pw", "lnk", "../../etc/passwd")], "outside the layer"),
    "hardlink-missing": ([("pw", "lnk", "nothing-here")], "not a file"),
    "hardlink-to-symlink": ([("s", "sym", "/etc/passwd"), ("pw", "lnk", "s")], "not a regular file"),
    "device": ([("dev/mem", "chr", None)], "device node"),
    "duplicate": ([("a", "file", b"1"), ("a", "file", b"2")], "twice"),
    "huge-pax-header": ([("a", "pax", 9 << 20)], "read of"),
    "overlay-xattr": ([("d", "xattr", None)], "overlay xattr"),
    "reserved-whiteout": ([(".wh..wh.plnk", "file", b"")], "reserved"),
    # a whiteout of "." or ".." would remove the directory holding it, or its parent
    "whiteout-dotdot": ([("sub/x", "file", b"1"), ("sub/.wh..", "file", b"")], "names no file"),
    "whiteout-dot": ([(".wh..", "file", b"")], "names no file"),
    "whiteout-empty": ([("sub/.wh.", "file", b"")], "names no file"),
    # CVE-2021-32760: q/victim/ first, then q becomes a symlink; the directory attributes set at
    # the end would go through it to the host
    "dir-then-symlink": ([("q/victim/", "dir", None), ("q", "sym", "{outside}")], "would replace the directory"),
    # a hard link through a directory the same layer turned into a symlink
    "hardlink-via-swapped-dir": ([("x/passwd", "file", b"x"), ("x", "sym", "{outside}"), ("y", "lnk", "x/passwd")],
                                 "would replace the directory"),
    "dir-replaced-by-file": ([("q/a", "file", b"1"), ("q", "file", b"2")], "would replace the directory"),
    # CVE-2021-29136 (umoci): the layer's own root "." as a symlink to the host's /
    "root-symlink": ([(".", "sym", "{outside}"), ("etc/passwd", "file", b"x")], "root but not a directory"),
    # a PAX header replaces the harmless ustar name with a climbing one
    "pax-path-dotdot": ([("harmless", "paxname", "../escaped")], "climbs out"),
    "whiteout-through-symlink": ([("link", "sym", "{outside}"), ("link/.wh.victim", "file", b"")], "symlink"),
    "opaque-through-symlink": ([("link", "sym", "{outside}"), ("link/.wh..wh..opq", "file", b"")], "symlink"),
    "write-through-fifo": ([("f", "fifo", None), ("f/x", "file", b"1")], "non-directory"),
    "hardlink-through-own-symlink": ([("s", "sym", "{outside}"), ("pw", "lnk", "s/passwd")], "not a file of this layer"),
    "hardlink-to-directory": ([("d", "dir", None), ("l", "lnk", "d")], "not a regular file"),
    # the 2024-25 tarfile filter bypasses (CVE-2025-4517, -4330, -4138): a symlink whose target
    # is longer than PATH_MAX, so realpath() stops resolving it, then a link through it
    "path-max-symlink": ([("p", "sym", "d/" * 2100 + "../" * 2101 + "etc"), ("pw", "lnk", "p/passwd")],
                         "longer than"),
    "path-max-chain": ([("a" * 250, "dir", None), ("a" * 250 + "/s", "sym", "../" * 40),
                        ("a" * 250 + "/s/escaped", "file", b"x")], "symlink"),
    # a gzip bomb's uncompressed twin: a sparse file claiming a terabyte (OCI layers have none)
    "sparse-terabyte": ([("big", "sparse", 1 << 40)], "sparse entry"),
    "truncated": ([("a", "file", b"x" * 20000), ("cut", "cut", 6000)], "cut short"),
    "truncated-after-good-entries": ([("ok/a", "file", b"1"), ("ok/b", "file", b"2"), ("a", "file", b"x" * 20000),
                                      ("cut", "cut", 8000)], "cut short"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_are_refused_and_nothing_is_written(lab_root, tmp_path, case):
    entries, problem = HOSTILE[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    entries = [(n, k, e.format(outside=outside) if isinstance(e, str) else e) for n, k, e in entries]
    d = lab.scratch("hostile")
    _tar(d / "bad.tar", entries)
    dest = write_tree(d / "dest", {"precious": "keep me"})
    with pytest.raises(LayerError) as e:
        layer.apply(d / "bad.tar", dest)
    assert problem in str(e.value), str(e.value)
    assert read_tree(dest) == {"precious": "keep me"}, "nothing may be written before the refusal"
    assert list(outside.iterdir()) == []
    assert not os.path.exists("/tmp/escaped-abs")


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_applied_to_an_empty_dir_leave_it_empty(lab_root, tmp_path, case):
    """Into an empty directory a layer is read once, each entry checked as it is written: the
    entries before the hostile one were written, and the refusal removes them again."""
    entries, problem = HOSTILE[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    entries = [("early/file", "file", b"1"), ("early.txt", "file", b"2")] + [
        (n, k, e.format(outside=outside) if isinstance(e, str) else e) for n, k, e in entries]
    if case == "root-symlink":
        entries = entries[2:]               # the root entry comes first or not at all
    d = lab.scratch("hostile-empty")
    _tar(d / "bad.tar", entries)
    (d / "dest").mkdir()
    with pytest.raises(LayerError) as e:
        layer.apply(d / "bad.tar", d / "dest")
    assert problem in str(e.value), str(e.value)
    assert os.listdir(d / "dest") == [] and list(outside.iterdir()) == []


def test_a_layer_larger_than_the_free_space_is_refused_whole(lab_root):
    """A 40 MiB filesystem keeps MIN_FREE (32 MiB) spare: a layer of 3 x 4 MiB is refused. Into
    a dir holding files, before anything is written; into an empty dir, at the file that goes
    over, and what came before is removed again."""
    from labkit import kernel
    need(os.geteuid() == 0, "root (to mount a small tmpfs)")
    d = lab.scratch("full")
    small = d / "small"
    small.mkdir()
    e = lab.record("mount", small, "a 40 MiB tmpfs")
    kernel.mount("tmpfs", str(small), "tmpfs", 0, "size=40m")
    try:
        _tar(d / "big.tar", [(f"f{i}", "file", b"\1" * (4 << 20)) for i in range(3)])
        (small / "empty").mkdir()
        write_tree(small / "full", {"precious": "keep me"})
        for dest, left in [(small / "full", {"precious": "keep me"}), (small / "empty", {})]:
            with pytest.raises(LayerError, match=r"layer big.tar needs \d+ MiB but only \d+ MiB are free"):
                layer.apply(d / "big.tar", dest)
            assert read_tree(dest) == left
    finally:
        lab.release(e)


def test_symlink_already_in_the_target_is_not_followed(lab_root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    d = lab.scratch("planted")
    dest = d / "dest"
    dest.mkdir()
    (dest / "etc").symlink_to(outside)
    _tar(d / "l.tar", [("etc/passwd", "file", b"owned")])
    with pytest.raises(LayerError, match="symlink 'etc' already in the target"):
        layer.apply(d / "l.tar", dest)
    assert list(outside.iterdir()) == []


def test_devices_allowed_when_asked(lab_root):
    d = lab.scratch("dev")
    _tar(d / "l.tar", [("null", "chr", None)])
    layer.apply(d / "l.tar", d / "dest", allow_devices=True)
    assert stat.S_ISCHR(os.lstat(d / "dest" / "null").st_mode)


def test_not_a_tar(lab_root):
    d = lab.scratch("junk")
    (d / "junk.tar").write_bytes(b"\x1f\x8b this is not a tar" * 100)
    with pytest.raises(LayerError, match="not a"):
        layer.apply(d / "junk.tar", d / "dest")


def test_apply_refuses_a_target_outside_the_root(lab_root, tmp_path):
    d = lab.scratch("out")
    _tar(d / "l.tar", [("a", "file", b"1")])
    with pytest.raises(lab.OutsideLabRoot):
        layer.apply(d / "l.tar", tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()


def test_big_layer_streams_with_flat_memory(lab_root):
    """A 256 MiB file goes into and out of a layer in 1 MiB chunks: peak RSS barely moves."""
    from labkit import sandbox
    d = lab.scratch("big")

    def roundtrip():
        import resource
        from labkit.tree import write_big_file
        (d / "src").mkdir()
        write_big_file(d / "src" / "big", 256 << 20)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        info = layer.create(d / "src", d / "big.tar")
        layer.apply(d / "big.tar", d / "dest")
        return info.size, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    size, grown_kib = sandbox.run(roundtrip, namespaces=(), timeout=300)
    assert size > 256 << 20
    assert grown_kib < 64 * 1024, f"memory grew by {grown_kib} KiB"
    assert os.path.getsize(d / "dest" / "big") == 256 << 20


def test_attributes_are_never_set_through_a_symlink(lab_root, tmp_path):
    """The structural half of CVE-2021-32760: attributes are set on the fd of the directory the
    layer made, so swapping that directory for a symlink afterwards changes nothing outside, and
    a directory is never opened through a symlink at all."""
    from labkit import kernel
    from labkit.errors import KernelError
    outside = tmp_path / "outside"
    (outside / "victim").mkdir(parents=True)
    os.chmod(outside / "victim", 0o755)
    dest = lab.scratch("attrs")
    from labkit.image import tarstream
    m = tarstream.Member("q/victim", tarstream.DIRECTORY, 0, 0, 0o4777, 4243, 4243, 0, "", 0, 0, None)
    with layer._Target(dest) as tgt:
        fd = tgt.dir("q/victim")
        (dest / "q").rename(dest / "q.old")
        (dest / "q").symlink_to(outside)
        layer._set_attrs(fd, m)
        with pytest.raises(KernelError, match="openat2"):
            kernel.openat2(tgt.fd, "q/victim", os.O_RDONLY, kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_SYMLINKS)
    st_ = os.stat(outside / "victim")
    assert stat.S_IMODE(st_.st_mode) == 0o755 and st_.st_uid == 0
    assert os.stat(dest / "q.old" / "victim").st_uid == 4243


def test_a_tree_2000_directories_deep_goes_into_a_layer_and_back(lab_root):
    """No recursion limit in create or apply (the 2000-deep tree used to raise RecursionError)."""
    d = lab.scratch("deep")
    (d / "src").mkdir()
    fd = os.open(d / "src", os.O_RDONLY)
    for _ in range(2000):
        os.mkdir("d", dir_fd=fd)
        fd, old = os.open("d", os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
        f.write("bottom")
    os.close(fd)
    info = layer.create(d / "src", d / "deep.tar")
    assert info.entries == 2001
    report = layer.apply(d / "deep.tar", d / "out")
    assert report.written == 2001
    fd = os.open(d / "out", os.O_RDONLY)
    for _ in range(2000):
        fd, old = os.open("d", os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    with open(os.open("f", os.O_RDONLY, dir_fd=fd)) as f:
        assert f.read() == "bottom"
    os.close(fd)


def test_file_capabilities_survive_gnu_tar_and_labkit_both_ways(lab_root):
    """security.capability is binary (struct vfs_cap_data): a GNU tar --xattrs layer applies with
    it (it used to raise UnicodeEncodeError), and labkit's own layers keep it (it was dropped)."""
    import struct
    cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)       # VFS_CAP_REVISION_2, cap_net_raw+ep
    d = lab.scratch("caps")
    write_tree(d / "src", {"bin/ping": "#!/bin/sh\n"})
    os.setxattr(d / "src" / "bin" / "ping", "security.capability", cap)
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-cf", str(d / "gnu.tar"), "-C", str(d / "src"), "bin"],
                   check=True)
    layer.apply(d / "gnu.tar", d / "from-gnu")
    assert os.getxattr(d / "from-gnu" / "bin" / "ping", "security.capability") == cap
    layer.create(d / "src", d / "labkit.tar")
    layer.apply(d / "labkit.tar", d / "from-labkit")
    assert os.getxattr(d / "from-labkit" / "bin" / "ping", "security.capability") == cap
    gnu = lab.scratch("caps-gnu")
    out = subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-xf", str(d / "labkit.tar"), "-C", str(gnu)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert os.getxattr(gnu / "bin" / "ping", "security.capability") == cap


def test_a_whiteout_and_a_file_of_the_same_name_in_one_layer(lab_root):
    """In overlay form the whiteout ``.wh.x`` becomes a char device ``x``; a later entry ``x`` of
    the same layer replaces it (also in a directory the layer itself made)."""
    d = lab.scratch("wh-then-file")
    _tar(d / "l.tar", [("sub/", "dir", None), ("sub/.wh.x", "file", b""), ("sub/x", "file", b"new")])
    layer.apply(d / "l.tar", d / "dest", overlay_form=True)
    assert (d / "dest" / "sub" / "x").read_bytes() == b"new"
