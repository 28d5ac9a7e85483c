# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · A container is a process
#
# There is no "container" object in the Linux kernel. A container is an ordinary process that
# the kernel shows a restricted **view** of the machine (namespaces), that may use only so much
# of it (cgroups), and whose root directory was switched to an image's files. A container
# runtime does three things for the process it starts: set up namespaces, set cgroup limits,
# and change the root. Namespaces have limits too: every container still shares the host's
# kernel, and some things cannot be put into a namespace at all: loaded kernel modules, the
# wall clock, most of /proc/sys. Some of it can since the seeds were written: a **time**
# namespace (Linux 5.6) gives a process its own CLOCK_MONOTONIC and CLOCK_BOOTTIME offsets
# (only CLOCK_REALTIME stays shared), and the net.* knobs, `kernel.hostname` and the IPC limits
# of /proc/sys follow the network, UTS and IPC namespaces.
#
# **What this lesson needs:** root, every namespace type, the memory, pids and cpu cgroup
# controllers (v1 or v2). Section 1's user namespace also works as an ordinary user.
# **What it leaves behind:** nothing: processes, cgroups and mounts end with each experiment.

# %%
import os, socket
from labkit import lab, ns, procfs, roots, sandbox, cgroups, container, viz, widgets
from labkit.image.store import Store
from labkit.image.base import base_image
from labkit.exercises import hint, l05_process as ex

home = lab.scratch("05-container-process", alone=True)   # one copy at a time: its images and names are shared
store = Store()
base_image(store)
print("namespace types:", ", ".join(ns.TYPES))

# %% [markdown]
# ## 1. Namespaces: a process's own view
#
# `/proc/PID/ns/` has one link per namespace type; its target names the namespace by an inode
# number. Two processes with the same number share that namespace. Here a process starts in
# new mount, UTS, PID, IPC and network namespaces (`ns.Process`); it keeps our user and cgroup
# namespaces.

# %% tags=["nbval-ignore-output"]
p = ns.Process(("mnt", "uts", "pid", "ipc", "net"), hostname="box")
mine, theirs = ns.links(), p.links()
for t in ns.TYPES:
    print(f"{t:<7} notebook {mine[t]}  process {theirs[t]}  {'shared' if mine[t] == theirs[t] else 'NEW'}")

# %% [markdown]
# `p.run(fn)` forks a child that joins the process's namespaces with `setns(2)` (through a
# *pidfd*, Linux 5.8+) and runs `fn` there. From inside, the hostname is its own, the only
# network interface is `lo`, and the PID numbers start again at 1:

# %%
print("hostname inside:", p.run(socket.gethostname), "| outside:", socket.gethostname() != "box")
print("interfaces inside:", p.run(lambda: [name for _, name in socket.if_nameindex()]))
print("PID of a new process inside:", p.run(os.getpid) < 10)

# %%
assert {t for t in ns.TYPES if mine[t] != theirs[t]} == {"mnt", "uts", "pid", "ipc", "net"}
assert p.run(socket.gethostname) == "box" and socket.gethostname() != "box"
assert p.run(lambda: [name for _, name in socket.if_nameindex()]) == ["lo"]

# %% [markdown]
# The picture: red namespaces are the process's own, grey ones the notebook's that the process
# left, blue ones are shared by both.

# %% tags=["nbval-ignore-output"]
viz.namespace_graph({"notebook": mine, f"process {p.pid}": theirs})

# %%
# what the picture shows: five namespaces of its own, and ours for the rest
assert {t for t in ns.TYPES if mine[t] == theirs[t]} == {"user", "cgroup", "time"}
assert len({theirs[t] for t in ns.TYPES}) == len(ns.TYPES)      # one namespace of each type
p.close()

# %% [markdown]
# ### The time namespace
#
# The newest type (Linux 5.6, after the seeds were written). A new time namespace has two
# offsets, one for CLOCK_MONOTONIC and one for CLOCK_BOOTTIME, written into
# `/proc/self/timens_offsets` before its first process starts; like a PID namespace it
# applies to the children of the process that made it (`ns.in_time_ns`). It exists so that a
# container moved to another machine (checkpoint and restore) sees its clocks carry on.
# The wall clock, CLOCK_REALTIME, has no offset: setting it still changes it for everyone.
#
# **Predict** before you run: in a time namespace with a boot-time offset of ten days, what do
# `/proc/uptime` and `time.time()` read?

