# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Building images
#
# A Dockerfile is a list of steps; each step that changes files becomes one layer, and every
# step, file-changing or not, leaves one line of **history**. labkit's builder runs each step
# on a **snapshot** (containerd's model: *prepare* a writable snapshot on top of the previous
# one, run the step, *commit* it); a `RUN` runs in a real container whose read-write layer is
# that snapshot, so the new layer is exactly what the command changed. A build cache skips
# steps whose inputs did not change. Then the seed's two extra instructions: `TAG` names the
# image as it stands halfway, and `COMPRESS` squashes the layers added since a base into one.
#
# > **The seeds say / today.** Seed 003 says every Dockerfile instruction makes a layer. Only
# > the ones that change files do (RUN, COPY, ADD); ENV, CMD, EXPOSE, USER, WORKDIR and LABEL
# > add a history entry and change the config. It also says squash pull requests are always
# > rejected: `docker build --squash` (experimental) and BuildKit's `--output` / multi-stage
# > builds exist today. Seed 004's Docker-in-Docker through the `wrapdocker` script is
# > replaced by the official `docker:dind` image (still `--privileged`) and by rootless
# > builders (BuildKit, buildah, kaniko) that need no daemon.
#
# **What this lesson needs:** root, OverlayFS, cgroups (a RUN step is a container).
# **What it leaves behind:** the `lab/toolchain` build image (about 200 MiB, made once from the
# host's gcc); the other images it builds are removed at the end.

# %%
import os, time, tarfile
from labkit import lab, build, mountinfo, snapshot, squash, container, viz, widgets
from labkit.image import waste
from labkit.image.store import Store
from labkit.image.base import base_image
from labkit.tree import write_tree, read_tree
from labkit.exercises import hint, l07_build as ex

home = lab.scratch("07-building-images", alone=True)     # fresh on every run, with this lesson's build cache in it
cache = home / "build-cache"                   # so the first build below always starts cold
store = Store()
base_image(store)
ctx = write_tree(home / "ctx", {"hello.txt": "hello from COPY\n", "site/index.html": "<h1>hi</h1>\n"})
dockerfile = """\
FROM busybox
ARG GREETING=hello
ENV APP_HOME=/app
WORKDIR /app
COPY hello.txt .
COPY site/ /srv/site/
RUN echo "$GREETING from RUN" > /app/run.txt && rm /bin/vi
TAG lesson07/halfway
RUN echo "app:x:1000:1000::/app:/bin/sh" >> /etc/passwd
USER 1000
CMD ["cat", "/app/run.txt"]
"""
_ = (ctx / "Dockerfile").write_text(dockerfile)

# %% [markdown]
# ## 1. One step, one layer (or one line of history)
#
# The builder prints a line per step: which made a layer (and its DiffID), which only changed
# the config.

# %% tags=["nbval-ignore-output"]
built = build.build(ctx, "lesson07/app", cache_dir=cache)
img, steps = built.image, built.steps

# %%
made = [s for s in steps if s.layer]
assert not any(s.cached for s in steps)                               # a cold cache: every step ran
assert [s.instruction.name for s in made] == ["COPY", "COPY", "RUN", "RUN"]
assert len(img.layers) == len(store.image("busybox").layers) + 4
assert sum(1 for h in img.history if h.get("empty_layer")) == 5       # ARG ENV WORKDIR USER CMD
_, r = container.run("lesson07/app", rm=True)
assert r.stdout == "hello from RUN\n"

# %% [markdown]
# `history` is what `docker history` shows: one line per step, the size of its layer:

# %% tags=["nbval-ignore-output"]
layers = iter(img.layers)
for h in img.history:
    size = 0 if h.get("empty_layer") else next(layers).size
    print(f"{size:>8}  {h['created_by'][:70]}")

# %% [markdown]
# ## 2. Snapshots
#
# Every committed layer is a snapshot named by its ChainID, stacked on its parent's; the
# `RUN` steps ran on *active* snapshots that were then committed. The tree, from the
# snapshotter's own records:

