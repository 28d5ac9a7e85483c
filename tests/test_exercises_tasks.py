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
