"""Lesson 04 exercises: predict vfs disk use; clone a file on btrfs as its driver does."""
from __future__ import annotations

import os

from .. import drivers, lab
from ..image import store as st
from . import exercise


@exercise("04.vfs", "predict the disk five vfs containers use", hints=[
    "vfs copies every file of the image for every container.",
    "Five containers of an image of S MiB use about 5 x S MiB.",
])
def check_vfs_prediction(guess_mib, image: str = "lesson04/fat"):
    """``guess_mib``: MiB of disk that 5 vfs containers of ``image`` use."""
    if guess_mib is None:
        yield False, "replace None with a number of MiB"
        return
    measured = drivers.measure("vfs", image, 5, store=st.Store())[-1].disk_bytes / 2**20
    ok = abs(float(guess_mib) - measured) <= 0.15 * measured
    yield ok, f"you said {guess_mib} MiB; the five copies use {measured:.0f} MiB" + (
        "" if ok else " (within 15% counts)")


@exercise("04.choose", "share blocks like btrfs does: clone a file", hints=[
    "btrfs can make a second file that points at the first one's blocks (a reflink): nothing is "
    "copied until one of them is written. cp --reflink does it with one ioctl(2).",
    "The ioctl is FICLONE (0x40049409), called on the new file's fd with the old file's fd as its "
    "argument: fcntl.ioctl(dst_fd, FICLONE, src_fd).",
    "Open src for reading and dst for writing (creating it), then the ioctl; close both.",
])
def check_driver_choice(my_clone):
    """``my_clone(src, dst)``: make ``dst`` a copy-on-write clone of ``src``. The check runs it
    on a btrfs on a loop device under the lab root (the btrfs driver's) with a 16 MiB file and
    measures the blocks used: after the clone, and after one byte is written into it."""
    import hashlib
    if not callable(my_clone):
        yield False, "define my_clone(src, dst) and pass the function itself"
        return
    with drivers.Btrfs(st.Store(), "busybox", lab.scratch("04-ex-clone")) as fs:
        src, dst = fs.mnt / "big.bin", fs.mnt / "clone.bin"
        src.write_bytes(os.urandom(16 << 20))
        used = fs.disk_used()
        my_clone(str(src), str(dst))
        grew = fs.disk_used() - used
        same = dst.is_file() and hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
        yield same, "clone.bin reads the same 16 MiB" if same else "clone.bin does not read the same bytes as big.bin"
        yield same and grew < (2 << 20), (f"the clone took {grew >> 10} KiB of new blocks: it shares big.bin's"
                                         if grew < (2 << 20) else f"the clone took {grew >> 20} MiB of new blocks: "
                                         "that is a copy, not a clone")
        if same:
            with open(dst, "r+b") as f:
                f.seek(8 << 20)
                f.write(b"!")
            grew = fs.disk_used() - used
            yield grew < (2 << 20), (f"after a one-byte write it still uses only {grew >> 10} KiB more: btrfs copied "
                                     "the block written, where overlay copies the whole file" if grew < (2 << 20)
                                     else f"after a one-byte write it uses {grew >> 20} MiB more")
            yield src.read_bytes()[8 << 20] != ord("!"), "and big.bin is unchanged"