# %% tags=["nbval-ignore-output"]
sn = snapshot.of(store)
names = {c: f"{i}: {h}" for i, (c, h) in enumerate(zip(img.chain_ids, ["busybox"] + [str(s.instruction)[:24] for s in made]))}
viz.snapshot_tree([i for i in sn.walk() if i.key in img.chain_ids], names)

# %%
chain = {i.key: i.parent for i in sn.walk()}
assert all(chain[c] == p for p, c in zip(img.chain_ids, img.chain_ids[1:]))

# %% [markdown]
# The snapshotter's verbs, by hand: *prepare* a writable snapshot on the image's top layer,
# mount it, write, *commit* it, and look at it read-only with *view*:

# %%
m = sn.prepare("by-hand", img.chain_ids[-1])
print("lowerdirs:", len(m.lowerdirs), "| upperdir empty:", os.listdir(m.upperdir) == [])
from labkit import overlay
with overlay.Overlay(m.lowerdirs, m.upperdir, m.workdir, home / "mnt") as o:
    (o.merged / "app" / "by-hand.txt").write_text("written in an active snapshot\n")
info = sn.commit("by-hand/committed", "by-hand")
v = sn.view("by-hand/view", "by-hand/committed")
print(info.kind, "| it uses disk:", sn.usage("by-hand/committed") > 0, "| the view is read-only:", v.upperdir is None)

# %%
assert info.kind == "committed" and v.upperdir is None and len(v.lowerdirs) == len(m.lowerdirs) + 1
sn.remove("by-hand/view"); sn.remove("by-hand/committed")

# %% [markdown]
# ## 3. The build cache
#
# Building again changes nothing, so nothing runs: every file-changing step is `CACHED` and
# the image digest is the same. Change a copied file and the cache misses from that step on,
# because every later step's cache key includes its parent layer.
#
# *Predict, then run:* the rebuild below changes nothing; then one copied file is edited. Which
# steps will say `CACHED` the second time: none, those before the `COPY`, or all but the `COPY`?

# %% tags=["nbval-ignore-output"]
t = time.perf_counter()
built = build.build(ctx, "lesson07/app", cache_dir=cache)
again, steps2 = built.image, built.steps
warm = time.perf_counter() - t
print(f"rebuild: {warm:.2f} s")

# %%
assert all(s.cached for s in steps2 if s.layer) and again.manifest_desc.digest == img.manifest_desc.digest
(ctx / "site" / "index.html").write_text("<h1>changed</h1>\n")
steps3 = build.build(ctx, "lesson07/app", quiet=True, cache_dir=cache).steps
print([(s.instruction.name, "CACHED" if s.cached else "ran") for s in steps3 if s.layer])
assert [s.cached for s in steps3 if s.layer] == [True, False, False, False]

# %% [markdown]
# The name `lesson07/app` moved to the new build. The first build is still in the store, with
# no name: its manifest, its config and the layers only it had. Docker lists such images as
# `<none>:<none>` ("dangling"); `docker image prune` deletes them, `labkit image prune` too
# (`store.gc()`: every blob no name reaches, except those written in the last five minutes,
# which another kernel may be about to name). Here, only our own untagged build goes, as
# `docker rmi <id>` would remove it:

# %% tags=["nbval-ignore-output"]
nameless = store.unreferenced()
print(f"{len(nameless)} blobs no name reaches, {sum(nameless.values()) / 1024:.0f} KiB; "
      f"the first build's manifest among them: {img.manifest_desc.digest in nameless}")
freed = store.remove_untagged(img.manifest_desc.digest)
print("deleted:", [d[7:19] for d in freed])

# %%
assert img.manifest_desc.digest in freed and img.config_desc.digest in freed
assert not set(freed) & {d.digest for d in store.image("lesson07/app").layers}    # the new build keeps its layers

# %% [markdown]
# ## 4. TAG and COMPRESS
#
# The seed adds two instructions. `TAG lesson07/halfway` above named the image as it stood
# after the first `RUN`:

