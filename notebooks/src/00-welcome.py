# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Welcome to labkit
#
# This lab shows how container images really work, on the **real Linux kernel** of this
# machine: every mount, page, namespace and layer you see in these notebooks is read back from
# the kernel a moment after it was made. Nothing is simulated.
#
# | # | lesson | what you will see for yourself |
# |---|--------|--------------------------------|
# | 00 | Welcome (this notebook) | what the lab needs, how exercises and resets work |
# | 01 | Union mounts and OverlayFS | lower and upper layers, whiteouts, opaque dirs, copy-up |
# | 02 | Copy-on-write and fork | one page shared by parent and child, then copied on the first write |
# | 03 | Image layers | a layer is the tar of an upper dir; manifests, configs, DiffIDs and ChainIDs |
# | 04 | Storage drivers | overlay against the naive copy driver and others: time and disk, measured |
# | 05 | A container is a process | namespaces and cgroups, one at a time, read back from /proc |
# | 06 | The root filesystem | chroot against pivot_root, volumes, a container's own root |
# | 07 | Building images | a Dockerfile step by step, the build cache, squashing |
# | 08 | Registries | push and pull request by request, resumed downloads, tokens, parallel pulls |
# | 09 | Capstone | an image from nothing to a running, limited container, and the whole course's progress |
#
# **What this lesson needs:** root and a Linux kernel with OverlayFS.
# **What it leaves behind:** nothing but your exercise progress (it cleans its scratch directory at the end).

# %%
from labkit import lab, preflight, sandbox, overlay, kernel
from labkit.mountinfo import is_mountpoint
from labkit.exercises import hint, progress, l00_welcome as ex

home = lab.scratch("00-welcome")          # a fresh, empty directory for this lesson
print("scratch dir:", home.relative_to(lab.root()))

# %% [markdown]
# ## 1. Preflight: does this machine have what the lab needs?
#
# `preflight.preflight()` checks, live: whether you are root, whether the CPU runs the lab's
# plotting libraries (numpy's wheels need x86-64-v2), whether the kernel has OverlayFS, the
# new mount API, every namespace type and the cgroup controllers (and which cgroup version each
# one runs), whether the lab root keeps `trusted.*` extended attributes (OverlayFS stores its
# whiteout and opaque marks there), and the tools the later lessons compare labkit with.
# A red line says what to install or enable. The same table is `labkit preflight` in a terminal.

# %% tags=["nbval-ignore-output"]
report = preflight.preflight()
report

# %% [markdown]
# *Check cell:* every required item is present on this machine (if not, the message says what
# you can do instead).

# %%
print(report.advice())
assert report.ok, report.advice()
assert {"root", "overlay filesystem", "namespaces", "cgroup memory"} <= {c.name for c in report}

# %% [markdown]
# ## 2. The lab root: everything lives in one place
#
# labkit mounts on, writes to and deletes **only** paths below its lab root (`$LABKIT_HOME`,
# by default `/var/lib/labkit`). Every such path passes through `lab.inside()`, which resolves
# symlinks first and refuses anything outside:

# %%
for path in ["/etc/passwd", lab.root() / ".." / "elsewhere", home / "notes.txt"]:
    try:
        lab.inside(path)
        print("allowed:", str(path).replace(str(lab.root()), "$LABKIT_HOME"))
    except lab.OutsideLabRoot as e:
        print("refused:", str(e).replace(str(lab.root()), "$LABKIT_HOME").split(". ")[0])

# %% [markdown]
# ## 3. Experiments in a child process
#
# Short experiments run in a forked child that first gets a **private mount namespace**
# (`unshare(CLONE_NEWNS)`, then every mount marked private). Whatever the child mounts is
# invisible to the rest of the machine and vanishes when the child exits, even if it crashes.
# Here the child mounts a tmpfs and reports what it sees; then we look from outside.
#
# *Predict, then run:* after the child has written `inside.txt` into its tmpfs, what will this
# kernel see in `private-mnt`: the file, an empty directory, or an error?

# %%
target = home / "private-mnt"
target.mkdir()

def mount_tmpfs_and_look():
    kernel.mount("none", str(target), "tmpfs")
    (target / "inside.txt").write_text("only the child sees this")
    return is_mountpoint(target), sorted(p.name for p in target.iterdir())

