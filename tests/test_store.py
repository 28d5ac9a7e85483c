"""The OCI store: content addressing, verification, sharing, and the real tools reading it."""
import json
import os
import subprocess

import pytest

from labkit import lab, overlay, snapshot
from labkit.image import digest, store as st
from labkit.image import mutate
from labkit.image.store import StoreError
from labkit.tree import read_tree, write_tree


@pytest.fixture
def store(busybox):
    return busybox


def test_layout_on_disk(store):
    assert json.loads((store.path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    img = store.image("busybox")
    for desc in [img.manifest_desc, img.config_desc, *img.layers]:
        assert digest.of_file(store.blob_path(desc.digest)) == (desc.digest, desc.size)
    assert img.diff_ids == [img.layers[0].digest]          # uncompressed: DiffID = blob digest
    assert img.chain_ids == img.diff_ids
    assert "busybox" in (store.path / "index.json").read_text()


def test_chain_ids_follow_the_spec():
    a, b, c = (digest.of_bytes(x) for x in (b"a", b"b", b"c"))
    ab = digest.of_bytes(f"{a} {b}".encode())
    assert digest.chain_ids([a, b, c]) == [a, ab, digest.of_bytes(f"{ab} {c}".encode())]


def test_images_share_base_layers_and_rm_keeps_what_others_need(store):
    d = lab.scratch("share")
    write_tree(d / "app1", {"app": "one"})
    write_tree(d / "app2", {"app": "two"})
    one = mutate.add_layer("busybox", d / "app1", "app1", "COPY app /app", store=store)
    two = mutate.add_layer("busybox", d / "app2", "app2", "COPY app /app", store=store)
    assert one.layers[0] == two.layers[0] and one.layers[1] != two.layers[1]
    assert one.chain_ids[0] == two.chain_ids[0] and one.chain_ids[1] != two.chain_ids[1]
    assert [h["created_by"] for h in one.history] == ["busybox-static from the host", "COPY app /app"]
    freed = store.remove("app1")
    assert freed and one.layers[0].digest not in freed and one.layers[1].digest in freed
    assert store.has_blob(two.layers[0].digest)
    assert store.image("app2").layers == two.layers


def test_same_content_same_image_digest(lab_root):
    s = st.Store()
    d = lab.scratch("same")
    write_tree(d / "r", {"x": "1"})
    a = mutate.import_rootfs(d / "r", "a", created_by="import", store=s)
    b = mutate.import_rootfs(d / "r", "b", created_by="import", store=s)
    assert a.manifest_desc.digest == b.manifest_desc.digest


def test_unpack_is_cached_by_chain_id_and_mounts(store):
    dirs = snapshot.unpack("busybox", store)
    assert [p.name for p in dirs] == [digest.encoded(c) for c in store.image("busybox").chain_ids][::-1]
    mtime = dirs[0].stat().st_mtime_ns
    assert snapshot.unpack("busybox", store) == dirs and dirs[0].stat().st_mtime_ns == mtime
    c = lab.scratch("ctr")
    with overlay.Overlay(dirs, c / "upper", c / "work", c / "merged") as ov:
        out = subprocess.run(["chroot", str(ov.merged), "/bin/sh", "-c", "echo hi from $(cat /etc/passwd | head -c 4)"],
                             capture_output=True, text=True, check=True).stdout
    assert out == "hi from root\n"


def test_a_corrupt_blob_is_caught_on_read(store):
    img = store.image("busybox")
    p = store.blob_path(img.layers[0].digest)
    os.chmod(p, 0o644)
    with open(p, "r+b") as f:
        f.seek(1000)
        f.write(b"tampered")
    with pytest.raises(digest.DigestError, match="corrupt"):
        store.flatten("busybox", lab.root() / "flat")


def test_malformed_digests_never_become_paths(store):
    for bad in ["sha256:../../../etc/passwd", "sha256:" + "A" * 64, "md5:abc", "sha256:abc", 42]:
        with pytest.raises(digest.DigestError, match="not a valid digest"):
            store.blob_path(bad)
    idx = json.loads((store.path / "index.json").read_text())
    idx["manifests"].append({"mediaType": st.MANIFEST, "digest": "sha256:../../x", "size": 1,
                             "annotations": {st.REF_NAME: "evil"}})
    (store.path / "index.json").write_text(json.dumps(idx))
    with pytest.raises(digest.DigestError, match="'sha256:../../x' is not a valid digest"):
        store.images()


def test_malformed_manifest_and_oversized_json(store, tmp_path):
    bad = store.put_bytes(b'{"schemaVersion": 1}', st.MANIFEST)
    store.set_ref("broken", bad)
    with pytest.raises(StoreError, match="malformed"):
        store.image("broken")
    store.remove_ref("broken")
    huge = st.Descriptor(st.MANIFEST, digest.of_bytes(b"x"), st.MAX_JSON + 1)
    with pytest.raises(StoreError, match="at most"):
        store.read_json(huge)


def test_wrong_digest_on_load_is_refused(store):
    out = lab.root() / "saved"
    store.save(out, "v1", "busybox")
    lay = st.Layout(out, create=False)
    layer_desc = store.image("busybox").layers[0]
    with open(lay.blob_path(layer_desc.digest), "ab") as f:
        f.write(b"extra")
    store.remove("busybox")
    with pytest.raises(digest.DigestError):
        store.load(out, "v1", "again")
    assert "again" not in store.refs()


def test_load_names_the_missing_tag(store):
    out = lab.root() / "saved"
    store.save(out, "v1", "busybox")
    with pytest.raises(StoreError, match="tags there: v1"):
        store.load(out, "v2")
    with pytest.raises(StoreError, match="not an OCI image layout"):
        store.load(lab.root(), "v1")


def test_bad_names_are_refused(store):
    with pytest.raises(StoreError, match="not a valid image name"):
        mutate.commit("Bad Name", [], [], store=store)


# --- the real tools --------------------------------------------------------------------------------
def test_skopeo_inspects_the_store_directly(store):
    out = subprocess.run(["skopeo", "inspect", f"oci:{store.path}:busybox"], capture_output=True, text=True,
                         check=True).stdout
    info = json.loads(out)
    assert info["Digest"] == store.image("busybox").manifest_desc.digest
    assert info["Layers"] == store.image("busybox").diff_ids


def test_skopeo_copies_both_ways(store):
    other = lab.root() / "other"
    subprocess.run(["skopeo", "copy", f"oci:{store.path}:busybox", f"oci:{other}:copied"], check=True,
                   capture_output=True)
    img = store.load(other, "copied", "from-skopeo")
    mine = store.image("busybox")
    assert img.diff_ids == mine.diff_ids          # skopeo may gzip the layer; the content is the same
    assert read_tree(store.flatten("from-skopeo", lab.root() / "f1")) == read_tree(
        store.flatten("busybox", lab.root() / "f2"))
    subprocess.run(["skopeo", "copy", f"oci:{other}:copied", f"oci:{store.path}:written-by-skopeo"], check=True,
                   capture_output=True)
    assert store.image("written-by-skopeo").diff_ids == store.image("busybox").diff_ids


def test_umoci_unpack_matches_labkit_flatten(store):
    d = lab.scratch("umoci")
    write_tree(d / "up", {"etc/motd": "layer two\n"})
    mutate.add_layer("busybox", d / "up", "two", "echo > /etc/motd", store=store)
    out = d / "layout"
    store.save(out, "latest", "two")
    subprocess.run(["umoci", "unpack", "--image", f"{out}:latest", str(d / "bundle")], check=True,
                   capture_output=True)
    flat = store.flatten("two", d / "flat")
    assert read_tree(flat) == read_tree(d / "bundle" / "rootfs")
    assert (flat / "etc" / "motd").read_text() == "layer two\n"


def test_a_gzip_bomb_stops_before_the_disk_is_full(tmp_path, monkeypatch):
    """A 200 KiB gzip layer that inflates to 300 MiB, on a 96 MiB lab filesystem: the error
    names the layer and the space, the partial file is gone at once, the lab keeps its space."""
    import gzip
    import io
    from labkit import kernel
    from labkit.image.layer import LayerError
    from tests.helpers import need
    need(os.geteuid() == 0, "root")
    small = tmp_path / "small"
    small.mkdir()
    kernel.mount("tmpfs", str(small), "tmpfs", 0, "size=96m")
    try:
        monkeypatch.setenv("LABKIT_HOME", str(small / "lab"))
        s = st.Store()
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb") as z:
            for _ in range(300):
                z.write(bytes(1 << 20))
        buf.seek(0)
        desc = s.put_blob(buf, st.LAYER_GZIP)
        with pytest.raises(LayerError, match=r"layer sha256:[0-9a-f]{12} \(gzip, \d+ bytes\) needs .* MiB are free"):
            s.open_layer(desc)
        assert list((small / "lab" / "tmp").iterdir()) == []
        free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
        assert free > 90 << 20
        lab.reset()
    finally:
        kernel.umount2(str(small))


def test_remove_frees_only_its_own_blobs_and_base_image_is_made_once(store):
    """Two lessons share one store: removing one lesson's image must not delete the blobs
    another lesson has written but not yet named (a full gc() would); and two kernels asking
    for the base image at once must not build it over each other."""
    import io
    import threading
    d = lab.scratch("own")
    write_tree(d, {"x": "mine"})
    mutate.add_layer("busybox", d, "lesson/mine", "COPY x", store=store)
    in_progress = store.put_blob(io.BytesIO(b"another lesson's layer, not named yet"), st.LAYER)
    freed = store.remove("lesson/mine")
    assert freed and store.has_blob(in_progress.digest) and "busybox" in store.refs()
    from labkit.image.base import base_image
    fresh = st.Store(lab.root() / "scratch" / "two-kernels")
    errors = []

    def make():
        try:
            base_image(fresh)
        except Exception as e:      # noqa: BLE001 - the test reports it
            errors.append(e)
    threads = [threading.Thread(target=make) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and list(fresh.refs()) == ["busybox"]


def test_an_untagged_image_is_unreferenced_and_gc_spares_what_another_kernel_is_writing(store):
    """Moving a name to a new build leaves the old manifest, config and layer untagged
    (Docker's <none>:<none>): unreferenced() lists them, gc() deletes them. A blob written (or
    claimed again by the build cache) within the grace period is kept: before, gc() deleted a
    layer another kernel had stored but not yet named."""
    import io
    import time as _time
    d = lab.scratch("dangling")
    write_tree(d / "v1", {"app": "one"})
    write_tree(d / "v2", {"app": "two"})
    old = mutate.add_layer("busybox", d / "v1", "lesson/app", "COPY app", store=store)
    new = mutate.add_layer("busybox", d / "v2", "lesson/app", "COPY app", store=store)
    stale = {old.manifest_desc.digest, old.config_desc.digest, old.layers[-1].digest}
    assert set(store.unreferenced()) == stale and new.layers[0].digest not in store.unreferenced()
    assert store.gc() == []                                    # all written just now: in the grace period
    in_progress = store.put_blob(io.BytesIO(b"another kernel's layer, not named yet"), st.LAYER)
    past = _time.time() - 3600
    for digest_ in stale | {in_progress.digest}:
        os.utime(store.blob_path(digest_), (past, past))
    assert store.claim_blob(in_progress.digest)                 # e.g. a build-cache hit on it, now
    assert store.gc() == sorted(stale)
    assert store.has_blob(in_progress.digest) and store.image("lesson/app").layers == new.layers
    again = mutate.add_layer("busybox", d / "v1", "lesson/other", "COPY app", store=store)   # the old build's layer back
    newer = mutate.add_layer("busybox", d / "v2", "lesson/other", "COPY app", store=store)
    with pytest.raises(StoreError, match="still has a name"):
        store.remove_untagged(newer.manifest_desc.digest)
    assert store.remove_untagged(again.manifest_desc.digest) == sorted({again.manifest_desc.digest, again.config_desc.digest,
                                                                       again.layers[-1].digest})
    store.remove("lesson/app")
    store.remove("lesson/other")


def test_labkit_image_prune(store, capsys):
    from labkit import cli
    d = lab.scratch("prune")
    write_tree(d / "v1", {"app": "one"})
    write_tree(d / "v2", {"app": "two"})
    mutate.add_layer("busybox", d / "v1", "lesson/p", "COPY app", store=store)
    mutate.add_layer("busybox", d / "v2", "lesson/p", "COPY app", store=store)
    assert cli.main(["image", "prune", "--dry-run"]) == 0 and "3 blob(s)" in capsys.readouterr().out
    assert cli.main(["image", "prune"]) == 0 and "deleted 0 blob(s)" in capsys.readouterr().out
    assert cli.main(["image", "prune", "--grace", "0"]) == 0 and "deleted 3 blob(s)" in capsys.readouterr().out
    assert store.unreferenced() == {}
    store.remove("lesson/p")


def test_rebase_puts_the_same_layer_blobs_on_a_new_base(store):
    """mutate.rebase: the app's layer blobs are reused (same digests, same DiffIDs), the
    ChainIDs change, the tree is the new base's plus the app's; a wrong old base is refused."""
    d = lab.scratch("rebase")
    write_tree(d / "patch", {"etc/motd": "patched\n"})
    write_tree(d / "app", {"app/run.sh": "echo hi\n"})
    mutate.add_layer("busybox", d / "patch", "t/busybox-patched", "COPY motd", store=store)
    app = mutate.add_layer("busybox", d / "app", "t/app", "COPY app", store=store)
    moved = mutate.rebase("t/app", "busybox", "t/busybox-patched", "t/app-patched", store=store)
    assert moved.layers[-1] == app.layers[-1] and moved.diff_ids[-1] == app.diff_ids[-1]
    assert moved.chain_ids[-1] != app.chain_ids[-1] and len(moved.layers) == 3
    tree = read_tree(store.flatten("t/app-patched", d / "flat"))
    assert tree["etc/motd"] == "patched\n" and tree["app/run.sh"] == "echo hi\n"
    assert moved.history[-1]["created_by"].startswith("rebase from busybox")
    with pytest.raises(StoreError, match="is not a base of"):
        mutate.rebase("t/app", "t/busybox-patched", "busybox", "t/nope", store=store)
    for n in ("t/app-patched", "t/app", "t/busybox-patched"):
        store.remove(n)