# %%
half = store.image("lesson07/halfway")
print("halfway:", len(half.layers), "layers, last step:", half.history[-1]["created_by"][:40])
assert half.layers == store.image("lesson07/app").layers[:len(half.layers)]

# %% [markdown]
# `COMPRESS base` squashes every layer added since `base` into one layer whose parent is
# `base`; the config stays the one of the last step:

# %%
compressed = build.build(ctx, "lesson07/compressed", dockerfile + "COMPRESS busybox\n", quiet=True).image
print(len(compressed.layers), "layers;", compressed.history[-1]["created_by"])
assert len(compressed.layers) == 2 and compressed.config["config"]["Cmd"] == ["cat", "/app/run.txt"]
assert read_tree(store.flatten("lesson07/compressed", home / "c1")) == read_tree(store.flatten("lesson07/app", home / "c2"))

# %% [markdown]
# ## 5. Two ways to squash
#
# The seed weighs two algorithms: (a) merge the layers one by one by the union rules (newest
# wins, whiteouts and opaque directories applied), or (b) take the difference between the
# final image's root filesystem and the base's. labkit copies neither tree to compare them:
# each is a read-only overlay mount of the image's unpacked layers (`squash.view`). Both describe the same final tree; labkit writes both results in
# one canonical form (the smallest changeset: no entry for what did not change, one whiteout
# per deleted path), so with reproducible tars they give **the same layer, byte for byte**.
# (Docker's merge did not canonicalise, so its result could differ in form.)

# %%
a = squash.squash("lesson07/app", "busybox", "lesson07/sq-merge", "merge", store=store)
b = squash.squash("lesson07/app", "busybox", "lesson07/sq-diff", "diff", store=store)
print("same layer digest:", a.layers[-1].digest == b.layers[-1].digest)
print([mm.name for mm in tarfile.open(store.open_layer(b.layers[-1]))])

# %%
assert a.layers[-1].digest == b.layers[-1].digest
assert read_tree(store.flatten("lesson07/sq-merge", home / "s1")) == read_tree(store.flatten("lesson07/app", home / "s2"))

# %% [markdown]
# The trees (b) compares are real mounts: `squash.view` mounts an image's root filesystem for
# the length of a `with` block, an overlay with the image's snapshots as lowerdirs and no upper
# dir, so the kernel makes it read-only (`ro` in its superblock options).

# %% tags=["nbval-ignore-output"]
with squash.view(store, "lesson07/app", home / "app-view") as root_:
    seen = mountinfo.mount_of(root_)
    print(seen.fstype, "at", seen.mountpoint, "| superblock:", seen.super_options.split(",")[0],
          "| lowerdirs:", seen.super_options.count(":") + 1, "| /app:", sorted(os.listdir(root_ / "app")))
    can_write = os.access(root_ / "app", os.W_OK)

# %%
assert seen.fstype == "overlay" and seen.mountpoint == root_ and seen.super_options.startswith("ro,")
assert not can_write and not mountinfo.is_mountpoint(root_)

# %% [markdown]
# Their cost differs: (a) does work for every layer, (b) for the size of the final tree (it
# mounts the final image and the base, then compares them). Here for 2 to 24 layers of 20
# files each (every layer also rewrites and deletes some files of the one before); each method's
# own step is timed alone, without the canonical clean-up and the layer writing both share:

# %% tags=["nbval-ignore-output"]
rows = [squash.measure(n, store=store) for n in (2, 6, 12, 24)]
for r_ in rows:
    print(f"{r_['layers']:>3} layers: merge {r_['merge']:.2f} s, diff {r_['diff']:.2f} s, same digest {r_['merge_digest'] == r_['diff_digest']}")
fig = viz.squash_plot(rows)

# %%
assert all(r_["merge_digest"] == r_["diff_digest"] for r_ in rows)

