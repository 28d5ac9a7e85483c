"""Lesson 08: a small OCI-distribution registry that real clients (skopeo) trust.

The route table below is the distribution spec's endpoint table (spec.md, "Endpoints"),
one line per endpoint; each handler cites its end-N. HTTP is werkzeug's (routing, request
parsing) served by cheroot, CherryPy's production WSGI server (it streams request bodies to us
instead of spooling them to /tmp, runs on a thread of a notebook's kernel, and closes
connections idle for longer than IDLE_TIMEOUT); the protocol is ours:

* every response carries ``Docker-Content-Digest`` where the spec asks for it;
* uploads: POST (start, monolithic with ?digest=, or cross-repo ?mount=&from=), PATCH chunks
  with Content-Range (416 when out of order), GET status, PUT ?digest= (verified), DELETE;
* manifests are stored as the exact bytes pushed, with their media type, and refused while a
  blob they reference is missing; tags list with n and last; referrers;
* errors are the spec's JSON with its codes; bad names, digests and ranges get them too, and
  nothing is written.
"""
from __future__ import annotations

import errno
import json
import re
import sys
import threading
import traceback
from dataclasses import dataclass

from cheroot import connections, wsgi
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import wrap_file

from .. import lab
from ..image import digest as dg
from .errors import Problem, error
from . import v1
from .storage import NAME, TAG, BadName, Filesystem

MAX_MANIFEST = 4 << 20
CHUNK = 1 << 20
IDLE_TIMEOUT = 10        # seconds a connection may sit idle before the server closes it
THREADS = 32
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", OCI_INDEX,
                  "application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json")

ROUTES = Map([
    Rule("/v2/", endpoint="base"),                                                            # end-1
    Rule("/v2/_catalog", endpoint="catalog", methods=["GET"]),                                # distribution's
    Rule("/v2/<path:name>/blobs/uploads/", endpoint="upload_start", methods=["POST"]),        # end-4a, 4b, 11
    Rule("/v2/<path:name>/blobs/uploads/<uid>", endpoint="upload",
         methods=["GET", "PATCH", "PUT", "DELETE"]),                                          # end-13, 5, 6
    Rule("/v2/<path:name>/blobs/<ref>", endpoint="blob", methods=["GET", "HEAD", "DELETE"]),  # end-2, 10
    Rule("/v2/<path:name>/manifests/<ref>", endpoint="manifest",
         methods=["GET", "HEAD", "PUT", "DELETE"]),                                           # end-3, 7, 9
    Rule("/v2/<path:name>/tags/list", endpoint="tags", methods=["GET"]),                      # end-8a, 8b
    Rule("/v2/<path:name>/referrers/<ref>", endpoint="referrers", methods=["GET"]),           # end-12a, 12b
    Rule("/token", endpoint="token"),                                                         # the token service
    Rule("/v1/repositories/<path:name>/tags", endpoint="v1_tags", methods=["GET"]),           # v1 (v1.py), read-only
    Rule("/v1/images/<vid>/<any(ancestry, json, layer):what>", endpoint="v1_image", methods=["GET"]),
], strict_slashes=False)

