# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Union mounts and OverlayFS
#
# A container's files are a stack: the image's read-only layers, and on top one writable
# layer that belongs to the container (not to the image: every container of the image gets its
# own), shown to the container as a single directory tree. The kernel feature that does this is a **union
# mount**; the one in mainline Linux is **OverlayFS**. In this lesson you build a stack of
# directories, mount it, change things, and look at what the kernel wrote where.
#
# **A little history.** Union file systems are old: the "Inheriting File System" (1993) was an
# early one; unionfs (2003), Union mounts (2004) and aufs (2006) followed but never entered the
# mainline kernel. OverlayFS was merged in 2014 (Linux 3.18). The first big users were live
# CDs: mount the read-only disc, put a writable layer on top, and every change lands in that
# layer. That is **copy-on-write**, and it is why images are fast to start and cheap to store.
#
# > **The seed says / today.** Seed 000 calls UnionFS "built into the kernel". It never was:
# > unionfs and aufs were always out-of-tree patches; OverlayFS is the one union file system in
# > mainline Linux (since 3.18, 2014), and it is what Docker, podman and containerd use today.
#
# **What this lesson needs:** root, OverlayFS. **What it leaves behind:** nothing; the mounts
# it makes are recorded in the lab's ledger and removed at the end (or by `labkit reset`).

# %%
import os, shutil, time
from labkit import lab, overlay, tree, viz, widgets
from labkit.mountinfo import is_mountpoint
from labkit.exercises import hint, l01_overlayfs as ex

home = lab.scratch("01-overlayfs")
print("overlay" in open("/proc/filesystems").read().split())

# %% [markdown]
# ## 1. The building site: lower, upper, work and merged
#
# We follow the seed's example of building a house. The first delivery of materials, in the
# directory `material`, has concrete and rebar. Then we find the concrete is bad, and a second
# delivery, `material2`, brings good concrete and marble for the floors. Building happens in
# `build`, the writable layer. OverlayFS also needs `work`, an empty directory on the same file
# system as `build`, for its own bookkeeping, and a mount point, `merge`.

# %%
site = home / "building"
tree.write_tree(site / "material", {"concrete": "bad concrete\n", "rebar": "rebar\n"})
tree.write_tree(site / "material2", {"concrete": "good concrete\n", "marble": "marble\n"})
for d in ("build", "work", "merge"):
    (site / d).mkdir()
print(tree.show(site))

# %% [markdown]
# ### Which lower layer is on top?
#
# The seed mounts with `lowerdir=material:material2` and calls `material` the bottom layer.
# Let us try exactly that order (in a throwaway child, so nothing stays mounted) and read the
# concrete:

# %%
seeds_order = overlay.Overlay([site / "material", site / "material2"], None, None, site / "merge")
print(seeds_order.option_string().replace(str(site) + "/", ""))
print("merge/concrete:", seeds_order.peek()["concrete"])

# %% [markdown]
# Bad concrete! The kernel's documentation says it plainly: in `lowerdir=`, **the leftmost
# directory is the top layer**. So for the good concrete to win, `material2` comes first:
# `lowerdir=material2:material`. This time we mount for real and keep the mount across cells.

# %%
ov = overlay.Overlay([site / "material2", site / "material"], site / "build", site / "work", site / "merge")
ov.mount()
print("mount -t overlay overlay -o", ov.option_string().replace(str(site) + "/", ""), "merge")
print(tree.show(site / "merge"))

# %% [markdown]
# *Behind it:* `ov.mount()` ends in one of these two functions of `labkit/overlay.py`. While the
# option string fits one page, it is `mount_classic`: one mount(2) call with the string printed
# above. For longer stacks (section 6's 500 layers) `mount_new` uses the new mount API, one
# `fsconfig(2)` per layer.

# %% tags=["nbval-ignore-output"]
viz.behind(overlay.mount_classic, overlay.mount_new)

# %% [markdown]
# *Check cell:* the order of `lowerdir` decides which concrete we see.

# %%
assert seeds_order.peek()["concrete"] == "bad concrete\n"
assert (site / "merge" / "concrete").read_text() == "good concrete\n"
assert is_mountpoint(site / "merge") and ov.which_layer("concrete").name == "material2"

