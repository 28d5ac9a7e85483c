# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Image layers are changesets
#
# In lesson 01 every change you made through `merged` landed in one directory, the upper dir:
# new files, copied-up files, whiteouts, opaque marks. Pack that directory into a tar and you
# have an **image layer**. An image is a list of such layers plus two small JSON documents
# (a config and a manifest), every piece named by the SHA-256 of its bytes. In this lesson you
# make layers from real overlay changes, apply them elsewhere, and look at how images share
# and waste bytes.
#
# **What this lesson needs:** root, OverlayFS, `busybox-static` (the offline base image),
# `skopeo` and `umoci` (the real tools that read what labkit writes).
# **What it leaves behind:** the `busybox` base image in the lab's store (later lessons use
# it); the images it makes are removed at the end.

# %%
import io, json, os, shutil, subprocess, tarfile, hashlib
from labkit import lab, overlay, snapshot, tree, viz, widgets
from labkit.image import digest, layer, waste, mutate
from labkit.image.store import Store
from labkit.image.base import base_image
from labkit.exercises import hint, l03_layers as ex

home = lab.scratch("03-image-layers", alone=True)   # one copy at a time: its images and names are shared
store = Store()
base = base_image(store)
print(f"base image {base.name!r}: {len(base.layers)} layer, {len(base.history)} history entry")

# %% [markdown]
# ## 1. A layer is the tar of an upper dir
#
# The base image is a root filesystem made from the host's static busybox. We mount it as the
# lower layer of an overlay (the store keeps each layer unpacked, ready to be a `lowerdir`) and
# change things through `merged`, as a `RUN` step of a Dockerfile would:

# %%
ov = overlay.Overlay(snapshot.unpack("busybox", store), home / "upper", home / "work", home / "merged").mount()
m = ov.merged
(m / "app").mkdir()
(m / "app" / "hello.txt").write_text("hello from a new layer\n")      # add
with open(m / "etc" / "passwd", "a") as f:                              # change (copy-up)
    f.write("app:x:1000:1000::/app:/bin/sh\n")
os.unlink(m / "bin" / "vi")                                             # delete: whiteout
shutil.rmtree(m / "home"); (m / "home").mkdir()                         # replace a dir: opaque
for c in ov.changes():
    print(c)

# %% [markdown]
# `layer.create` walks the upper dir in sorted order and writes a tar. The overlay's char
# device becomes an empty file `bin/.wh.vi`; the opaque xattr becomes an empty file
# `home/.wh..wh..opq`; the `trusted.overlay.*` xattrs are left out.

# %%
info = layer.create(ov.upperdir, home / "layer.tar")
for mem in tarfile.open(home / "layer.tar"):
    kind = {tarfile.DIRTYPE: "dir ", tarfile.REGTYPE: "file", tarfile.SYMTYPE: "link"}.get(mem.type, "?")
    print(f"{kind} {mem.name:<22} {mem.size:>5} bytes")
print("DiffID", info.diff_id[:23] + "…")

# %%
names = [mem.name for mem in tarfile.open(home / "layer.tar")]
assert "bin/.wh.vi" in names and "home/.wh..wh..opq" in names and "app/hello.txt" in names
assert info.whiteouts == 1 and info.opaque_dirs == 1
assert not any("overlay" in k for mem in tarfile.open(home / "layer.tar") for k in mem.pax_headers)
assert info.diff_id == digest.of_file(home / "layer.tar")[0]

# %% [markdown]
# ## 2. Three spellings of "deleted"
#
# The same two facts, *this path is gone* and *this directory hides what was below*, are
# written three ways:
#
# | | OverlayFS upper dir | OCI layer tar | AUFS branch |
# |---|---|---|---|
# | deleted `bin/vi` | char device 0/0 `bin/vi` | empty file `bin/.wh.vi` | empty file `bin/.wh.vi` |
# | opaque `home/` | xattr `trusted.overlay.opaque=y` | empty file `home/.wh..wh..opq` | empty file `home/.wh..wh..opq` |
#
# AUFS (never merged into Linux) stored its whiteouts as these `.wh.` files right in its branch
# directories; Docker's first storage driver used AUFS, and the OCI layer format kept its
# spelling. The live evidence from the upper dir and the tar:

# %%
st_vi = os.lstat(ov.upperdir / "bin" / "vi")
print("overlay: bin/vi is a char device", (os.major(st_vi.st_rdev), os.minor(st_vi.st_rdev)),
      "| home has", os.getxattr(ov.upperdir / "home", "trusted.overlay.opaque"))
