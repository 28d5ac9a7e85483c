"""The snapshotter owns the unpacked layers: Prepare -> apply -> Commit, DiffIDs verified."""
import gzip
import os

import pytest

from labkit import lab, snapshot
from labkit.image import digest, store as st
from labkit.image import mutate
from labkit.snapshot import Snapshotter, SnapshotError
from labkit.tree import write_tree


def test_unpack_commits_each_chain_id_on_its_parent(busybox):
    d = lab.scratch("two")
    write_tree(d / "app", {"app/run.sh": "echo hi\n"})
    img = mutate.add_layer("busybox", d / "app", "app", "COPY run.sh /app/", store=busybox)
    dirs = snapshot.unpack("app", busybox)
    sn = snapshot.of(busybox)
    infos = {i.key: i for i in sn.walk()}
    assert set(infos) == set(img.chain_ids)                     # no active snapshot left behind
    assert infos[img.chain_ids[1]].parent == img.chain_ids[0] and infos[img.chain_ids[0]].parent is None
    assert all(i.kind == "committed" for i in infos.values())
    assert dirs == [sn.dir(c) for c in reversed(img.chain_ids)]
    assert (dirs[0] / "app" / "run.sh").read_text() == "echo hi\n"
    assert os.listdir(sn.root / "active") == []


def test_a_second_store_has_its_own_snapshots(busybox):
    other = st.Store(lab.root() / "elsewhere" / "store")
    busybox.save(lab.root() / "layout", "latest", "busybox")
    other.load(lab.root() / "layout", "latest", "busybox")
    mine = snapshot.unpack("busybox", busybox)
    theirs = snapshot.unpack("busybox", other)
    assert mine[0].name == theirs[0].name and mine[0] != theirs[0]
    assert theirs[0].is_relative_to(lab.root() / "elsewhere")


def _poisoned(store: st.Store, name: str) -> st.Image:
    """An image whose config claims busybox's DiffID for a layer with other bytes."""
    d = lab.scratch("evil")
    write_tree(d / "rootfs", {"bin/sh": "#!/evil\n"})
    desc, _ = store.add_layer_dir(d / "rootfs")
    genuine = store.image("busybox").diff_ids[0]
    return mutate.commit(name, [(desc, genuine)], [{"created_by": "evil"}], store=store)


def test_a_layer_that_does_not_match_its_diff_id_is_refused(busybox):
    """Cache poisoning: a layer claiming busybox's DiffID must never become busybox's snapshot."""
    _poisoned(busybox, "evil")
    with pytest.raises(digest.DigestError, match="DiffID"):
        snapshot.unpack("evil", busybox)
    sn = snapshot.of(busybox)
    assert sn.walk() == [] and os.listdir(sn.root / "active") == []
    good = snapshot.unpack("busybox", busybox)
    assert os.readlink(good[0] / "bin" / "sh") == "busybox"          # the genuine file, not "#!/evil"


def test_a_gzip_layer_is_checked_against_its_diff_id(busybox):
    d = lab.scratch("gz")
    write_tree(d / "rootfs", {"hello": "hi\n"})
    desc, diff_id = busybox.add_layer_dir(d / "rootfs")
    raw = busybox.blob_path(desc.digest).read_bytes()
    gz = busybox.put_bytes(gzip.compress(raw, mtime=0), st.LAYER_GZIP)
    good = mutate.commit("gz-good", [(gz, diff_id)], [{"created_by": "gz"}], store=busybox)
    assert (snapshot.unpack("gz-good", busybox)[0] / "hello").read_text() == "hi\n"
    bad_diff = digest.of_bytes(b"something else")
    mutate.commit("gz-bad", [(gz, bad_diff)], [{"created_by": "gz"}], base=busybox.image("busybox"), store=busybox)
    with pytest.raises(digest.DigestError, match="DiffID"):
        snapshot.unpack("gz-bad", busybox)
    assert not snapshot.of(busybox).exists(busybox.image("gz-bad").chain_ids[-1])
    assert good.chain_ids[0] == diff_id


def test_commit_is_atomic_and_a_crash_leftover_is_replaced(lab_root):
    sn = Snapshotter()
    stale = sn.root / "committed" / sn._id("x")
    write_tree(stale, {"half-written": "?"})          # a crash between rename and record
    m = sn.prepare("work")
    (m.upperdir / "whole").write_text("1")
    sn.commit("x", "work")
    assert os.listdir(sn.dir("x")) == ["whole"]
    with pytest.raises(SnapshotError, match="no snapshot"):
        sn.stat("work")


def test_two_committers_of_one_chain_id_never_delete_each_others_dir(lab_root, monkeypatch):
    """make test (lessons 03 and 07 at once in one lab root): both unpacked busybox; between one
    commit's rename and its record the other took the fresh dir for a crash's leftover and
    deleted it, and lesson 03's overlay lost /etc/passwd. Here a second process commits the same
    name in exactly that window; the first one's dir must survive (failed before: 'second')."""
    import time
    sn = Snapshotter(lab.scratch("race") / "snaps")
    for key in ("first", "second"):
        (sn.prepare(key).upperdir / "who").write_text(key)
    real_save, paused = Snapshotter._save, []

    def save_after_the_other_tried(self, info):
        if info.key == "sha256:x" and not paused:
            paused.append(os.fork())
            if paused[0] == 0:                   # the other committer, a process of its own:
                for fd in os.listdir("/proc/self/fd"):   # not holding the parent's lock by fork
                    if os.path.realpath(f"/proc/self/fd/{fd}").endswith(".commit.lock"):
                        os.close(int(fd))
                try:
                    Snapshotter(sn.root, sweep=False).commit("sha256:x", "second")
                finally:
                    os._exit(0)
            time.sleep(1)                        # without the lock it deletes and renames now
        return real_save(self, info)

    monkeypatch.setattr(Snapshotter, "_save", save_after_the_other_tried)
    sn.commit("sha256:x", "first")
    os.waitpid(paused[0], 0)
    assert (sn.dir("sha256:x") / "who").read_text() == "first"
    assert not sn.exists("second") and os.listdir(sn.root / "active") == []