# %% tags=["nbval-ignore-output"]
import time
from pathlib import Path
uptime = lambda: float(Path("/proc/uptime").read_text().split()[0])
TEN_DAYS = 10 * 86400
up_inside, up_outside = ns.in_time_ns(uptime, boottime=TEN_DAYS), uptime()
wall_inside, wall_outside = ns.in_time_ns(time.time, boottime=TEN_DAYS), time.time()
print(f"uptime: {up_inside / 86400:.2f} days inside, {up_outside / 86400:.2f} days outside")
print(f"wall clock: inside minus outside = {wall_inside - wall_outside:+.3f} s")

# %%
assert abs(up_inside - up_outside - TEN_DAYS) < 5        # the boot-time clock moved ten days
assert abs(wall_inside - wall_outside) < 5                 # the wall clock did not

# %% [markdown]
# **Try it.** Tick namespace types and start a process; the picture shows what it shares.

# %% tags=["nbval-ignore-output"]
widgets.namespace_picker()

# %% [markdown]
# ### User namespaces
#
# In a new **user** namespace a process can be uid 0, with every capability, while outside
# it is still the user who started it: `uid_map` says which outside uid "0" stands for. This
# works without root (for an ordinary user the map is `0 <your uid> 1`), which is how rootless
# containers start.

# %%
inside = ns.in_user_ns(ns.identity)
print("uid inside:", inside["uid"], "| uid_map:", " ".join(inside["uid_map"]),
      "| a new user namespace:", inside["user_ns"] != ns.links()["user"])

# %%
assert inside["uid"] == 0 and inside["uid_map"] == ["0", str(os.geteuid()), "1"]

# %% [markdown]
# ## 2. chroot vs pivot_root
#
# Changing the root is the third step. `chroot(2)` only changes where "/" resolves for one
# process: the old root is still mounted, and root inside can walk out again. The classic way:
# make a directory, chroot into it (the working directory is now *outside* the root), climb
# `..` as far as it goes, and chroot there. `pivot_root(2)` replaces the root **mount** of the
# mount namespace; after the old root is unmounted there is nothing to climb back to.
# Two more ways out stay open unless closed: without a PID namespace, `/proc/<pid>/root` of a
# host process is the host's root; and a file descriptor opened on the host before the switch
# still points there. Each attack below runs in a throwaway child against a busybox root; it
# escaped if its "/" is then the host's root directory again (the same device and inode number
# that `stat /` gives on the host).

# %% tags=["nbval-ignore-output"]
rootfs = store.flatten("busybox", home / "rootfs")
attempts = roots.every_attempt(rootfs)
for a in attempts:
    print(a)

# %% [markdown]
# *Behind it:* the pivot_root runs above did this, in `labkit/roots.py` (pivot_root(2), NOTES):

# %% tags=["nbval-ignore-output"]
viz.behind(roots.pivot_into)

# %% [markdown]
# *Check cell:* what each defence stops. chroot falls to all three; pivot_root alone stops the
# `..` climb; a PID namespace stops `/proc/<host pid>/root`; closing inherited fds stops the
# leaked fd; pivot_root with both defences stops everything here.

# %%
esc = {(a.root, a.pid_ns, a.close_fds, a.attack): a.escaped for a in attempts}
assert esc[("chroot", False, False, "chroot-dotdot")]
assert not esc[("pivot_root", False, False, "chroot-dotdot")]
assert esc[("pivot_root", False, False, "proc-host-root")] and not esc[("pivot_root", True, False, "proc-host-root")]
assert esc[("pivot_root", False, False, "leaked-fd")] and not esc[("pivot_root", False, True, "leaked-fd")]
assert not any(esc[("pivot_root", True, True, attack)] for attack in roots.ATTACKS)

# %% [markdown]
# ## 3. cgroups: how much it may use
#
# A cgroup is a directory in a cgroup file system; writing a PID to its `cgroup.procs` moves
# that process (and its future children) in; files beside it set limits and report use. Hosts
# differ: on **cgroup v1** each controller has its own hierarchy (`memory.limit_in_bytes`,
# `cpu.cfs_quota_us`), on **v2** one tree holds them all (`memory.max`, `cpu.max`). This machine:

# %% tags=["nbval-ignore-output"]
for name in ("memory", "pids", "cpu", "freezer"):
    c = cgroups.controllers().get(name)
    print(f"{name:<8}", f"v{c.version} at {c.mountpoint}" if c else "not available")

