"""fork(2) and posix_spawn(3) cost against memory mapped (lesson 02).

Each size runs in a throwaway process that touches that much private memory, then
times fork() (copies page tables) and posix_spawn() of /bin/true (vfork-style, copies
nothing). Prints ms, ms per GiB for fork, and fork/posix_spawn as a ratio.
"""
import os

from bench import headline
from labkit import cow

SIZES_MIB = (256, 1024, 2048, 4096)


def main() -> None:
    print(f"\nfork vs posix_spawn, median of 5 (ms)  [{os.uname().release}, {os.cpu_count()} cpus]")
    print(f"{'MiB':>6} {'fork':>9} {'posix_spawn':>12} {'fork ms/GiB':>12} {'fork/posix_spawn':>17}")
    for mib in SIZES_MIB:
        c = cow.spawn_cost(mib)
        print(f"{mib:>6} {c.fork_s * 1e3:>9.2f} {c.posix_spawn_s * 1e3:>12.2f} "
              f"{c.fork_s * 1e3 / (mib / 1024):>12.2f} {c.fork_s / c.posix_spawn_s:>16.1f}x")
        if mib == 1024:
            headline("fork of a process with 1 GiB touched", "ms", c.fork_s * 1e3, "posix_spawn", c.posix_spawn_s * 1e3)


if __name__ == "__main__":
    main()
