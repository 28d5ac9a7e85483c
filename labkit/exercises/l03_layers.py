"""Lesson 03 exercises: write a layer by hand, compute a ChainID, find a deleted secret, mount an image."""
from __future__ import annotations

import hashlib

import secrets

from .. import lab
from ..image import digest, layer, store as st
from ..image import mutate
from ..image.base import base_image
from ..tree import read_tree, write_tree
from . import exercise


@exercise("03.handmade", "write a layer tar by hand", hints=[
    "A layer is a plain tar. Python's tarfile module writes one: tarfile.open(path, 'w').",
    "To delete bin/vi, the layer holds an empty file named bin/.wh.vi.",
    "Add etc/motd as a regular file with TarInfo('etc/motd'), info.size = len(data), tar.addfile(info, BytesIO(data)).",
])
def check_handmade(tar_path):
    """``tar_path``: a layer that deletes bin/vi and adds etc/motd saying 'built by hand'."""
    if tar_path is None:
        yield False, "pass the path of your layer tar"
        return
    s = st.Store()
    base_image(s)
    dest = lab.scratch("03-ex-handmade-check")
    s.flatten("busybox", dest)
    layer.apply(tar_path, dest)
    tree = read_tree(dest)
    yield "bin/vi" not in tree, "bin/vi is gone" if "bin/vi" not in tree else "bin/vi is still there"
    motd = (tree.get("etc/motd") or "").strip()
    yield motd == "built by hand", f"etc/motd says {motd!r}" + ("" if motd == "built by hand" else ", want 'built by hand'")
    yield "bin/sh" in tree, "the rest of busybox is untouched"
    lab.remove_tree(dest)


@exercise("03.chainid", "compute a ChainID by hand", hints=[
    "The ChainID of the first layer is its DiffID.",
    "ChainID(n) = sha256 of the text ChainID(n-1) + ' ' + DiffID(n), written as 'sha256:<hex>'.",
    "Two steps: chain2 from DiffIDs 1 and 2, then chain3 from chain2 and DiffID 3 (hashlib.sha256).",
])
def check_chain_id(image, answer):
    """``answer``: the ChainID of the third layer of ``image`` (a store.Image), computed with
    hashlib from its DiffIDs. A wrong answer is told which common slip it is, not the value."""
    if not isinstance(answer, str) or not answer:
        yield False, "pass the ChainID you computed, as a string 'sha256:...'"
        return
    chains, diffs = digest.chain_ids(image.diff_ids), image.diff_ids
    pair = lambda a, b: "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    slips = {chains[1]: "that is the second layer's ChainID: one more step",
             diffs[2]: "that is the third layer's DiffID: a ChainID also covers every layer below",
             pair(diffs[1], diffs[2]): "you joined two DiffIDs: the left side must be the ChainID below",
             pair(diffs[0], diffs[2]): "the left side must be the second layer's ChainID, not the first DiffID"}
    if not answer.startswith("sha256:"):
        yield False, "a ChainID is written 'sha256:<64 hex digits>'"
    elif answer == chains[2]:
        yield True, "that is the ChainID the store computed for the whole three-layer stack"
    else:
        yield False, slips.get(answer, f"{answer[:19]}... is not the third layer's ChainID")


def setup_secret_image(name: str = "leaky") -> st.Image:
    """An image whose second layer adds a token and whose third layer deletes it."""
    s = st.Store()
    base_image(s)
    d = lab.scratch("03-ex-secret")
    write_tree(d / "add", {"root/.token": secrets.token_hex(12) + "\n"})
    mutate.add_layer("busybox", d / "add", name + "-build", "COPY .token /root/.token", store=s)
    (d / "del").mkdir()
    write_tree(d / "del", {"root/": None})
    from .. import overlay
    overlay.make_whiteout(d / "del" / "root" / ".token")
    img = mutate.add_layer(name + "-build", d / "del", name, "RUN rm /root/.token", store=s)
    s.remove_ref(name + "-build")
    return img


