# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · The container's root filesystem
#
# A container's `/` is a union of three parts:
#
# 1. the image's **read-only layers**, shared by every container of that image;
# 2. the **init layer**, also read-only, with the files the runtime writes for this container
#    alone: `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`. They belong to the container,
#    not the image, so `commit` must not save them: that is why they are a layer of their own.
#    Each of the three is also **bind-mounted** over itself from the container's directory, so
#    a process that edits `/etc/hosts` writes to the container's own file, never into the
#    read-write layer. Docker does the same, except that its init layer holds only empty
#    placeholders (the mount points) and the real files live beside it in the container's
#    directory; labkit keeps the real files in the init layer, so the picture shows them;
# 3. the **read-write layer**: every change the container makes (a copy-up, a new file, a
#    whiteout) lands here, and this, only this, is what `commit` saves.
#
# **Volumes** are host directories bind-mounted into the container. The mount point appears in
# the read-write layer as an empty directory, but the contents stay on the host: they are not
# committed, and they outlive the container.
#
# **What this lesson needs:** root, OverlayFS, the cgroup controllers (lesson 05).
# **What it leaves behind:** nothing: its containers, images and volumes are removed at the end.

# %%
import os, tarfile
from labkit import lab, overlay, container, tree, viz, widgets
from labkit.image import waste
from labkit.image.store import Store
from labkit.image.base import base_image
from labkit.exercises import hint, l06_rootfs as ex

home = lab.scratch("06-container-rootfs", alone=True)   # one copy at a time: its images and names are shared
store = Store()
base_image(store)
script = ("echo 'hello from the container' > /etc/motd; rm /bin/vi; "
          "echo 'kept on the host' > /data/notes.txt; echo tmp > /scratch/t; cat /etc/hostname")
c, r = container.run("busybox", ["/bin/sh", "-c", script], hostname="web1", name="lesson06-web",
                     volumes=[f"{home}/data:/data", "/scratch"])
print("exit", r.exit_code, "| /etc/hostname inside:", r.stdout.strip())

# %%
assert r.exit_code == 0 and r.stdout.strip() == "web1"

# %% [markdown]
# ## 1. The three parts on disk
#
# Everything about the container is in one directory under the lab root. The overlay was
# mounted inside the container's own mount namespace, so it is gone with the container; its
# parts stay on disk:

# %% tags=["nbval-ignore-output"]
print("lowerdirs, top first:")
for d in c.lowerdirs:
    print("  ", "init layer" if d == c.init else "image layer", os.path.relpath(d, lab.root()))
print("upperdir:", os.path.relpath(c.upper, lab.root()))
print("init layer files:", sorted(str(p.relative_to(c.init)) for p in c.init.rglob("*") if p.is_file()))

# %% [markdown]
# Seed 002 showed the layers of an image with `ls` on each of Docker's layer directories
# (`/var/lib/docker/aufs/diff/<id>`). The same `ls`, in a shell, on this container's: the
# image's layer is a whole busybox root; the init layer holds the few files the runtime wrote;
# the upper dir holds what the command changed (`rm /bin/vi` left a whiteout there).

# %%
os.environ["LAYERS"] = " ".join(os.path.relpath(d, lab.root()) for d in c.lowerdirs)
os.environ["UPPER"] = os.path.relpath(c.upper, lab.root())
os.environ["LAB_ROOT"] = str(lab.root())

# %% language="bash" tags=["nbval-ignore-output"]
# cd "$LAB_ROOT"
# for d in $LAYERS; do echo "\$ ls $d"; ls "$d" | head -12 | tr '\n' ' '; echo; done
# echo "\$ ls -lR $UPPER"; ls -lR "$UPPER" | grep -v '^total'

# %% tags=["nbval-ignore-output"]
viz.rootfs_parts(c)

# %% [markdown]
# *Behind it:* PID 1 of the container put these parts together before it ran the command:
# the overlay, a bind mount per init file and per volume, /proc, a small /dev, pivot_root,
# then exec (`Container._pid1` in `labkit/container.py`):

# %% tags=["nbval-ignore-output"]
viz.behind(container.Container._pid1)

# %%
assert c.lowerdirs[0] == c.init and len(c.lowerdirs) == 1 + len(store.image("busybox").layers)
from labkit.mountinfo import is_mountpoint
assert not is_mountpoint(c.rootfs) and lab.entries(mine=True) == []      # the overlay died with the container
assert (c.init / "etc" / "hostname").read_text() == "web1\n"
assert "127.0.1.1\tweb1" in (c.init / "etc" / "hosts").read_text()
assert [v.split(":")[1] for v in c.cfg.volumes] == ["/data", "/scratch"]   # the two volumes drawn

# %% [markdown]
# ## 2. What the command changed: the read-write layer
#
# Read it with lesson 01's eyes: a new file, a whiteout, copied-up directories, and the two
# volume mount points, empty:

# %%
for ch in c.diff():
    print(ch)

# %%
kinds = {ch.path: ch.kind for ch in c.diff()}
assert kinds["etc/motd"] == "new" and kinds["bin/vi"] == "whiteout"
assert kinds["data"] == "new" and kinds["scratch"] == "new"
assert os.listdir(c.upper / "data") == [] and os.listdir(c.upper / "scratch") == []
assert not (c.upper / "etc" / "hostname").exists()          # the init layer's file was not touched

# %% [markdown]
# **Explore.** A read-only union of exactly these parts (read-write layer on top, then the init
# layer, then the image) shows which part serves each path:

# %% tags=["nbval-ignore-output"]
view = overlay.Overlay([c.upper, *c.lowerdirs], None, None, home / "view").mount()
widgets.layer_explorer(view, start="etc/hostname")