print("OCI/AUFS:", [n for n in names if ".wh." in n])

# %%
assert overlay.is_whiteout(ov.upperdir / "bin" / "vi") and os.minor(st_vi.st_rdev) == 0
assert [n for n in names if ".wh." in n] == ["bin/.wh.vi", "home/.wh..wh..opq"]
expected_tree = tree.read_tree(ov.merged)
ov.unmount()

# %% [markdown]
# ## 3. Apply the layer somewhere else
#
# A layer is a *changeset*: applied on top of the tree it was made from, it gives the tree we
# saw in `merged`. Flattening follows the image spec: a `.wh.` entry deletes, an opaque marker
# empties the directory of what lower layers put there. The same tar applied in **overlay
# form** turns the markers back into a char device and an xattr, so the directory can be a
# `lowerdir` directly.

# %%
flat = store.flatten("busybox", home / "flat")
report = layer.apply(home / "layer.tar", flat)
print("removed:", report.removed)
print("same tree as merged was:", tree.read_tree(flat) == expected_tree)

layer.apply(home / "layer.tar", home / "as-lowerdir", overlay_form=True)
again = overlay.Overlay([home / "as-lowerdir", *snapshot.unpack("busybox", store)], None, None, home / "merged2").peek()
print("overlay form gives it too:", again == expected_tree)

# %%
assert tree.read_tree(flat) == expected_tree and again == expected_tree
assert report.removed == ["bin/vi"]       # busybox's /home was empty: the opaque mark hid nothing

# %% [markdown]
# **Try it.** Change a small overlay (write a file, delete one, or delete a directory and make
# it again) and see the change in its three forms: the upper dir (a whiteout is a 0/0 device,
# an opaque directory an xattr), the layer tar made from it (`.wh.` names), and the tar applied
# to the lower layer. Whiteouts and opaque markers are red.

# %% tags=["nbval-ignore-output"]
widgets.layer_maker()

# %% [markdown]
# ## 4. Same tree, same digest
#
# `layer.create` sorts entries and sets every mtime to 0 (unless asked to keep them), so the
# same tree always gives the same bytes, hence the same DiffID: two builds that make the same
# files make one layer, stored once and sent once. Keep real mtimes and every rebuild is "new".
# (Build *caches* do not depend on this: a builder keys each step on its instruction, its parent
# and the checksums of the files it copies, and reuses the layer it made before; lesson 07.)
#
# A DiffID is the digest of the **uncompressed** tar. In a registry and in most stores a layer
# travels gzipped, and the manifest names it by the digest of the **compressed** bytes: two
# digests for one layer. The config's DiffIDs never change; the manifest's digest changes with
# the compressor and its level. labkit keeps layers uncompressed, so here the two are equal.
#
# *Predict, then run:* the same upper dir is packed again, once more after a file's mtime is
# changed, and once keeping the real mtimes. Which of the three tars has the first one's digest?

# %%
again1 = layer.create(home / "upper", home / "again.tar")
os.utime(home / "upper" / "app" / "hello.txt", (1_000_000, 1_000_000))
again2 = layer.create(home / "upper", home / "again2.tar")
real = layer.create(home / "upper", home / "real.tar", mtime=None)
print("fixed mtimes:", info.diff_id == again1.diff_id == again2.diff_id, "| real mtimes:", real.diff_id == info.diff_id)

# %%
assert info.diff_id == again1.diff_id == again2.diff_id and real.diff_id != info.diff_id

# %% [markdown]
# ## 5. Config, manifest, DiffID and ChainID
#
# Committing the layer makes an image: the layer becomes a blob; the **config** lists the
# DiffIDs (digests of the uncompressed layer tars) and one history entry per step; the
# **manifest** points at the config and the layer blobs. Both are blobs too, and the image's
# name points at the manifest. The **ChainID** names a whole stack: the first layer's is its
# DiffID, each next one is `sha256(parent ChainID + " " + DiffID)`.

# %% tags=["nbval-ignore-output"]
desc, diff = store.add_layer_tar(home / "layer.tar")
app = mutate.commit("lesson03/app", [(desc, diff)], [{"created_by": "RUN add app, change passwd, rm vi, new home"}],
                   base=store.image("busybox"), store=store)
text = json.dumps(app.manifest, indent=1)
print(text if len(text) <= 600 else text[:600] + f"\n… ({len(text) - 600} more characters)")
print("config.rootfs:", json.dumps(app.config["rootfs"], indent=1))
print("ChainIDs:", [c[:19] + "…" for c in app.chain_ids])