# %%
assert all(cgroups.controllers()[c].version in (1, 2) for c in ("memory", "pids", "cpu"))

# %% [markdown]
# ### Memory: a limit ends in an OOM kill
#
# A child in a group limited to 64 MiB allocates 2 MiB every 10 ms, touching every page. We
# sample the memory charged to the group until the kernel's OOM killer ends it with SIGKILL;
# the group counts the kill (`oom_kill`).

# %% tags=["nbval-ignore-output"]
mem = cgroups.memory_trace(limit=64 << 20)
fig = viz.memory_plot(mem)
print(f"killed by {mem.killed_by} at {max(b for _, b in mem.samples) >> 20} MiB; oom_kill = {mem.oom_kills}")

# %% [markdown]
# *Behind it:* the limit and the membership are two writes into the cgroup file system
# (`labkit/cgroups.py`; v1 and v2 name the file differently):

# %% tags=["nbval-ignore-output"]
viz.behind(cgroups.Group.set_memory, cgroups.Group.add)

# %%
assert mem.killed_by == "SIGKILL" and mem.oom_kills == 1
assert max(b for _, b in mem.samples) <= mem.limit

# %% [markdown]
# ### pids: a fork bomb meets pids.max
#
# With `--pids 4` the container's shell cannot start a fifth process: fork fails with EAGAIN
# ("Resource temporarily unavailable"), and busybox says so.

# %%
_, bomb = container.run("busybox", ["/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 3 & done; wait"], pids=4)
print(bomb.stderr.strip().splitlines()[0])

# %%
assert "can't fork" in bomb.stderr

# %% [markdown]
# ### CPU: a quota throttles
#
# With a quota of 0.2 CPU (4 ms in every 20 ms period), a spinning child gets 20% of a CPU;
# every period in which it used up its 4 ms counts as throttled.

# %% tags=["nbval-ignore-output"]
cpu = cgroups.cpu_trace(cpus=0.2, seconds=1.0)
fig = viz.cpu_plot(cpu)

# %%
shares = [s for _, s, _ in cpu.samples[1:-1]]
assert 0.1 < sum(shares) / len(shares) < 0.3 and cpu.samples[-1][2] > 10

# %% [markdown]
# ### Freeze
#
# A whole group can be stopped at once (`freezer.state = FROZEN` on v1, `cgroup.freeze = 1` on
# v2) and resumed later: its CPU time stands still meanwhile.

# %%
import time
def spin(channel):
    while True:
        pass
with cgroups.Group("lesson05-freeze", want=("memory",)) as grp, sandbox.Child(spin, cgroup=grp) as child:
    time.sleep(0.2)
    grp.freeze(); time.sleep(0.1)
    ticks = lambda: procfs.stat(child.pid).utime + procfs.stat(child.pid).stime
    t1 = ticks(); time.sleep(0.3); t2 = ticks()
    grp.thaw(); time.sleep(0.3); t3 = ticks()
print("CPU ticks while frozen:", t2 - t1, "| after thawing:", t3 - t2 > 0)

# %%
assert t2 == t1 and t3 > t2

# %% [markdown]
# ## 4. All three together: `labkit run`
#
# `container.run` (and `labkit run` in a terminal) does all of it: a cgroup, six namespaces,
# an overlay root filesystem, pivot_root, closed fds, then exec. Inside, the shell is PID 1:

# %%
c, r = container.run("busybox", ["/bin/sh", "-c", "echo pid $$; hostname; ls /proc | grep -c '^[0-9]'; ip -o link | wc -l"],
                     hostname="lesson05", memory="64m")
print("\n".join(r.stdout.splitlines()[:2]), "| interfaces:", r.stdout.split()[-1])

# %%
pid1, hostname, procs, links = r.stdout.split()[1:]
assert (pid1, hostname, links) == ("1", "lesson05", "1") and int(procs) <= 3 and r.exit_code == 0

