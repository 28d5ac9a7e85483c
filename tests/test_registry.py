"""The registry against the distribution spec's rules and against skopeo; the client's
parallel, resumable pull and chunked push; token auth; a bounded load test."""
import hashlib
import json
import subprocess
import threading

import httpx
import pytest

from labkit import lab, tree
from labkit.errors import LabError
from labkit.image import digest as dg, store as st
from labkit.image import mutate
from labkit.registry import auth, client, link, server


@pytest.fixture
def store(busybox):
    s = busybox
    d = lab.scratch("fat")
    tree.write_tree(d, {"data/blob": 4 << 20})
    mutate.add_layer("busybox", d, "fat", "COPY blob", store=s)
    return s


@pytest.fixture
def reg(lab_root):
    log = []
    with server.serve(lab.root() / "registry", log=log) as srv:
        srv.log = log
        yield srv


def http(srv):
    return httpx.Client(base_url=f"http://{srv.address}", timeout=30)


# --- skopeo, the real client ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_skopeo_push_inspect_tags_pull_delete(store, reg, fmt):
    out = store.save(lab.root() / "layout", "v1", "fat")
    dest = f"docker://{reg.address}/lab/fat:v1"
    run = lambda *a: subprocess.run(["skopeo", *a], capture_output=True, text=True, timeout=120)
    r = run("copy", "--dest-tls-verify=false", "--format", fmt, f"oci:{out}:v1", dest)
    assert r.returncode == 0, r.stderr
    info = json.loads(run("inspect", "--tls-verify=false", dest).stdout)
    assert len(info["Layers"]) == 2
    assert json.loads(run("list-tags", "--tls-verify=false", f"docker://{reg.address}/lab/fat").stdout)["Tags"] == ["v1"]
    back = lab.root() / "back"
    r = run("copy", "--src-tls-verify=false", dest, f"oci:{back}:v1")
    assert r.returncode == 0, r.stderr
    subprocess.run(["umoci", "unpack", "--image", f"{back}:v1", str(lab.root() / "bundle")], check=True,
                   capture_output=True)
    assert tree.read_tree(lab.root() / "bundle" / "rootfs") == tree.read_tree(store.flatten("fat", lab.scratch("f")))
    assert run("delete", "--tls-verify=false", dest).returncode == 0
    assert http(reg).get("/v2/lab/fat/manifests/v1").status_code == 404
    methods = [m for m, _, _ in reg.log]
    assert "PATCH" in methods and all(code < 500 for _, _, code in reg.log)


# --- labkit's client -----------------------------------------------------------------------------
def test_push_then_pull_parallel_and_serial(store, reg):
    trace = []
    client.push("fat", f"{reg.address}/lab/fat:v1", trace=trace, store=store)
    order = [e.what for e in trace if e.method == "PUT"]
    assert order[-1] == "manifest" and order.index("finish config") > order.index("finish layer 2/2")
    for par in (1, 4):
        img = client.pull(f"{reg.address}/lab/fat:v1", name=f"back{par}", parallel=par, store=store)
        assert img.manifest_desc.digest == store.image("fat").manifest_desc.digest
    again = []
    client.push("fat", f"{reg.address}/lab/fat:v1", trace=again, store=store)
    assert [e.method for e in again] == ["HEAD", "HEAD", "HEAD", "PUT"]     # nothing uploaded twice


def test_interrupted_layer_resumes_with_range(store, reg):
    client.push("fat", f"{reg.address}/lab/fat:v1", store=store)
    trace = []
    img = client.pull(f"{reg.address}/lab/fat:v1", name="resumed", trace=trace,
                      transport=link.Cut(store.image("fat").layers[1].digest, 300_001), store=store)
    layer2 = [e for e in trace if e.what.startswith("layer 2/2")]
    assert [e.status for e in layer2] == [-1, 206] and "resume at 300001" in layer2[1].what   # what came is kept
    assert [e.status for e in trace if e.what.startswith("layer 1/2")] == [200]     # the other layer: once
    assert img.diff_ids == store.image("fat").diff_ids