print("in the child :", sandbox.run(mount_tmpfs_and_look))
print("in this kernel:", is_mountpoint(target), sorted(p.name for p in target.iterdir()))

# %% [markdown]
# *Check cell:* the child's mount existed for the child only.

# %%
assert sandbox.run(mount_tmpfs_and_look) == (True, ["inside.txt"])
assert not is_mountpoint(target) and list(target.iterdir()) == []

# %% [markdown]
# ## 4. Things that outlive a cell are in the ledger
#
# Some state must stay between cells: in lesson 01 you explore a mounted overlay across many
# cells. Before labkit makes such a mount it writes an entry to a **ledger** on disk. The entry
# is removed when the mount is taken down: by the `with` block, by `unmount()`, when Python
# exits, or by `labkit reset` if the Jupyter kernel crashed or was restarted.

# %%
ov = overlay.stack(home / "demo", {"lower": {"hello": "from the lower layer\n"}})
ov.mount()
for e in lab.entries():
    print(e.kind, str(e.path).replace(str(lab.root()), "$LABKIT_HOME"), "-", e.note)
print("reset would remove kinds:", sorted({line.split()[0] for line in lab.reset(dry_run=True)}))

# %%
assert f"mount {ov.merged}" in lab.reset(dry_run=True) and is_mountpoint(ov.merged)   # listed, not touched
ov.unmount()
assert lab.entries(mine=True) == [] and not is_mountpoint(ov.merged)

# %% [markdown]
# If anything is ever left over (a kernel restart in the middle of a lesson, say), run this
# in a terminal, or `lab.reset()` here:
#
# ```
# labkit reset --dry-run    # list what would be removed
# labkit reset              # unmount and remove it
# ```
#
# `reset` also finds mounts under the lab root that nobody recorded, by reading
# `/proc/self/mountinfo`. It keeps your exercise progress.

# %% [markdown]
# ## 5. How exercises work
#
# Each lesson has exercises. An exercise is a task, a cell for your answer, and a
# `check_…()` call that says what is right (✅), what is wrong (❌), and how to get a hint.
# Hints come one at a time: `hint("…")` reveals one more each time you have checked a new answer
# since the last hint (running the notebook again does not spend hints). An empty answer, the
# placeholder an exercise cell starts with, is not counted as a try.
#
# **Warm-up exercise 00.hello.** Write the text `hello, kernel` into a file `hello.txt` in your
# scratch directory `home`, and pass its path to the check.

# %%
my_file = None   # your answer: the path of hello.txt

# %%
ex.check_hello(my_file)

# %% tags=["nbval-ignore-output"]
shown = hint("00.hello")
shown

# %%
assert "Hint 2 of 3" not in shown          # Run All again spends no second hint

# %% [markdown]
# <details><summary>Solution (click to open)</summary>
#
# ```python
# my_file = home / "hello.txt"
# my_file.write_text("hello, kernel\n")
# ```
# </details>

# %% [markdown]
# ## 6. Your progress
#
# `progress()` lists every exercise of the course with its state (not started, tried, solved),
# your tries and the hints you used; `labkit progress` prints the same table in a terminal.
# Progress is stored in the lab root and survives `labkit reset`.

# %% tags=["nbval-ignore-output"]
progress()

# %% [markdown]
# *Check cell:* the warm-up shows one hint used, however often this notebook has run; the
# placeholder answer was not counted as a try.

# %%
row = next(r for r in progress() if r.id == "00.hello")
assert (row.hints >= 1 or row.state == "solved") and row.state in {"not started", "tried", "solved"}, row
if my_file is None:
    assert row.hints == 1 or row.attempts > 0, row

# %% [markdown]
# ## 7. Starting a lesson again
#
# `make lab` serves **your copies** of the notebooks (in `work/`), so the originals stay
# intact. To get a lesson back as it was shipped, run `labkit notebook reset 01-overlayfs` in a
# terminal (or `labkit.exercises.reset_notebook("01-overlayfs")`): your version is kept in
# `work/.backup/`, so nothing is lost.
#
# ## Clean up
#
# Every lesson ends by removing what it made.

# %%
lab.remove_tree(home)
assert not home.exists() and lab.entries(mine=True) == []
print("clean")