# %% [markdown]
# What squashing costs: the history of the squashed steps is gone (one line says so), and the
# squashed layer is new, so it is no longer shared with images built on the same steps
# (`lesson07/halfway` shares three layers with `lesson07/app`, none with the squashed one):

# %%
sq, app_now = store.image("lesson07/sq-diff"), store.image("lesson07/app")
shared = lambda x, y: len(set(d.digest for d in x.layers) & set(d.digest for d in y.layers))
print("history lines:", len(app_now.history), "->", len(sq.history))
print("layers shared with lesson07/halfway:", shared(app_now, half), "->", shared(sq, half))
assert len(sq.history) == 2 and shared(sq, half) == 1 and shared(app_now, half) == len(half.layers)

# %% [markdown]
# And squashing saves bytes only where layers **overlap**: a file written and rewritten, or
# written and deleted. Layers that touch different files squash into one layer exactly as big
# as their sum. Three disjoint 256 KiB layers, squashed:

# %% tags=["nbval-ignore-output"]
from labkit.image import mutate
prev_ = "busybox"
for i in range(3):
    part = write_tree(home / f"disjoint{i}", {f"data/part{i}": os.urandom(256 << 10)})
    prev_ = mutate.add_layer(prev_, part, f"lesson07/disjoint{i}", f"COPY part{i}", store=store).name
disjoint = store.image(prev_)
flat_ = squash.squash(prev_, "busybox", "lesson07/disjoint-squashed", store=store)
before_, after_ = sum(d.size for d in disjoint.layers[1:]), flat_.layers[-1].size
print(f"three layers: {before_ >> 10} KiB; squashed into one: {after_ >> 10} KiB")

# %%
assert abs(after_ - before_) < 16 << 10          # only tar headers and directory entries differ

# %% [markdown]
# **Explore** the layers of the build: pick one and see what its tar holds.

# %% tags=["nbval-ignore-output"]
widgets.layer_contents(store, "lesson07/app")

# %%
assert "app/hello.txt" in [mm.name for mm in waste.layer_entries(store, "lesson07/app")[1]]

# %% [markdown]
# ## 6. The seed's online compiler: keep only the last layer
#
# Seed 004 used Docker Hub as a compiler: a Dockerfile whose last step is `gcc`, built
# remotely; then only the **last layer** is downloaded, because it holds just what the compile
# wrote. Here the build image is made from this machine's own gcc and libc6-dev (copied from
# dpkg's file lists, no download), and the binary comes out of the last layer's tar.

# %%
build.toolchain_image()
cc = write_tree(home / "cc", {"hello.c": '#include <stdio.h>\nint main(void) { puts("hello from the last layer"); return 0; }\n'})
built = build.build(cc, "lesson07/hello-build",
                       "FROM lab/toolchain\nCOPY hello.c /src/\nRUN mkdir -p /out && gcc -O2 -static -o /out/hello /src/hello.c\n",
                       quiet=True).image
last = waste.layer_entries(store, "lesson07/hello-build")[-1]
print("the last layer holds:", [mm.name for mm in last])
binary = home / "hello"
binary.write_bytes(waste.read_from_layer(store, "lesson07/hello-build", -1, "out/hello"))
binary.chmod(0o755)
import subprocess
print(subprocess.run([str(binary)], capture_output=True, text=True).stdout.strip())

# %%
assert "out/hello" in [mm.name for mm in last] and len(last) <= 4
assert subprocess.run([str(binary)], capture_output=True, text=True).stdout == "hello from the last layer\n"

# %% [markdown]
# ## 7. Seed 003's web server, on busybox
#
# Seed 003 builds a PHP site on Apache: `ADD` the page, a `sed` that moves Apache from port 80
# to 8080, `EXPOSE 8080`, `USER 1001` (not root), `CMD` to start the server. busybox has no PHP
# and no Apache, but it has `httpd`, so the same Dockerfile, adapted: a static page, a one-line
# config whose `Listen` the `sed` rewrites, and busybox's `httpd` started on the port the config
# names. *Predict, then run:* which of its steps make a layer?

