# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Copy-on-write and fork
#
# Images are cheap because layers are shared and copied only when written. The same trick
# made `fork()` cheap decades earlier: when a process forks, the kernel does **not** copy its
# memory. Parent and child share every page until one of them writes to it; that write
# **faults**, and the kernel copies just that one page for the writer. In this lesson you watch
# it happen, page by page, on physical memory.
#
# **What this lesson needs:** Linux. As root you see physical frame numbers (PFNs); as any other
# user the kernel hides them, and the lesson uses the pagemap's *exclusive* bit instead (every
# check below works both ways). **What it leaves behind:** nothing; every child it forks is
# killed and reaped at the end of its `with` block, also on an error or Ctrl-C.

# %%
import os
from labkit import lab, cgroups, cow, viz, widgets
from labkit.exercises import hint, l02_cow as ex

home = lab.scratch("02-cow-fork")
ROOT = os.geteuid() == 0
print("page size:", cow.PAGE, "bytes")

# %% [markdown]
# ## 1. Memory that can be copied on write
#
# One trap first: Python's `mmap.mmap(-1, n)` maps memory **shared** (`MAP_SHARED`), and shared
# memory is never copied on write: parent and child would see each other's writes. We need
# private anonymous memory (`MAP_PRIVATE | MAP_ANONYMOUS`), and we switch transparent huge pages
# off (`MADV_NOHUGEPAGE`) so that a page is 4 KiB, not 2 MiB. `cow.Buffer` does both.
# `touch()` writes every page, so each one gets a physical frame.
#
# `/proc/self/pagemap` has one 64-bit entry per virtual page: bit 63 says the page is present,
# bit 56 that only this process maps it, bits 0–54 give the frame number (zero unless root).

# %% tags=["nbval-ignore-output"]
buf = cow.Buffer(8)
buf.touch()
for p in cow.pagemap("self", buf.address, buf.pages):
    print(p)

# %%
before_fork = cow.pagemap("self", buf.address, buf.pages)
assert all(p.present and p.exclusive for p in before_fork)
assert all(p.pfn for p in before_fork) if ROOT else all(p.pfn is None for p in before_fork)

# %% [markdown]
# ## 2. Fork: every frame shared
#
# `cow.Child(buf)` forks. The child sits waiting for questions, and answers them from its own
# side (it reads its own `/proc/self/pagemap`). Right after the fork, both page tables point at
# the **same frames**; `/proc/kpagecount` says each frame is mapped twice, and neither side maps
# any page exclusively.

# %% tags=["nbval-ignore-output"]
child = cow.Child(buf)
rows_before = cow.compare(buf, child)
print(cow.format_pages(rows_before))

# %%
assert all(r.shared for r in rows_before)
assert not any(r.parent_exclusive or r.child_exclusive for r in rows_before)
if ROOT:
    assert all(r.parent_pfn == r.child_pfn for r in rows_before)
    assert all(r.mapcount == 2 for r in rows_before)

# %% [markdown]
# ## 3. One write, one copy
#
# Now the child writes one byte to page 3. The write faults (a *minor* fault: nothing is read
# from disk), the kernel copies that page into a fresh frame for the child, and the child's page
# table now points there. The parent keeps the original frame, which is mapped only once now.
#
# *Predict, then run:* how many minor faults will the child report for this one write? You will
# see a handful, not one: the child is a Python interpreter, and receiving the request, running
# the loop and sending the answer touch pages of its own heap and stack that it shares with the
# parent since the fork, each of which faults once. Only one of them is the page of the buffer;
# section 4 separates the two by writing more and more pages.

# %% tags=["nbval-ignore-output"]
faults = child.write([3])
rows_after = cow.compare(buf, child)
print("minor faults in the child:", faults)
print(cow.format_pages(rows_after))

# %%
changed = [r.index for r in rows_after if not r.shared]
assert changed == [3]
assert rows_after[3].child_exclusive and rows_after[3].parent_exclusive
if ROOT:
    assert rows_after[3].parent_pfn == rows_before[3].parent_pfn      # the parent kept its frame
    assert rows_after[3].child_pfn != rows_before[3].child_pfn        # the child got a new one
    assert rows_after[3].mapcount == 1
assert buf.map[3 * cow.PAGE] == 1                                      # the parent's byte is untouched

# %% [markdown]
# The picture is drawn from the numbers just measured: page 3 of the child points at its own
# frame (red); every other page still points at a frame both processes share.

