# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Capstone: the whole life of one image
#
# One story that uses every lesson before it. A `Dockerfile` is built into an image (07), the
# image is pushed to a registry (08) and pulled into a second, empty store, where its layers
# are found again by their ChainIDs (03). A container runs it under cgroup limits (05) on an
# overlay of those layers (01, 06). A change made in the container is committed as one more
# layer with a whiteout in it (01, 06), the image is squashed back to one layer over its base
# (07), and pushed again: this time the registry already has the base layer, so only the new
# one travels. At every stage the **real tools** look at what labkit made: `skopeo` inspects
# and copies, `umoci` unpacks, `runc` runs.
#
# **What this lesson needs:** root, OverlayFS, the memory cgroup controller, and skopeo, umoci
# and runc (all installed by `scripts/provision.sh`; `labkit preflight` checks them).
# **What it leaves behind:** nothing: the registry stops, and the second store, the
# containers and the images made here are removed at the end.

# %%
import json, os, subprocess, tarfile
from labkit import lab, build, container, snapshot, squash, viz, widgets, tree
from labkit.image.store import Store
from labkit.image.base import base_image
from labkit.registry import server, client
from labkit.exercises import hint, progress, l09_capstone as ex

home = lab.scratch("09-capstone", alone=True)   # one copy at a time: its images and names are shared
store = Store()
base_image(store)
ctx = tree.write_tree(home / "ctx", {"greet.sh": '#!/bin/sh\necho "hello from $(cat /app/version) on $(hostname)"\n'})
dockerfile = """\
FROM busybox
WORKDIR /app
COPY greet.sh /app/greet.sh
RUN chmod +x /app/greet.sh && echo v1 > /app/version
CMD ["/app/greet.sh"]
"""
stages = []          # (what, detail, how it got there), for the picture at the end