# %% tags=["nbval-ignore-output"]
web_ctx = write_tree(home / "web", {
    "index.html": "<h1>Hello from a busybox web server</h1>\n",
    "httpd.conf": "Listen 80\n",
    "Dockerfile": "FROM busybox\n"
                  "ADD index.html /var/www/\n"
                  "ADD httpd.conf /etc/\n"
                  "RUN sed -i 's/Listen 80/Listen 8080/' /etc/httpd.conf && chown -R 1001 /var/www\n"
                  "EXPOSE 8080\n"
                  "USER 1001\n"
                  'CMD ["sh", "-c", "exec httpd -f -p $(sed -n \'s/^Listen //p\' /etc/httpd.conf) -h /var/www"]\n'})
web = build.build(web_ctx, "lesson07/web", quiet=True)
for step in web.steps:
    print(step)

# %% [markdown]
# Three steps changed files and made layers; `EXPOSE`, `USER` and `CMD` only wrote the config.
# Now run it and fetch the page **from outside the container**: the container has a network
# namespace of its own (only `lo`), so the request comes from a process that joins just that
# namespace (`ns.join(..., types=("net",))`, what `nsenter --net` does), not its files or PIDs.

# %% tags=["nbval-ignore-output"]
import httpx
from labkit import ns, procfs

def fetch_page():
    for _ in range(100):                 # the server may still be starting
        try:
            return httpx.get("http://127.0.0.1:8080/").text
        except httpx.TransportError:
            time.sleep(0.05)

server_ = container.Container.create("lesson07/web", name="lesson07-web")
try:
    server_.start()
    page = ns.join(server_.pid, fetch_page, types=("net",))
    pid1 = int(open(f"/proc/{server_.pid}/task/{server_.pid}/children").read().split()[0])
    uid = open(f"/proc/{pid1}/status").read().split("Uid:")[1].split()[0]
finally:
    server_.kill()
    server_.remove()
print("the page:", page.strip())
print("the server runs as uid", uid)

# %%
assert [s.instruction.name for s in web.steps if s.layer] == ["ADD", "ADD", "RUN"]
assert [s.instruction.name for s in web.steps if not s.layer][-3:] == ["EXPOSE", "USER", "CMD"]
assert page == "<h1>Hello from a busybox web server</h1>\n" and uid == "1001"
assert web.image.config["config"]["ExposedPorts"] == {"8080/tcp": {}} and web.image.config["config"]["User"] == "1001"

# %% [markdown]
# ## 8. Rebase: the same layers on a new base
#
# A security fix lands in the base image. Rebuilding every image on it runs every step again;
# **rebasing** (`git rebase` for images; `crane rebase` does it for registries) reuses the layers
# the image added, the very same blobs, on top of the new base: only a new config and manifest
# are written. Their DiffIDs stay, their ChainIDs change (a ChainID covers the layers below).
# It is sound only when those layers do not depend on what changed below: nothing checks that.

# %% tags=["nbval-ignore-output"]
patch = write_tree(home / "patch", {"etc/motd": "busybox, patched\n"})
mutate.add_layer("busybox", patch, "lesson07/busybox-patched", "COPY motd (the fix)", store=store)
moved = mutate.rebase("lesson07/web", "busybox", "lesson07/busybox-patched", "lesson07/web-patched", store=store)
old_web = store.image("lesson07/web")
for label, im in (("web", old_web), ("web-patched", moved)):
    print(f"{label:<12} layers {[d.digest[7:15] for d in im.layers]}")

# %%
assert moved.layers[-3:] == old_web.layers[-3:] and moved.diff_ids[-3:] == old_web.diff_ids[-3:]
assert moved.chain_ids[-1] != old_web.chain_ids[-1]
rebased_tree = read_tree(store.flatten("lesson07/web-patched", home / "rebased"))
assert rebased_tree["etc/motd"] == "busybox, patched\n" and rebased_tree["var/www/index.html"].startswith("<h1>")