# %% [markdown]
# ## 5. Namespaces are not enough
#
# Seed 002 says it: the kernel is shared. A container's root is root on the host unless
# something else takes its power away, and namespaces do not. `--privileged` (Docker's word)
# takes nothing away: every capability, no seccomp filter, /proc and /sys writable, every
# device. Here four attacks run from inside a container of busybox against safe targets: a
# **disposable disk** (a loop device backed by a file under the lab root, standing in for the
# host's disk, read raw through a device node made inside), a write to `/proc/sys` (a knob of
# the container's own, written with its own value, where `core_pattern` would run a program on
# the host), mounting a cgroup v1 file system (the first step of CVE-2022-0492, through its
# `release_agent`; on a pure cgroup v2 host there is no v1 hierarchy to mount, so that column
# is left out there), and a new namespace from inside. Then the defences Docker applies by default are added one at a time
# (`labkit/confine.py`), and every rung reads `/proc/self/status` inside.
#
# *Predict, then run:* which defence stops the raw read of the disk?

# %% tags=["nbval-ignore-output"]
from labkit import confine
disk = confine.DisposableDisk(home / "disposable-disk.img")
rungs = [(label, confine.try_attacks("busybox", conf, disk, store=store)) for label, conf in confine.ladder()]
disk.close()
print(f"{'defences':<42} {'CapEff':<17} Sec NNP  " + "  ".join(f"{a:<9}" for a in confine.attacks()))
for label, rung in rungs:
    print(f"{label[:42]:<42} {rung.status['CapEff']:<17} {rung.status['Seccomp']:<3} {rung.status['NoNewPrivs']:<4} "
          + "  ".join(f"{'ESCAPED' if rung.escaped[a] else 'refused':<9}" for a in confine.attacks()))

# %% [markdown]
# Read it row by row. Dropping to Docker's 14 capabilities takes CAP_SYS_ADMIN away, and with
# it mount and unshare. no_new_privs and seccomp add a second lock on those doors (the last
# row gives CAP_SYS_ADMIN back: seccomp alone still refuses them) and close system calls no
# capability guards. The read-only /proc/sys stops the knob. Only the **devices cgroup** stops
# the raw disk: Docker keeps CAP_MKNOD, so a node can be made, but it cannot be opened.
# (On cgroup v2 runc loads a BPF program for this; labkit, without one, drops CAP_MKNOD there.)
#
# The last row is `--privileged` again, every defence off, but inside a **user namespace**
# (`--userns auto`, as podman's; docker calls it userns-remap): the raw disk, `/proc/sys` and
# the cgroup mount are refused all the same. Only `unshare` works, and what it makes belongs
# to the container's user namespace. The next cell shows why.

# %%
rows = dict(rungs)
first, default = rows["--privileged: none"], rows["+ devices cgroup: docker's default"]
with_admin, userns_row = rows["docker's default, --cap-add SYS_ADMIN"], rows["--privileged --userns auto"]
assert all(first.escaped.values()) and first.status["Seccomp"] == "0"
assert ("cgroupfs" in first.escaped) == (cgroups.controllers()["memory"].version == 1)   # v1 hosts only
assert not any(default.escaped.values())
assert default.status == {"CapEff": confine.mask(confine.caps_in_force(confine.Confinement())), "Seccomp": "2",
                          "NoNewPrivs": "1"}                    # 00000000a80425fb: docker's 14 (13 on cgroup v2)
assert not with_admin.escaped.get("cgroupfs") and not with_admin.escaped["unshare"]   # seccomp alone
assert [label for label, rung in rungs if not rung.escaped["raw disk"]][0].startswith("+ devices cgroup")
assert int(userns_row.status["CapEff"], 16) >= int(first.status["CapEff"], 16)    # every capability ...
assert [a for a, got in userns_row.escaped.items() if got] == ["unshare"]          # ... yet only unshare works
assert lab.entries(mine=True) == []                  # the loop device is gone

# %% [markdown]
# ### Root inside, nobody outside
#
# A user namespace maps ids (user_namespaces(7)). labkit gives each `--userns auto` container
# 65,536 host uids of its own, from 1,000,000,000 up: uid 0 inside *is* uid 1000000000 on the
# host. Its capabilities are real but only over what its namespace owns; a device node, a
# mount of the host's file systems or a file owned by host root are not among them.
#
# The image's files are owned by uid 0 on disk, which in the namespace is nobody. labkit does
# not chown a copy: it mounts each layer **idmapped** (mount_setattr(2), MOUNT_ATTR_IDMAP),
# so on disk 0 is seen as 1000000000, which the container calls 0; and what the container
# writes lands in its upper layer as uid 0 again, ready to commit (`labkit/userns.py`).
# Below, a `--privileged --userns auto` container writes a file while the host reads its
# PID 1's `/proc/PID/status`.

