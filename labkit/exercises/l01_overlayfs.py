"""Lesson 01 exercises: order the layers, whiteout by hand, an opaque dir, find the secret.

Each ``setup_*`` makes the exercise's layers in a scratch dir and returns their paths;
each ``check_*`` mounts the learner's stack in a throwaway child (sandbox) and checks
what the kernel shows, so nothing stays mounted whatever the answer.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from .. import lab, overlay
from ..tree import write_tree
from . import exercise

ORDER_LAYERS = {  # the seed's materials, with a third delivery
    "material": {"concrete": "bad concrete\n", "rebar": "rusty rebar\n"},
    "material2": {"concrete": "good concrete\n", "marble": "marble\n"},
    "material3": {"concrete": "wet concrete\n", "rebar": "steel rebar\n"},
}
ORDER_GOAL = {"concrete": "good concrete\n", "rebar": "steel rebar\n", "marble": "marble\n"}


def setup_order() -> dict[str, Path]:
    """Three material layers in scratch/01-ex-order; returns {name: path}."""
    d = lab.scratch("01-ex-order")
    return {name: write_tree(d / name, spec) for name, spec in ORDER_LAYERS.items()}


@exercise("01.order", "order the lower layers", hints=[
    "The leftmost lowerdir is the top layer: it wins when two layers hold the same file.",
    "Good concrete is only in material2, so material2 must be above every layer that has concrete.",
    "Steel rebar (material3) must be above rusty rebar (material).",
])
def check_layer_order(lowerdirs):
    """``lowerdirs``: the three layer paths (or names), top first, as in lowerdir=."""
    layers = setup_order_paths()
    if isinstance(lowerdirs, (str, bytes, os.PathLike)) or not hasattr(lowerdirs, "__iter__"):
        yield False, (f"give a list of the layers, top first, like {sorted(layers)!r} in some order "
                      f"(you gave a {type(lowerdirs).__name__})")
        return
    try:
        chosen = [Path(p) if os.sep in str(p) else layers[str(p)] for p in lowerdirs]
    except KeyError as e:
        yield False, f"{e.args[0]!r} is not one of the layers {sorted(layers)}"
        return
    if sorted(p.name for p in chosen) != sorted(layers):
        yield False, f"use each of {sorted(layers)} exactly once (you gave {[p.name for p in chosen]})"
        return
    merged = overlay.Overlay(chosen, None, None, layers["material"].parent / "merged").peek()
    for name, want in ORDER_GOAL.items():
        got = merged.get(name)
        yield got == want, f"merged/{name} reads {got!r}" + ("" if got == want else f", want {want!r}")


def setup_order_paths() -> dict[str, Path]:
    """The layers setup_order() made in this kernel (made now if it has not run)."""
    d = lab.scratch("01-ex-order", fresh=False)
    return {name: d / name for name in ORDER_LAYERS} if all((d / n).is_dir() for n in ORDER_LAYERS) else setup_order()


def _setup_pair(name: str, lower: dict, upper: dict) -> dict[str, Path]:
    """One lower layer and an upper dir for the learner to prepare before mounting."""
    d = lab.scratch(name)
    return {"lower": write_tree(d / "base", lower), "upper": write_tree(d / "my-upper", upper),
            "work": d / "work", "merged": d / "merged"}


def _mount_pair(paths) -> dict[str, str | None]:
    """The merged tree of the learner's pair, read in a throwaway child."""
    return overlay.Overlay([paths["lower"]], paths["upper"], paths["work"], paths["merged"]).peek()


def setup_whiteout() -> dict[str, Path]:
    """A lower layer with concrete and rebar, and an empty upper dir for the learner."""
    return _setup_pair("01-ex-whiteout", {"concrete": "good concrete\n", "rebar": "steel rebar\n"}, {})


@exercise("01.whiteout", "hide a lower file with a hand-made whiteout", hints=[
    "A whiteout is a character device whose major and minor numbers are both 0.",
    "os.mknod(path, stat.S_IFCHR, os.makedev(0, 0)) makes one; the path goes in the upper dir.",
    "Name it after the file to hide: my-upper/rebar.",
])
def check_whiteout(paths):
    """``paths``: the dict setup_whiteout() returned, after the learner's change."""
    upper, lower = Path(paths["upper"]), Path(paths["lower"])
    wo = upper / "rebar"
    is_wo = os.path.lexists(wo) and overlay.is_whiteout(wo)
    yield is_wo, f"{upper.name}/rebar is " + ("a character device 0/0" if is_wo else
                                               "missing" if not os.path.lexists(wo) else
                                               f"a {stat.filemode(os.lstat(wo).st_mode)} entry, not a char device 0/0")
    yield (lower / "rebar").exists(), "the lower layer still has rebar (you hid it, not deleted it)"
    merged = _mount_pair(paths)
    yield "rebar" not in merged, "merged has no rebar" if "rebar" not in merged else "merged still shows rebar"
    yield merged.get("concrete") == "good concrete\n", "merged still shows concrete"


def setup_opaque() -> dict[str, Path]:
    """A lower conf/ with two files, and an upper conf/ with app.ini."""
    return _setup_pair("01-ex-opaque", {"conf/a.ini": "a=1\n", "conf/b.ini": "b=2\n", "readme": "hi\n"},
                       {"conf/app.ini": "app=1\n"})


@exercise("01.opaque", "make a directory opaque", hints=[
    "Without a mark, merged/conf is the union of both conf directories.",
    "An opaque directory carries the extended attribute trusted.overlay.opaque with the value y.",
    "os.setxattr(op['upper'] / 'conf', 'trusted.overlay.opaque', b'y')",
])
def check_opaque(paths):
    """``paths``: the dict setup_opaque() returned, after the learner's change."""
    lower = Path(paths["lower"])
    yield sorted(os.listdir(lower / "conf")) == ["a.ini", "b.ini"], "the lower conf/ is untouched"
    merged = _mount_pair(paths)
    conf = sorted(k for k in merged if k.startswith("conf/"))
    yield conf == ["conf/app.ini"], f"merged/conf holds {[c[5:] for c in conf]}" + (
        "" if conf == ["conf/app.ini"] else ", want only ['app.ini']")
    yield merged.get("readme") == "hi\n", "merged/readme from the lower layer is still visible"


def setup_secret() -> overlay.Overlay:
    """An image-like stack whose top layer deleted a secret; returns the mounted overlay."""
    d = lab.scratch("01-ex-secret")
    token = secrets.token_hex(8)
    ov = overlay.stack(d, {"app": {"app.py": "print('hello')\n"},
                           "base": {"etc/db-password": f"{token}\n", "etc/motd": "welcome\n"}})
    ov.mount()
    os.unlink(ov.merged / "etc" / "db-password")   # "deleted" in the top layer
    return ov


@exercise("01.secret", "recover a deleted secret", hints=[
    "The password was deleted through merged, so the upper dir holds only a whiteout.",
    "Lower layers are never changed by an overlay: look for etc/db-password in each of ov.lowerdirs.",
])
def check_secret(ov: overlay.Overlay, answer):
    """``answer``: the password text the learner found."""
    truth = (ov.lowerdirs[-1] / "etc" / "db-password").read_text().strip()
    yield not (ov.merged / "etc" / "db-password").exists(), "merged/etc/db-password is gone"
    got = (answer or "").strip()
    yield got == truth, "that is the password, still in the lower layer" if got == truth else (
        f"{got!r} is not the password" if got else "pass the password you found")