# %% [markdown]
# ## 2. Override: the upper file hides the lower one
#
# `merge` shows concrete, rebar and marble; the concrete is the good one from `material2`.
# The bad concrete has not gone anywhere: both files are stored, so changing a big file in a
# later layer makes an image bigger by the whole file.

# %%
for name in ("material", "material2"):
    print(name, "->", (site / name / "concrete").read_text().strip())
print("bytes stored for concrete:", sum(os.path.getsize(site / n / "concrete") for n in ("material", "material2")))

# %%
assert (site / "material" / "concrete").read_text() == "bad concrete\n"
assert ov.serving_map() == {"concrete": "material2", "marble": "material2", "rebar": "material"}

# %% [markdown]
# ## 3. Add: new files land in the upper layer
#
# Now we put up the frame of the house. The new file appears in `merge` and, on disk, in `build`.

# %%
(site / "merge" / "frame").write_text("main structure\n")
print(tree.show(site / "build"))

# %%
assert (site / "build" / "frame").read_text() == "main structure\n"
assert ov.which_layer("frame").role == "upper"

# %% [markdown]
# ## 4. Delete: a whiteout, a character device 0/0
#
# The client changes their mind: no marble floors. We delete `merge/marble`. The lower layer
# is read-only, so the kernel cannot remove the file there; instead it makes a **whiteout** in
# the upper layer: a character device with major and minor number 0, named like the file.
#
# *Predict, then run:* after `unlink(merge/marble)`, which of the three will still hold a
# `marble`: `material2` (lower), `build` (upper), `merge`? And what kind of file?

# %%
os.unlink(site / "merge" / "marble")
print(tree.show(site / "build"))
print("still in material2:", (site / "material2" / "marble").read_text().strip())

# %% [markdown]
# *Check cell:* `build/marble` is a char device 0/0; the lower file is still there; `merge`
# no longer shows it.

# %%
st = os.lstat(site / "build" / "marble")
import stat as _stat
assert _stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (0, 0)
assert (site / "material2" / "marble").exists() and not (site / "merge" / "marble").exists()
assert [(c.path, c.kind) for c in ov.changes()] == [("frame", "new"), ("marble", "whiteout")]

# %% [markdown]
# So deleting does not make an image smaller, and a password copied into one layer and
# deleted in a later one is **still in the image** (section 7 shows it).
#
# ## 5. The picture, and which layer serves each path
#
# The drawing is made from the live mount: each entry of `merge` points to the layer that
# serves it; the whiteout is black.

# %% tags=["nbval-ignore-output"]
picture = viz.overlay_stack(ov)
picture

# %% [markdown]
# *Check cell:* what the picture draws is what the mount says: `frame` is served by `build`
# (the upper layer), `concrete` by `material2`, and `marble` by nobody (the whiteout hides it).

# %%
served = ov.serving_map()
assert served["frame"] == "build" and served["concrete"] == "material2" and "marble" not in served

# %% [markdown]
# **Explore.** Pick a path (including the deleted `marble`) and see which layer serves it; the
# picture highlights it in red.

# %% tags=["nbval-ignore-output"]
widgets.layer_explorer(ov)

# %% [markdown]
# The explorer calls a plain function, `widgets.explain_path`, which you can call too:

# %%
for path in ("concrete", "rebar", "frame", "marble"):
    print(widgets.explain_path(ov, path).replace(str(site) + "/", ""))

# %%
assert "whiteout marble in build" in widgets.explain_path(ov, "marble")
assert "lower layer 'material'" in widgets.explain_path(ov, "rebar")

# %% [markdown]
# ## 6. Several lower layers: an image-like stack
#
# An image is exactly this with more layers: a base system, then a runtime, then the app.
# `overlay.stack()` writes lower layers from dicts (top first) and describes the mount.
# `serving_map()` walks the merged tree and names the layer behind every path.

# %%
img = overlay.stack(home / "image", {
    "app":     {"app/main.py": "print('v2')\n", "etc/app.conf": "debug=0\n"},
    "runtime": {"usr/bin/python": "python 3.11\n", "app/main.py": "print('v1')\n"},
    "base":    {"etc/os-release": "Debian 12\n", "etc/app.conf": "debug=1\n", "usr/bin/sh": "sh\n"},
}, upper="container")
img.mount()
for path, layer in img.serving_map().items():
    print(f"{path:<16} {layer}")

