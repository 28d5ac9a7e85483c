"""Lesson 02 exercises: predict the faults, dirty exactly k pages, who gets the copy."""
from __future__ import annotations

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


@exercise("02.who", "who gets the new frame?", hints=[
    "Look at the PFN table before and after the child's write (or at the exclusive bits).",
    "The writer is the one whose write faulted; the kernel gives the writer a fresh copy.",
])
def check_who_copies(answer):
    """``answer``: "parent", "child" or "both": whose page table points at a new frame
    after the child writes page 3."""
    if answer not in ("parent", "child", "both"):
        yield False, 'answer "parent", "child" or "both"'
        return
    with cow.Buffer(8) as buf:
        buf.touch()
        before = cow.pagemap("self", buf.address, buf.pages)
        with cow.Child(buf) as child:
            child_before = child.pagemap()
            child.write([3])
            after, child_after = cow.pagemap("self", buf.address, buf.pages), child.pagemap()
    if before[3].pfn is not None:
        moved = {"parent": before[3].pfn != after[3].pfn, "child": child_before[3].pfn != child_after[3].pfn}
        how = "physical frame numbers"
    else:
        moved = {"parent": False, "child": child_after[3].exclusive and not child_before[3].exclusive}
        how = "the exclusive bit"
    truth = "both" if all(moved.values()) else next((k for k, v in moved.items() if v), "neither")
    yield answer == truth, f"measured with {how}: {truth}" + ("" if answer == truth else f", not {answer!r}")