# %% tags=["nbval-ignore-output"]
c = container.Container.create("busybox", ["/bin/sh", "-c", "id -u; cat /proc/self/uid_map; touch /tmp/by-root; sleep 1"],
                               privileged=True, userns="auto")
c.start()
host_pid = c.pid1()
for _ in range(500):                     # until the file is there (at most 10 s)
    if (c.upper / "tmp" / "by-root").exists():
        break
    time.sleep(0.02)
host_uid = procfs.status(host_pid)["Uid"].split()[0]
r = c.wait()
inside_uid, *uid_map = r.stdout.split()
print("inside: uid", inside_uid, "| uid_map", " ".join(uid_map), "| on the host the same process is uid", host_uid)
on_disk = (c.upper / "tmp" / "by-root").stat().st_uid
print("the file it wrote, on disk in its upper layer: owner", on_disk)
c.remove()

# %%
assert inside_uid == "0" and uid_map[:2] == ["0", host_uid] and int(host_uid) >= 1_000_000_000
assert on_disk == 0                   # the idmapped upper layer stores it as any layer would

# %% [markdown]
# **Try it.** Tick the defences and run the attacks again.

# %% tags=["nbval-ignore-output"]
widgets.defences(store)

# %% [markdown]
# ## Exercises
#
# ### Exercise 05.namespaces
# Which namespace types should a process get so that it can set its **own hostname** but still
# **share this notebook's network**? Give a list, e.g. `["mnt"]`.

# %%
my_types = None

# %%
ex.check_namespaces(my_types)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# my_types = ["uts"]
# ```
#
# Adding mnt, ipc or pid is fine too; net is not.
# </details>
#
# ### Exercise 05.memory
# Find a memory limit (in bytes) that lets a program allocating **24 MiB** run to the end but
# stops one allocating **64 MiB**.

# %%
my_limit = None

# %%
ex.check_limit_between(my_limit)

# %% [markdown]
# <details><summary>Solution</summary>
#
# Anything between the two, with room for the interpreter itself:
#
# ```python
# my_limit = 40 << 20
# ```
# </details>
#
# ### Exercise 05.escape: enter a root with no way back
# Write `my_enter(rootfs)` with the system calls of section 3 (`kernel.mount`,
# `kernel.pivot_root`, `os.chdir`, `kernel.umount2`, …) so that **all three** attacks of the
# table stay inside. The check starts a child in new mount and PID namespaces that holds an fd
# opened on the host's `/`, calls your function, then tries each attack.
# *Predict first:* which attack survives a plain pivot_root?

# %%
from labkit import kernel
my_enter = None   # your answer: def my_enter(rootfs): ...

# %%
ex.check_escape_defence(my_enter)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# from labkit import kernel
# def my_enter(rootfs):
#     kernel.mount(rootfs, rootfs, None, kernel.MS_BIND | kernel.MS_REC)   # new_root must be a mount point
#     os.makedirs(f"{rootfs}/.old", exist_ok=True)
#     kernel.pivot_root(rootfs, f"{rootfs}/.old")
#     os.chdir("/")
#     kernel.umount2("/.old", kernel.MNT_DETACH)       # nothing left to walk back to
#     os.rmdir("/.old")
#     sandbox.close_fds()                              # the leaked fd pointed at the host
# ```
# </details>
#
# ### Exercise 05.caps: the smallest capability set
# A container must change a file's owner (`chown 1000 /srv/owned`) and serve on port 80
# (`httpd -p 80`), as root, with as few capabilities as possible. Give the list of capability
# names it needs (capabilities(7), without `CAP_`). The check runs the task in a container
# with `cap_drop=["ALL"]` and `cap_add=` your list, then once without each of them.

# %%
my_caps = None   # your answer: a list like ["KILL"]

# %%
ex.check_caps(my_caps, store=store)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# my_caps = ["CHOWN", "NET_BIND_SERVICE"]
# ```
#
# chown(2) checks CAP_CHOWN; binding a port below 1024 checks CAP_NET_BIND_SERVICE
# (`/proc/sys/net/ipv4/ip_unprivileged_port_start`, 1024 by default, moves that line).
# Docker's default 14 include both; so does runc's default 3 for the port, not for chown.
# </details>
#
# ## Clean up

# %%
for cont in container.containers(mine=True):
    cont.remove()
lab.remove_tree(home)
assert lab.entries(mine=True) == [] and not home.exists() and container.containers(mine=True) == []
print("clean")
