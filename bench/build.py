"""Squash time for 2..50 layers, both methods; and a warm-cache rebuild of a 10-instruction
Dockerfile (goal: under 0.5 s). There is no docker here to compare with, so the squash
methods are compared with each other."""
import os
import time

from bench import with_lab
from labkit import build, lab, squash
from labkit.image import store as st
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
    st.base_image(s)
    print(f"\nsquash, layers of 20 files (s)  [{os.uname().release}, {os.cpu_count()} cpus]")
    print(f"{'layers':>6} {'merge':>8} {'diff':>8} {'same digest':>12}")
    for n in (2, 10, 25, 50):
        r = squash.measure(s, n)
        print(f"{n:>6} {r['merge']:>8.2f} {r['diff']:>8.2f} {str(r['merge_digest'] == r['diff_digest']):>12}")
    ctx = write_tree(lab.scratch("bench-build"), {"a.txt": "a", "b.txt": "b", "Dockerfile": DOCKERFILE})
    t = time.perf_counter()
    build.build(ctx, "bench/app", quiet=True)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    _, steps = build.build(ctx, "bench/app", quiet=True)
    warm = time.perf_counter() - t
    print(f"\n10-instruction Dockerfile: cold build {cold:.2f} s, warm rebuild {warm:.3f} s "
          f"({sum(x.cached for x in steps)} steps cached; goal < 0.5 s)")


if __name__ == "__main__":
    main()
