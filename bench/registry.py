"""Registry: serial vs parallel pull of 8 layers with 50 ms per request (goal: >= 3x), and
skopeo push/pull throughput against labkit's registry and Debian's docker-registry on the
same blobs, as a ratio (goal: labkit at least 0.8x)."""
import os
import subprocess
import time

from bench import with_lab
from labkit import lab
from labkit.image import store as st
from labkit.registry import reference, server
from labkit.tree import write_tree


@with_lab
def main() -> None:
    s = st.Store()
    st.base_image(s)
    prev = "busybox"
    for i in range(8):
        prev = s.add_layer(prev, write_tree(lab.scratch(f"bench-reg-{i}"), {f"p{i}/d": 1 << 20}),
                           f"bench/reg{i}", f"layer {i}").name
    t = server.timeline(lab.root() / "bench-registry", s, prev, layers_parallel=(1, 8), delay=0.05, rate=None)
    span = {p: max(e.end for e in tr) - min(e.start for e in tr) for p, tr in t.items()}
    print(f"\nregistry pull of 8 x 1 MiB layers, 50 ms per request  [{os.uname().release}, {os.cpu_count()} cpus]")
    print(f"serial {span[1]:.2f} s, parallel(8) {span[8]:.2f} s, speed-up {span[1] / span[8]:.1f}x (goal >= 3x)")
    layout = s.save(prev, lab.root() / "bench-layout", "v1")
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
