"""Registry: serial vs parallel pull of 8 layers with 50 ms per request (goal: >= 3x),
skopeo push/pull throughput against labkit's registry and Debian's docker-registry on the
same blobs, as a ratio (goal: labkit at least 0.8x), and the memory both registries and
labkit's client need for a 1 GiB blob (goal: flat, i.e. far below the blob's size)."""
import os
import subprocess
import sys
import time

from bench import headline, with_lab
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
    t = link.timeline(lab.root() / "bench-registry", s, prev, layers_parallel=(1, 8), delay=0.05, rate=None)
    span = {p: t.span(p) for p in (1, 8)}
    print(f"\nregistry pull of 8 layers (busybox + 7 x 1 MiB), 50 ms per request  [{os.uname().release}, {os.cpu_count()} cpus]")
    print(f"serial {span[1]:.2f} s, parallel(8) {span[8]:.2f} s, speed-up {span[1] / span[8]:.1f}x (goal >= 3x)")
    headline("pull 8 layers at 50 ms per request: parallel(8)", "s", span[8], "the v1-style serial pull", span[1])
    layout = s.save(lab.root() / "bench-layout", "v1", prev)
    size = sum(d.size for d in s.image(prev).layers)
    rows = {}
    with server.serve(lab.root() / "bench-registry2") as srv:
        rows["labkit registry"] = _skopeo(srv.address, layout)
    with reference.docker_registry(lab.root() / "bench-docker-registry") as address:
        rows["docker-registry"] = _skopeo(address, layout)
    print(f"skopeo push and pull, {size / 2**20:.1f} MiB (MiB/s):")
    for name, (push, pull) in rows.items():
        print(f"  {name:<16} push {size / push / 2**20:6.0f}   pull {size / pull / 2**20:6.0f}")
    (lp, ll), (dp, dl) = rows["labkit registry"], rows["docker-registry"]
    print(f"  labkit/docker-registry throughput: push {dp / lp:.2f}x, pull {dl / ll:.2f}x (goal >= 0.8x)")
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


def _skopeo(address: str, layout) -> tuple[float, float]:
    t0 = time.perf_counter()
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
                    f"docker://{address}/bench/app:v1"], check=True, capture_output=True)
    push = time.perf_counter() - t0
    back = lab.fresh_dir(lab.root() / "bench-back")
    t0 = time.perf_counter()
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{address}/bench/app:v1",
                    f"oci:{back}:v1"], check=True, capture_output=True)
    return push, time.perf_counter() - t0


if __name__ == "__main__":
    main()
