"""Images as the real tools make them (issue 17): skopeo writes docker schema 2 and zstd images,
indexes and manifest lists, docker- and oci-archives; labkit pulls, loads and runs them, and
what labkit saves the real tools read. A refused pull or load names nothing and leaves the
store usable."""
import io
import json
import subprocess
import tarfile

import httpx
import pytest

from labkit import cli, container, lab, tree
from labkit.errors import LabError
from labkit.image import archive, digest as dg, formats, store as st
from labkit.registry import client, server


def skopeo(*args) -> subprocess.CompletedProcess:
    r = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture
def reg(lab_root):
    with server.serve(lab.root() / "registry") as srv:
        yield srv


@pytest.fixture
def layout(busybox):
    """busybox in an OCI layout, plus "multi": an index of it (linux/amd64) and of an arm64
    twin (same layers, its config says arm64), as a multi-platform build would write."""
    out = st.Layout(busybox.save(lab.root() / "layout", "v1", "busybox"))
    img = busybox.image("busybox")
    entries = []
    for arch, variant in (("amd64", ""), ("arm64", "v8")):
        cfg = dict(img.config, architecture=arch, **({"variant": variant} if variant else {}))
        cdesc = out.put_json(cfg, st.CONFIG)
        m = dict(img.manifest, config=cdesc.to_json())
        mdesc = out.put_json(m, st.MANIFEST)
        entries.append(dict(mdesc.to_json(), platform={"os": "linux", "architecture": arch,
                                                        **({"variant": variant} if variant else {})}))
    idx = out.put_json({"schemaVersion": 2, "mediaType": st.INDEX, "manifests": entries}, st.INDEX)
    out.set_ref("multi", idx)
    return out.path


def _runs(name: str, store) -> None:
    _, r = container.run(name, ["/bin/sh", "-c", "echo works"], rm=True, store=store)
    assert r.exit_code == 0 and r.stdout == "works\n", r.stderr


def _same_tree(store, a: str, b: str) -> None:
    assert tree.read_tree(store.flatten(a, lab.scratch("ta"))) == tree.read_tree(store.flatten(b, lab.scratch("tb")))


# --- pull -------------------------------------------------------------------------------------
def test_a_docker_schema2_image_with_gzip_layers_pulls_runs_and_the_store_stays_usable(busybox, reg, layout):
    """Before: the pull failed and image ls, image rm and reset failed until index.json was edited."""
    skopeo("copy", "--dest-tls-verify=false", "--format", "v2s2", "--dest-compress", f"oci:{layout}:v1",
           f"docker://{reg.address}/lab/d2:v1")
    img = client.pull(f"{reg.address}/lab/d2:v1", "d2", store=busybox)
    assert img.manifest_desc.media_type == formats.DOCKER_MANIFEST
    assert {d.media_type for d in img.layers} == {"application/vnd.docker.image.rootfs.diff.tar.gzip"}
    _runs("d2", busybox)
    _same_tree(busybox, "d2", "busybox")
    assert cli.main(["image", "ls"]) == 0 and cli.main(["image", "rm", "d2"]) == 0


def test_zstd_layers_pull_and_run(busybox, reg, layout):
    skopeo("copy", "--dest-tls-verify=false", "--format", "oci", "--dest-compress-format", "zstd",
           "--dest-compress", f"oci:{layout}:v1", f"docker://{reg.address}/lab/z:v1")
    img = client.pull(f"{reg.address}/lab/z:v1", "z", store=busybox)
    assert {d.media_type for d in img.layers} == {formats.OCI_LAYER + "+zstd"}
    _runs("z", busybox)


