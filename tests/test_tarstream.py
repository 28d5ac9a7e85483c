"""labkit's tar header reader (image/tarstream.py) against Python's tarfile and GNU tar.

Every archive here is read both ways and must give the same members: names, types, sizes,
modes, owners, times, link targets, device numbers, xattrs and data. The archives come from
tarfile in each of its formats (ustar with a prefix, GNU with long names and base-256
numbers, pax with xattrs and a global header) and from GNU tar itself (gnu, posix, ustar,
and its --xattrs).
"""
import io
import os
import subprocess
import tarfile

import pytest

from labkit.image import tarstream

KINDS = {tarstream.REGULAR: tarfile.REGTYPE, tarstream.DIRECTORY: tarfile.DIRTYPE,
         tarstream.SYMLINK: tarfile.SYMTYPE, tarstream.HARDLINK: tarfile.LNKTYPE,
         tarstream.FIFO: tarfile.FIFOTYPE, tarstream.CHAR: tarfile.CHRTYPE, tarstream.BLOCKDEV: tarfile.BLKTYPE}


def _both(path):
    """(ours, tarfile's) as comparable tuples, data included."""
    ours, theirs = [], []
    with open(path, "rb") as f:
        for m in tarstream.members(f, 8 << 20):
            data = os.pread(f.fileno(), m.size, m.offset) if m.isreg() else b""
            assert m.data is None or m.data == data
            ours.append((m.name.rstrip("/"), KINDS[m.type], m.size, m.mode, m.uid, m.gid, m.mtime, m.linkname,
                         m.devmajor, m.devminor, m.xattrs or {}, data))
    with tarfile.open(path) as t:
        for m in t:
            data = t.extractfile(m).read() if m.isreg() else b""
            xattrs = {k[13:]: v.encode("utf-8", "surrogateescape") for k, v in m.pax_headers.items()
                      if k.startswith("SCHILY.xattr.")}
            theirs.append((m.name, m.type if m.type != tarfile.AREGTYPE else tarfile.REGTYPE, m.size if m.isreg() else 0,
                           m.mode & 0o7777, m.uid, m.gid, int(m.mtime), m.linkname,
                           m.devmajor if m.ischr() or m.isblk() else 0, m.devminor if m.ischr() or m.isblk() else 0,
                           xattrs, data))
    return ours, theirs


def _write(path, fmt, extra=()):
    with tarfile.open(path, "w", format=fmt) as t:
        d = tarfile.TarInfo("dir")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o2775, 1700000000
        t.addfile(d)
        for i, size in enumerate([0, 1, 511, 512, 513, 100_000]):
            f = tarfile.TarInfo(f"dir/file{i}")
            f.size, f.mode, f.uid, f.gid, f.mtime = size, 0o4755 if i == 2 else 0o644, 1000 + i, 50, 1600000000 + i
            t.addfile(f, io.BytesIO(bytes(range(256)) * (size // 256) + b"z" * (size % 256)))
        long = "deep/" * 40 + "name.txt"                    # 208 bytes: a prefix, L, or pax path
        f = tarfile.TarInfo(long)
        f.size = 3
        t.addfile(f, io.BytesIO(b"abc"))
        s = tarfile.TarInfo("dir/link")
        s.type, s.linkname = tarfile.SYMTYPE, "../" + "far/" * (20 if fmt == tarfile.USTAR_FORMAT else 30) + "target"
        t.addfile(s)
        h = tarfile.TarInfo("dir/hard")
        h.type, h.linkname = tarfile.LNKTYPE, "dir/file1"
        t.addfile(h)
        for name, kind in [("dev/null", tarfile.CHRTYPE), ("dev/sda", tarfile.BLKTYPE), ("fifo", tarfile.FIFOTYPE)]:
            n = tarfile.TarInfo(name)
            n.type, n.devmajor, n.devminor = kind, 8, 300
            t.addfile(n)
        for info, data in extra:
            t.addfile(info, io.BytesIO(data) if data is not None else None)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tarfile_archives_read_the_same(tmp_path, fmt):
    extra = []
    if fmt != tarfile.USTAR_FORMAT:
        big = tarfile.TarInfo("big-owner")                # above 8**7: base-256 in GNU, pax in pax
        big.uid, big.gid, big.size = 3_000_000, 4_000_000, 2
        extra.append((big, b"hi"))
    if fmt == tarfile.PAX_FORMAT:
        x = tarfile.TarInfo("with-xattrs")
        x.pax_headers = {"SCHILY.xattr.user.note": "hello", "SCHILY.xattr.security.capability": "\x01\x00"}
        extra.append((x, None))
        u = tarfile.TarInfo("ünïcode-名前")
        extra.append((u, None))
    path = tmp_path / "a.tar"
    _write(path, fmt, extra)
    ours, theirs = _both(path)
    assert ours == theirs and len(ours) >= 13


def test_a_global_pax_header_applies_to_every_later_entry(tmp_path):
    path = tmp_path / "g.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, pax_headers={"uid": "4321"}) as t:
        for n in ("a", "b"):
            t.addfile(tarfile.TarInfo(n), io.BytesIO(b""))
    ours, theirs = _both(path)
    assert ours == theirs and [m[4] for m in ours] == [4321, 4321]


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar"])
def test_gnu_tar_archives_read_the_same(tmp_path, fmt):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"x" * 5000)
    (src / ("n" * 90)).mkdir()
    (src / ("n" * 90) / ("m" * 60)).write_text("long")           # 151 bytes: prefix or long name
    os.symlink("sub/f", src / "s")
    os.link(src / "sub" / "f", src / "h")
    os.setxattr(src / "sub" / "f", "user.labkit", b"v")
    if fmt != "ustar":                                            # ustar holds no time before 1970
        os.utime(src / "sub" / "f", (0, -86400))
    args = ["--xattrs"] if fmt == "posix" else []
    subprocess.run(["tar", f"--format={fmt}", *args, "-cf", tmp_path / "g.tar", "-C", src, "."], check=True)
    ours, theirs = _both(tmp_path / "g.tar")
    assert ours == theirs
    if fmt == "posix":
        assert {"user.labkit": b"v"} in [m[10] for m in ours]


@pytest.mark.parametrize("damage, problem", [
    (lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], "bad checksum"),
    (lambda b: b[:700], "cut short"),
    (lambda b: b"", "empty"),
    (lambda b: b"\x1f\x8b" + b[2:], "bad checksum"),
])
def test_damaged_archives_are_refused(tmp_path, damage, problem):
    path = tmp_path / "d.tar"
    _write(path, tarfile.PAX_FORMAT)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(tarstream.TarError, match=problem), open(path, "rb") as f:
        list(tarstream.members(f, 8 << 20))


def test_a_checksum_written_with_signed_chars_is_accepted(tmp_path):
    """Old tars summed the header as signed chars; with a byte above 127 the sums differ."""
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as t:
        t.addfile(tarfile.TarInfo("caf\xe9"), io.BytesIO(b""))
    raw = bytearray(path.read_bytes())
    head = raw[:512]
    head[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in head)
    raw[148:156] = b"%06o\0 " % signed
    path.write_bytes(bytes(raw))
    with open(path, "rb") as f:
        assert [m.name for m in tarstream.members(f, 8 << 20)] == ["café"]