def test_a_cut_upload_resumes_where_the_registry_says_it_stopped(store, reg):
    """A PATCH cut 300,001 bytes into its body: the client GETs the upload's status, the
    registry says how much it kept (Range), and the next PATCH starts there. Before: the push
    failed with the transport error."""
    trace = []
    client.push("fat", f"{reg.address}/lab/fat:v1", trace=trace, chunk=1 << 20,
                transport=link.CutUpload(300_001), store=store)
    cut = next(i for i, e in enumerate(trace) if e.status == -1)
    assert trace[cut].method == "PATCH" and trace[cut + 1].method == "GET" and trace[cut + 1].status == 204
    resumed = trace[cut + 2]
    assert resumed.method == "PATCH" and resumed.status == 202
    assert resumed.what == "layer 1/2 300001+1048576"        # every byte that went out was kept
    img = client.pull(f"{reg.address}/lab/fat:v1", name="back", store=store)
    assert img.manifest_desc.digest == store.image("fat").manifest_desc.digest


class _LateCutPatch:
    """WSGI middleware: the cut PATCH's bytes are stored only after the client's status GET
    was answered (a busy server whose worker for the dropped connection ran late)."""

    def __init__(self, app):
        self.app, self.status_answered, self.patches = app, threading.Event(), 0

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        if method == "PATCH":
            self.patches += 1
            if self.patches == 1:
                self.status_answered.wait(10)
        out = list(self.app(environ, start_response))
        if method == "GET" and "/blobs/uploads/" in environ["PATH_INFO"]:
            self.status_answered.set()
            threading.Event().wait(0.5)      # the late PATCH stores its bytes meanwhile
        return out


def test_a_cut_upload_whose_bytes_land_after_the_status_resumes(store, lab_root):
    """Failed once in make test (lesson 08 under load): the status GET said 0 bytes, then the
    cut PATCH's 300,001 bytes were stored, and the next PATCH from 0 got 416 and the push
    failed. The client now asks again on 416 and goes on from what the registry has."""
    app = server.Registry(lab.root() / "registry")
    with server.Server(_LateCutPatch(app), "127.0.0.1", 0) as srv:
        trace = []
        client.push("fat", f"{srv.address}/lab/fat:v1", trace=trace, chunk=1 << 20,
                    transport=link.CutUpload(300_001), store=store)
        statuses = [(e.method, e.status) for e in trace if e.what.startswith("layer 1/2")
                    or e.what.startswith("status layer 1/2")]
        assert ("PATCH", 416) in statuses
        img = client.pull(f"{srv.address}/lab/fat:v1", name="back", store=store)
    assert img.manifest_desc.digest == store.image("fat").manifest_desc.digest


def test_corrupted_blob_is_caught(store, reg):
    client.push("fat", f"{reg.address}/lab/fat:v1", store=store)
    layer = store.image("fat").layers[-1]
    p = lab.root() / "registry" / "blobs" / "sha256" / dg.encoded(layer.digest)
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(client.RegistryError, match="arrived as"):
        client.pull(f"{reg.address}/lab/fat:v1", name="bad", retries=1, store=store)
    assert "bad" not in store.refs()


def test_only_the_last_layer(store, reg):
    client.push("fat", f"{reg.address}/lab/fat:v1", store=store)
    trace = []
    p = client.pull_last_layer(f"{reg.address}/lab/fat:v1", trace=trace)
    assert [e.what for e in trace] == ["manifest", "layer 2/2"]
    assert dg.of_file(p)[0] == store.image("fat").layers[-1].digest


# --- the spec's rules -----------------------------------------------------------------------------
def _start(c, repo="lab/x"):
    r = c.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202
    return r.headers["Location"]


def test_chunked_upload_rules(reg):
    c = http(reg)
    loc = _start(c)
    assert c.patch(loc, content=b"abc", headers={"Content-Range": "0-2"}).status_code == 202
    status = c.get(loc)
    assert status.status_code == 204 and status.headers["Range"] == "0-2"
    bad = c.patch(loc, content=b"zzz", headers={"Content-Range": "7-9"})
    assert bad.status_code == 416 and bad.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
    assert c.patch(loc, content=b"def", headers={"Content-Range": "3-5"}).status_code == 202
    wrong = c.put(loc, params={"digest": dg.of_bytes(b"nope")})
    assert wrong.status_code == 400 and wrong.json()["errors"][0]["code"] == "DIGEST_INVALID"
    loc = _start(c)
    c.patch(loc, content=b"abcdef")
    done = c.put(loc, params={"digest": dg.of_bytes(b"abcdef")})
    assert done.status_code == 201 and done.headers["Docker-Content-Digest"] == dg.of_bytes(b"abcdef")
    assert c.get(loc).status_code == 404                  # a finished upload is gone
    part = c.get(f"/v2/lab/x/blobs/{dg.of_bytes(b'abcdef')}", headers={"Range": "bytes=2-4"})
    assert part.status_code == 206 and part.content == b"cde"


