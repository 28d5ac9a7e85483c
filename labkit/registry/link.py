"""Lesson 08's slow link: two network namespaces joined by a veth pair (veth(4),
ip-link(8)), each end shaped by the kernel's token bucket filter (tc-tbf(8)).

Call :func:`across` in a process that already has its own network namespace (a sandbox
child, the *client side*). It makes the *server side* on a thread of that same process:
the thread unshare(2)s a second network namespace, the client side creates the pair with
one end inside it, and the registry's listening socket is opened there. Nothing has a name
in /run/netns and nothing is a separate process: when the sandbox child exits, both
namespaces, the pair and the shaping are gone.

This kernel has no ``netem`` qdisc (FACTS.md), so round-trip delay is added by the server
(:class:`Slow`); bandwidth is the kernel's business. :func:`timeline` is the lesson's
experiment: serial and parallel pulls across the link, every request timed.
"""
from __future__ import annotations

import os
import queue
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

import httpx

from .. import kernel, sandbox
from ..errors import LabError
from . import client
from .server import Registry, Server

SERVER_END, SERVER_IP = "lk-srv", "10.77.0.1"
CLIENT_END, CLIENT_IP = "lk-cli", "10.77.0.2"


@dataclass
class Side:
    """One end of the link, as `ip` and `tc` report it from inside its namespace."""
    device: str
    ip: str
    netns: str          # readlink /proc/thread-self/ns/net, e.g. "net:[4026532301]"
    addresses: list     # from ip -brief address: ["lo 127.0.0.1/8 ::1/128", "lk-cli@if2 10.77.0.2/30"]
    qdisc: str          # tc qdisc show dev DEVICE


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _configure(device: str, ip: str, rate: str | None) -> Side:
    """Bring up lo and our veth end with its address; shape its egress with tbf (tc-tbf(8)):
    a bucket of 64 KiB refilled at ``rate``, packets waiting at most 400 ms."""
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "address", "add", f"{ip}/30", "dev", device)
    sh("ip", "link", "set", device, "up")
    if rate:
        sh("tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", rate, "burst", "64kb", "latency", "400ms")
    # (the link state column is left out: it says DOWN until the other end is up too)
    addresses = [" ".join(line.split()[:1] + line.split()[2:]) for line in sh("ip", "-brief", "address").splitlines()]
    return Side(device, ip, os.readlink("/proc/thread-self/ns/net"), addresses,
                sh("tc", "qdisc", "show", "dev", device).strip())


def across(app, rate: str | None = None):
    """Serve the WSGI ``app`` on SERVER_IP in a new network namespace joined to ours by a
    veth pair. Returns ``(server, client_side, server_side)``; the caller stops the server."""
    devices = sorted(name for _, name in socket.if_nameindex())
    if devices != ["lo"]:                 # a fresh network namespace has nothing but lo
        raise LabError(f"link.across needs a fresh network namespace; this one has {', '.join(devices)} "
                       "(the host's?)", 'call it in a child with its own: sandbox.run(fn, namespaces=("net",)), '
                       "as timeline() does")
    tid, done = queue.Queue(), queue.Queue()
    go = threading.Event()

    def server_side():
        try:
            kernel.unshare(kernel.NAMESPACES["net"])      # this thread only: net is per task
            tid.put(threading.get_native_id())
            go.wait(30)
            side = _configure(SERVER_END, SERVER_IP, rate)
            done.put((Server(app, SERVER_IP, 0), side))   # its threads inherit our namespace
        except BaseException as e:                        # report it to the client side
            tid.put(e)
            done.put(e)

    threading.Thread(target=server_side, daemon=True).start()
    peer = tid.get(timeout=30)
    if isinstance(peer, BaseException):
        raise peer
    try:
        # ip-link(8): "netns PID" moves the peer into the namespace of that task (our thread)
        sh("ip", "link", "add", CLIENT_END, "type", "veth", "peer", "name", SERVER_END, "netns", str(peer))
    finally:
        go.set()
    got = done.get(timeout=30)
    if isinstance(got, BaseException):
        raise got
    srv, server = got
    return srv, _configure(CLIENT_END, CLIENT_IP, rate), server