def sh(*argv: str) -> str:
    """Run a real tool; stop the lesson with its error output if it fails."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{argv[0]} failed: {r.stderr}"
    return r.stdout


# %% [markdown]
# ## 1. Build (lesson 07)
#
# Each step that changes files adds one layer on top of busybox's; `CMD` only changes the config.

# %% tags=["nbval-ignore-output"]
built = build.build(ctx, "capstone/v1", dockerfile)
v1, steps = built.image, built.steps
stages.append(("built capstone/v1", f"{len(v1.layers)} layers", "Dockerfile"))

# %%
made = [s.layer for s in steps if s.layer]
assert v1.diff_ids[1:] == made                  # one layer per file-changing step, in order
assert v1.config["config"]["Cmd"] == ["/app/greet.sh"]

# %% [markdown]
# The image is plain OCI: saved as a layout, `skopeo` lists the same layer digests and `umoci`
# reads the history every step left.

# %% tags=["nbval-ignore-output"]
layout = store.save(home / "layout-v1", "v1", "capstone/v1")
local = json.loads(sh("skopeo", "inspect", f"oci:{layout}:v1"))
print(sh("umoci", "stat", "--image", f"{layout}:v1"))

# %%
assert local["Layers"] == [d.digest for d in v1.layers]

# %% [markdown]
# ## 2. Push (lesson 08)
#
# labkit's registry on this machine; the push sends layers, then the config, the manifest last.
# Then the base image goes to a second repository: its layer is **mounted** from the first
# repository (201 Created, no bytes sent) instead of uploaded again. Its config is not in the
# first repository (the app's config is another blob), so the registry answers that mount with
# 202 and an upload session, and the config is sent.

# %% tags=["nbval-ignore-output"]
reg = server.serve(home / "registry")
first = []
client.push("capstone/v1", f"{reg.address}/course/app:v1", trace=first, store=store)
for e in first:
    print(f"{e.method:6} {e.what:22} {e.status}")
base_push = []
client.push("busybox", f"{reg.address}/course/busybox:latest", trace=base_push, mount_from="course/app", store=store)
remote = json.loads(sh("skopeo", "inspect", "--tls-verify=false", f"docker://{reg.address}/course/app:v1"))
stages.append(("registry course/app:v1", f"manifest {remote['Digest'][7:19]}", "push"))

# %%
assert [e.method for e in first][-1] == "PUT" and first[-1].what == "manifest"
assert remote["Digest"] == v1.manifest_desc.digest and remote["Layers"] == local["Layers"]
assert [(e.what, e.status) for e in base_push if e.method == "POST"] == [("mount layer 1/1", 201), ("mount config", 202)]
assert [e.what for e in base_push if e.method == "PATCH"][0].startswith("config")   # only the config travels

# %% [markdown]
# ## 3. Pull into an empty store (lessons 03 and 08)
#
# A second store, as on another machine. The layers arrive in parallel, each checked against
# its digest; the pulled image has the same manifest digest and the same ChainIDs as the one
# we built. The second store has a snapshotter of its own: it trusts nothing the first one
# unpacked, and unpacks each layer again (checking it against its DiffID) under the same ChainIDs.

# %% tags=["nbval-ignore-output"]
fresh = Store(home / "second-store")
assert fresh.refs() == {}
pulled = client.pull(f"{reg.address}/course/app:v1", name="capstone/pulled", parallel=4, store=fresh)
client.pull(f"{reg.address}/course/busybox:latest", name="busybox", store=fresh)
print(pulled.manifest_desc.digest, *[c[7:19] for c in pulled.chain_ids])
stages.append(("second store", "capstone/pulled", "pull"))

# %%
assert pulled.manifest_desc.digest == v1.manifest_desc.digest
assert pulled.chain_ids == v1.chain_ids and set(fresh.refs()) == {"capstone/pulled", "busybox"}
assert not any(snapshot.of(fresh).exists(c) for c in pulled.chain_ids)      # nothing shared with the first store
assert snapshot.unpack("capstone/pulled", fresh) == [snapshot.of(fresh).dir(c) for c in reversed(pulled.chain_ids)]
assert [p.name for p in snapshot.unpack("capstone/pulled", fresh)] == [p.name for p in snapshot.unpack("capstone/v1", store)]

# %% [markdown]
# ## 4. Run it under limits (lessons 05 and 06)
#
# A container of the pulled image, with a memory limit, a process limit and its own hostname.
# Below it, a slider: `dd` fills one 32 MiB buffer inside a container of the same image; pick
# a memory limit and see whether the kernel lets it finish or OOM-kills it.

# %%
_, r = container.run("capstone/pulled", store=fresh, memory="64m", pids=16, hostname="capstone", rm=True)
print(r.stdout.strip(), "| exit", r.exit_code)
stages.append(("container", "64 MiB, 16 pids", "run"))

# %%
assert r.stdout.strip() == "hello from v1 on capstone" and r.exit_code == 0

# %% tags=["nbval-ignore-output"]
widgets.memory_limit_runner("capstone/pulled", store=fresh)

# %%
small = ex.try_limit("capstone/pulled", 16, store=fresh)
big = ex.try_limit("capstone/pulled", 128, store=fresh)
assert small.oom_killed and big.exit_code == 0 and not big.oom_killed

# %% [markdown]
# ## 5. Change it and commit (lessons 01 and 06)
#
# The container writes a new version and deletes `/bin/vi`. Its read-write layer holds exactly
# that: the new file, and a whiteout (a character device 0/0) for the deleted one. `commit`
# turns that layer, and only that layer, into one more image layer; in the tar the whiteout is
# spelled `.wh.vi`. The init layer (hostname, hosts, resolv.conf) is not in it.

# %%
c2, r2 = container.run("capstone/pulled", ["/bin/sh", "-c", "echo v2 > /app/version && rm /bin/vi"], store=fresh)
changes = c2.diff()
for ch in changes:
    print(ch)
v2 = c2.commit("capstone/v2", store=fresh)
c2.remove()
with tarfile.open(fresh.open_layer(v2.layers[-1])) as t:
    names = sorted(t.getnames())
print(names)
stages.append(("capstone/v2", f"{len(v2.layers)} layers", "commit"))

# %%
assert len(v2.layers) == len(pulled.layers) + 1 and v2.layers[:-1] == pulled.layers
assert "bin/.wh.vi" in names and "app/version" in names
assert not any(n.startswith("etc/") for n in names)            # the init layer stays out

# %% [markdown]
# ## 6. Squash (lesson 07)
#
# Everything above busybox becomes one layer. The files are the same; the layers and their
# history are not.

# %% tags=["nbval-ignore-output"]
sq = squash.squash("capstone/v2", "busybox", "capstone/v2-squashed", store=fresh)
print(f"v2: {len(v2.layers)} layers, {v2.size} bytes; squashed: {len(sq.layers)} layers, {sq.size} bytes")
stages.append(("capstone/v2-squashed", f"{len(sq.layers)} layers", "squash"))

# %%
flat_v2 = tree.read_tree(fresh.flatten("capstone/v2", lab.fresh_dir(home / "flat-v2")))
flat_sq = tree.read_tree(fresh.flatten("capstone/v2-squashed", lab.fresh_dir(home / "flat-sq")))
assert flat_v2 == flat_sq and len(sq.layers) == 2
assert sq.layers[0] == fresh.image("busybox").layers[0]

# %% [markdown]
# ## 7. Push again
#
# *Predict, then run:* the squashed image shares one layer with what `course/app` already
# holds. How many blobs will this push send, and what will the registry answer to the HEAD
# of the shared one?
#
# The registry has busybox's layer already (linked into `course/app` by the first push), so the
# client's HEAD gets 200 and skips it: only the squashed layer and the new config go up.

# %% tags=["nbval-ignore-output"]
second = []
client.push("capstone/v2-squashed", f"{reg.address}/course/app:v2", trace=second, store=fresh)
for e in second:
    print(f"{e.method:6} {e.what:22} {e.status}")
stages.append(("registry course/app:v2", f"{sum(e.method == 'PATCH' for e in second)} blobs sent", "push"))

# %%
assert [e.what for e in second if e.method == "PUT" and e.what.startswith("finish")] == ["finish layer 2/2", "finish config"]
assert [e.status for e in second if e.method == "HEAD"][0] == 200

# %% [markdown]
# ## 8. The real tools have the last word
#
# `skopeo` copies `course/app:v2` out of labkit's registry into an OCI layout, `umoci` unpacks
# it into a runtime bundle, and `runc` runs it. It prints what labkit's container printed, and
# the bundle's root filesystem is, file for file, labkit's flattened image. On the way skopeo
# gzip-compressed the layers: the blobs have other digests now, but the config's DiffIDs (the
# digests of the uncompressed tars, lesson 03) are the same.

# %% tags=["nbval-ignore-output"]
back = home / "layout-v2"
sh("skopeo", "copy", "--src-tls-verify=false", f"docker://{reg.address}/course/app:v2", f"oci:{back}:v2")
bundle = home / "bundle"
sh("umoci", "unpack", "--image", f"{back}:v2", str(bundle))
spec = json.loads((bundle / "config.json").read_text())
spec["process"]["terminal"] = False
spec["hostname"] = "capstone"
(bundle / "config.json").write_text(json.dumps(spec))
said = sh("runc", "--root", str(home / "runc-state"), "run", "--bundle", str(bundle), f"labkit-capstone-{os.getpid()}")
print(said)
stages.append(("runc", said.strip(), "skopeo + umoci"))

# %%
assert said.strip() == "hello from v2 on capstone"
assert tree.read_tree(bundle / "rootfs") == flat_sq
copied = json.loads(sh("skopeo", "inspect", "--raw", f"oci:{back}:v2"))
assert all(d["mediaType"].endswith("+gzip") for d in copied["layers"])        # skopeo compressed them
assert [d["digest"] for d in copied["layers"]] != [d.digest for d in sq.layers]  # so: other blob digests
assert json.loads(sh("skopeo", "inspect", "--config", f"oci:{back}:v2"))["rootfs"]["diff_ids"] == sq.diff_ids

# %% [markdown]
# ## The whole journey
#
# Each box below was read from the run above, and so were the layers: an image is a list of
# layers, and a layer stored once is drawn once, however many images use it.

# %% tags=["nbval-ignore-output"]
viz.journey(stages)

# %% tags=["nbval-ignore-output"]
viz.image_graph([v1, v2, sq])

# %%
assert [s[2] for s in stages] == ["Dockerfile", "push", "pull", "run", "commit", "squash", "push", "skopeo + umoci"]
shared = set(d.digest for d in v1.layers) & set(d.digest for d in v2.layers) & set(d.digest for d in sq.layers)
assert shared == {v1.layers[0].digest}              # busybox's layer, in all three

# %% [markdown]
# ## Exercises
#
# ### Exercise 09.limit
# Use the slider in section 4 (or `container.run` yourself): what is the **smallest** memory
# limit, a multiple of 8 MiB, under which `dd` fills its 32 MiB buffer and exits 0? The check
# runs the container at your limit and 8 MiB lower.

# %%
my_limit = None

# %%
ex.check_smallest_limit(my_limit, "capstone/pulled", store=fresh)

# %% [markdown]
# <details><summary>Solution</summary>
#
# 40 on this machine: 32 MiB is the buffer alone, so dd is killed; 40 leaves room for the rest.
# Other kernels may need 48; the check measures, so it knows. Measured, as the check does:
#
# ```python
# my_limit = next(m for m in range(16, 129, 8) if ex.try_limit("capstone/pulled", m, store=fresh).exit_code == 0)
# ```
# </details>
#
# ### Exercise 09.cgroup: the limit, by hand
# `container.run(..., memory=...)` did two writes into the cgroup file system. Do them
# yourself: write `my_limit(group, version, pid, limit)` that puts process `pid` into the
# memory cgroup directory `group` (of cgroup `version` 1 or 2) with a limit of `limit` bytes.
# The check makes a group, starts a process that will take 64 MiB, calls your function, and
# lets the process go: under 32 MiB the OOM killer must end it, under 128 MiB it must finish.

# %%
my_limit = None   # your answer: def my_limit(group, version, pid, limit): ...

# %%
ex.check_cgroup(my_limit)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# from pathlib import Path
# def my_limit(group, version, pid, limit):
#     name = "memory.limit_in_bytes" if version == 1 else "memory.max"
#     (Path(group) / name).write_text(str(limit))         # the limit first,
#     (Path(group) / "cgroup.procs").write_text(str(pid))  # then the process joins
# ```
#
# The limit goes in first: a process that joined an unlimited group could take what it likes
# before the second write. Memory the process used before it joined stays charged where it was.
# </details>
#
# ### Exercise 09.upload
# How many blobs (layers and configs) did the second push (section 7) upload?

# %%
my_count = None

# %%
ex.check_uploaded(my_count, second)

# %% [markdown]
# <details><summary>Solution</summary>
#
# The squashed layer and the new config; busybox's layer was there already:
#
# ```python
# my_count = 2
# ```
# </details>
#
# ## Where you are in the course
#
# Every exercise of the course, and how far each lesson has got. Press Refresh after solving one.

# %% tags=["nbval-ignore-output"]
widgets.course_progress()

# %%
ids = [row.id for row in progress()]
assert "09.limit" in ids and "09.upload" in ids and ids == sorted(ids, key=lambda i: i.split(".")[0])

# %% [markdown]
# ## Clean up

# %%
reg.close()
for s_ in (store, fresh):
    for name in [n for n in s_.refs() if n.startswith("capstone/")]:
        s_.remove(name)
lab.remove_tree(home)
left = [(ct.cfg.image, ct.cfg.cmd) for ct in container.containers(mine=True)]
assert lab.entries(mine=True) == [] and not home.exists() and left == [], left
print("clean")