# %%
by_hand = "sha256:" + hashlib.sha256(f"{app.diff_ids[0]} {app.diff_ids[1]}".encode()).hexdigest()
assert app.chain_ids == [app.diff_ids[0], by_hand]
assert [d["digest"] for d in app.manifest["layers"]] == app.diff_ids     # uncompressed layers
assert app.config["history"][-1]["created_by"].startswith("RUN")

# %% [markdown]
# On disk the store is an OCI image layout: `oci-layout`, `index.json` (names), and
# `blobs/sha256/` (everything else). The real tools read it as it is:

# %% tags=["nbval-ignore-output"]
print(subprocess.run(["skopeo", "inspect", f"oci:{store.path}:lesson03/app"], capture_output=True, text=True).stdout)

# %%
inspected = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{store.path}:lesson03/app"],
                                      capture_output=True, text=True, check=True).stdout)
assert inspected["Layers"] == app.diff_ids and inspected["Digest"] == app.manifest_desc.digest
bundle = home / "bundle"
subprocess.run(["umoci", "unpack", "--image", f"{store.save(home / 'layout', 'v1', 'lesson03/app')}:v1", str(bundle)],
               check=True, capture_output=True)
assert tree.read_tree(bundle / "rootfs") == expected_tree          # umoci agrees with labkit

# %% [markdown]
# ## 6. Git-style sharing
#
# Two more images built on the same base, and a third on top of the first: the base layer is
# stored **once**. The picture is drawn from the store's manifests; blue layers are shared.

# %% tags=["nbval-ignore-output"]
tree.write_tree(home / "web", {"srv/index.html": "<h1>web</h1>\n"})
tree.write_tree(home / "api", {"srv/api.py": "print('api')\n"})
tree.write_tree(home / "web2", {"srv/style.css": "h1 {}\n"})
web = mutate.add_layer("busybox", home / "web", "lesson03/web", "COPY index.html /srv/", store=store)
api = mutate.add_layer("busybox", home / "api", "lesson03/api", "COPY api.py /srv/", store=store)
web2 = mutate.add_layer("lesson03/web", home / "web2", "lesson03/web-styled", "COPY style.css /srv/", store=store)
family = [app, web, api, web2]
logical = sum(img.size for img in family)
stored = sum({d.digest: d.size for img in family for d in img.layers}.values())
print(f"four images: {logical / 2**20:.1f} MiB if each were stored whole, {stored / 2**20:.1f} MiB stored, "
      f"{(logical - stored) / 2**20:.1f} MiB saved by sharing")

# %% tags=["nbval-ignore-output"]
viz.image_graph(family)

# %%
assert web.layers[0] == api.layers[0] == app.layers[0] == base.layers[0]
assert web2.layers[:2] == web.layers and logical - stored >= 3 * base.size
references = [d.digest for img in family for d in img.layers]
assert len(references) == 9 and len(set(references)) == 5   # the picture: 5 layer boxes for 9 uses
assert references.count(base.layers[0].digest) == 4        # busybox's layer: stored once, used by all four
assert {d for d in references if references.count(d) > 1} == {base.layers[0].digest, web.layers[1].digest}  # the blue boxes

# %% [markdown]
# ## 7. Wasted bytes, and a secret that never left
#
# Every layer is shipped whole. A big file changed in a later layer is stored twice; a file
# deleted in a later layer is still stored in the earlier one. Here a build copies in an 8 MiB
# data file, rewrites it, and adds and then deletes a credentials file. `waste.analyse` reads
# every layer's tar and finds what the final tree no longer uses:

# %% tags=["nbval-ignore-output"]
steps = [("COPY data.bin /data.bin", {"data.bin": 8 << 20}),
         ("RUN regenerate /data.bin", {"data.bin": 8 << 20}),
         ("COPY credentials /root/credentials", {"root/credentials": "user=admin password=s3cret\n"})]
prev = "busybox"
for i, (step, spec) in enumerate(steps):
    tree.write_tree(home / f"step{i}", spec)
    prev = mutate.add_layer(prev, home / f"step{i}", f"lesson03/fat{i}", step, store=store).name
(home / "step3" / "root").mkdir(parents=True)
overlay.make_whiteout(home / "step3" / "root" / "credentials")
fat = mutate.add_layer(prev, home / "step3", "lesson03/fat", "RUN rm /root/credentials", store=store)
report = waste.analyse(store, "lesson03/fat")
for w in report.wasted:
    print(f"{w.path:<18} {w.size:>9} bytes in layer {w.layer}, {w.why}")
