"""Lesson 07 exercises: order a Dockerfile for the cache; squash away a secret."""
from __future__ import annotations

from .. import build, lab
from ..image import store as st, waste
from . import exercise


@exercise("07.cache", "order a Dockerfile for the cache", hints=[
    "A step's cache key includes everything before it: once one step misses, all later ones run again.",
    "Put the slow RUN (which does not need app.py) before COPY app.py.",
])
def check_cache_order(dockerfile: str):
    """``dockerfile``: the text. After app.py changes, the slow RUN step must come from the cache."""
    if not dockerfile:
        yield False, "pass your Dockerfile text"
        return
    ctx = lab.scratch("07-ex-cache")
    cache = lab.scratch("07-ex-cache-records")   # cold for every check: an earlier try cannot help
    (ctx / "app.py").write_text("print('v1')\n")
    build.build(ctx, "lesson07/ex-cache", dockerfile, quiet=True, cache_dir=cache)
    (ctx / "app.py").write_text("print('v2')\n")
    steps = build.build(ctx, "lesson07/ex-cache", dockerfile, quiet=True, cache_dir=cache).steps
    slow = [s for s in steps if s.instruction.name == "RUN" and "slow" in s.instruction.args]
    copies = [s for s in steps if s.instruction.name == "COPY" and "app.py" in s.instruction.args]
    yield bool(slow) and bool(copies), "it has the slow RUN and the COPY of app.py" if slow and copies else \
        "keep both the RUN with 'slow' in it and COPY app.py"
    if slow:
        yield slow[0].cached, "the slow step came from the cache after app.py changed" if slow[0].cached else \
            "the slow step ran again: it comes after COPY app.py"
    st.Store().remove_ref("lesson07/ex-cache")


@exercise("07.squash", "squash a leaked secret away", hints=[
    "Squashing with `squash.squash(name, base, new, store=store)` keeps only the final tree's difference from base.",
    "After squashing onto busybox, no layer of the new image contains root/.token.",
])
def check_squashed(name: str):
    """``name``: an image with the content of lesson07/leaky but no layer holding root/.token."""
    s = st.Store()
    if not name or name not in s.refs():
        yield False, f"there is no image {name!r}" if name else "pass the name of your squashed image"
        return
    entries = [m.name for layer in waste.layer_entries(s, name) for m in layer]
    yield "root/.token" not in entries, "no layer stores root/.token" if "root/.token" not in entries else \
        "a layer still stores root/.token"
    yield "app/data" in entries, "the rest of the build (app/data) is still there"
