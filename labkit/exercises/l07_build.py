"""Lesson 07 exercises: order a Dockerfile for the cache; a RUN step by hand; squash away a secret."""
from __future__ import annotations

import os

from .. import build, lab
from ..image import store as st, waste
from ..tree import read_tree
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
    "The token is still in the layer that COPY made; deleting it later only added a whiteout on top.",
    "A squash keeps the base image's layers and replaces everything above them by one layer: the "
    "final tree's difference from the base (labkit.squash).",
    "squash.squash(image, base, new_name, store=store), with busybox as the base.",
])
def check_squashed(name: str, leaky: str = "lesson07/leaky"):
    """``name``: an image built on busybox's own layer whose final tree is ``leaky``'s, with no
    layer that stores root/.token. The trees are compared file by file, so an image made some
    other way (a fresh build without the secret, a copy of busybox) does not pass."""
    s = st.Store()
    if not isinstance(name, str) or not name:
        yield False, "pass the name of your image"
        return
    if name not in s.refs() or name == leaky:
        yield False, f"{name!r} is not a new image in the store" if name != leaky else "that is the leaky image itself"
        return
    mine, theirs, base = s.image(name), s.image(leaky), s.image("busybox")
    entries = [m.name for layer in waste.layer_entries(s, name) for m in layer]
    yield "root/.token" not in entries, ("no layer stores root/.token" if "root/.token" not in entries
                                         else "a layer still stores root/.token")
    yield mine.layers[:len(base.layers)] == base.layers, (
        "it still shares busybox's layer (nothing of the base is copied)" if mine.layers[:len(base.layers)] == base.layers
        else "its first layer is not busybox's own: the base must stay shared")
    yield len(mine.layers) < len(theirs.layers), (
        f"{len(mine.layers)} layers instead of {len(theirs.layers)}" if len(mine.layers) < len(theirs.layers)
        else f"it has {len(mine.layers)} layers, as many as {leaky}")
    d = lab.scratch("07-ex-squash")
    same = read_tree(s.flatten(name, d / "mine")) == read_tree(s.flatten(leaky, d / "theirs"))
    lab.remove_tree(d)
    yield same, "its files are exactly those of lesson07/leaky" if same else \
        f"its files differ from those of {leaky}: the squash must keep the final tree"


RUN_COMMAND = "echo hi > /greeting && rm /bin/vi"


@exercise("07.run", "a RUN step by hand: mount, chroot, exec, unmount", hints=[
    "A RUN step mounts the snapshot (an overlay: lowerdirs, upperdir, workdir) and runs the command "
    "with that mount as its root; what the command changes lands in the upper dir.",
    "kernel.mount('overlay', str(target), 'overlay', 0, 'lowerdir=...,upperdir=...,workdir=...'); "
    "the Mounts' lowerdirs are already top first.",
    "Fork; in the child os.chroot(target), os.chdir('/'), os.execv('/bin/sh', ['sh', '-c', command]); "
    "in the parent os.waitpid, then kernel.umount2(str(target)).",
])
def check_run_step(my_run):
    """``my_run(mounts, target, command) -> exit status``: run ``command`` with the snapshot
    ``mounts`` (snapshot.Mounts) mounted on ``target`` as its root, then unmount. Called in a
    throwaway child with its own mount namespace on a fresh snapshot of busybox; the upper dir
    must then hold exactly what the command changed."""
    if not callable(my_run):
        yield False, "define my_run(mounts, target, command) and pass it"
        return
    import uuid
    from .. import sandbox, snapshot
    from ..mountinfo import is_mountpoint
    from .. import overlay
    s = st.Store()
    from ..image.base import base_image
    base_image(s)
    sn = snapshot.of(s)
    snapshot.unpack("busybox", s)
    key = f"07-ex-run/{uuid.uuid4().hex[:8]}"
    m = sn.prepare(key, s.image("busybox").chain_ids[-1])
    target = lab.fresh_dir(lab.scratch("07-ex-run") / "rootfs")

    def attempt():
        status = my_run(m, target, RUN_COMMAND)
        return status, is_mountpoint(target)
    try:
        try:
            status, still = sandbox.run(attempt)
        except Exception as e:       # noqa: BLE001 - the learner's error, told in one line
            yield False, f"my_run raised {type(e).__name__}: {e}"
            return
        yield status == 0, f"the command exited {status}" + ("" if status == 0 else ", want 0")
        yield not still, "target is unmounted afterwards" if not still else "target is still mounted: unmount it at the end"
        upper = read_tree(m.upperdir)
        greeting = (upper.get("greeting") or "")
        yield greeting == "hi\n", ("/greeting is in the upper dir" if greeting == "hi\n" else
                                   "the upper dir has no /greeting: did the command run with the mount as its root?")
        wo = m.upperdir / "bin" / "vi"
        whiteout = os.path.lexists(wo) and overlay.is_whiteout(wo)
        yield whiteout, ("rm /bin/vi left a whiteout in the upper dir" if whiteout else
                         "no whiteout for /bin/vi in the upper dir: was the overlay the root?")
        yield all((d / "bin" / "vi").exists() for d in m.lowerdirs[-1:]), "the image's own layer still has /bin/vi"
    finally:
        sn.remove(key)
        lab.remove_tree(target.parent)
