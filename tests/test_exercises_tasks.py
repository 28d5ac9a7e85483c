"""The exercises that are tasks on the real kernel: each check passes the published way of
doing it and refuses the plausible shortcut (a keyword, a copy instead of a clone, the manifest
first, a whole download again, a chroot instead of pivot_root, a file written by Python)."""
import hashlib
import os

import httpx

from labkit import container, kernel, lab, sandbox
from labkit.image import mutate
from labkit.image.store import MANIFEST
from labkit.tree import write_tree


def _push(address, repo, blobs, manifest):
    for digest, data in blobs.items():
        start = httpx.post(f"http://{address}/v2/{repo}/blobs/uploads/")
        where = httpx.URL(f"http://{address}").join(start.headers["Location"])
        httpx.put(where.copy_merge_params({"digest": digest}), content=data).raise_for_status()
    httpx.put(f"http://{address}/v2/{repo}/manifests/v1", content=manifest,
              headers={"Content-Type": MANIFEST}).raise_for_status()


def _manifest_first(address, repo, blobs, manifest):
    httpx.put(f"http://{address}/v2/{repo}/manifests/v1", content=manifest, headers={"Content-Type": MANIFEST})
    _push(address, repo, blobs, manifest)


def _resume(url, path):
    r = httpx.get(url, headers={"Range": f"bytes={os.path.getsize(path)}-"})
    with open(path, "ab") as f:
        f.write(r.content)


def _download_again(url, path):
    with open(path, "wb") as f:
        f.write(httpx.get(url).content)


def test_08_push_by_hand_and_resume(lab_root):
    from labkit.exercises import l08_registry as ex
    assert ex.check_push_order(_push).ok
    v = ex.check_push_order(_manifest_first)
    assert not v.ok and "before the blobs" in str(v)
    assert not ex.check_push_order("PUT manifest").ok         # the old keyword answer
    assert ex.check_resume(_resume).ok
    v = ex.check_resume(_download_again)
    assert not v.ok and "whole blob again" in str(v)
    assert not ex.check_resume("Range").ok


def _enter(rootfs):
    kernel.mount(rootfs, rootfs, None, kernel.MS_BIND | kernel.MS_REC)
    os.makedirs(f"{rootfs}/.old", exist_ok=True)
    kernel.pivot_root(rootfs, f"{rootfs}/.old")
    os.chdir("/")
    kernel.umount2("/.old", kernel.MNT_DETACH)
    os.rmdir("/.old")
    sandbox.close_fds()


def _chroot(rootfs):
    os.chroot(rootfs)
    os.chdir("/")


def test_05_enter_a_root_with_no_way_back(busybox):
    from labkit.exercises import l05_process as ex
    assert ex.check_escape_defence(_enter).ok
    v = ex.check_escape_defence(_chroot)
    assert not v.ok and "chroot-dotdot: the child reached the host" in str(v)
    assert not ex.check_escape_defence("close fds").ok        # the old keyword answer


def test_03_chain_id_of_the_third_layer(busybox):
    from labkit.exercises import l03_layers as ex
    d = lab.scratch("chain")
    prev = "busybox"
    for i in range(2):
        prev = mutate.add_layer(prev, write_tree(d / str(i), {f"f{i}": "x"}), f"chain/{i}", "COPY", store=busybox).name
    img = busybox.image(prev)
    d1, d2, d3 = img.diff_ids
    pair = lambda a, b: "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert ex.check_chain_id(img, pair(pair(d1, d2), d3)).ok
    v = ex.check_chain_id(img, pair(d1, d2))
    assert not v.ok and "second layer's ChainID" in str(v) and pair(pair(d1, d2), d3) not in str(v)
    assert not ex.check_chain_id(img, pair(d2, d3)).ok


def test_06_volume_survives_and_stays_out_of_commit(busybox):
    from labkit.exercises import l06_rootfs as ex
    keep = lab.scratch("keep")
    c, _ = container.run("busybox", ["/bin/sh", "-c", "echo 42 > /data/result.txt"], volumes=[f"{keep}:/data"])
    c.commit("lesson06/worker")
    assert not ex.check_volume(keep).ok                       # the container is still there
    c.remove()
    assert ex.check_volume(keep).ok
    # written by Python, and the image made another way: refused
    fake = lab.scratch("fake")
    (fake / "result.txt").write_text("42\n")
    c, _ = container.run("busybox", ["/bin/sh", "-c", "mkdir -p /data; echo 42 > /data/result.txt"])
    c.commit("lesson06/faked")
    c.remove()
    v = ex.check_volume(fake, image="lesson06/faked")
    assert not v.ok and "went into a layer" in str(v)
    for name in ("lesson06/worker", "lesson06/faked"):
        busybox.remove(name)


