"""Lesson 08: blobs served by a second server, the way a registry on object storage works.

A registry whose storage driver is S3, GCS or Swift does not stream layers itself: to a blob
GET it answers with a redirect (distribution sends 307 Temporary Redirect; seed 004 describes
it as a 302) to a short-lived URL of the object store, and the client fetches the bytes from
there. The registry keeps the API, the names and the checks; the bulk traffic goes around it.

Here the "object store" is a second HTTP server that serves the registry's blob files by
their hex digest (``GET /<hex>``, with Range), read-only. Start it with :func:`serve`, and
give its address to the registry: ``server.serve(root, redirect_to=objects_server.address)``.
"""
from __future__ import annotations

import re

from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from .. import lab
from .storage import Filesystem

HEX = re.compile(r"[0-9a-f]{64}")


class ObjectStore:
    """A WSGI app: ``GET /<hex>`` and ``HEAD /<hex>`` of the blobs under a registry's root,
    with Range (werkzeug's send_file answers 206 and 416 itself); nothing else."""

    def __init__(self, root, log: list | None = None):
        self.fs = Filesystem(lab.inside(root))        # reads only what the lab root holds
        self.log = log           # if a list, every request is appended: (method, path, status)

    def __call__(self, environ, start_response):
        request = Request(environ)
        name = request.path.lstrip("/")
        if request.method not in ("GET", "HEAD") or not HEX.fullmatch(name) or \
                self.fs.blob_size(f"sha256:{name}") is None:
            response = Response("no such object\n", 404)
        else:
            response = send_file(self.fs.blob_path(f"sha256:{name}"), environ, conditional=True,
                                 mimetype="application/octet-stream", max_age=None)
        if self.log is not None:
            self.log.append((request.method, request.path, response.status_code))
        return response(environ, start_response)


def serve(root, host: str = "127.0.0.1", port: int = 0, log: list | None = None):
    """Serve the blobs of the registry stored under ``root`` on a background thread."""
    from .server import Server
    return Server(ObjectStore(root, log), host, port)