class Registry:
    """The WSGI application. ``auth`` (auth.TokenAuth) makes it ask for bearer tokens."""

    def __init__(self, root, auth=None, log: list | None = None, redirect_to: str | None = None):
        self.fs = Filesystem(lab.inside(root))       # the registry writes only under the lab root
        self.auth = auth
        self.redirect_to = redirect_to     # HOST:PORT of an objects.ObjectStore: blob GETs go there
        self.log = log           # if a list, every request is appended: (method, path, status)
        self.lock = threading.Lock()
        self.upload_locks: dict[str, threading.Lock] = {}   # one request at a time per upload

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            endpoint, args = ROUTES.bind_to_environ(environ).match()
            if endpoint not in ("token", "v1_tags", "v1_image") and self.auth:
                self.auth.require(request, args.get("name"))
            if "name" in args and not NAME.fullmatch(args["name"]):
                raise Problem("NAME_INVALID", f"{args['name']!r} is not a repository name")
            response = getattr(self, f"on_{endpoint}")(request, **args)
        except Problem as p:
            response = error(p.code, p.message, p.status, p.headers)
        except HTTPException as e:
            response = error("UNSUPPORTED", e.description or str(e), e.code)
        except BadName as e:
            response = error("NAME_INVALID", str(e))
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            response = error("BLOB_UPLOAD_INVALID", "the registry's disk is full; the upload was removed: "
                             "free space on the registry and push again", 507)
        except Exception as e:               # a bug of ours: a JSON 500 and a line in the server's log
            traceback.print_exc(file=sys.stderr)
            response = error("UNKNOWN", f"the registry failed: {type(e).__name__}: {e}", 500)
        if self.log is not None:
            self.log.append((request.method, request.path + (f"?{request.query_string.decode()}"
                                                             if request.query_string else ""), response.status_code))
        return response(environ, start_response)

    # v1, read-only and without auth (v1.py)
    def on_v1_tags(self, request, name):
        self._v1_allowed()
        found = v1.images(self.fs, name)
        if not found["tags"]:
            raise Problem("NAME_UNKNOWN", f"no repository {name}")
        return Response(json.dumps(found["tags"]), 200, content_type="application/json")

    def on_v1_image(self, request, vid, what):
        self._v1_allowed()
        found = v1.images(self.fs)["images"]
        if vid not in found:
            raise Problem("BLOB_UNKNOWN", f"no v1 image {vid[:12]}")
        if what == "ancestry":
            return Response(json.dumps(v1.ancestry(found, vid)), 200, content_type="application/json")
        if what == "json":
            doc = {"id": vid, **({"parent": found[vid].parent} if found[vid].parent else {})}
            return Response(json.dumps(doc), 200, content_type="application/json")
        f = self.fs.open_blob(found[vid].layer)
        return Response(wrap_file(request.environ, f, CHUNK), 200, content_type="application/octet-stream",
                        direct_passthrough=True)

    def _v1_allowed(self):
        if self.auth:
            raise Problem("UNSUPPORTED", "this registry serves v1 only without authentication", 404)

    # end-1
    def on_base(self, request):
        return Response("{}", 200, {"Docker-Distribution-API-Version": "registry/2.0"},
                        content_type="application/json")

    def on_token(self, request):
        if not self.auth:
            raise Problem("UNSUPPORTED", "this registry runs without authentication", 404)
        return self.auth.token_response(request)

    # end-2, end-10
    def on_blob(self, request, name, ref):
        d = _digest(ref)
        if request.method == "DELETE":
            if not self.fs.unlink(name, d):
                raise Problem("BLOB_UNKNOWN", f"{d} is not in {name}")
            return Response(status=202)
        if not self.fs.linked(name, d):
            raise Problem("BLOB_UNKNOWN", f"{d} is not in {name}")
        size = self.fs.blob_size(d)
        headers = {"Docker-Content-Digest": d, "Accept-Ranges": "bytes"}
        if request.method == "HEAD":
            return Response(status=200, headers={**headers, "Content-Length": str(size)},
                            content_type="application/octet-stream")
        if self.redirect_to:               # the bytes come from object storage (objects.py)
            return Response(status=307, headers={**headers, "Location": f"http://{self.redirect_to}/{d[7:]}"})
        f = self.fs.open_blob(d)
        rng = request.range
        if rng and rng.units == "bytes" and len(rng.ranges) == 1:
            start, stop = rng.range_for_length(size) or (None, None)
            if start is None:
                f.close()
                return Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            f.seek(start)
            body = _limited(f, stop - start)
            return Response(body, 206, {**headers, "Content-Range": f"bytes {start}-{stop - 1}/{size}",
                                        "Content-Length": str(stop - start)},
                            content_type="application/octet-stream", direct_passthrough=True)
        return Response(wrap_file(request.environ, f, CHUNK), 200, {**headers, "Content-Length": str(size)},
                        content_type="application/octet-stream", direct_passthrough=True)

    # end-4a, end-4b, end-11
    def on_upload_start(self, request, name):
        mount, source = request.args.get("mount"), request.args.get("from")
        if mount and source:
            d = _digest(mount)
            if NAME.fullmatch(source) and self.fs.linked(source, d):
                self.fs.link(name, d)
                return Response(status=201, headers={"Location": f"/v2/{name}/blobs/{d}", "Docker-Content-Digest": d})
        uid = self.fs.start_upload(name)
        want = request.args.get("digest")
        if want is not None:                                   # monolithic upload in one POST
            d = _digest(want)
            self.fs.append(self.fs.upload(uid, name), _body(request))
            if not self.fs.finish_upload(uid, name, d):
                self.fs.cancel_upload(uid)
                raise Problem("DIGEST_INVALID", f"the body does not hash to {d}")
            return Response(status=201, headers={"Location": f"/v2/{name}/blobs/{d}", "Docker-Content-Digest": d})
        return Response(status=202, headers={"Location": f"/v2/{name}/blobs/uploads/{uid}", "Range": "0-0",
                                             "Docker-Upload-UUID": uid, "Content-Length": "0"})

    # end-13, end-5, end-6, and DELETE of an upload
    def on_upload(self, request, name, uid):
        """One request at a time per upload: a status GET sent after a PATCH was cut waits
        until the server has stored what of the chunk arrived, so its Range is the truth."""
        with self.lock:
            lock = self.upload_locks.setdefault(uid, threading.Lock())
        with lock:
            try:
                return self._upload(request, name, uid)
            finally:           # finished, cancelled, expired or never there: forget its lock
                if request.method in ("PUT", "DELETE") or self.fs.upload(uid, name) is None:
                    with self.lock:
                        self.upload_locks.pop(uid, None)

    def _upload(self, request, name, uid):
        data = self.fs.upload(uid, name)
        if data is None:
            raise Problem("BLOB_UPLOAD_UNKNOWN", f"no upload {uid} in {name} (finished, cancelled or expired)")
        size = data.stat().st_size
        loc = {"Location": f"/v2/{name}/blobs/uploads/{uid}", "Docker-Upload-UUID": uid,
               "Range": f"0-{max(size - 1, 0)}"}
        if request.method == "GET":
            return Response(status=204, headers=loc)
        if request.method == "DELETE":
            self.fs.cancel_upload(uid)
            return Response(status=204)
        if request.method == "PATCH":
            cr = request.headers.get("Content-Range")
            if cr:
                m = re.fullmatch(r"(?:bytes )?(\d+)-(\d+)(?:/\d+|/\*)?", cr.strip())
                if not m or int(m.group(2)) < int(m.group(1)):
                    raise Problem("BLOB_UPLOAD_INVALID", f"malformed Content-Range {cr!r}")
                if int(m.group(1)) != size:
                    return error("BLOB_UPLOAD_INVALID", f"chunk starts at {m.group(1)}, the upload has {size} bytes",
                                 416, loc)
            size = self.fs.append(data, _body(request))
            loc["Range"] = f"0-{max(size - 1, 0)}"
            return Response(status=202, headers=loc)
        d = _digest(request.args.get("digest", ""))            # PUT: finish
        self.fs.append(data, _body(request))
        if not self.fs.finish_upload(uid, name, d):
            raise Problem("DIGEST_INVALID", f"the uploaded bytes do not hash to {d}")
        return Response(status=201, headers={"Location": f"/v2/{name}/blobs/{d}", "Docker-Content-Digest": d})

    # end-3, end-7, end-9
    def on_manifest(self, request, name, ref):
        if not (ref.startswith("sha256:") or TAG.fullmatch(ref)):
            if request.method == "PUT":
                raise Problem("MANIFEST_INVALID", f"{ref!r} is neither a tag nor a digest")
            raise Problem("MANIFEST_UNKNOWN", f"{ref!r} is not a tag, so no manifest has it")   # the suite: 404
        if ref.startswith("sha256:"):
            _digest(ref)
        if request.method == "PUT":
            return self._put_manifest(request, name, ref)
        d = self.fs.resolve(name, ref)
        if request.method == "DELETE":
            if not self.fs.delete_manifest(name, ref):
                raise Problem("MANIFEST_UNKNOWN", f"{ref} is not in {name}")
            return Response(status=202)
        if d is None or self.fs.blob_size(d) is None:
            raise Problem("MANIFEST_UNKNOWN", f"{ref} is not in {name}")
        with self.fs.open_blob(d) as f:
            body = f.read()
        headers = {"Docker-Content-Digest": d, "Content-Length": str(len(body))}
        mt = self.fs.manifest_type(name, d)
        return Response(b"" if request.method == "HEAD" else body, 200, headers, content_type=mt)

    def _put_manifest(self, request, name, ref):
        length = request.content_length
        if length is not None and length > MAX_MANIFEST:
            raise Problem("MANIFEST_INVALID", f"a manifest of {length} bytes is over the {MAX_MANIFEST} limit", 413)
        body = request.stream.read(MAX_MANIFEST + 1)
        if len(body) > MAX_MANIFEST:
            raise Problem("MANIFEST_INVALID", f"manifests are limited to {MAX_MANIFEST} bytes", 413)
        media_type = (request.mimetype or "").strip()
        try:
            doc = json.loads(body)
            assert isinstance(doc, dict)
        except (ValueError, AssertionError):
            raise Problem("MANIFEST_INVALID", "the manifest is not a JSON object") from None
        media_type = doc.get("mediaType") or media_type
        if media_type not in MANIFEST_TYPES:
            raise Problem("MANIFEST_INVALID", f"unsupported manifest media type {media_type!r}")
        d = dg.of_bytes(body)
        if ref.startswith("sha256:") and ref != d:
            raise Problem("DIGEST_INVALID", f"the manifest hashes to {d}, not {ref}")
        for ref_desc in list(_references(doc)):          # every descriptor well formed first
            rd = _digest(ref_desc.get("digest", ""))
            if ref_desc["kind"] == "blob" and not self.fs.linked(name, rd):
                raise Problem("MANIFEST_BLOB_UNKNOWN", f"blob {rd} is not in {name}: push it first")
            if ref_desc["kind"] == "manifest" and self.fs.resolve(name, rd) is None:
                raise Problem("MANIFEST_BLOB_UNKNOWN", f"manifest {rd} is not in {name}: push it first")
        with self.lock:
            if self.fs.blob_size(d) is None:
                uid = self.fs.start_upload(name)
                self.fs.append(self.fs.upload(uid, name), [body])
                self.fs.finish_upload(uid, name, d)
            self.fs.put_manifest(name, d, media_type, None if ref.startswith("sha256:") else ref)
        headers = {"Location": f"/v2/{name}/manifests/{d}", "Docker-Content-Digest": d}
        if isinstance(doc.get("subject"), dict):
            headers["OCI-Subject"] = doc["subject"].get("digest", "")
        return Response(status=201, headers=headers)

    # end-8a, end-8b
    def on_tags(self, request, name):
        tags = self.fs.tags(name)
        if tags is None:
            raise Problem("NAME_UNKNOWN", f"there is no repository {name}")
        tags, headers = _page(request, tags, f"/v2/{name}/tags/list", "tags")
        return Response(json.dumps({"name": name, "tags": tags}), 200, headers, content_type="application/json")

    def on_catalog(self, request):
        """GET /v2/_catalog: every repository, sorted, paginated like tags/list (distribution's
        extension, not in the OCI spec). With token auth any valid token may list: every
        repository here can be pulled by anyone signed in, anonymous included."""
        repos, headers = _page(request, self.fs.repositories(), "/v2/_catalog", "repositories")
        return Response(json.dumps({"repositories": repos}), 200, headers, content_type="application/json")

    # end-12a, end-12b
    def on_referrers(self, request, name, ref):
        d = _digest(ref)
        want = request.args.get("artifactType")
        found = []
        for rev in self.fs.revisions(name):
            if self.fs.blob_size(rev) is None or self.fs.blob_size(rev) > MAX_MANIFEST:
                continue
            with self.fs.open_blob(rev) as f:
                try:
                    doc = json.loads(f.read())
                except ValueError:
                    continue
            if (doc.get("subject") or {}).get("digest") != d:
                continue
            art = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType", "")
            if want and art != want:
                continue
            entry = {"mediaType": doc.get("mediaType", MANIFEST_TYPES[0]), "digest": rev,
                     "size": self.fs.blob_size(rev), "artifactType": art}
            if doc.get("annotations"):
                entry["annotations"] = doc["annotations"]
            found.append(entry)
        headers = {"OCI-Filters-Applied": "artifactType"} if want else {}
        return Response(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found}), 200,
                        headers, content_type=OCI_INDEX)


