"""Lesson 03 exercises: write a layer by hand, compute a ChainID, find a deleted secret."""
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
