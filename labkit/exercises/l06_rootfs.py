"""Lesson 06 exercises: commit a change; keep data in a volume; a bind mount by hand."""
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


@exercise("06.volume", "data in a volume outlives the container, and stays out of commit", hints=[
    "A bind volume is HOST:CTR; the host directory must lie under the lab root.",
    "container.run('busybox', [...], volumes=[f'{home}/keep:/data']) writes through to the host "
    "directory; c.commit(name) saves only the read-write layer, where /data is an empty mount point.",
    "Write /data/result.txt in the command, commit, then c.remove().",
])
def check_volume(host_dir, image: str = "lesson06/worker"):
    """``host_dir``: the host side of the volume. The check runs two containers of ``image``:
    with the volume the file is there, without it it is not (it was never in a layer)."""
    from .. import container
    if not host_dir:
        yield False, "pass the host directory of your volume"
        return
    p = Path(host_dir) / "result.txt"
    yield p.is_file(), "result.txt is on the host" if p.is_file() else f"{p} does not exist"
    users = [c.id for c in container.containers() if any(v.startswith(f"{host_dir}:") for v in c.cfg.volumes)]
    yield not users, "the container that wrote it is removed" if not users else f"remove container {users[0]} first"
    s = st.Store()
    if image not in s.refs():
        yield False, f"there is no image {image!r}: commit your container as {image}"
        return
    made_by = (s.image(image).history or [{}])[-1].get("created_by", "")
    yield made_by.startswith("labkit commit"), ("the image was made by commit" if made_by.startswith("labkit commit")
                                                else f"{image} was not made by committing a container")
    if not p.is_file():
        return
    _, r = container.run(image, ["/bin/cat", "/data/result.txt"], volumes=[f"{host_dir}:/data"], rm=True)
    yield r.exit_code == 0 and r.stdout == p.read_text(), (
        "a new container with the volume reads the same result.txt" if r.exit_code == 0 and r.stdout == p.read_text()
        else "a new container with the volume does not read the same result.txt")
    _, r = container.run(image, ["/bin/cat", "/data/result.txt"], rm=True)
    yield r.exit_code != 0, ("without the volume /data is empty: the file was never in a layer" if r.exit_code != 0
                             else "without the volume the image still has /data/result.txt: it went into a layer")


@exercise("06.bind", "a volume by hand: one bind mount", hints=[
    "A volume is a bind mount: the host directory mounted again at a path inside the rootfs.",
    "kernel.mount(source, target, None, kernel.MS_BIND): no file system type, no options.",
    "The target must exist: make rootfs/<path> first (os.makedirs), then mount the host dir onto it.",
])
def check_bind(my_bind):
    """``my_bind(host_dir, rootfs, path)``: make ``host_dir`` appear at ``path`` inside
    ``rootfs``. Run in a throwaway child with its own mount namespace; a file written through
    the rootfs must land in ``host_dir`` (and the host's file be seen inside), by a bind mount."""
    if not callable(my_bind):
        yield False, "define my_bind(host_dir, rootfs, path) and pass it"
        return
    import os
    from .. import sandbox
    from ..mountinfo import mounts
    work = lab.fresh_dir(lab.scratch("06-ex-bind"))
    host, rootfs = work / "host-data", work / "rootfs"
    host.mkdir()
    (host / "from-host.txt").write_text("written on the host\n")
    (rootfs / "bin").mkdir(parents=True)

    def attempt():
        my_bind(host, rootfs, "/data")
        target = rootfs / "data"
        m = next((m for m in mounts() if str(m.mountpoint) == str(target)), None)
        seen = (target / "from-host.txt").read_text() if (target / "from-host.txt").exists() else None
        if target.is_dir():
            (target / "from-container.txt").write_text("written inside\n")
        return (m.root, m.fstype) if m else None, seen
    try:
        try:
            mounted, seen = sandbox.run(attempt)
        except Exception as e:       # noqa: BLE001 - the learner's error, in one line
            yield False, f"my_bind raised {type(e).__name__}: {e}"
            return
        yield mounted is not None, "rootfs/data is a mount point" if mounted else "nothing is mounted at rootfs/data"
        yield seen == "written on the host\n", ("the host's file is seen inside" if seen else
                                                "rootfs/data does not show the host directory's file")
        landed = (host / "from-container.txt").exists()
        yield landed, ("a file written inside landed in the host directory" if landed else
                       "a file written inside did not reach the host directory: was it copied, not mounted?")
        gone = not (rootfs / "data").is_dir() or (rootfs / "data").is_symlink() is False and not os.listdir(rootfs / "data")
        yield gone, ("outside the child, rootfs/data is empty again: the mount lived in its namespace" if gone else
                     "outside the child, rootfs/data still holds files: it is not a mount")
    finally:
        lab.remove_tree(work)