# %% tags=["nbval-ignore-output"]
picture = viz.cow_pages(rows_after, "after the child wrote page 3")
picture

# %%
# what the picture shows: the child's page 3 has a frame of its own, every other page one frame for both
assert [r.index for r in rows_after if not r.shared] == [3]
if ROOT:
    assert all(r.parent_pfn == r.child_pfn for r in rows_after if r.shared)
    assert rows_after[3].child_pfn not in {r.parent_pfn for r in rows_after}
child.close()

# %% [markdown]
# ## 4. N writes cost about N minor faults
#
# Each first write to a shared page costs one fault. We fork fresh children over a touched
# 16 MiB buffer (4096 pages) and let each write a different number of pages. Writing 0 pages
# still costs a handful of faults: the child is a Python interpreter, and its own heap is
# shared copy-on-write with the parent too, so its bookkeeping copies a few pages.

# %% tags=["nbval-ignore-output"]
writes = [0, 256, 1024, 2048, 4096]
faults = [cow.faults_for_writes(4096, k) for k in writes]
for k, f in zip(writes, faults):
    print(f"{k:>5} pages written -> {f:>5} minor faults")
fig = viz.faults_plot(writes, faults)

# %%
for k, f in zip(writes, faults):
    assert k <= f <= k + 32, (k, f)
assert cow.faults_for_writes(64, 32, repeat=2) <= 32 + 32     # a second write to a page is free

# %% [markdown]
# ## 5. Shared_Dirty and Private_Dirty
#
# `/proc/PID/smaps` sums it up per mapping. A dirty page is one that was written (it differs
# from zeroes or from the file). `Shared_Dirty` counts those mapped by more than one process,
# `Private_Dirty` those mapped by one. Follow a 64 MiB buffer through fork, a child writing half
# of it, and the child's exit:

# %% tags=["nbval-ignore-output"]
story = cow.dirty_story(pages=16384, child_writes=8192)
print(f"{'':<26}{'parent shared':>14}{'parent private':>15}{'child shared':>13}{'child private':>14}  (MiB)")
mib = lambda kib: "-" if kib is None else kib // 1024
for s in story:
    print(f"{s.when:<26}{mib(s.parent_shared):>14}{mib(s.parent_private):>15}"
          f"{mib(s.child_shared):>13}{mib(s.child_private):>14}")

# %% [markdown]
# *Check cell:* after the fork everything is shared; after the child writes half, each side has
# 32 MiB private and 32 MiB still shared; once the child exits, the parent's pages are private
# again, without a single copy.

# %%
by = {s.when: s for s in story}
assert by["before fork"].parent_private == 65536
assert by["after fork"].parent_shared == by["after fork"].child_shared == 65536
assert by["after fork"].child_private == 0
w = by["child wrote 8192 pages"]
assert (w.child_private, w.child_shared, w.parent_private) == (32768, 32768, 32768)
assert by["child exited"].parent_private == 65536 and by["child exited"].parent_shared == 0

# %% [markdown]
# ## 6. What fork costs, and what posix_spawn saves
#
# Fork copies no pages, but it does copy the **page tables**: one entry per 4 KiB page mapped,
# so its cost grows with the memory the parent has touched. `posix_spawn()` (glibc builds it on
# `clone(CLONE_VM | CLONE_VFORK)`, like `vfork()`) shares the parent's memory outright until
# the child calls exec, and copies nothing at all. Each size below runs in a throwaway process,
# so this notebook does not grow by gigabytes. The sizes go up to 4 GiB, but only as far as half
# of the memory this lab may still use: on a class server your container has a memory limit
# (2 GiB unless your instructor chose another), and a bigger size would get the child killed.

# %% tags=["nbval-ignore-output"]
room = cgroups.memory_room() >> 20
print(f"this lab may still use {room} MiB")
sizes = cow.spawn_sizes(room=room)
costs = [cow.spawn_cost(m) for m in sizes]
for c in costs:
    print(f"{c.mib:>5} MiB: fork {c.fork_s * 1e3:7.2f} ms, posix_spawn {c.posix_spawn_s * 1e3:5.2f} ms")
fig = viz.spawn_plot(costs)

