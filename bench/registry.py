"""Registry: serial vs parallel pull of 8 layers with 50 ms per request (goal: >= 3x), and
skopeo push/pull throughput against labkit's registry. Debian's docker-registry is not
installed by the lab yet, so it has no row (see the issue notes)."""
import os
import subprocess
import time

from bench import with_lab
from labkit import lab
from labkit.image import store as st
from labkit.registry import server
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
    with server.serve(lab.root() / "bench-registry2") as srv:
        t0 = time.perf_counter()
        subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
                        f"docker://{srv.address}/bench/app:v1"], check=True, capture_output=True)
        push = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{srv.address}/bench/app:v1",
                        f"oci:{lab.root() / 'bench-back'}:v1"], check=True, capture_output=True)
        pull = time.perf_counter() - t0
    print(f"skopeo against labkit's registry, {size / 2**20:.1f} MiB: push {size / push / 2**20:.0f} MiB/s, "
          f"pull {size / pull / 2**20:.0f} MiB/s")


if __name__ == "__main__":
    main()
