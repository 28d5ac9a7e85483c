"""Registry: serial vs parallel pull of 8 layers with 50 ms per request (goal: >= 3x),
skopeo push/pull throughput against labkit's registry and Debian's docker-registry on the
same blobs, as a ratio (goal: labkit at least 0.8x), and the memory both registries and
labkit's client need for a 1 GiB blob (goal: flat, i.e. far below the blob's size)."""
import os
import subprocess
import sys
import time

from bench import REPEAT, Timing, headline, load, with_lab
from labkit import lab
from labkit.image import store as st
from labkit.image import mutate
from labkit.image.base import base_image
from labkit.registry import link, reference, server
from labkit.tree import write_tree


@with_lab
def main() -> None:
    s = st.Store()
    base_image(s)
    prev = "busybox"                  # layer 1; seven more make the 8 layers
    for i in range(7):
        prev = mutate.add_layer(prev, write_tree(lab.scratch(f"bench-reg-{i}"), {f"p{i}/d": 1 << 20}),
                           f"bench/reg{i}", f"layer {i}", store=s).name
    spans = {1: [], 8: []}
    for i in range(REPEAT):                 # serial first, then parallel first: taking turns
        order = (1, 8) if i % 2 == 0 else (8, 1)
        t = link.timeline(lab.root() / f"bench-registry-{i}", s, prev, layers_parallel=order, delay=0.05, rate=None)
        for p in order:
            spans[p].append(t.span(p))
    span = {p: Timing(tuple(v)) for p, v in spans.items()}
    print(f"\nregistry pull of 8 layers (busybox + 7 x 1 MiB), 50 ms per request, {REPEAT} rounds; {load()}")
    print(f"serial {span[1]}, parallel(8) {span[8]} (s), speed-up {span[1].median / span[8].median:.1f}x of the "
          "medians (goal >= 3x)")
    headline("pull 8 layers at 50 ms per request: parallel(8)", "s", span[8], "the v1-style serial pull", span[1])
    layout = s.save(lab.root() / "bench-layout", "v1", prev)
    size = sum(d.size for d in s.image(prev).layers)
    push = {"labkit registry": [], "docker-registry": []}
    pull = {"labkit registry": [], "docker-registry": []}
    with server.serve(lab.root() / "bench-registry2") as srv, \
            reference.docker_registry(lab.root() / "bench-docker-registry") as address:
        where = {"labkit registry": srv.address, "docker-registry": address}
        for i in range(REPEAT):            # taking turns, a new repository each time: every blob is sent
            for name in (list(where) if i % 2 == 0 else list(where)[::-1]):
                a, b = _skopeo(where[name], layout, f"bench/app{i}")
                push[name].append(a)
                pull[name].append(b)
    push = {k: Timing(tuple(v)) for k, v in push.items()}
    pull = {k: Timing(tuple(v)) for k, v in pull.items()}
    print(f"skopeo push and pull, {size / 2**20:.1f} MiB, {REPEAT} interleaved rounds (MiB/s, from the medians); {load()}")
    for name in push:
        print(f"  {name:<16} push {size / push[name].median / 2**20:6.0f}   pull {size / pull[name].median / 2**20:6.0f}")
    lp, ll, dp, dl = push["labkit registry"], pull["labkit registry"], push["docker-registry"], pull["docker-registry"]
    print(f"  labkit/docker-registry throughput: push {dp.median / lp.median:.2f}x, pull {dl.median / ll.median:.2f}x "
          "(goal >= 0.8x)")
    headline("skopeo push of a 10 MiB image to the registry", "s", lp, "docker-registry", dp)
    headline("skopeo pull of it from the registry", "s", ll, "docker-registry", dl)
    big_blob(s)


def big_blob(s: st.Store, size: int = 1 << 30) -> None:
    """Push a 1 GiB layer with `labkit push` and pull it back with `labkit pull`, each a
    process of its own; report every process's peak resident memory (VmHWM, ru_maxrss).
    (skopeo would gzip the layer on push and shrink this repetitive blob to a few MiB.)"""
    mutate.add_layer("busybox", write_tree(lab.scratch("bench-big"), {"big/blob": size}), "bench/big", "1 GiB", store=s).name
    lab.remove_tree(lab.root() / "bench-big")
    peak = {}
    for name, registry in (("labkit registry", reference.labkit_registry),
                           ("docker-registry", reference.docker_registry)):
        with registry(lab.root() / f"bench-big-{len(peak)}") as address:
            pid = _listener_pid(int(address.rsplit(":", 1)[1]))
            idle = _hwm(pid)
            push, push_peak = _labkit("push", "bench/big", f"{address}/bench/big:v1")
            pull, pull_peak = _labkit("pull", "-q", f"{address}/bench/big:v1", "-t", f"big-back-{len(peak)}")
            peak[name] = _hwm(pid)
        print(f"1 GiB blob, {name}: labkit push {push:.1f} s, pull {pull:.1f} s; peak memory: the registry "
              f"{idle / 2**20:.0f} MiB idle -> {peak[name] / 2**20:.0f} MiB after both, labkit push "
              f"{push_peak / 2**20:.0f} MiB, pull {pull_peak / 2**20:.0f} MiB (goal: flat)")
    headline("registry peak memory, 1 GiB blob pushed and pulled", "MiB", peak["labkit registry"] / 2**20,
             "docker-registry", peak["docker-registry"] / 2**20)


LABKIT = [sys.executable, "-m", "labkit.cli"]


def _labkit(*argv: str) -> tuple[float, int]:
    """Run one labkit command; its seconds and its own peak RSS in bytes (wait4(2))."""
    t0 = time.perf_counter()
    p = subprocess.Popen(LABKIT + list(argv), stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"labkit {' '.join(argv)} failed ({p.returncode})")
    return time.perf_counter() - t0, usage.ru_maxrss * 1024


def _hwm(pid: int) -> int:
    """Peak resident set size of a running process, from /proc/PID/status (proc(5))."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _listener_pid(port: int) -> int:
    """The process listening on ``port``, found through ss(8)."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return int(out.split("pid=")[1].split(",")[0])


def _skopeo(address: str, layout, repo: str) -> tuple[float, float]:
    """Seconds of `skopeo copy` from the layout to ``repo`` of the registry, and back into a new layout."""
    t0 = time.perf_counter()
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
                    f"docker://{address}/{repo}:v1"], check=True, capture_output=True)
    push = time.perf_counter() - t0
    back = lab.fresh_dir(lab.root() / "bench-back")
    t0 = time.perf_counter()
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{address}/{repo}:v1",
                    f"oci:{back}:v1"], check=True, capture_output=True)
    return push, time.perf_counter() - t0


if __name__ == "__main__":
    main()
