"""Layer create/apply against GNU tar, and image unpack/repack against umoci (lesson 03).

The tree: 2,000 files of 4 KiB and 16 files of 8 MiB (136 MiB); and a layer of 200,000
files of 4 bytes. GNU tar is run with the flags that make its output reproducible too
(sorted, mtime 0, numeric owner 0). Applies run into a directory on the lab root's file
system and into a tmpfs (where only the CPU work counts); the target is emptied and the
disk synced, untimed, before every run of either. umoci repack gzips its layer (labkit stores
layers uncompressed): that is part of its cost. Ratios are labkit time / tool time.
"""
import io
import os
import shutil
import subprocess
import tarfile
from contextlib import contextmanager

from bench import headline, interleaved, load, with_lab
from labkit import kernel, lab
from labkit.image import layer, store as st
from labkit.image import mutate
from labkit.tree import write_big_file

GNU_FLAGS = ["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner"]


def _tree(d):
    for i in range(2000):
        p = d / f"small/{i // 100:02d}/{i:04d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(4096))
    (d / "big").mkdir()
    for i in range(16):
        write_big_file(d / "big" / f"{i:02d}.bin", 8 << 20)


def _tiny_tar(path):
    """200,000 files of 4 bytes in 200 directories."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for d in range(200):
            info = tarfile.TarInfo(f"d{d:03d}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            t.addfile(info)
            for i in range(999):
                info = tarfile.TarInfo(f"d{d:03d}/f{i:04d}")
                info.size, info.mode, info.mtime = 4, 0o644, 1700000000
                t.addfile(info, io.BytesIO(b"abc\n"))
    return path


@contextmanager
def _tmpfs(where):
    where.mkdir(exist_ok=True)
    entry = lab.record("mount", where, "bench: a tmpfs for layer applies")
    kernel.mount("tmpfs", str(where), "tmpfs", 0, "size=2g")
    try:
        yield where
    finally:
        lab.release(entry)


def _apply_pair(tar, dest) -> dict:
    """labkit's apply and tar -x of one tar into ``dest``, interleaved."""
    def fresh(_):
        lab.fresh_dir(dest)
        os.sync()
    return interleaved({"labkit": lambda: layer.apply(tar, dest),
                        "tar": lambda: subprocess.run(["tar", "-xf", str(tar), "-C", str(dest)], check=True)},
                       before=fresh)


@with_lab
def main() -> None:
    w = lab.scratch("bench-layers")
    src = w / "tree"
    _tree(src)
    os.sync()
    rows = []
    r = interleaved({"labkit": lambda: layer.create(src, w / "lab.tar"),
                     "tar": lambda: subprocess.run(["tar", *GNU_FLAGS, "-cf", str(w / "gnu.tar"), "-C", str(src), "."],
                                                   check=True)})
    rows.append(("layer create (136 MiB)", "tar -c", r["labkit"], r["tar"]))
    _tiny_tar(w / "tiny.tar")
    with _tmpfs(w / "tmpfs") as fast:
        for what, tar in (("136 MiB", w / "gnu.tar"), ("200,000 tiny files", w / "tiny.tar")):
            for fs, dest in (("lab root fs", w / "dest"), ("tmpfs", fast / "dest")):
                r = _apply_pair(tar, dest)
                rows.append((f"layer apply ({what}, {fs})", "tar -x", r["labkit"], r["tar"]))
                lab.remove_tree(dest)

    s = st.Store()
    mutate.import_rootfs(src, "bench", store=s)
    layout = s.save(w / "layout", "v1", "bench")

    def fresh(name):
        lab.fresh_dir(w / "flat") if name == "labkit" else shutil.rmtree(w / "bundle", ignore_errors=True)
        os.sync()
    r = interleaved({"labkit": lambda: s.flatten("bench", w / "flat"),
                     "umoci": lambda: subprocess.run(["umoci", "unpack", "--image", f"{layout}:v1", str(w / "bundle")],
                                                     check=True, capture_output=True)}, before=fresh)
    rows.append(("unpack (136 MiB)", "umoci unpack", r["labkit"], r["umoci"]))
    (w / "bundle" / "rootfs" / "big" / "00.bin").write_bytes(b"changed")
    (w / "flat" / "big" / "00.bin").write_bytes(b"changed")
    r = interleaved({"labkit": lambda: mutate.add_layer("bench", w / "flat", "bench2", "change", store=s),
                     "umoci": lambda: subprocess.run(["umoci", "repack", "--image", f"{layout}:v2", str(w / "bundle")],
                                                     check=True, capture_output=True)})
    rows.append(("layer of a whole rootfs (136 MiB)", "umoci repack", r["labkit"], r["umoci"]))

    print(f"\nlayers (s), labkit and the tool interleaved, {len(r['labkit'].runs)} runs each; {load()}")
    print(f"{'':<48} {'labkit min':>10} {'median':>8}  {'tool':<13} {'min':>7} {'median':>8} {'ratio':>7}")
    for what, tool, a, b in rows:
        print(f"{what:<48} {a.min:>10.3f} {a.median:>8.3f}  {tool:<13} {b.min:>7.3f} {b.median:>8.3f} "
              f"{a.median / b.median:>6.2f}x")
        headline(what, "s", a, tool, b)
    print("(the ratio is of the medians; 'layer of a whole rootfs' re-tars what umoci repack diffs and gzips)")


if __name__ == "__main__":
    main()
