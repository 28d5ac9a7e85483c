"""Lesson 08 exercises: push an image by hand in the order a registry needs; resume a cut
download with Range. Both checks start a registry of their own and call the learner's function
against it, so they judge what the code does on the wire, not what it says."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile

import httpx

from .. import lab
from ..image import digest as dg
from ..image.store import CONFIG, LAYER, MANIFEST
from ..registry import server
from . import exercise


def _small_image() -> tuple[dict[str, bytes], bytes]:
    """A one-layer image in memory: ({digest: blob} for the layer and the config, manifest)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("hello.txt")
        data = os.urandom(8).hex().encode() + b"\n"       # a new image for every check
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    layer = buf.getvalue()
    layer_d = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [layer_d]}}).encode()
    config_d = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                           "config": {"mediaType": CONFIG, "digest": config_d, "size": len(config)},
                           "layers": [{"mediaType": LAYER, "digest": layer_d, "size": len(layer)}]}).encode()
    return {layer_d: layer, config_d: config}, manifest


@exercise("08.order", "push an image by hand, in the order the registry needs", hints=[
    "A blob upload is two requests: POST /v2/<repo>/blobs/uploads/ (the answer's Location header "
    "says where to send it), then PUT <location>?digest=<digest> with the bytes.",
    "The registry checks a manifest against what it already has: everything the manifest names "
    "must be uploaded before the manifest itself.",
    "The manifest goes with PUT /v2/<repo>/manifests/v1 and Content-Type "
    "application/vnd.oci.image.manifest.v1+json.",
])
def check_push_order(my_push):
    """``my_push(address, repo, blobs, manifest)``: push ``blobs`` ({digest: bytes}) and then
    the manifest (bytes, tag v1) to the registry at ``address`` ("127.0.0.1:PORT") with httpx.
    The check runs it against a registry of its own and reads that registry's request log."""
    if not callable(my_push):
        yield False, "define my_push(address, repo, blobs, manifest) and pass the function itself"
        return
    with _own_registry("08-ex-push") as (reg, log, _):
        blobs, manifest = _small_image()
        my_push(reg.address, "ex/hand", dict(blobs), manifest)
        base = f"http://{reg.address}/v2/ex/hand"
        got = httpx.get(f"{base}/manifests/v1", headers={"Accept": MANIFEST})
        yield got.status_code == 200 and got.content == manifest, (
            "the registry serves your manifest as ex/hand:v1" if got.status_code == 200 and got.content == manifest
            else f"GET of ex/hand:v1 answers {got.status_code}: the manifest is not there (or not the one given)")
        for digest, data in blobs.items():
            r = httpx.get(f"{base}/blobs/{digest}")
            yield r.status_code == 200 and r.content == data, (
                f"blob {digest[:19]}… is there, byte for byte" if r.status_code == 200 and r.content == data
                else f"blob {digest[:19]}… is not in the registry")
        puts = [(i, path) for i, (method, path, _) in enumerate(log) if method == "PUT"]
        first_manifest = next((i for i, p in puts if "/manifests/" in p), None)
        last_blob = max((i for i, p in puts if "/blobs/uploads/" in p), default=None)
        refused = [status for method, path, status in log if method == "PUT" and "/manifests/" in path and status >= 400]
        ordered = first_manifest is not None and last_blob is not None and last_blob < first_manifest
        yield ordered, ("every blob was uploaded before the manifest was sent" if ordered else
                        f"a manifest was sent before the blobs it names (the registry answered {refused[0]})"
                        if refused else "the log shows no blob upload followed by the manifest")


@contextlib.contextmanager
def _own_registry(name: str):
    """A registry of the check's own in scratch/``name``, with its request log; gone afterwards."""
    d = lab.scratch(name)
    log: list = []
    reg = server.serve(d / "registry", log=log)
    try:
        yield reg, log, d
    finally:
        reg.close()
        lab.remove_tree(d)


def _upload(address: str, repo: str, data: bytes) -> str:
    """A monolithic blob upload (POST, then PUT ?digest=); returns the digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = httpx.post(f"http://{address}/v2/{repo}/blobs/uploads/")
    url = httpx.URL(f"http://{address}").join(start.headers["Location"])
    httpx.put(url.copy_merge_params({"digest": digest}), content=data).raise_for_status()
    return digest


@exercise("08.resume", "resume a cut blob download", hints=[
    "Ask only for what is missing: the bytes from the size of the file you have to the end.",
    "HTTP has a request header for a part of a resource; the registry answers 206 Partial Content.",
    "headers={'Range': f'bytes={size}-'}, then append the answer's body to the file.",
])
def check_resume(my_resume):
    """``my_resume(url, path)``: ``path`` holds the first bytes of the blob at ``url``; fetch
    only the rest and append it. The check cuts a 256 KiB blob of its own registry at a random
    point and verifies the digest, and that the registry sent the rest and not the whole."""
    if not callable(my_resume):
        yield False, "define my_resume(url, path) and pass the function itself"
        return
    with _own_registry("08-ex-resume") as (reg, log, d):
        data = os.urandom(256 << 10)
        digest = _upload(reg.address, "ex/blob", data)
        cut = 1000 + int.from_bytes(os.urandom(2), "big") * 3
        (d / "part").write_bytes(data[:cut])
        del log[:]
        my_resume(f"http://{reg.address}/v2/ex/blob/blobs/{digest}", d / "part")
        whole = dg.of_file(d / "part")[0] == digest
        yield whole, (f"the file is the whole blob again ({digest[:19]}…)" if whole else
                      f"the file holds {(d / 'part').stat().st_size} bytes that do not hash to the blob's digest")
        gets = [status for method, path, status in log if method == "GET" and digest in path]
        yield gets == [206], ("the registry sent only the missing part (206 Partial Content)" if gets == [206] else
                              "the registry sent the whole blob again (200)" if 200 in gets else
                              f"the registry saw {len(gets)} GETs of the blob, answered {gets}")