def _page(request, items: list[str], path: str, what: str) -> tuple[list[str], dict]:
    """Those of the sorted ``items`` after ``last``, at most ``n`` of them, and a Link header
    to the next page when some are left (spec.md, "Listing Tags")."""
    last = request.args.get("last")
    if last:
        items = [t for t in items if t > last]
    headers = {}
    n = request.args.get("n")
    if n is not None:
        if not re.fullmatch(r"[0-9]{1,9}", n):        # ASCII digits only: int() takes '٣' too
            raise Problem("UNSUPPORTED", f"n={n[:20]!r} is not a number of {what}", 400)
        if len(items) > int(n):
            items = items[:int(n)]
            headers["Link"] = f'<{path}?n={n}&last={items[-1] if items else ""}>; rel="next"'
    return items, headers


def _digest(text) -> str:
    if not isinstance(text, str):
        raise Problem("DIGEST_INVALID", f"{str(text)[:80]!r} is not a sha256 digest string")
    try:
        return dg.validate(text)
    except dg.DigestError:
        raise Problem("DIGEST_INVALID", f"{text[:80]!r} is not a sha256 digest") from None


def _body(request):
    stream = request.stream
    while chunk := stream.read(CHUNK):
        yield chunk


def _limited(f, n):
    try:
        while n > 0:
            chunk = f.read(min(CHUNK, n))
            if not chunk:
                break
            n -= len(chunk)
            yield chunk
    finally:
        f.close()