def test_monolithic_post_and_cross_repo_mount(reg):
    c = http(reg)
    d = dg.of_bytes(b"hello")
    assert c.post("/v2/lab/a/blobs/uploads/", params={"digest": d}, content=b"hello").status_code == 201
    assert c.head(f"/v2/lab/b/blobs/{d}").status_code == 404          # not linked into b yet
    m = c.post("/v2/lab/b/blobs/uploads/", params={"mount": d, "from": "lab/a"})
    assert m.status_code == 201 and c.head(f"/v2/lab/b/blobs/{d}").status_code == 200
    assert c.post("/v2/lab/c/blobs/uploads/", params={"mount": d, "from": "lab/none"}).status_code == 202


def _manifest(c, repo, tag, blobs=()):
    for b in blobs:
        c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": dg.of_bytes(b)}, content=b)
    cfg = b"{}"
    c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": dg.of_bytes(cfg)}, content=cfg)
    doc = {"schemaVersion": 2, "mediaType": st.MANIFEST,
           "config": {"mediaType": st.CONFIG, "digest": dg.of_bytes(cfg), "size": 2},
           "layers": [{"mediaType": st.LAYER, "digest": dg.of_bytes(b), "size": len(b)} for b in blobs]}
    return doc, c.put(f"/v2/{repo}/manifests/{tag}", content=json.dumps(doc), headers={"Content-Type": st.MANIFEST})


def test_manifest_rules(reg):
    c = http(reg)
    doc, r = _manifest(c, "lab/m", "v1", [b"layer"])
    assert r.status_code == 201
    body = c.get("/v2/lab/m/manifests/v1")
    assert body.content == json.dumps(doc).encode() and body.headers["Content-Type"] == st.MANIFEST
    assert body.headers["Docker-Content-Digest"] == dg.of_bytes(body.content)
    missing = dict(doc, layers=[{"mediaType": st.LAYER, "digest": dg.of_bytes(b"absent"), "size": 6}])
    r = c.put("/v2/lab/m/manifests/v2", content=json.dumps(missing), headers={"Content-Type": st.MANIFEST})
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"   # as distribution
    huge = c.put("/v2/lab/m/manifests/v3", content=b"{" + b" " * (server.MAX_MANIFEST + 10) + b"}",
                 headers={"Content-Type": st.MANIFEST})
    assert huge.status_code == 413
    assert c.put("/v2/lab/m/manifests/v4", content=b"not json", headers={"Content-Type": st.MANIFEST}).status_code == 400
    assert c.delete(f"/v2/lab/m/manifests/{body.headers['Docker-Content-Digest']}").status_code == 202
    assert c.get("/v2/lab/m/manifests/v1").json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_tags_list_paginates(reg):
    c = http(reg)
    for t in ("a", "b", "c", "d"):
        _manifest(c, "lab/t", t)
    assert c.get("/v2/lab/t/tags/list").json()["tags"] == ["a", "b", "c", "d"]
    page = c.get("/v2/lab/t/tags/list", params={"n": 2})
    assert page.json()["tags"] == ["a", "b"] and "last=b" in page.headers["Link"]
    assert c.get("/v2/lab/t/tags/list", params={"n": 2, "last": "b"}).json()["tags"] == ["c", "d"]
    assert c.get("/v2/lab/none/tags/list").json()["errors"][0]["code"] == "NAME_UNKNOWN"


def test_referrers(reg):
    c = http(reg)
    _, r = _manifest(c, "lab/r", "v1")
    subject = r.headers["Docker-Content-Digest"]
    cfg = b'{"sig": 1}'
    c.post("/v2/lab/r/blobs/uploads/", params={"digest": dg.of_bytes(cfg)}, content=cfg)
    art = {"schemaVersion": 2, "mediaType": st.MANIFEST, "artifactType": "application/vnd.lab.signature",
           "config": {"mediaType": "application/vnd.lab.signature", "digest": dg.of_bytes(cfg), "size": len(cfg)},
           "layers": [], "subject": {"mediaType": st.MANIFEST, "digest": subject, "size": 1}}
    put = c.put("/v2/lab/r/manifests/" + dg.of_bytes(json.dumps(art).encode()), content=json.dumps(art),
                headers={"Content-Type": st.MANIFEST})
    assert put.status_code == 201 and put.headers["OCI-Subject"] == subject
    refs = c.get(f"/v2/lab/r/referrers/{subject}").json()["manifests"]
    assert [m["artifactType"] for m in refs] == ["application/vnd.lab.signature"]
    assert c.get(f"/v2/lab/r/referrers/{subject}", params={"artifactType": "other"}).json()["manifests"] == []