class Slow:
    """WSGI middleware: wait ``delay`` seconds before answering each request, like a long
    link would. The lab's kernel has no netem qdisc, so the round-trip time is added here;
    bandwidth is limited by the kernel (tc tbf) where the lesson asks for it."""

    def __init__(self, app, delay: float):
        self.app, self.delay = app, delay

    def __call__(self, environ, start_response):
        time.sleep(self.delay)
        return self.app(environ, start_response)


@dataclass
class Timeline:
    """Every request of each pull (``pulls[parallel]``) and the two ends of the link."""
    pulls: dict
    client: Side
    server: Side

    def span(self, parallel: int) -> float:
        """Seconds from the first request's start to the last one's end."""
        t = self.pulls[parallel]
        return max(e.end for e in t) - min(e.start for e in t)


def timeline(root, image_store, name: str, layers_parallel=(1, 4), delay: float = 0.05,
             rate: str | None = "100mbit") -> "Timeline":
    """Serial and parallel pulls of ``name`` across a slow link: the client in one private
    network namespace, the registry in another, joined by a veth pair (``link.across``).
    Both live in one sandbox child and die with it."""
    def inside():
        srv, near, far = across(Slow(Registry(root), delay), rate)
        try:
            client.push(name, f"{srv.address}/lab/timeline:v1", store=image_store)
            out = Timeline({}, near, far)
            for par in layers_parallel:
                trace = []
                client.pull(f"{srv.address}/lab/timeline:v1", name=f"timeline-{par}",
                            parallel=par, trace=trace, store=image_store)
                image_store.remove_ref(f"timeline-{par}")
                out.pulls[par] = trace
            return out
        finally:
            srv.close()
    return sandbox.run(inside, namespaces=("net",), timeout=300)


class Cut(httpx.BaseTransport):
    """An httpx transport that drops the connection once, in the middle of one blob download:
    the body of the first ``GET .../blobs/<blob>`` (or of the object store's ``GET /<hex>`` it
    redirected to) stops after ``after`` bytes with a read error, as a cable pulled out would.
    Everything else passes through untouched.

        client.pull(ref, transport=link.Cut(layer.digest, 256 << 10), store=store)
    """

    def __init__(self, blob: str, after: int):
        self.inner, self.blob, self.after, self.done = httpx.HTTPTransport(), blob, after, False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        path = request.url.path                 # the registry's blob URL, or where it redirected
        if self.done or request.method != "GET" or response.is_redirect or \
                not (path.endswith(f"/blobs/{self.blob}") or path.endswith(f"/{self.blob.split(':')[-1]}")):
            return response
        self.done = True
        return httpx.Response(response.status_code, headers=response.headers, extensions=response.extensions,
                              stream=_CutAfter(response.stream, self.after, httpx.ReadError))

    def close(self) -> None:
        self.inner.close()


class CutUpload(httpx.BaseTransport):
    """An httpx transport that drops the connection once, in the middle of the first PATCH
    (a chunk of a blob upload): ``after`` bytes of its body go out, then the cable is pulled.
    The registry keeps what arrived; the client asks it how much that was and goes on.

        client.push(name, ref, transport=link.CutUpload(256 << 10), store=store)
    """

    def __init__(self, after: int):
        self.inner, self.after, self.done = httpx.HTTPTransport(), after, False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.done or request.method != "PATCH":
            return self.inner.handle_request(request)
        self.done = True
        cut = httpx.Request(request.method, request.url, headers=request.headers,
                            stream=_CutAfter(request.stream, self.after, httpx.WriteError))
        return self.inner.handle_request(cut)

    def close(self) -> None:
        self.inner.close()


class _CutAfter(httpx.SyncByteStream):
    """A byte stream that stops after ``after`` bytes with ``error`` (a pulled cable): a
    response body for Cut (httpx.ReadError), a request body for CutUpload (httpx.WriteError)."""

    def __init__(self, inner, after: int, error: type[httpx.TransportError]):
        self.inner, self.left, self.error = inner, after, error

    def __iter__(self):
        for chunk in self.inner:
            if len(chunk) >= self.left:
                if self.left:
                    yield chunk[:self.left]
                raise self.error("connection cut (link.Cut)")
            self.left -= len(chunk)
            yield chunk

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()
