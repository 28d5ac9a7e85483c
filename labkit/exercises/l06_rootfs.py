"""Lesson 06 exercises: commit a change; keep data in a volume."""
from __future__ import annotations

from pathlib import Path

from .. import lab
from ..image import store as st
from ..tree import read_tree
from . import exercise


@exercise("06.commit", "commit a change, and only that", hints=[
    "container.run('busybox', ['/bin/sh', '-c', '...']) returns the container and its result.",
    "Write the file in the command, then c.commit('lesson06/hello').",
])
def check_commit(name="lesson06/hello"):
    """The image ``name`` must have /srv/hello.txt saying hi, and no init-layer files."""
    s = st.Store()
    if name not in s.refs():
        yield False, f"there is no image {name!r} yet: commit your container as {name}"
        return
    flat = lab.scratch("06-ex-commit")
    s.flatten(name, flat)
    tree = read_tree(flat)
    yield (tree.get("srv/hello.txt") or "").strip() == "hi", "srv/hello.txt says hi" if (
        tree.get("srv/hello.txt") or "").strip() == "hi" else "srv/hello.txt is missing or does not say hi"
    yield "etc/hostname" not in tree, "the init layer's etc/hostname stayed out of the image"
    lab.remove_tree(flat)


@exercise("06.volume", "keep data after the container is gone", hints=[
    "A bind volume is HOST:CTR; the host directory must lie under the lab root.",
    "volumes=[f'{home}/keep:/data'], then write /data/result.txt in the command and remove the container.",
])
def check_volume(host_dir):
    """``host_dir``: the host side of your volume; result.txt must be there, the container gone."""
    if not host_dir:
        yield False, "pass the host directory of your volume"
        return
    p = Path(host_dir) / "result.txt"
    yield p.is_file(), "result.txt is on the host" if p.is_file() else f"{p} does not exist"
    from .. import container
    users = [c.id for c in container.containers() if any(v.startswith(f"{host_dir}:") for v in c.cfg.volumes)]
    yield not users, "the container that wrote it is removed" if not users else f"remove container {users[0]} first"