@pytest.mark.parametrize("path,code", [
    ("/v2/lab/x/blobs/sha256:zz", "DIGEST_INVALID"),
    ("/v2/lab/x/blobs/sha256:..%2f..%2fetc%2fpasswd", ("DIGEST_INVALID", "UNSUPPORTED")),
    ("/v2/Bad_Name/blobs/" + "sha256:" + "0" * 64, "NAME_INVALID"),
    ("/v2/lab/x/blobs/uploads/not-an-upload", "BLOB_UPLOAD_UNKNOWN"),
    ("/v2/lab/x/blobs/" + "sha256:" + "0" * 64, "BLOB_UNKNOWN"),
])
def test_hostile_or_unknown_requests_get_spec_errors(reg, path, code):
    r = http(reg).get(path)
    assert r.status_code < 500 and r.json()["errors"][0]["code"] in (code if isinstance(code, tuple) else (code,))
    assert not list((lab.root() / "registry" / "repositories").iterdir())     # nothing written


# --- auth -----------------------------------------------------------------------------------------
def test_token_auth(store, lab_root):
    users = lab.root() / "users"
    users.write_text(f"alice:{auth.TokenAuth.hash_password('secret')}\n"
                     f"bob:{auth.TokenAuth.hash_password('hunter2')}\n")
    assert users.read_text().startswith("alice:$2y$10$")            # as htpasswd -B writes it
    a = auth.TokenAuth(users, anonymous_pull=True, grants={"bob": ["lab/*"]})
    with server.serve(lab.root() / "registry", auth=a) as srv:
        r = http(srv).get("/v2/alice/fat/tags/list")
        assert r.status_code == 401 and 'Bearer realm="' in r.headers["WWW-Authenticate"]
        with pytest.raises(client.RegistryError, match="401"):
            client.push("fat", f"{srv.address}/alice/fat:v1", store=store)           # anonymous: pull only
        with pytest.raises(auth.AuthError, match="token service refused"):
            client.push("fat", f"{srv.address}/alice/fat:v1", user="alice", password="wrong", store=store)
        client.push("fat", f"{srv.address}/alice/fat:v1", user="alice", password="secret", store=store)
        img = client.pull(f"{srv.address}/alice/fat:v1", name="anon", store=store)    # anonymous pull allowed
        assert img.diff_ids == store.image("fat").diff_ids
        # per-repository access: alice pushes only under alice/; bob is granted lab/*
        with pytest.raises(client.RegistryError, match="DENIED: alice may not push lab/fat"):
            client.push("fat", f"{srv.address}/lab/fat:v1", user="alice", password="secret", store=store)
        with pytest.raises(client.RegistryError, match="DENIED: bob may not push alice/fat"):
            client.push("fat", f"{srv.address}/alice/fat:v2", user="bob", password="hunter2", store=store)
        client.push("fat", f"{srv.address}/lab/fat:v1", user="bob", password="hunter2", store=store)
        assert client.pull(f"{srv.address}/lab/fat:v1", name="from-bob", store=store).diff_ids == img.diff_ids


def test_users_file_must_hold_bcrypt_hashes(lab_root):
    users = lab.root() / "users"
    users.write_text("alice:" + hashlib.sha256(b"secret").hexdigest() + "\n")
    with pytest.raises(auth.AuthError, match="line 1: the password of 'alice' is not a bcrypt hash"):
        auth.TokenAuth(users)
    users.write_text("alice:$2y$05$" + "a" * 53 + "\n")            # any cost, as htpasswd -B -C 5
    assert not auth.TokenAuth(users).check_password("alice", "secret")