def _references(doc: dict):
    """Descriptors a manifest needs present: config and layers, or an index's manifests
    (image-spec descriptor.md: each an object with a string digest). Anything else is
    MANIFEST_INVALID."""
    if "manifests" in doc:
        kind, descs = "manifest", doc["manifests"]
        if not isinstance(descs, list):
            raise Problem("MANIFEST_INVALID", "an index's manifests must be a list of descriptors")
    else:
        kind, descs = "blob", [doc.get("config")] + (doc.get("layers") or [] if isinstance(doc.get("layers", []), list)
                                                    else [None])
    for d in descs:
        if not isinstance(d, dict) or not isinstance(d.get("digest"), str):
            raise Problem("MANIFEST_INVALID", f"{json.dumps(d)[:80]} is not a descriptor (an object with a "
                          "mediaType, a digest string and a size)")
        yield {**d, "kind": kind}


@dataclass
class Server:
    """A registry served on a background thread (for notebooks and tests)."""
    app: Registry
    host: str
    port: int

    def __post_init__(self):
        self._srv = http_server(self.app, self.host, self.port)
        self.port = self._srv.bind_addr[1]
        self._thread = threading.Thread(target=self._srv.serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        self._srv.stop()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def http_server(app, host: str, port: int) -> wsgi.Server:
    """cheroot's WSGI server for ``app``, bound (port 0: any free port) but not yet serving:
    a pool of THREADS workers, idle keep-alive connections parked in a selector and closed
    after IDLE_TIMEOUT seconds, so sockets left open cannot starve other clients."""
    srv = wsgi.Server((host, port), app, numthreads=THREADS, timeout=IDLE_TIMEOUT,
                      server_name="labkit-registry", request_queue_size=128)
    srv.prepare()
    srv._connections.close()
    srv._connections = _ParkNewConnections(srv)
    return srv


class _ParkNewConnections(connections.ConnectionManager):
    """cheroot hands a newly accepted connection straight to a worker thread, which then waits
    up to IDLE_TIMEOUT for its first request: 1,100 sockets that connect and say nothing would
    hold all THREADS workers for minutes. Here a new connection waits in the selector like a
    kept-alive one, reaches a worker only when it has sent something, and is closed once idle
    for IDLE_TIMEOUT."""

    def _from_server_socket(self, server_socket):
        conn = super()._from_server_socket(server_socket)
        if conn is not None:
            self.put(conn)
        return None


def serve(root, host: str = "127.0.0.1", port: int = 0, auth=None, log: list | None = None,
          redirect_to: str | None = None) -> Server:
    """Start a registry storing under ``root`` (port 0: any free port); with ``redirect_to``
    (an objects.ObjectStore's HOST:PORT) it answers blob GETs with a 307 redirect there."""
    return Server(Registry(root, auth, log, redirect_to), host, port)