# %%
print(widgets.explain_path(view, "etc/hostname").split(" (")[0])
print(widgets.explain_path(view, "etc/motd").split(" (")[0])
print(widgets.explain_path(view, "bin/sh").split(" (")[0].replace(view.layers[2].name, "<busybox layer>"))

# %%
assert view.which_layer("etc/hostname").path == c.init and view.which_layer("etc/motd").path == c.upper
assert view.which_layer("bin/vi") is None
view.unmount()

# %% [markdown]
# ## 3. Volumes are not the container's
#
# The bind volume's file is in the host directory; the anonymous volume got a directory of its
# own under `volumes/` in the lab root (Docker uses `/var/lib/docker/volumes/<id>/_data`).

# %%
bind_host, anon_host = (v.split(":")[0] for v in c.cfg.volumes)
print("bind volume:", os.path.relpath(bind_host, lab.root()), os.listdir(bind_host))
print("anonymous volume:", os.path.relpath(anon_host, lab.root()).split("/")[0] + "/…/_data", os.listdir(anon_host))

# %%
assert open(f"{bind_host}/notes.txt").read() == "kept on the host\n" and os.listdir(anon_host) == ["t"]

# %% [markdown]
# ## 4. commit saves the read-write layer, and only that
#
# The new image is the busybox layer plus one layer made from the upper dir. Its tar has the
# motd, the whiteout for `vi`, and the two empty mount points; no hostname, no volume contents.

# %%
img = c.commit("lesson06/web")
for h in img.history:
    print(h["created_by"][:70])
entries = [m.name for m in waste.layer_entries(store, "lesson06/web")[-1]]
print(entries)

# %%
assert len(img.layers) == 2 and img.layers[0] == store.image("busybox").layers[0]
assert {"etc/motd", "bin/.wh.vi", "data", "scratch"} <= set(entries)
assert not any(e.startswith(("etc/hostname", "etc/hosts", "etc/resolv", "data/", "scratch/")) for e in entries)

# %% [markdown]
# A new container of the committed image sees the change, gets its **own** hostname from a
# new init layer, and an empty `/data` unless a volume is mounted there again:

# %%
c2, r2 = container.run("lesson06/web", ["/bin/sh", "-c", "cat /etc/motd; cat /etc/hostname; ls /data | wc -l; ls /bin/vi 2>&1 | head -1"],
                       hostname="web2")
print(r2.stdout)

# %%
motd, host2, ndata = r2.stdout.splitlines()[:3]
assert (motd, host2, ndata.strip()) == ("hello from the container", "web2", "0") and "No such file" in r2.stdout

# %% [markdown]
# ## 5. The volume outlives the container
#
# Removing the container deletes its directory, all three of its parts included. The volumes
# stay, ready for the next container:

# %%
c.remove(); c2.remove()
print("container dir exists:", c.dir.exists(), "| bind volume:", os.listdir(bind_host), "| anonymous:", os.listdir(anon_host))

# %%
assert not c.dir.exists() and os.listdir(bind_host) == ["notes.txt"] and os.listdir(anon_host) == ["t"]

# %% [markdown]
# ## Exercises
#
# ### Exercise 06.commit
# Run a busybox container that writes `hi` into `/srv/hello.txt`, and commit it as
# `lesson06/hello`.

# %%
# your code here

# %%
ex.check_commit()

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# mine, _ = container.run("busybox", ["/bin/sh", "-c", "mkdir -p /srv; echo hi > /srv/hello.txt"])
# mine.commit("lesson06/hello")
# ```
# </details>
#
# ### Exercise 06.volume
# Run a busybox container that writes `/data/result.txt` into a **bind volume** from a host
# directory under `home`, **commit** it as `lesson06/worker`, then remove the container. Pass
# the host directory to the check; it starts two new containers of your image, one with the
# volume and one without. *Predict first:* what will each of them find in `/data`?

# %%
my_volume = None   # the host side of your volume

# %%
ex.check_volume(my_volume)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# my_volume = home / "keep"
# mine, _ = container.run("busybox", ["/bin/sh", "-c", "echo 42 > /data/result.txt"], volumes=[f"{my_volume}:/data"])
# mine.commit("lesson06/worker")
# mine.remove()
# ```
# </details>
#
# ### Exercise 06.bind: a volume, by hand
# `volumes=["HOST:/data"]` was one system call in the container's PID 1 (`Container._pid1`,
# section 1). Write `my_bind(host_dir, rootfs, path)` that makes `host_dir` appear at `path`
# inside `rootfs`, with `kernel.mount`. The check calls it in a child with a mount namespace
# of its own, then writes a file through the rootfs and looks for it in the host directory.

# %%
my_bind = None   # your answer: def my_bind(host_dir, rootfs, path): ...

# %%
ex.check_bind(my_bind)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# from labkit import kernel
# def my_bind(host_dir, rootfs, path):
#     target = os.path.join(rootfs, path.lstrip("/"))
#     os.makedirs(target, exist_ok=True)
#     kernel.mount(str(host_dir), target, None, kernel.MS_BIND)
# ```
#
# A bind mount has no file system type and no options: the same directory, mounted once
# more. labkit's runtime mounts through an fd it opened inside the rootfs
# (`/proc/self/fd/N`), so a symlink planted in the image cannot redirect the mount outside it.
# </details>
#
# ## Clean up

# %%
for cont in container.containers(mine=True):
    cont.remove()
for name in [n for n in store.refs() if n.startswith("lesson06/")]:
    store.remove(name)
lab.remove_tree(anon_host.rsplit("/", 1)[0])
lab.remove_tree(home)
assert lab.entries(mine=True) == [] and not home.exists() and container.containers(mine=True) == []
print("clean")