# %%
assert sizes[0] == 1 and all(m <= room // 2 for m in sizes[1:])    # never more than half the room
assert costs[-1].fork_s > 3 * costs[-1].posix_spawn_s
assert costs[-1].fork_s > costs[0].fork_s

# %% [markdown]
# ## 7. Python: reading an object writes to it
#
# Servers like gunicorn load an application, then fork workers, hoping the workers share its
# memory. In Python they mostly do not: every object carries a **reference count** in its
# header, and merely reading an object (iterating a list, passing it to a function) changes that
# count, which writes to the page and copies it. The cyclic garbage collector writes to every
# object it tracks. `gc.freeze()` (Python 3.7+) moves everything that exists to a permanent
# generation the collector skips, so a frozen parent's children can collect without copying;
# nothing stops reference counting.
#
# A process builds a million small lists (about 64 MiB), forks, and the child does one thing:

# %% tags=["nbval-ignore-output"]
refs = cow.refcount_story(1_000_000)
for name, mib_dirty in refs.items():
    print(f"{name:<40} {mib_dirty:6.1f} MiB copied")
fig = viz.refcount_plot(refs)

# %%
assert refs["child does nothing"] < 4
assert refs["child reads every object"] > 40
assert refs["child runs gc.collect()"] > 40
assert refs["gc.freeze(), child runs gc.collect()"] < 4
assert refs["gc.freeze(), child reads every object"] > 40

# %% [markdown]
# ## 8. Watch it live
#
# Pick a buffer size, how many pages the child should write and how fast, and press Start. A
# background thread feeds the meter (minor faults) and redraws the plot of faults and
# `Private_Dirty` as they happen. It is `cow.write_at_rate()` underneath, which you can call too:

# %% tags=["nbval-ignore-output"]
widgets.fault_meter()

# %%
with cow.Buffer(1024) as b:
    b.touch()
    with cow.Child(b) as c:
        samples = cow.write_at_rate(c, pages=512, rate=5000)
last = samples[-1]
print("pages written:", last.written, "| Private_Dirty:", last.private_kib, "KiB")
assert last.written == 512 and last.private_kib == 512 * 4      # exactly the pages written
assert 512 <= last.faults <= 512 + 64                           # plus a few of the interpreter's own

# %% [markdown]
# ## Exercises
#
# ### Exercise 02.predict: how many faults?
# A parent touches all 64 pages of a buffer and forks. The child writes to pages 0 to 31,
# **twice each**. How many minor faults do those writes cost (leave the interpreter's own out)?

# %%
my_guess = None   # your answer: a number

# %%
ex.check_fault_prediction(my_guess)

# %% [markdown]
# <details><summary>Solution</summary>
#
# The first write to each of the 32 pages copies it; the second finds the page already private:
#
# ```python
# my_guess = 32
# ```
# </details>
#
# ### Exercise 02.exactly: dirty exactly five pages
# Write a function `my_writer(buf)`; the check runs it in a child forked from a parent that
# touched a 32-page buffer, then counts the pages the child now has its own copy of. Make it
# exactly five. (Define it with `def`: the check sends it to the child by name.)

# %%
my_writer = None   # your answer: def my_writer(buf): ...

# %%
ex.check_dirty_exactly(my_writer)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_writer(buf):
#     buf.write([0, 1, 2, 3, 4])
# ```
# </details>
#
# ### Exercise 02.who: read the page table yourself
# Everything this lesson showed came from `/proc/PID/pagemap`. Write `my_entry(pid, address)`
# that returns the raw 64-bit entry of the page holding `address` in process `pid`, with
# `os.open`, `os.pread` and `int.from_bytes` (the format is in the kernel's
# `Documentation/admin-guide/mm/pagemap.rst`). The check compares your entries with the
# kernel's, then forks a child that writes page 3 and answers, with your numbers, the question
# of section 1. *Predict first:* whose frame changes, the parent's or the child's?

# %%
my_entry = None   # your answer: def my_entry(pid, address): ...

# %%
ex.check_who_copies(my_entry)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# def my_entry(pid, address):
#     fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
#     try:
#         return int.from_bytes(os.pread(fd, 8, address // 4096 * 8), "little")
#     finally:
#         os.close(fd)
# ```
# The child, the writer, gets the new frame; the parent keeps the old one, which it now maps alone.
# </details>
#
# ## Going further
# * The same copy-on-write idea, one level up: an overlay upper dir (lesson 01) copies a whole
#   file on its first write; btrfs and XFS reflinks copy extents (lesson 04).
# * `MADV_DONTFORK` keeps a mapping out of children; `MADV_WIPEONFORK` gives children zeroes.
#
# ## Clean up

# %%
buf.close()
lab.remove_tree(home)
assert lab.entries(mine=True) == [] and not home.exists()
print("clean")
