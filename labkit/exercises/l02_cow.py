"""Lesson 02 exercises: predict the faults, dirty exactly k pages, read pagemap yourself."""
from __future__ import annotations

import os

from .. import cow
from . import exercise

PREDICT = dict(pages=64, writes=32, repeat=2)
EXACTLY = 5


@exercise("02.predict", "predict the minor faults", hints=[
    "A child shares every touched page with its parent until it writes to one.",
    "The first write to a shared page faults and copies it; the page is then the child's own.",
    "A second write to a page the child already owns does not fault.",
])
def check_fault_prediction(guess):
    """``guess``: the number of minor faults for the writes described in the lesson."""
    if guess is None:
        yield False, "replace None with your number"
        return
    p = PREDICT
    with cow.Buffer(p["pages"]) as buf:
        buf.touch()
        with cow.Child(buf) as child:
            baseline = child.write([])                     # the same call, no page written
            measured = child.write([i for i in range(p["writes"]) for _ in range(p["repeat"])])
            copied = sum(not r.shared for r in cow.compare(buf, child))
    ok = int(guess) == copied or abs(int(guess) - (measured - baseline)) <= 6
    yield ok, (f"you said {guess}; the child copied {copied} pages, and its writes took {measured} "
               f"minor faults (an empty call takes {baseline}: the interpreter's own heap is "
               "copy-on-write too)")


@exercise("02.exactly", f"make a child dirty exactly {EXACTLY} pages", hints=[
    "Your function gets the Buffer; buf.write([...]) writes one byte to each page you list.",
    "Writing the same page twice copies it once; writing five different pages copies five.",
    "def my_writer(buf): buf.write([0, 1, 2, 3, 4])",
])
def check_dirty_exactly(fn):
    """``fn(buf)`` runs in a forked child; exactly EXACTLY pages of a 32-page buffer must be copied."""
    if fn is None:
        yield False, "define a function my_writer(buf) and pass it"
        return
    with cow.Buffer(32) as buf:
        buf.touch(1)
        with cow.Child(buf) as child:
            child.run(fn)
            rows = cow.compare(buf, child)
        copied = [r.index for r in rows if not r.shared]
        yield len(copied) == EXACTLY, f"the child has its own copy of pages {copied}" + (
            "" if len(copied) == EXACTLY else f": {len(copied)}, want {EXACTLY}")
        yield all(buf.map[i * cow.PAGE] == 1 for i in range(buf.pages)), \
            "the parent's pages still hold what the parent wrote"


def _entry(pid, address: int) -> int:
    """The raw pagemap entry (Documentation/admin-guide/mm/pagemap.rst): the reference."""
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        return int.from_bytes(os.pread(fd, 8, address // cow.PAGE * 8), "little")
    finally:
        os.close(fd)


@exercise("02.who", "read the page table yourself: who gets the new frame?", hints=[
    "/proc/PID/pagemap holds one 64-bit little-endian entry per virtual page: the entry of "
    "address A is at byte offset (A // 4096) * 8.",
    "os.open the file, os.pread(fd, 8, offset), int.from_bytes(..., 'little'); close the fd.",
    "Bit 63: present; bits 0-54: the frame number (0 unless root); bit 56: mapped only here.",
])
def check_who_copies(my_entry):
    """``my_entry(pid, address)``: the raw 64-bit pagemap entry of the page at ``address`` in
    process ``pid``. The check compares it with the kernel's for pages of its own buffer (half
    touched) and of a forked child that wrote page 3, then answers the lesson's question with
    the learner's own numbers."""
    if not callable(my_entry):
        yield False, "define my_entry(pid, address) and pass the function itself"
        return
    with cow.Buffer(8) as buf:
        buf.write(range(4))                      # pages 0-3 present, 4-7 never touched
        pages = [buf.address + i * cow.PAGE for i in range(8)]
        mine = [my_entry(os.getpid(), a) for a in pages]
        ref = [_entry(os.getpid(), a) for a in pages]
        yield mine == ref, ("your entries match the kernel's for 8 pages of this process (4 present, 4 not)"
                            if mine == ref else f"pages {[i for i in range(8) if mine[i] != ref[i]]} of this "
                            "process differ from the kernel's entries")
        with cow.Child(buf) as child:
            before = my_entry(child.pid, pages[3])
            child.write([3])
            child_after, parent_after = my_entry(child.pid, pages[3]), my_entry(os.getpid(), pages[3])
            ok = child_after == _entry(child.pid, pages[3])
            yield ok, ("and for the child after its write" if ok else
                       "the child's entry for page 3 differs from the kernel's")
    if mine == ref and ok:
        frame = lambda e: e & cow.PFN_MASK
        if frame(ref[3]):
            moved = (f"the child's page 3 moved from frame {frame(before)} to {frame(child_after)}; the parent "
                     f"kept {frame(parent_after)}: the writer gets the copy")
        else:
            moved = ("the child's page 3 is now exclusive (bit 56) while it was shared before: the writer gets "
                     "the copy (frame numbers read as 0 without root)")
        yield True, moved