def test_03_mount_an_images_layers_with_mount2(lab_root):
    """03.mount: one overlay mount(2), top layer first, read-only. A copy of the layers, the
    manifest's order passed straight to lowerdir=, and an upperdir each fail."""
    import shutil
    from labkit.exercises import l03_layers as ex

    def right(lowerdirs, target):
        kernel.mount("overlay", str(target), "overlay", 0,
                     "lowerdir=" + ":".join(str(d) for d in reversed(lowerdirs)))

    def base_on_top(lowerdirs, target):
        kernel.mount("overlay", str(target), "overlay", 0, "lowerdir=" + ":".join(map(str, lowerdirs)))

    def copied(lowerdirs, target):
        for d in lowerdirs:
            shutil.copytree(d, target, symlinks=True, dirs_exist_ok=True)

    def with_upper(lowerdirs, target):
        up, work = lab.scratch("ex-up") / "u", lab.scratch("ex-up") / "w"
        up.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        kernel.mount("overlay", str(target), "overlay", 0, "lowerdir=" + ":".join(str(d) for d in reversed(lowerdirs))
                     + f",upperdir={up},workdir={work}")
    assert ex.check_mount(right).ok
    v = ex.check_mount(base_on_top)
    assert not v.ok and "which lowerdir does the kernel put on top" in str(v) and "reverse" not in str(v)
    v = ex.check_mount(copied)
    assert not v.ok and "nothing is mounted" in str(v)
    assert not ex.check_mount(with_upper).ok
    assert not ex.check_mount(None).ok
    lab.remove_tree(lab.scratch("ex-up"))


def _run_step(mounts, target, command):
    lower = ":".join(str(d) for d in mounts.lowerdirs)
    kernel.mount("overlay", str(target), "overlay", 0,
                 f"lowerdir={lower},upperdir={mounts.upperdir},workdir={mounts.workdir}")
    try:
        pid = os.fork()
        if pid == 0:
            try:
                os.chroot(target)
                os.chdir("/")
                os.execv("/bin/sh", ["sh", "-c", command])
            finally:
                os._exit(127)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    finally:
        kernel.umount2(str(target))


def test_07_a_run_step_by_hand(lab_root):
    """07.run: the published way passes; writing the files with Python into the upper dir, or
    running the command on the host, or leaving the mount, each fail."""
    import subprocess
    from labkit import overlay
    from labkit.exercises import l07_build as ex
    assert ex.check_run_step(_run_step).ok

    def by_python(mounts, target, command):
        (mounts.upperdir / "greeting").write_text("hi\n")
        return 0

    def forgot_umount(mounts, target, command):
        lower = ":".join(str(d) for d in mounts.lowerdirs)
        kernel.mount("overlay", str(target), "overlay", 0,
                     f"lowerdir={lower},upperdir={mounts.upperdir},workdir={mounts.workdir}")
        return subprocess.run(["chroot", str(target), "/bin/sh", "-c", command]).returncode
    v = ex.check_run_step(by_python)
    assert not v.ok and "no whiteout" in str(v)
    v = ex.check_run_step(forgot_umount)
    assert not v.ok and "still mounted" in str(v)
    assert not ex.check_run_step(None).ok


def _limit(group, version, pid, limit):
    from pathlib import Path
    (Path(group) / ("memory.limit_in_bytes" if version == 1 else "memory.max")).write_text(str(limit))
    (Path(group) / "cgroup.procs").write_text(str(pid))


def test_09_a_memory_cgroup_by_hand(lab_root):
    """09.cgroup: two writes pass; joining without a limit, a limit without joining, a limit in
    MiB instead of bytes, and killing the process yourself each fail."""
    import signal
    from pathlib import Path
    from labkit.exercises import l09_capstone as ex
    assert ex.check_cgroup(_limit).ok

    def no_limit(group, version, pid, limit):
        (Path(group) / "cgroup.procs").write_text(str(pid))

    def not_joined(group, version, pid, limit):
        (Path(group) / ("memory.limit_in_bytes" if version == 1 else "memory.max")).write_text(str(limit))

    def killer(group, version, pid, limit):
        os.kill(pid, signal.SIGKILL)
    v = ex.check_cgroup(no_limit)
    assert not v.ok and "the limit is not in force" in str(v)
    v = ex.check_cgroup(not_joined)
    assert not v.ok and "not in the group" in str(v)
    assert not ex.check_cgroup(killer).ok
    assert not ex.check_cgroup(None).ok


def test_06_a_bind_mount_by_hand(lab_root):
    """06.bind: one MS_BIND mount passes; a copy of the host directory, a symlink to it, and
    nothing at all fail."""
    import shutil
    from labkit.exercises import l06_rootfs as ex

    def bind(host_dir, rootfs, path):
        target = os.path.join(rootfs, path.lstrip("/"))
        os.makedirs(target, exist_ok=True)
        kernel.mount(str(host_dir), target, None, kernel.MS_BIND)

    def copy(host_dir, rootfs, path):
        shutil.copytree(host_dir, os.path.join(rootfs, path.lstrip("/")))

    def symlink(host_dir, rootfs, path):
        os.symlink(host_dir, os.path.join(rootfs, path.lstrip("/")))
    assert ex.check_bind(bind).ok
    v = ex.check_bind(copy)
    assert not v.ok and "nothing is mounted" in str(v) and "copied, not mounted" in str(v)
    assert not ex.check_bind(symlink).ok
    assert not ex.check_bind(None).ok


def test_05_the_smallest_capability_set(busybox):
    """05.caps: CHOWN + NET_BIND_SERVICE passes; too few fails; one too many is 'smaller'."""
    from labkit.exercises import l05_process as ex
    assert ex.check_caps(["CHOWN", "NET_BIND_SERVICE"]).ok
    v = ex.check_caps(["CHOWN"])
    assert not v.ok and "something is missing" in str(v)
    v = ex.check_caps(["CHOWN", "NET_BIND_SERVICE", "KILL"])
    assert not v.ok and "can go" in str(v)
    assert not ex.check_caps(["WIZARD"]).ok and not ex.check_caps(None).ok