def test_skopeo_delete_asks_for_every_action_and_gets_them_in_its_namespace(store, lab_root):
    users = lab.root() / "users"
    users.write_text(f"alice:{auth.TokenAuth.hash_password('secret')}\n")
    a = auth.TokenAuth(users)
    with server.serve(lab.root() / "registry", auth=a) as srv:
        client.push("fat", f"{srv.address}/alice/fat:v1", user="alice", password="secret", store=store)
        r = subprocess.run(["skopeo", "delete", "--tls-verify=false", "--creds", "alice:secret",
                            f"docker://{srv.address}/alice/fat:v1"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


# --- load -----------------------------------------------------------------------------------------
def test_32_clients_at_once(reg):
    blobs = [hashlib.sha256(str(i).encode()).digest() * 4096 for i in range(32)]
    errors = []

    def worker(i):
        try:
            with http(reg) as c:
                for _ in range(3):
                    d = dg.of_bytes(blobs[i])
                    r = c.post(f"/v2/lab/load{i % 4}/blobs/uploads/", params={"digest": d}, content=blobs[i])
                    assert r.status_code == 201, r.text
                    got = c.get(f"/v2/lab/load{i % 4}/blobs/{d}")
                    assert got.status_code == 200 and dg.of_bytes(got.content) == d
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert list((lab.root() / "registry" / "uploads").iterdir()) == []


def test_client_against_debian_docker_registry(store, lab_root):
    """labkit's client pushes to and pulls from the reference registry (Debian's docker-registry,
    which keeps its upload state in the Location query and rotates it on every PATCH)."""
    import shutil
    from helpers import need
    from labkit.registry import reference
    need(shutil.which("docker-registry") is not None, "Debian's docker-registry")
    with reference.docker_registry(lab.root() / "docker-registry") as address:
        client.push("fat", f"{address}/lab/fat:v1", chunk=1 << 20, store=store)    # several PATCHes
        img = client.pull(f"{address}/lab/fat:v1", name="from-docker-registry", parallel=4, store=store)
        assert img.diff_ids == store.image("fat").diff_ids
    assert lab.entries() == []


def test_an_abandoned_upload_expires_and_leaves_nothing(reg):
    """An upload that never finishes is swept after upload_ttl: its data is gone and the
    spec's BLOB_UPLOAD_UNKNOWN answers anyone who comes back to it."""
    c = http(reg)
    loc = c.post("/v2/lab/x/blobs/uploads/").headers["Location"]
    assert c.patch(loc, content=b"half a layer").status_code == 202
    uploads = lab.root() / "registry" / "uploads"
    assert len(list(uploads.iterdir())) == 1
    reg.app.fs.upload_ttl = 0                        # time passes
    r = c.patch(loc, content=b"the other half", headers={"Content-Range": "12-25"})
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
    assert list(uploads.iterdir()) == []
    reg.app.fs.upload_ttl = 3600
    assert c.post("/v2/lab/x/blobs/uploads/").status_code == 202      # new uploads still work
    abandoned = {d.name for d in uploads.iterdir()}
    reg.app.fs.upload_ttl = 0                        # nobody comes back: the next upload sweeps it
    fresh = c.post("/v2/lab/x/blobs/uploads/").headers["Docker-Upload-UUID"]
    assert {d.name for d in uploads.iterdir()} == {fresh} and fresh not in abandoned


def test_pull_shows_one_progress_bar_per_blob_and_a_resumed_bar_continues(store, reg, capsys):
    client.push("fat", f"{reg.address}/lab/fat:v1", store=store)
    capsys.readouterr()
    client.pull(f"{reg.address}/lab/fat:v1", name="shown", progress=True,
                transport=link.Cut(store.image("fat").layers[1].digest, 1 << 20), store=store)
    err = capsys.readouterr().err
    for what in ("config", "layer 1/2", "layer 2/2"):
        assert what in err
    assert err.count("100%") >= 3
    import re
    done = [float(x) for x in re.findall(r"([\d.]+)M/4\.20M", err)]
    assert done[-1] == 4.20 and max(done) <= 4.20        # the resumed bar did not count the cut MiB twice


def test_timeline_runs_across_a_veth_pair_between_two_namespaces(busybox, lab_root):
    """Client and registry in two fresh network namespaces joined by a veth pair, shaped by
    tbf; all of it gone when the pull is over."""
    import os
    from pathlib import Path
    prev = "busybox"
    for i in range(2):
        prev = mutate.add_layer(prev, tree.write_tree(lab.scratch(f"t{i}"), {f"p{i}/d": 256 << 10}),
                                 f"t/{i}", "layer", store=busybox).name
    t = link.timeline(lab.root() / "tl", busybox, prev, layers_parallel=(1, 2), delay=0.02, rate="100mbit")
    assert len({os.readlink("/proc/self/ns/net"), t.client.netns, t.server.netns}) == 3
    assert any("10.77.0.2/30" in a for a in t.client.addresses) and "rate 100Mbit" in t.server.qdisc
    assert [e.what for e in t.pulls[1]][:2] == ["manifest", "config"] and t.span(1) > 0
    assert not Path("/sys/class/net/lk-cli").exists() and lab.entries() == []


def test_push_streams_chunks_without_holding_them(busybox):
    """A 64 MiB layer pushed in 16 MiB chunks to a registry in another process: Python never
    holds a chunk whole (the bench measures the whole process for 1 GiB)."""
    import tracemalloc
    from labkit.registry import reference
    mutate.add_layer("busybox", tree.write_tree(lab.scratch("big"), {"big": 64 << 20}), "big", "64 MiB", store=busybox)
    with reference.labkit_registry(lab.root() / "reg") as address:
        tracemalloc.start()
        try:
            client.push("big", f"{address}/lab/big:v1", chunk=16 << 20, store=busybox)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 2 << 20, f"push held {peak >> 20} MiB at once"


def test_the_link_refuses_the_hosts_network_namespace(lab_root):
    from pathlib import Path
    from labkit.errors import LabError
    from labkit.registry import link
    with pytest.raises(LabError, match="needs a fresh network namespace"):
        link.across(server.Registry(lab.root() / "r"))
    assert not Path("/sys/class/net/lk-cli").exists()


def test_storage_refuses_a_bad_name_with_its_own_error(tmp_path):
    from labkit.registry.storage import BadName, Filesystem
    fs = Filesystem(tmp_path / "reg")
    with pytest.raises(BadName, match="not a repository name"):
        fs.tags("UPPER/Case")
    with pytest.raises(BadName):
        fs.put_manifest("../escape", dg.of_bytes(b"x"), "application/json", "v1")


# --- a hostile registry ---------------------------------------------------------------------------
def _hostile_registry(manifest: bytes | None = None, layer_bytes=None):
    """An httpx transport playing a registry that serves ``manifest`` and streams
    ``layer_bytes`` (an iterator) for every blob; records how much it sent."""
    sent = {"bytes": 0}
    config = b"{}"
    layer_desc = {"mediaType": st.LAYER, "digest": dg.of_bytes(b"x" * 1000), "size": 1000}
    body = manifest or json.dumps({"schemaVersion": 2, "mediaType": st.MANIFEST,
                                   "config": {"mediaType": st.CONFIG, "digest": dg.of_bytes(config), "size": 2},
                                   "layers": [layer_desc]}).encode()

    def stream():
        for chunk in layer_bytes():
            sent["bytes"] += len(chunk)
            yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        if "/manifests/" in request.url.path:
            return httpx.Response(200, content=body, headers={"Content-Type": st.MANIFEST})
        if request.url.path.endswith(dg.of_bytes(config)):
            return httpx.Response(200, content=config)
        return httpx.Response(200, content=stream())
    return httpx.MockTransport(handler), sent


def test_a_blob_larger_than_its_descriptor_is_cut_off_while_downloading(busybox):
    def endless():
        while True:
            yield b"x" * (1 << 16)
    transport, sent = _hostile_registry(layer_bytes=endless)
    with pytest.raises(client.RegistryError, match="larger than the 1000 bytes its descriptor says"):
        client.pull("127.0.0.1:1/lab/evil:v1", transport=transport, store=busybox)
    assert sent["bytes"] < 4 << 20
    assert not list((lab.root() / "tmp").glob("pull-*"))


@pytest.mark.parametrize("body,problem", [
    (b"{" + b" " * (5 << 20) + b"}", "larger than 4 MiB"),
    (b"this is not json", "not an image manifest"),
    (b"[1, 2]", "not an image manifest"),
    (b'{"schemaVersion": 2, "layers": ["x"], "config": {}}', "malformed"),
    (b'{"schemaVersion": 2, "manifests": []}', "has no image for linux/"),     # an index (of nothing)
])
def test_a_bad_manifest_is_refused_by_name(busybox, body, problem):
    transport, _ = _hostile_registry(manifest=body, layer_bytes=lambda: iter([b"x" * 1000]))
    with pytest.raises(LabError, match=problem):
        client.pull("127.0.0.1:1/lab/evil:v1", transport=transport, store=busybox)
    assert "evil" not in busybox.refs()


# --- malformed requests get the spec's errors, never a 500 ----------------------------------------
@pytest.mark.parametrize("body", [
    {"schemaVersion": 2, "mediaType": st.MANIFEST, "config": {"digest": "sha256:" + "0" * 64}, "layers": ["x"]},
    {"schemaVersion": 2, "mediaType": st.MANIFEST, "config": {"digest": 123}, "layers": []},
    {"schemaVersion": 2, "mediaType": server.OCI_INDEX, "manifests": [1]},
    {"schemaVersion": 2, "mediaType": server.OCI_INDEX, "manifests": "x"},
    {"schemaVersion": 2, "mediaType": st.MANIFEST, "config": None},
    "abc", {}, [],
])
def test_malformed_manifests_are_manifest_invalid(reg, body):
    r = http(reg).put("/v2/lab/x/manifests/v1", content=json.dumps(body),
                      headers={"Content-Type": st.MANIFEST})
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["code"] == "MANIFEST_INVALID"


@pytest.mark.parametrize("n", ["\u0663", "\u00b2", "-1", "1e3", "99999999999999"])
def test_tags_list_n_must_be_ascii_digits(reg, n):
    c = http(reg)
    _manifest(c, "lab/t", "v1")
    r = c.get("/v2/lab/t/tags/list", params={"n": n})
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "UNSUPPORTED"


def test_a_garbage_or_non_ascii_token_is_unauthorized_not_a_500(lab_root):
    users = lab.root() / "users"
    users.write_text(f"alice:{auth.TokenAuth.hash_password('secret')}\n")
    with server.serve(lab.root() / "registry", auth=auth.TokenAuth(users)) as srv:
        for token in ["caf\u00e9.\u00e9", "abc", "e30=.00", "...."]:
            r = httpx.get(f"http://{srv.address}/v2/lab/x/tags/list",
                          headers={"Authorization": f"Bearer {token}".encode()})
            assert r.status_code == 401 and r.json()["errors"][0]["code"] == "UNAUTHORIZED", (token, r.text)


def test_a_full_disk_gets_a_json_error_and_the_partial_upload_is_removed_at_once(lab_root):
    from labkit import kernel
    root = lab.scratch("tiny-registry")
    kernel.mount("tmpfs", str(root), "tmpfs", 0, "size=4m")
    try:
        with server.serve(root / "reg") as srv:
            c = http(srv)
            loc = c.post("/v2/lab/big/blobs/uploads/").headers["Location"]
            r = c.patch(loc, content=b"x" * (6 << 20), headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 507 and r.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
            assert "disk is full" in r.json()["errors"][0]["message"]
            assert list((root / "reg" / "uploads").iterdir()) == []
            data = b"y" * (1 << 20)                                     # the space is back at once
            r = c.post("/v2/lab/small/blobs/uploads/", params={"digest": dg.of_bytes(data)}, content=data)
            assert r.status_code == 201
    finally:
        kernel.umount2(str(root))


def test_idle_connections_are_closed_so_they_cannot_starve_clients(reg, monkeypatch):
    """1,100 sockets connect and say nothing (THREADS is 32): a real request still gets through,
    and the idle ones are closed by the server after IDLE_TIMEOUT."""
    import resource
    import socket
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = min(1100, soft - 200)
    host, port = reg.address.rsplit(":", 1)
    idle = [socket.create_connection((host, int(port))) for _ in range(n)]
    try:
        assert http(reg).get("/v2/").status_code == 200
        idle[0].settimeout(server.IDLE_TIMEOUT * 3)
        assert idle[0].recv(1) == b""        # closed by the server, not by us
    finally:
        for s_ in idle:
            s_.close()


def test_blob_gets_redirect_to_object_storage_and_clients_follow(store, lab_root):
    """A registry on object storage answers a blob GET with 307 and a URL of the object store;
    labkit's client (a plain pull, and a cut one resumed with Range) and skopeo follow it, and
    the bytes come from the object store, not from the registry."""
    from labkit.registry import objects
    root, reg_log, obj_log = lab.root() / "registry", [], []
    with objects.serve(root, log=obj_log) as obj, server.serve(root, log=reg_log, redirect_to=obj.address) as reg:
        client.push("fat", f"{reg.address}/lab/fat:v1", store=store)
        trace = []
        img = client.pull(f"{reg.address}/lab/fat:v1", name="via-objects", trace=trace,
                          transport=link.Cut(store.image("fat").layers[1].digest, 300_001), store=store)
        assert img.diff_ids == store.image("fat").diff_ids
        layer2 = [e for e in trace if e.what.startswith("layer 2/2")]
        assert [e.status for e in layer2] == [-1, 206] and f"via 307 to {obj.address}" in layer2[1].what
        assert ("GET", f"/v2/lab/fat/blobs/{store.image('fat').layers[1].digest}", 307) in reg_log
        assert [s for m, p, s in obj_log if p == "/" + store.image("fat").layers[1].digest[7:]][-1] == 206
        assert httpx.get(f"http://{obj.address}/../index.json").status_code == 404
        out = lab.root() / "skopeo-out"
        r = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{reg.address}/lab/fat:v1",
                            f"oci:{out}:v1"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    store.remove("via-objects")


def test_the_v1_view_lists_every_layer_up_front_and_serves_them(store, reg):
    """v1 (seed 004): tags -> an image id, /ancestry -> every id down to the base in one answer,
    then json and layer per id. The layers are the v2 blobs, byte for byte; nothing in v1 lets
    the client check them (an id is not a digest)."""
    from labkit.registry import v1
    client.push("fat", f"{reg.address}/lab/fat:v1", store=store)
    out = lab.scratch("v1-pull")
    trace = v1.pull(reg.address, "lab/fat", "v1", out)
    img = store.image("fat")
    ids = [c[7:] for c in img.chain_ids]
    assert [p for p, _ in trace[:2]] == ["/v1/repositories/lab/fat/tags", f"/v1/images/{ids[-1]}/ancestry"]
    assert [p for p, _ in trace[2:]] == [f"/v1/images/{i}/{w}" for i in ids for w in ("json", "layer")]
    assert all(s == 200 for _, s in trace)
    assert [dg.of_file(out / f"{i}.tar")[0] for i in ids] == [d.digest for d in img.layers]
    assert http(reg).get(f"/v1/images/{ids[-1]}/ancestry").json() == ids[::-1]
    assert http(reg).get(f"/v1/images/{ids[-1]}/json").json() == {"id": ids[-1], "parent": ids[-2]}
    assert http(reg).get("/v1/repositories/lab/none/tags").status_code == 404
    assert http(reg).get(f"/v1/images/{'0' * 64}/json").status_code == 404


def test_upload_locks_are_forgotten_for_uploads_that_do_not_exist(store, reg):
    """One lock per upload serialises its requests; a status GET or PATCH of an upload that
    never existed (or expired) must not leave one behind (before: one per uid asked, for ever)."""
    h = http(reg)
    for i in range(20):
        assert h.get(f"/v2/lab/x/blobs/uploads/{i:032x}").status_code == 404
    loc = h.post("/v2/lab/x/blobs/uploads/").headers["Location"]
    h.delete(loc)
    assert reg.app.upload_locks == {}


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_manifest_reference_that_is_not_a_tag_is_unknown_not_invalid(reg, method):
    """The conformance suite v1.1.1 (".INVALID_MANIFEST_NAME"): 404 MANIFEST_UNKNOWN; before: 400."""
    r = http(reg).request(method, "/v2/lab/x/manifests/.INVALID_MANIFEST_NAME")
    assert r.status_code == 404
    if method == "GET":
        assert r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    r = http(reg).put("/v2/lab/x/manifests/.INVALID_MANIFEST_NAME", content=b"{}",
                      headers={"Content-Type": st.MANIFEST})
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "MANIFEST_INVALID"


def test_the_catalog_lists_repositories_and_paginates(store, reg):
    for repo in ("lab/b", "lab/a", "other/c"):
        client.push("busybox", f"{reg.address}/{repo}:v1", store=store)
    c = http(reg)
    assert c.get("/v2/_catalog").json() == {"repositories": ["lab/a", "lab/b", "other/c"]}
    r = c.get("/v2/_catalog", params={"n": 2})
    assert r.json()["repositories"] == ["lab/a", "lab/b"] and 'last=lab/b>; rel="next"' in r.headers["Link"]
    assert c.get("/v2/_catalog", params={"n": 2, "last": "lab/b"}).json()["repositories"] == ["other/c"]
    assert c.get("/v2/_catalog", params={"n": "x"}).status_code == 400
