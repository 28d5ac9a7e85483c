# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Storage drivers
#
# A container engine must give every container its own writable root filesystem built from
# the image's layers. How it does that is the job of its **storage driver**. Docker has had
# many: aufs (the first default on Debian and Ubuntu), devicemapper (Red Hat and SUSE),
# overlay and overlay2, btrfs, zfs, and vfs. They all stack layers and copy on write, except
# vfs, which copies everything. They differ a lot in speed and in disk used, and the choice
# depends on the kernel and file systems at hand. Here you measure three of them on this
# machine's kernel: **vfs**, **overlay** and **btrfs** (on a loop device).
#
# > **The seeds say / today.** Seed 001 moves Docker's data with `--graph`; that flag is now
# > `--data-root` (the `data-root` key of daemon.json). Its `overlay` driver (one lowerdir, hard
# > links between layers) was removed in Docker 24; `overlay2` (many lowerdirs) is the default
# > everywhere. SUSE's Docker uses btrfs on a btrfs root and overlay2 otherwise, not
# > devicemapper, which was removed from Docker in version 25.
#
# **What this lesson needs:** root, OverlayFS, btrfs-progs and a loop device.
# **What it leaves behind:** nothing: every mount and loop device is in the ledger and is
# removed when each measurement ends.

# %%
import os, subprocess
from labkit import lab, drivers, tree, viz, widgets
from labkit.image.store import Store
from labkit.image import mutate
from labkit.image.base import base_image
from labkit.exercises import hint, l04_drivers as ex

home = lab.scratch("04-storage-drivers", alone=True)   # one copy at a time: its images and names are shared
store = Store()
base_image(store)
tree.write_tree(home / "data", {"data/blob": 64 << 20})           # a 64 MiB file, so sizes show
fat = mutate.add_layer("busybox", home / "data", "lesson04/fat", "COPY blob /data/blob", store=store)
print(f"image lesson04/fat: {len(fat.layers)} layers, the top one {fat.layers[-1].size >> 20} MiB")

# %% [markdown]
# ## 1. vfs: a full copy per container
#
# vfs is what a driver looks like without copy-on-write: the image's files are copied, in
# full, for each container. It works on any file system, which is why it exists.