@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_an_index_or_manifest_list_gives_this_machines_platform_or_the_one_asked_for(busybox, reg, layout, fmt):
    """Before: KeyError 'config' (a traceback)."""
    skopeo("copy", "--all", "--dest-tls-verify=false", "--format", fmt, f"oci:{layout}:multi",
           f"docker://{reg.address}/lab/multi:v1")
    here = formats.Platform.host()
    img = client.pull(f"{reg.address}/lab/multi:v1", "multi-here", store=busybox)
    assert img.config["architecture"] == here.architecture
    other = "linux/arm64" if here.architecture != "arm64" else "linux/amd64"
    img = client.pull(f"{reg.address}/lab/multi:v1", "multi-other", store=busybox, platform=other)
    assert img.config["architecture"] == other.split("/")[1]
    with pytest.raises(formats.FormatError, match=r"has no image for linux/s390x \(it has: linux/amd64, linux/arm64/v8\)"):
        client.pull(f"{reg.address}/lab/multi:v1", "nope", store=busybox, platform="linux/s390x")
    assert "nope" not in busybox.refs()


def test_pull_by_digest(busybox, reg):
    client.push("busybox", f"{reg.address}/lab/bb:v1", store=busybox)
    want = busybox.image("busybox").manifest_desc.digest
    img = client.pull(f"{reg.address}/lab/bb@{want}", "by-digest", store=busybox)   # before: "not HOST:PORT/REPO:TAG"
    assert img.manifest_desc.digest == want
    with pytest.raises(LabError, match="MANIFEST_UNKNOWN|404"):
        client.pull(f"{reg.address}/lab/bb@sha256:{'0' * 64}", "none", store=busybox)


def _push_raw(reg, repo: str, blobs: dict[bytes, str], manifest: dict) -> None:
    """Blobs and a manifest put into labkit's registry as they are (no client's rules)."""
    with httpx.Client(base_url=f"http://{reg.address}") as h:
        for data in blobs:
            r = h.post(f"/v2/{repo}/blobs/uploads/", params={"digest": dg.of_bytes(data)}, content=data)
            assert r.status_code == 201, r.text
        body = json.dumps(manifest).encode()
        r = h.put(f"/v2/{repo}/manifests/v1", content=body, headers={"Content-Type": manifest["mediaType"]})
        assert r.status_code == 201, r.text