# %% [markdown]
# ## Exercises
#
# ### Exercise 07.cache: order for the cache
# Write a Dockerfile (as a string) with `FROM busybox`, a slow step `RUN sleep 1 && echo slow > /slow`,
# and `COPY app.py /app/`, ordered so that **changing `app.py` does not run the slow step again**.

# %%
my_dockerfile = ""   # your answer

# %%
ex.check_cache_order(my_dockerfile)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# my_dockerfile = "FROM busybox\nRUN sleep 1 && echo slow > /slow\nCOPY app.py /app/\n"
# ```
# </details>
#
# ### Exercise 07.run: a RUN step by hand
# Every `RUN` of section 1 did four system calls' worth of work: mount the step's snapshot
# (an overlay), run the command with that mount as its root, wait, unmount. Write
# `my_run(mounts, target, command)` doing exactly that and returning the command's exit status:
# `mounts` is what `Snapshotter.prepare` returns (`lowerdirs` top first, `upperdir`, `workdir`),
# `target` an empty directory. The check prepares a snapshot of busybox, calls your function
# with `echo hi > /greeting && rm /bin/vi` in a child with a mount namespace of its own, and
# looks at the upper dir: the layer this step would commit.

# %%
my_run = None   # your answer: def my_run(mounts, target, command): ...

# %%
ex.check_run_step(my_run)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# from labkit import kernel
# def my_run(mounts, target, command):
#     lower = ":".join(str(d) for d in mounts.lowerdirs)
#     kernel.mount("overlay", str(target), "overlay", 0,
#                  f"lowerdir={lower},upperdir={mounts.upperdir},workdir={mounts.workdir}")
#     try:
#         pid = os.fork()
#         if pid == 0:                      # the child: the mount becomes its root
#             try:
#                 os.chroot(target)
#                 os.chdir("/")
#                 os.execv("/bin/sh", ["sh", "-c", command])
#             finally:
#                 os._exit(127)
#         return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
#     finally:
#         kernel.umount2(str(target))
# ```
#
# `build.py` does the same through `container.run` (with namespaces and a cgroup too), and
# `store.add_layer_dir(upperdir)` then turns the upper dir into the step's layer.
# </details>
#
# ### Exercise 07.squash: squash a secret away
# `lesson07/leaky` copied a token into `/root/.token` and deleted it in a later step (lesson 03
# showed it is still in the image). Make an image with the same final tree, still sharing
# busybox's layer, whose layers no longer hold the token, and pass its name.

# %%
leak = write_tree(home / "leak", {"Dockerfile": "FROM busybox\nCOPY token /root/.token\nRUN mkdir -p /app && echo data > /app/data && rm /root/.token\n",
                                   "token": "s3cret-token\n"})
leaky = build.build(leak, "lesson07/leaky", quiet=True).image

# %%
my_image = None   # your answer: an image name

# %%
ex.check_squashed(my_image)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# squash.squash("lesson07/leaky", "busybox", "lesson07/clean", store=store)
# my_image = "lesson07/clean"
# ```
# </details>
#
# ## Going further
# * **Git operations on images.** `squash` is a *merge* of commits, `rebase` (section 8) moves
#   commits onto a new parent; both are a few lines on top of this lesson's modules.
# * **Docker in Docker** runs a container engine inside a container; it needs the privileges
#   and the cgroup and overlay set-up of lesson 05 inside that container, and its data root on a
#   volume (lesson 04, section 8: an overlay upper dir cannot sit on the container's overlay),
#   which is why it is used for build farms rather than for running services.
#
# ## Clean up

# %%
for name in [n for n in store.refs() if n.startswith("lesson07/")]:
    store.remove(name)            # its name, and the blobs no other image needs
lab.remove_tree(home)
assert not [n for n in store.refs() if n.startswith("lesson07/")]
assert {"busybox", "lab/toolchain"} <= set(store.refs()) and lab.entries(mine=True) == [] and not home.exists()
assert container.containers(mine=True) == []
print("clean")