# %% tags=["nbval-ignore-output"]
with drivers.VFS(store, "lesson04/fat", home / "vfs") as d:
    for _ in range(2):
        d.create()
    print("containers:", [p.name for p in d.containers])
    print("disk used by 2 containers:", d.disk_used() // 2**20, "MiB")
    vfs_two = d.disk_used()
    same_inode = os.stat(d.containers[0] / "data/blob").st_ino == os.stat(d.containers[1] / "data/blob").st_ino

# %%
assert vfs_two >= 2 * (64 << 20) and not same_inode

# %% [markdown]
# ## 2. overlay: shared layers, one upper dir each
#
# overlay2 keeps each layer unpacked once (labkit's store does the same, keyed by ChainID)
# and gives each container an overlay mount: the layers as `lowerdir`, a fresh `upperdir`.
# Starting a container writes almost nothing.

# %% tags=["nbval-ignore-output"]
with drivers.Overlay(store, "lesson04/fat", home / "ovl") as d:
    for _ in range(2):
        d.create()
    for ov in d.mounts:
        print(ov.merged.parent.name, "lowerdirs:", [p.name[:12] for p in ov.lowerdirs], "upper:", os.listdir(ov.upperdir))
    ovl_two = d.disk_used()
    print("disk used by 2 containers:", ovl_two // 2**20, "MiB")

# %%
assert (64 << 20) <= ovl_two < (64 << 20) * 1.2

# %% [markdown]
# ## 3. btrfs: snapshots of a subvolume
#
# btrfs is a copy-on-write file system by itself. The driver unpacks the image into a
# **subvolume**, and each container is a **snapshot** of it: a new tree that shares every data
# block with the original until one of them writes. There is no btrfs disk here, so labkit
# makes one: a sparse file under the lab root, attached to a loop device, formatted and mounted.

# %% tags=["nbval-ignore-output"]
with drivers.Btrfs(store, "lesson04/fat", home / "btrfs") as d:
    for _ in range(2):
        d.create()
    print("loop device backed by", os.path.relpath(d.file, lab.root()))
    print(subprocess.run(["btrfs", "subvolume", "list", str(d.mnt)], capture_output=True, text=True).stdout)
    btrfs_two = d.disk_used()
    print("disk used by 2 containers:", btrfs_two // 2**20, "MiB")

# %%
assert (64 << 20) <= btrfs_two < (64 << 20) * 1.2
assert lab.entries(mine=True) == []          # the mount and the loop device are gone

# %% [markdown]
# *Behind it:* the driver's set-up and its `create` (`labkit/drivers.py`): a sparse file, a loop
# device, mkfs.btrfs, a mount, one subvolume for the image, one snapshot per container.

# %% tags=["nbval-ignore-output"]
viz.behind(drivers.Btrfs.__init__, drivers.Btrfs.create)

# %% [markdown]
# ## 4. One to eight containers, measured
#
# Each driver creates eight containers of the same image; after each one we note the total
# time and the disk used.

# %% tags=["nbval-ignore-output"]
costs = {name: drivers.measure(name, "lesson04/fat", 8, store=store) for name in drivers.DRIVERS}
print(f"{'driver':<8} {'N':>2} {'time (ms)':>10} {'disk (MiB)':>11}")
for name, rows in costs.items():
    for c in (rows[0], rows[-1]):
        print(f"{name:<8} {c.containers:>2} {c.seconds * 1e3:>10.1f} {c.disk_bytes / 2**20:>11.1f}")
fig = viz.drivers_plot(costs)

# %% [markdown]
# *Check cell:* vfs grows by a whole image per container; overlay and btrfs stay near one image.

# %%
image_bytes = 64 << 20
assert costs["vfs"][-1].disk_bytes >= 8 * image_bytes
for name in ("overlay", "btrfs"):
    assert costs[name][-1].disk_bytes < 1.5 * image_bytes, name
assert costs["vfs"][-1].seconds > costs["overlay"][-1].seconds

# %% [markdown]
# **Try it.** Pick a driver and a number of containers and press Measure: the driver creates
# them for real, and the plot shows the time and the disk, one point per container.

# %% tags=["nbval-ignore-output"]
widgets.driver_costs(store, "lesson04/fat")

# %% [markdown]
# ## 5. The first write: file-level vs block-level copy-on-write
#
# Now one container changes **one byte** of the 64 MiB file. OverlayFS works on whole files:
# the first write copies the file up, all 64 MiB of it (lesson 01). btrfs works on blocks: the
# snapshot shares extents, and only the block written is copied. vfs paid in advance.

# %% tags=["nbval-ignore-output"]
grown = {name: drivers.one_byte_write(name, "lesson04/fat", "data/blob", store=store) for name in drivers.DRIVERS}
for name, b in grown.items():
    print(f"{name:<8} disk grew by {b / 2**20:8.3f} MiB")

# %%
assert grown["overlay"] >= 64 << 20
assert grown["btrfs"] < 1 << 20
assert grown["vfs"] == 0

# %% [markdown]
# ## 6. aufs and devicemapper, as history
#
# * **aufs** was a union file system like OverlayFS, kept out of the mainline kernel; Debian and
#   Ubuntu carried it as a patch, and Docker used it first. Its whiteouts live on in every image
#   layer: `.wh.NAME` (lesson 03). Is it in this kernel?

# %% tags=["nbval-ignore-output"]
filesystems = open("/proc/filesystems").read().split()
print("aufs:", "aufs" in filesystems, "| overlay:", "overlay" in filesystems, "| btrfs:", "btrfs" in filesystems)

# %% [markdown]
# * **devicemapper** stacked layers as block devices: a thin pool, with each layer and each
#   container a thin snapshot of its parent device. It copies on write like btrfs, at the block
#   level, below any file system. A loop device alone copies nothing on write (it only turns a
#   file into a block device); devicemapper's default *loop-lvm* mode put its thin pool on two
#   such loop files, which is why it was slow and meant only for testing (direct-lvm on a real
#   disk was the production mode). It was removed from Docker in version 25.
#
# ## 7. aufs, overlay and overlay2 on disk
#
# Seed 002 lists Docker's `aufs/diff/<id>` directories; overlay2 looks different. Here one
# small image (busybox, a layer of 150 documentation directories, a layer that edits
# `/etc/motd` and deletes `/bin/vi`) is laid out as each driver laid it out, from labkit's own
# store (`layouts.build`), so you can list the directories and count their inodes:
#
# * **aufs**: `diff/<id>/` each layer's files as in its tar, the whiteout as a `.wh.vi` file;
#   `layers/<id>` the parent ids; `mnt/<id>/` the mount point.
# * **overlay** (removed in Docker 24): the kernel then took one lowerdir, so each layer's
#   `<id>/root/` is a whole tree: the parent's hard-linked (files shared, directories new).
# * **overlay2**: `<id>/diff/` only the layer's changes (the whiteout a 0/0 device), `link` a
#   short name, `l/<short>` a symlink to the diff, `lower` the lowerdir string.
#
# *Predict, then run:* which layout uses the most inodes, and roughly how many more?

# %% tags=["nbval-ignore-output"]
from labkit import layouts, overlay
docs = tree.write_tree(home / "docs", {f"usr/share/doc/pkg{i}/README": f"package {i}\n" for i in range(150)})
edit = tree.write_tree(home / "edit", {"etc/motd": "edited\n", "bin/": None})
overlay.make_whiteout(edit / "bin" / "vi")
mutate.add_layer("busybox", docs, "lesson04/docs", "COPY docs /usr/share/doc", store=store)
layered = mutate.add_layer("lesson04/docs", edit, "lesson04/layered", "RUN edit motd; rm /bin/vi", store=store)
built = {d: layouts.build(d, "lesson04/layered", home / "layouts", store=store) for d in layouts.DRIVERS}
for lay in built.values():
    print(f"{lay.driver:<9} {lay.layers} layers  {lay.inodes:>5} inodes, {lay.directories:>4} of them directories")
top = layered.chain_ids[-1][7:19]
print("aufs diff of the top layer:", sorted(str(p.relative_to(built['aufs'].root / 'diff' / top))
                                            for p in (built["aufs"].root / "diff" / top).rglob("*")))
print("overlay2 lower of the top layer:", (built["overlay2"].root / top / "lower").read_text())

# %% [markdown]
# The old overlay driver pays one new directory inode per directory per layer (directories
# cannot be hard-linked), which is why overlay2 replaced it once the kernel took several
# lowerdirs (Linux 4.0); and the short `l/` names keep `lowerdir=` short: mount(2) takes its
# options in one page, 4096 bytes, and an image may have up to 128 layers.

# %% tags=["nbval-ignore-output"]
docs_layer, readme = layered.chain_ids[1][7:19], "usr/share/doc/pkg7/README"
assert built["overlay"].directories >= 2 * 150 > built["aufs"].directories    # the 150 doc dirs: in two roots vs once
assert os.stat(built["overlay"].root / docs_layer / "root" / readme).st_ino == \
       os.stat(built["overlay"].root / top / "root" / readme).st_ino         # a file: one inode, hard-linked
assert (built["aufs"].root / "diff" / top / "bin" / ".wh.vi").is_file()
assert overlay.is_whiteout(built["overlay2"].root / top / "diff" / "bin" / "vi")
assert not (built["overlay"].root / top / "root" / "bin" / "vi").exists()          # a whole tree: vi gone
assert (built["overlay2"].root / top / "lower").read_text().count("l/") == len(layered.layers) - 1
short = len("l/" + (built["overlay2"].root / top / "link").read_text() + ":")
print(f"a lowerdir entry: {short} bytes as l/<short>, {len(str(built['overlay2'].root / top / 'diff')) + 1} as a full path")
assert 128 * short < 4096

# %% [markdown]
# ## 8. Which driver? A checklist
#
# Seed 001 says to choose by a few questions. Here they are, answered for this machine (the
# lab root stands for Docker's data root):

# %% tags=["nbval-ignore-output"]
for c in drivers.checklist():
    print(f"- {c.question}\n    here: {c.here}\n    points to: {c.points_to}")

# %% [markdown]
# The usual answer today is overlay2; btrfs or zfs where the data root already is one; vfs only
# when nothing else works.
#
# One case decides it by itself: **Docker in Docker** (seed 004). A container's root is an
# overlay; an engine inside it whose data root is on that root cannot mount overlays of its
# own, because the kernel refuses an overlay file system as an upperdir. Seed 004's
# `wrapdocker` script, and the `docker:dind` image today, put the inner `/var/lib/docker` on a
# **volume**: a bind mount of a host directory, an ordinary file system. Both, on the kernel
# (in a throwaway mount namespace):

# %% tags=["nbval-ignore-output"]
nested = drivers.overlay_in_a_container(home / "dind")
for where, what in nested.items():
    print(f"inner data root {where}: {what}")

# %%
answers = {c.question.split("?")[0]: c for c in drivers.checklist()}
assert len(answers) == 6 and all(c.here and c.points_to for c in answers.values())
assert answers["Which copy-on-write file systems does the kernel have"].points_to == "overlay2"   # this lab needs OverlayFS
assert "EINVAL" in nested["on the container's overlay root"]          # the kernel log adds: not supported as upperdir
assert nested["on a volume"] == "mounted"

# %% [markdown]
# ## Exercises
#
# ### Exercise 04.vfs: predict the disk
# How many MiB will **five** vfs containers of `lesson04/fat` use?

# %%
my_mib = None   # your answer

# %%
ex.check_vfs_prediction(my_mib)

# %% [markdown]
# <details><summary>Solution</summary>
#
# About 5 x 66 MiB (the 64 MiB file plus busybox):
#
# ```python
# my_mib = 330
# ```
# </details>
#
# ### Exercise 04.choose: clone a file as btrfs does
# Of the three drivers, only btrfs shares blocks between copies and copies only the block a
# container writes. It does so per subvolume; the same mechanism works per file: a **reflink**
# (`cp --reflink`). Write `my_clone(src, dst)` that makes `dst` a clone of `src` with the
# `FICLONE` ioctl(2) (`fcntl.ioctl`). The check runs it on a btrfs on a loop device under the
# lab root and measures the blocks it uses. *Predict first:* how many new blocks will a 16 MiB
# clone take, and how many after one byte is written into it?

# %%
my_clone = None   # your answer: def my_clone(src, dst): ...

# %%
ex.check_driver_choice(my_clone)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# import fcntl
# FICLONE = 0x40049409        # _IOW(0x94, 9, int), linux/fs.h
# def my_clone(src, dst):
#     with open(src, "rb") as s, open(dst, "wb") as d:
#         fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
# ```
# </details>
#
# ## Clean up

# %%
for name in ("lesson04/layered", "lesson04/docs", "lesson04/fat"):
    if name in store.refs():
        store.remove(name)
lab.remove_tree(home)
assert lab.entries(mine=True) == [] and not home.exists() and not [n for n in store.refs() if n.startswith("lesson04/")]
print("clean")