# %%
assert img.serving_map()["app/main.py"] == "app" and img.serving_map()["etc/os-release"] == "base"
assert (img.merged / "etc" / "app.conf").read_text() == "debug=0\n"
assert len(img.lowerdirs) == 3 and img.which_layer("usr/bin/python").name == "runtime"

# %% [markdown]
# The kernel accepts up to **500** lower layers. The classic `mount(2)` call takes all options
# in one string of at most one page (4095 bytes), which 500 absolute paths overflow. Since
# Linux 6.8 the new mount API (`fsopen`, `fsconfig`, `fsmount`, `move_mount`) adds layers one
# at a time with `lowerdir+`. Older kernels (Debian 12's 6.1 among them) lack it; there labkit
# does what docker's overlay2 driver does: it mounts from a child process whose working
# directory is the layers' parent, so each layer is a short relative path (docker also gives
# every layer a short link name under `l/`). labkit picks by the length of the option string:

# %% tags=["nbval-ignore-output"]
tall = overlay.stack(home / "tall", {f"L{i:03d}": {f"file{i:03d}": f"{i}\n"} for i in range(500)})
print("option string longer than the 4095 bytes mount(2) takes:", len(tall.option_string()) > overlay.MAX_OPTIONS)
print("this kernel takes lowerdir+:", overlay.lowerdir_plus())
with tall:
    print("mounted with:", tall.used_api, "| files in merged:", len(os.listdir(tall.merged)))
    assert tall.used_api == ("new" if overlay.lowerdir_plus() else "mount")
    assert len(os.listdir(tall.merged)) == 500

# %% [markdown]
# ## 7. A deleted secret stays in the lower layer
#
# Suppose building an image needed a database password: it was copied in one layer and
# deleted in the next. From inside the container (the merged view) it is gone, but the layer
# that holds it ships with the image, and anyone with the image can read it. Delete secrets
# **in the same layer** that added them (or never copy them in).

# %%
(img.merged / "etc" / "db-password").write_text("hunter2\n")      # an earlier build step
img.unmount()
secret_layer = img.upperdir                                       # that step's layer...
img2 = overlay.Overlay([secret_layer, *img.lowerdirs], home / "image" / "upper2",
                       home / "image" / "work2", home / "image" / "merged2").mount()
os.unlink(img2.merged / "etc" / "db-password")                    # ...deleted by the next step
print("in the container:", (img2.merged / "etc" / "db-password").exists())
print("in the layer below:", (secret_layer / "etc" / "db-password").read_text().strip())

# %%
assert not (img2.merged / "etc" / "db-password").exists()
assert (secret_layer / "etc" / "db-password").read_text() == "hunter2\n"
assert overlay.whiteouts(img2.upperdir) == ["etc/db-password"]

# %% [markdown]
# ## 8. Opaque directories
#
# Delete a whole lower directory and create a new, empty one with the same name: the new
# directory must not show the old contents. A whiteout cannot do that (the name exists again),
# so the kernel marks the upper directory **opaque** with the extended attribute
# `trusted.overlay.opaque=y`, which hides everything below it in lower layers.

# %%
shutil.rmtree(img2.merged / "etc")
(img2.merged / "etc").mkdir()
(img2.merged / "etc" / "hostname").write_text("lab\n")
print("merged etc/:", sorted(os.listdir(img2.merged / "etc")))
print("xattr:", os.getxattr(img2.upperdir / "etc", "trusted.overlay.opaque"))
for path, why in img2.hidden_paths().items():
    print(f"hidden {path:<18} by {why}")

# %%
assert os.listdir(img2.merged / "etc") == ["hostname"]
assert overlay.opaque_dirs(img2.upperdir) == ["etc"]
assert img2.hidden_paths()["etc/os-release"] == "opaque directory etc in upper2"
img2.unmount()

# %% [markdown]
# ## 9. Copy-up and what it costs
#
# Opening a lower file **for writing** first copies the whole file into the upper layer (a
# *copy-up*); opening it read-only copies nothing. The copy is marked with the xattr
# `trusted.overlay.origin`. For a big file, the first write is slow and doubles the disk used.
# We measure both opens for files of several sizes:

# %% tags=["nbval-ignore-output"]
sizes_mib = [1, 8, 32, 64, 128]
rows = [overlay.measure_copy_up(home / "copy-up", s << 20) for s in sizes_mib]
for r in rows:
    print(f"{r.size >> 20:>4} MiB: read-only open {r.open_rdonly_s * 1e3:7.3f} ms, "
          f"open for write {r.open_write_s * 1e3:8.2f} ms, upper uses {r.upper_bytes >> 20} MiB")
fig = viz.copy_up_plot(rows)

# %% [markdown]
# *Check cell:* the read-only open left the upper dir empty; the write-open copied the whole
# file; and copying 128 MiB costs far more than the read-only open.

# %%
assert all(r.upper_before_write == 0 and r.upper_bytes >= r.size for r in rows)
assert rows[-1].open_write_s > 10 * rows[-1].open_rdonly_s
with overlay.stack(home / "origin", {"lower": {"f": "x"}}) as o:
    with open(o.merged / "f", "a") as f:
        f.write("y")
    assert os.getxattr(o.upperdir / "f", "trusted.overlay.origin")
    assert [c.kind for c in o.changes()] == ["copy-up"]

# %% [markdown]
# ## 10. Renaming a lower directory: EXDEV, then `redirect_dir`
#
# Renaming a file that lives in a lower layer is a copy-up and a whiteout. A directory is a
# different matter: copying a whole tree up would be slow, so the kernel refuses with
# **EXDEV** ("cross-device link"), the error `rename(2)` gives between file systems, unless
# redirects are on: the default is set when the kernel is built (`CONFIG_OVERLAY_FS_REDIRECT_DIR`,
# shown in `/sys/module/overlay/parameters/redirect_dir`: `N` on this lab's kernels), and the
# mount option `redirect_dir=on` overrides it. Tools
# like `mv` catch EXDEV and copy instead. With the mount option `redirect_dir=on` the kernel
# renames in place and leaves a pointer, the xattr `trusted.overlay.redirect`, on the new name.

# %%
spec = {"lower": {"docs/readme": "read me\n"}}
with overlay.stack(home / "rename-off", spec) as o:
    print("redirect_dir=off:", overlay.try_rename(o.merged / "docs", o.merged / "manual"))
with overlay.stack(home / "rename-on", spec, redirect_dir="on") as o:
    print("redirect_dir=on: ", overlay.try_rename(o.merged / "docs", o.merged / "manual"))
    for c in o.changes():
        print("   ", c)
    print("    merged/manual/readme:", (o.merged / "manual" / "readme").read_text().strip())
    redirect_changes = [(c.path, c.kind) for c in o.changes()]

# %%
with overlay.stack(home / "rename-off", spec) as o:
    assert overlay.try_rename(o.merged / "docs", o.merged / "manual") == "EXDEV"
assert redirect_changes == [("docs", "whiteout"), ("manual", "redirect")]

# %% [markdown]
# ## 11. `metacopy`: copy the metadata only
#
# A `chmod` or `chown` of a big lower file is a copy-up too, of all its data. With
# `metacopy=on` (which needs `redirect_dir=on`), the kernel copies only the inode's metadata
# and marks the upper file `trusted.overlay.metacopy`; the data stays below until the first
# real write.

# %% tags=["nbval-ignore-output"]
used = {}
for meta in ("off", "on"):
    opts = {"metacopy": "on", "redirect_dir": "on"} if meta == "on" else {}
    with overlay.stack(home / f"meta-{meta}", {"lower": {"big": 64 << 20}}, **opts) as o:
        t = time.perf_counter()
        os.chmod(o.merged / "big", 0o600)
        ms = (time.perf_counter() - t) * 1e3
        used[meta] = os.lstat(o.upperdir / "big").st_blocks * 512
        kinds = [c.kind for c in o.changes()]
    print(f"metacopy={meta:<3} chmod took {ms:7.2f} ms, upper uses {used[meta] >> 20} MiB, marked {kinds}")

# %%
assert used["off"] >= 64 << 20 and used["on"] < 1 << 20

# %% [markdown]
# ## 12. The seed's session, in a shell
#
# Everything above, typed as the seed typed it, so you can do it again in any root shell
# outside the lab. Two differences from the seed: the lower layers are in the kernel's order
# (`lowerdir=material2:material`, top first: section 1), and `unshare --mount` runs the session
# in a mount namespace of its own, so the mount ends with it even if a line fails (outside the
# lab, `umount merge` does that). `sh -x` prints each command, marked `+`, before its output.

