"""Squash time for 2..50 layers, both methods, and against what people do without a
squash command (`docker export | docker import`: here umoci unpack of the image, then GNU
tar of its root filesystem); a warm-cache rebuild of a 10-instruction Dockerfile (goal:
under 0.5 s); and that Dockerfile built by labkit and by `podman build` (buildah inside),
cold and warm, interleaved, 5 times each."""
import os
import shutil
import statistics
import subprocess
import tempfile
import time

from bench import Timing, headline, interleaved, load, with_lab
from labkit import build, lab, snapshot, squash
from labkit.image import store as st
from labkit.image import mutate
from labkit.image.base import base_image
from labkit.tree import write_tree

DOCKERFILE = """FROM busybox
ARG V=1
ENV A=1
WORKDIR /app
COPY a.txt .
COPY b.txt .
RUN echo one > /app/one
RUN echo two > /app/two
LABEL x=y
CMD ["cat", "/app/one"]
"""


@with_lab
def main() -> None:
    s = st.Store()
    base_image(s)
    print(f"\nsquash, layers of 20 files (s)  [{os.uname().release}, {os.cpu_count()} cpus]")
    print(f"{'layers':>6} {'merge':>8} {'diff':>8} {'same digest':>12}")
    for n in (2, 10, 25, 50):
        r = squash.measure(n, store=s)
        print(f"{n:>6} {r['merge']:>8.2f} {r['diff']:>8.2f} {str(r['merge_digest'] == r['diff_digest']):>12}")
    squash_vs_export(s, 10)
    ctx = write_tree(lab.scratch("bench-build"), {"a.txt": "a", "b.txt": "b", "Dockerfile": DOCKERFILE})
    t = time.perf_counter()
    build.build(ctx, "bench/app", quiet=True)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    steps = build.build(ctx, "bench/app", quiet=True).steps
    warm = time.perf_counter() - t
    print(f"\n10-instruction Dockerfile: cold build {cold:.2f} s, warm rebuild {warm:.3f} s "
          f"({sum(x.cached for x in steps)} steps cached; goal < 0.5 s)")
    if shutil.which("podman"):
        build_vs_buildah(s, ctx)
    else:
        print("podman is not installed: no labkit build vs buildah row (provision.sh installs it)")


def build_vs_buildah(s: st.Store, ctx) -> None:
    """The same Dockerfile, cold (an empty build cache; podman --no-cache) and warm (everything
    cached), labkit and podman build interleaved, 5 rounds; min and median of each."""
    from labkit import oracle
    root = tempfile.mkdtemp(prefix="bench-podman-")
    try:
        with oracle.Podman(root) as pm:
            pm.load(s, "busybox")
            runs = {k: [] for k in ("labkit cold", "podman cold", "labkit warm", "podman warm")}
            build.build(ctx, "bench/warm", quiet=True, store=s, cache_dir=lab.scratch("bench-warm-cache"))
            pm("build", "--network", "none", "-q", "-t", "bench-warm", str(ctx))
            warm_cache = lab.scratch("bench-warm-cache", fresh=False)
            for i in range(5):
                cold_cache = lab.scratch(f"bench-cold-{i}")
                runs["labkit cold"].append(_time(lambda: build.build(ctx, f"bench/cold{i}", quiet=True, store=s,
                                                                     cache_dir=cold_cache)))
                runs["podman cold"].append(_time(lambda: pm("build", "--network", "none", "--no-cache", "-q",
                                                            "-t", f"bench-cold{i}", ctx)))
                runs["labkit warm"].append(_time(lambda: build.build(ctx, "bench/warm", quiet=True, store=s,
                                                                     cache_dir=warm_cache)))
                runs["podman warm"].append(_time(lambda: pm("build", "--network", "none", "-q", "-t", "bench-warm",
                                                            ctx)))
            print(f"\nlabkit build vs podman build (buildah), {DOCKERFILE.count(chr(10))}-instruction Dockerfile, "
                  f"5 interleaved rounds (s); {load()}")
            for k, v in runs.items():
                print(f"  {k:<12} min {min(v):.3f}  median {statistics.median(v):.3f}")
            for kind in ("cold", "warm"):
                a, b = Timing(tuple(runs[f"labkit {kind}"])), Timing(tuple(runs[f"podman {kind}"]))
                headline(f"build a 10-instruction Dockerfile, {kind}", "s", a, "podman build", b)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def squash_vs_export(s: st.Store, n: int) -> None:
    """labkit's squash (diff) of ``n`` layers onto busybox vs unpack-and-tar the whole image,
    interleaved. The image's layers are unpacked once before (as after any `labkit run`): both
    routes then start from what they keep, labkit from its snapshots, umoci from the layout."""
    prev = "busybox"
    for i in range(n):
        d = write_tree(lab.scratch(f"bench-sq{i}"), {f"d{i}/f{j}": 4096 for j in range(20)})
        prev = mutate.add_layer(prev, d, f"bench/sq{i}", f"layer {i}", store=s).name
    w = lab.scratch("bench-export")
    layout = s.save(w / "layout", "v1", prev)
    snapshot.unpack(prev, s)

    def theirs():
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:v1", str(w / "bundle")], check=True,
                       capture_output=True)
        subprocess.run(["tar", "-cf", str(w / "rootfs.tar"), "-C", str(w / "bundle" / "rootfs"), "."], check=True)
    r = interleaved({"labkit": lambda: squash.squash(prev, "busybox", "bench/squashed", store=s), "umoci": theirs},
                    before=lambda _: shutil.rmtree(w / "bundle", ignore_errors=True))
    a, b = r["labkit"], r["umoci"]
    print(f"squash {n} layers: labkit {a}, umoci unpack + tar -c (export/import) {b} (s), "
          f"{a.median / b.median:.2f}x; {load()}")
    headline(f"squash {n} layers onto the base", "s", a, "umoci unpack + tar", b)


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