print(f"efficiency {report.efficiency:.1%}")

# %%
assert {(w.path, w.layer) for w in report.wasted} == {("data.bin", 1), ("root/credentials", 3)}
assert report.wasted_bytes >= 8 << 20 and report.efficiency < 0.9
secret = waste.read_from_layer(store, "lesson03/fat", 3, "root/credentials")
print("read back from layer 3:", secret.decode().strip())
assert b"s3cret" in secret and not (store.flatten("lesson03/fat", home / "fatflat") / "root" / "credentials").exists()

# %% [markdown]
# The cure is to make and remove such files **in the same step** (one `RUN` that downloads,
# uses and deletes), to squash layers (lesson 07), or never to put secrets into a build context.
#
# ## Exercises
#
# ### Exercise 03.handmade: write a layer by hand
# With Python's `tarfile`, write a layer tar (in your scratch dir `home`) that **deletes
# `bin/vi`** and **adds `etc/motd`** containing `built by hand`. The check applies it on top of
# busybox.

# %%
my_layer = None   # your answer: the path of your tar

# %%
ex.check_handmade(my_layer)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# my_layer = home / "mine.tar"
# with tarfile.open(my_layer, "w") as t:
#     t.addfile(tarfile.TarInfo("bin/.wh.vi"))
#     data = b"built by hand\n"
#     info = tarfile.TarInfo("etc/motd"); info.size = len(data)
#     t.addfile(info, io.BytesIO(data))
# ```
# </details>
#
# ### Exercise 03.chainid: a ChainID by hand
# Compute the ChainID of the **third** layer of `web2` (busybox, then `index.html`, then
# `style.css`) from its DiffIDs (`web2.diff_ids`) with `hashlib`: the snapshot that holds all
# three layers is named by it.

# %%
my_chain_id = None   # your answer: "sha256:..."

# %%
ex.check_chain_id(web2, my_chain_id)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# d1, d2, d3 = web2.diff_ids
# chain2 = "sha256:" + hashlib.sha256(f"{d1} {d2}".encode()).hexdigest()
# my_chain_id = "sha256:" + hashlib.sha256(f"{chain2} {d3}".encode()).hexdigest()
# ```
# </details>
#
# ### Exercise 03.secret: a token deleted two layers ago
# The image `leaky` copied a token to `/root/.token` and deleted it in the next step. Find it.

# %%
leaky = ex.setup_secret_image()
for h in leaky.history:
    print(h["created_by"])

# %%
my_token = None   # your answer

# %%
ex.check_secret_token(my_token)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# my_token = waste.read_from_layer(store, "leaky", 1, "root/.token").decode()
# ```
# </details>
#
# ### Exercise 03.mount: an image's layers as a root, with mount(2)
# `layers` below are the unpacked layer directories of `lesson03/versions` (busybox and three
# layers that each write `app/version`), **base first**, as its manifest lists them. Write
# `my_mount(lowerdirs, target)` that mounts them read-only on `target` with one mount(2) call
# (`kernel.mount(source, target, fstype, flags, data)`), so that `target` shows the image.
# The check calls it in a child with a mount namespace of its own and reads what it mounted.

# %% tags=["nbval-ignore-output"]
layers = ex.setup_mount()
print(len(layers), "layer dirs, base first:", [p.name[:12] for p in layers])

# %%
my_mount = None   # your answer: def my_mount(lowerdirs, target): ...

# %%
ex.check_mount(my_mount)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# from labkit import kernel
# def my_mount(lowerdirs, target):
#     top_first = ":".join(str(d) for d in reversed(lowerdirs))
#     kernel.mount("overlay", str(target), "overlay", 0, f"lowerdir={top_first}")
# ```
#
# No upperdir and no workdir: the mount is read-only, as an image is. `lowerdir=` names the
# top layer first, so the manifest's order is reversed. This is what `snapshot.View` and every
# container runtime do for an image's layers (with an upper dir on top for a container).
# </details>
#
# ## Clean up
# The images this lesson made are removed (their blobs too, unless another image uses them);
# the `busybox` base image stays for the next lessons.

# %%
for name in [n for n in store.refs() if n.startswith("lesson03/") or n == "leaky"]:
    store.remove(name)
lab.remove_tree(home)
assert not [n for n in store.refs() if n.startswith("lesson03/") or n == "leaky"]
assert "busybox" in store.refs() and lab.entries(mine=True) == [] and not home.exists()
print("clean")