# %%
os.environ["SEED_DIR"] = str(lab.fresh_dir(home / "shell"))

# %% language="bash" tags=["nbval-ignore-output"]
# cd "$SEED_DIR"
# unshare --mount --propagation private sh -ex <<'SESSION' 2>&1
# grep overlay /proc/filesystems
# mkdir material material2 merge work build
# echo "bad concrete" > material/concrete
# echo "rebar" > material/rebar
# echo "good concrete" > material2/concrete
# echo "marble" > material2/marble
# mount -t overlay overlay -o lowerdir=material2:material,upperdir=build,workdir=work merge
# ls merge
# cat merge/concrete
# echo "main structure" > merge/frame
# rm merge/marble
# ls -l build
# SESSION

# %% [markdown]
# *Check cell:* the shell left what the lesson's Python left: the frame and a whiteout for the
# marble in the upper dir, the lower layers untouched, and nothing mounted.

# %%
shell = home / "shell"
assert (shell / "build" / "frame").read_text() == "main structure\n"
assert overlay.is_whiteout(shell / "build" / "marble") and (shell / "material2" / "marble").exists()
assert not is_mountpoint(shell / "merge") and list((shell / "merge").iterdir()) == []

# %% [markdown]
# ## Exercises
#
# ### Exercise 01.order: order the lower layers
# A third delivery arrives: `material3` has steel rebar (better than the rusty one in
# `material`) but wet concrete. Give the three layers, top first as in `lowerdir=`, so that the
# merged tree has **good concrete**, **steel rebar** and **marble**.

# %%
layers = ex.setup_order()
for name, path in layers.items():
    print(name, tree.read_tree(path))

# %%
my_order = []   # your answer: layer names (or paths), top first

# %%
ex.check_layer_order(my_order)

# %% [markdown]
# <details><summary>Solution</summary>
#
# Good concrete is only in `material2`, so it must be the top layer; steel rebar must be above
# rusty rebar:
#
# ```python
# my_order = ["material2", "material3", "material"]
# ```
# </details>
#
# ### Exercise 01.whiteout: hide a file by hand
# Without touching the lower layer, make `rebar` disappear from the merged view by preparing
# the upper directory **before** mounting.

# %%
wo = ex.setup_whiteout()
print("upper dir to prepare:", wo["upper"].relative_to(lab.root()))

# %%
# your code here: prepare wo["upper"]

# %%
ex.check_whiteout(wo)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# import stat
# os.mknod(wo["upper"] / "rebar", stat.S_IFCHR, os.makedev(0, 0))
# ```
# </details>
#
# ### Exercise 01.opaque: one directory, only my files
# The lower layer has `conf/a.ini` and `conf/b.ini`; your upper layer has `conf/app.ini`. Make
# the merged `conf/` show only `app.ini`, without deleting anything from the lower layer.

# %%
op = ex.setup_opaque()

# %%
# your code here: mark something in op["upper"]

# %%
ex.check_opaque(op)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# os.setxattr(op["upper"] / "conf", "trusted.overlay.opaque", b"y")
# ```
# </details>
#
# ### Exercise 01.secret: recover a deleted secret
# This stack's top layer deleted `etc/db-password`. Find the password anyway.

# %%
sec = ex.setup_secret()
print("merged has etc/db-password:", (sec.merged / "etc" / "db-password").exists())

# %%
my_password = ""   # your answer

# %%
ex.check_secret(sec, my_password)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# my_password = (sec.lowerdirs[-1] / "etc" / "db-password").read_text()
# ```
# </details>
#
# ## Going further
# * `volatile` skips every sync to the upper layer (fast, unsafe after a crash); afterwards the
#   kernel refuses to mount that upper/work pair again until `work/work/incompat/volatile` is
#   removed: `overlay.clear_volatile(workdir)`.
# * `userxattr` stores the marks as `user.overlay.*`, so OverlayFS works inside a user namespace.
# * Lesson 03 turns an upper directory into an image layer, where whiteouts are spelled
#   differently (`.wh.NAME`).
#
# ## Clean up

# %%
sec.unmount()
ov.unmount()
lab.remove_tree(home)
assert lab.entries(mine=True) == [] and not home.exists()
print("clean")