def test_a_layer_labelled_gzip_but_stored_uncompressed_runs(busybox, reg):
    """Docker cross-mounts such blobs; podman and docker accept them. Before: "None: None"."""
    img = busybox.image("busybox")
    with busybox.open_blob(img.layers[0]) as r:
        raw = r.read()
    with busybox.open_blob(img.config_desc) as r:
        cfg = r.read()
    manifest = {"schemaVersion": 2, "mediaType": formats.DOCKER_MANIFEST,
                "config": {"mediaType": formats.DOCKER_CONFIG, "digest": dg.of_bytes(cfg), "size": len(cfg)},
                "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                            "digest": dg.of_bytes(raw), "size": len(raw)}]}
    _push_raw(reg, "lab/mislabelled", {raw: "", cfg: ""}, manifest)
    client.pull(f"{reg.address}/lab/mislabelled:v1", "mislabelled", store=busybox)
    _runs("mislabelled", busybox)


def test_an_artifact_or_a_lying_diffid_is_refused_in_one_line_and_names_nothing(busybox, reg):
    empty = b"{}"
    art = b"not an image"
    _push_raw(reg, "lab/art", {empty: "", art: ""}, {
        "schemaVersion": 2, "mediaType": formats.OCI_MANIFEST, "artifactType": "application/vnd.example.sbom",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": dg.of_bytes(empty), "size": 2},
        "layers": [{"mediaType": "application/vnd.example.sbom", "digest": dg.of_bytes(art), "size": len(art)}]})
    before = busybox.refs()
    with pytest.raises(LabError, match="is an artifact of type application/vnd.example.sbom") as e:
        client.pull(f"{reg.address}/lab/art:v1", "art", store=busybox)
    assert len(str(e.value).splitlines()) == 1
    img = busybox.image("busybox")
    cfg = dict(img.config, rootfs={"type": "layers", "diff_ids": ["sha256:" + "1" * 64]})
    cfgb = json.dumps(cfg).encode()
    with busybox.open_blob(img.layers[0]) as r:
        raw = r.read()
    _push_raw(reg, "lab/liar", {cfgb: "", raw: ""}, {
        "schemaVersion": 2, "mediaType": formats.OCI_MANIFEST,
        "config": {"mediaType": st.CONFIG, "digest": dg.of_bytes(cfgb), "size": len(cfgb)},
        "layers": [{"mediaType": st.LAYER, "digest": dg.of_bytes(raw), "size": len(raw)}]})
    with pytest.raises(LabError, match="DiffID"):
        client.pull(f"{reg.address}/lab/liar:v1", "liar", store=busybox)
    assert busybox.refs() == before and cli.main(["image", "ls"]) == 0


def test_a_store_holding_another_tools_index_still_lists_and_removes(busybox, layout, capsys):
    """skopeo copy --all into the store writes an index under a name: image ls lists it as
    unreadable (before: every image ls, rm and reset failed), image rm removes it."""
    skopeo("copy", "--all", f"oci:{layout}:multi", f"oci:{busybox.path}:multi")
    assert cli.main(["image", "ls"]) == 0
    out = capsys.readouterr().out
    assert "busybox" in out and "multi" in out and "(unreadable)" in out
    assert cli.main(["image", "rm", "multi"]) == 0 and "multi" not in busybox.refs()
    assert busybox.image("busybox")


# --- archives ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive"])
def test_load_an_archive_skopeo_wrote(busybox, layout, kind):
    f = lab.root() / f"bb.{kind}.tar"
    dest = f"{kind}:{f}:docker.io/library/busybox:latest" if kind == "docker-archive" else f"{kind}:{f}:busybox:latest"
    skopeo("copy", f"oci:{layout}:v1", dest)
    img = archive.load(busybox, f)
    assert img.name == "busybox"                  # docker.io/library/busybox:latest, as docker names it
    assert cli.main(["image", "load", "-i", str(f), "-t", "loaded"]) == 0
    _runs("loaded", busybox)
    _same_tree(busybox, "loaded", "busybox")


def test_an_index_in_an_oci_archive_gives_this_machines_platform(busybox, layout):
    f = lab.root() / "multi.tar"
    skopeo("copy", "--all", f"oci:{layout}:multi", f"oci-archive:{f}:multi")
    img = archive.load(busybox, f, "multi-loaded")
    assert img.config["architecture"] == formats.Platform.host().architecture


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_save_writes_an_archive_the_real_tools_read(busybox, fmt):
    f = lab.root() / f"saved.{fmt}"
    assert cli.main(["image", "save", "busybox", "-o", str(f), "--format", fmt]) == 0
    info = json.loads(skopeo("inspect", f"{fmt}:{f}").stdout)
    assert info["Layers"] and info["Architecture"]
    back = lab.root() / "back"
    skopeo("copy", f"{fmt}:{f}", f"oci:{back}:v1")
    subprocess.run(["umoci", "unpack", "--image", f"{back}:v1", str(lab.root() / "bundle")], check=True,
                   capture_output=True)
    assert tree.read_tree(lab.root() / "bundle" / "rootfs") == tree.read_tree(busybox.flatten("busybox", lab.scratch("f")))
    assert archive.load(busybox, f, "round-trip").diff_ids == busybox.image("busybox").diff_ids


def test_a_damaged_or_foreign_archive_is_refused_in_one_line(busybox, tmp_path):
    junk = lab.root() / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(archive.ArchiveError, match="is not a tar archive"):
        archive.load(busybox, junk)
    f = lab.root() / "bb.tar"
    archive.save(busybox, "busybox", f)
    bad = lab.root() / "tampered.tar"
    with tarfile.open(f) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.endswith("layer.tar"):
                data = data[:-1024] + b"x" * 1024           # a changed layer: its DiffID no longer holds
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    before = busybox.refs()
    with pytest.raises(LabError, match="DiffID|not a valid|tar"):
        archive.load(busybox, bad, "tampered")
    assert busybox.refs() == before


def test_an_oci_ref_whose_tag_holds_a_colon(busybox):
    """Before: DIR:busybox:latest was read as DIR:busybox + tag latest."""
    d = lab.root() / "colon"
    assert cli.main(["image", "save", "busybox", "--oci", f"{d}:busybox:latest"]) == 0
    assert "busybox:latest" in st.Layout(d, create=False).refs()
    assert cli.main(["image", "load", "--oci", f"{d}:busybox:latest", "-t", "colon"]) == 0