@exercise("03.secret", "read a token deleted two layers ago", hints=[
    "Deleting a file in a later layer only adds a whiteout; the older layer still holds the file.",
    "waste.read_from_layer(store, name, index, path) reads a file from one layer.",
])
def check_secret_token(answer, name: str = "leaky"):
    s = st.Store()
    from ..image import waste
    truth = waste.read_from_layer(s, name, 1, "root/.token").decode().strip()
    flat = lab.scratch("03-ex-secret-check")
    s.flatten(name, flat)
    yield not (flat / "root" / ".token").exists(), "the image's final tree has no /root/.token"
    lab.remove_tree(flat)
    got = (answer or "").strip()
    yield got == truth, "that is the token, still stored in layer 1" if got == truth else (
        "not the token" if got else "pass the token you found")


def setup_mount(name: str = "lesson03/versions") -> list:
    """An image of busybox and three layers that each write app/version (1, 2, 3), unpacked;
    returns its layer directories **base first**, in the manifest's order."""
    from .. import snapshot
    s = st.Store()
    base_image(s)
    d = lab.scratch("03-ex-mount")
    prev = "busybox"
    for v in (1, 2, 3):
        write_tree(d / f"v{v}", {"app/version": f"{v}\n", f"app/only-in-{v}": "x\n"})
        prev = mutate.add_layer(prev, d / f"v{v}", name if v == 3 else f"{name}-{v}", f"COPY version {v}", store=s).name
    for v in (1, 2):
        s.remove_ref(f"{name}-{v}")
    return list(reversed(snapshot.unpack(name, s)))


@exercise("03.mount", "mount an image's layers yourself (mount(2))", hints=[
    "An image's layers become a root filesystem with one overlay mount, read-only: lowerdir only.",
    "kernel.mount(source, target, fstype, flags, data) is mount(2); data is the option string, "
    "'lowerdir=A:B:C'.",
    "The manifest lists layers base first; lowerdir= wants them the other way round (lesson 01).",
])
def check_mount(my_mount, name: str = "lesson03/versions"):
    """``my_mount(lowerdirs, target)``: mount the layer dirs (base first) read-only on ``target``.
    Run in a throwaway child with its own mount namespace; the merged tree must be the image's
    and must come from an overlay mount, not from copied files."""
    if not callable(my_mount):
        yield False, "define my_mount(lowerdirs, target) and pass it"
        return
    from .. import sandbox
    from ..mountinfo import mounts
    s = st.Store()
    layers = setup_mount(name)
    target = lab.fresh_dir(lab.scratch("03-ex-mount-check") / "rootfs")
    want = read_tree(s.flatten(name, lab.fresh_dir(target.parent / "flat")))

    def attempt():
        my_mount(list(layers), target)
        m = next((m for m in mounts() if str(m.mountpoint) == str(target)), None)
        return (m.fstype, m.super_options) if m else None, read_tree(target)
    try:
        mounted, got = sandbox.run(attempt)
    except Exception as e:       # noqa: BLE001 - the learner's error, told in one line
        yield False, f"my_mount raised {type(e).__name__}: {e}"
        return
    finally:
        lab.remove_tree(target.parent)
    yield mounted is not None, "target is a mount point" if mounted else "nothing is mounted on target"
    if mounted is None:
        return
    yield mounted[0] == "overlay", f"it is a {mounted[0]} mount" + ("" if mounted[0] == "overlay" else ", want overlay")
    version = (got.get("app/version") or "").strip()
    yield version == "3", ("app/version says 3: the newest layer is on top" if version == "3" else
                           f"app/version says {version or 'nothing'}: which lowerdir does the kernel put on top?")
    yield got == want, ("the merged tree is the image's, file for file" if got == want else
                        f"{len(set(got) ^ set(want))} paths differ from the image's tree")
    yield "upperdir=" not in mounted[1], "read-only: no upper dir" if "upperdir=" not in mounted[1] else \
        "an image's layers are read-only: no upperdir"
