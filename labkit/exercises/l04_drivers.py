"""Lesson 04 exercises: predict vfs disk use; pick the driver for a job."""
from __future__ import annotations

from .. import drivers
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


@exercise("04.choose", "choose the driver", hints=[
    "Look at the disk plot: which lines stay flat as containers are added?",
    "Then look at what one small write into a big file costs each driver (section 5).",
])
def check_driver_choice(answer):
    """Which driver keeps disk flat as containers are added AND copies only the changed
    blocks when a container writes into a big image file? ("vfs", "overlay" or "btrfs")"""
    if answer not in drivers.DRIVERS:
        yield False, f"answer one of {sorted(drivers.DRIVERS)}"
        return
    yield answer != "vfs", "vfs copies the whole image per container" if answer == "vfs" else \
        f"{answer} shares the image between containers"
    yield answer == "btrfs", "btrfs snapshots copy only the written blocks" if answer == "btrfs" else \
        f"{answer} copies the whole file up on the first write"
