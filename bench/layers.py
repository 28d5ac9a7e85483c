"""Layer create/apply against GNU tar, and image unpack/repack against umoci (lesson 03).

The tree: 2,000 files of 4 KiB and 16 files of 8 MiB (136 MiB). GNU tar is run with
the flags that make its output reproducible too (sorted, mtime 0, numeric owner 0).
umoci repack gzips its layer (labkit stores layers uncompressed): that is part of its cost.
Ratios are labkit time / tool time: below 1 means labkit is faster.
"""
import os
import shutil
import statistics
import subprocess
import time

from bench import headline, with_lab
from labkit import lab
from labkit.image import layer, store as st
from labkit.image import mutate
from labkit.tree import write_big_file

REPEAT = 3


def _median(fn, before=None) -> float:
    runs = []
    for _ in range(REPEAT):
        if before:
            before()
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def _tree(d):
    for i in range(2000):
        p = d / f"small/{i // 100:02d}/{i:04d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(4096))
    (d / "big").mkdir()
    for i in range(16):
        write_big_file(d / "big" / f"{i:02d}.bin", 8 << 20)


@with_lab
def main() -> None:
    w = lab.scratch("bench-layers")
    src = w / "tree"
    _tree(src)
    os.sync()
    gnu_flags = ["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner"]
    rows = []
    t_lab = _median(lambda: layer.create(src, w / "lab.tar"))
    t_tar = _median(lambda: subprocess.run(["tar", *gnu_flags, "-cf", str(w / "gnu.tar"), "-C", str(src), "."],
                                           check=True))
    rows.append(("layer create vs tar -c", t_lab, t_tar))
    reset_dest = lambda: lab.fresh_dir(w / "dest")
    t_lab = _median(lambda: layer.apply(w / "lab.tar", w / "dest"), reset_dest)
    t_tar = _median(lambda: subprocess.run(["tar", "-xf", str(w / "gnu.tar"), "-C", str(w / "dest")], check=True),
                    reset_dest)
    rows.append(("layer apply vs tar -x", t_lab, t_tar))

    s = st.Store()
    mutate.import_rootfs(src, "bench", store=s)
    layout = s.save(w / "layout", "v1", "bench")
    t_lab = _median(lambda: s.flatten("bench", w / "flat"), lambda: lab.fresh_dir(w / "flat"))
    t_umoci = _median(lambda: subprocess.run(["umoci", "unpack", "--image", f"{layout}:v1", str(w / "bundle")],
                                             check=True, capture_output=True),
                      lambda: shutil.rmtree(w / "bundle", ignore_errors=True))
    rows.append(("unpack vs umoci unpack", t_lab, t_umoci))
    (w / "bundle" / "rootfs" / "big" / "00.bin").write_bytes(b"changed")
    (w / "flat" / "big" / "00.bin").write_bytes(b"changed")
    t_lab = _median(lambda: mutate.add_layer("bench", w / "flat", "bench2", "change", store=s))
    t_umoci = _median(lambda: subprocess.run(["umoci", "repack", "--image", f"{layout}:v2", str(w / "bundle")],
                                             check=True, capture_output=True))
    rows.append(("layer of a whole rootfs vs umoci repack (diff only, gzip)", t_lab, t_umoci))

    rows.append(_many_small(w))

    print(f"\nlayers, 136 MiB tree (and 200,000 tiny files on tmpfs), median of {REPEAT} (s)")
    print(f"{'':<58} {'labkit':>8} {'tool':>8} {'ratio':>7}")
    for name, a, b in rows:
        print(f"{name:<58} {a:>8.3f} {b:>8.3f} {a / b:>6.2f}x")
        short, tool = name.split(" vs ")
        headline(short if "(" in short else short + " (136 MiB)", "s", a, tool.split(" (")[0], b)


def _many_small(w) -> tuple:
    """200,000 files of 4 bytes in 200 directories, applied onto a tmpfs under the lab root (the
    VM's ext4 makes inode creation too noisy to compare): labkit and tar -x take turns."""
    import io
    import tarfile
    from labkit import kernel
    tar = w / "tiny.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:
        for d in range(200):
            info = tarfile.TarInfo(f"d{d:03d}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            t.addfile(info)
            for i in range(999):
                info = tarfile.TarInfo(f"d{d:03d}/f{i:04d}")
                info.size, info.mode, info.mtime = 4, 0o644, 1700000000
                t.addfile(info, io.BytesIO(b"abc\n"))
    fast = w / "tmpfs"
    fast.mkdir()
    entry = lab.record("mount", fast, "bench: tmpfs for 200,000 tiny files")
    kernel.mount("tmpfs", str(fast), "tmpfs", 0, "size=2g")
    try:
        ours, theirs = [], []
        for _ in range(REPEAT):                   # interleaved: a slow minute hits both
            for runs, fn in ((ours, lambda: layer.apply(tar, fast / "dest")),
                             (theirs, lambda: subprocess.run(["tar", "-xf", str(tar), "-C", str(fast / "dest")],
                                                             check=True))):
                lab.fresh_dir(fast / "dest")
                t = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - t)
        return ("layer apply (200,000 tiny files) vs tar -x", statistics.median(ours), statistics.median(theirs))
    finally:
        lab.release(entry)


if __name__ == "__main__":
    main()
