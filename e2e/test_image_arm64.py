"""`make image-arm64-test`: the lab's image built for arm64 (Apple Silicon's Docker Desktop), here.

This machine is x86_64, so the arm64 binaries of the build (apt, dpkg, python, pip) run through
qemu-user-static, registered with binfmt_misc by scripts/binfmt.sh (and unregistered at the end
if this test registered it). The base is an arm64 Debian 12 made with debootstrap, imported as
debian:12 for arm64. Checked: the image says arm64 and its binaries are aarch64, labkit in it
picks the arm64 system call numbers (pivot_root and capset differ from x86_64), and labkit drives
the kernel from inside it through those numbers: `labkit preflight` under qemu-user, which turns
each arm64 system call into this kernel's. What it cannot show: the lessons on an arm64 kernel
(no arm64 machine or KVM here; QEMU's full-system arm64 emulation would take hours per lesson).
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import hostconfig  # noqa: E402

from labkit import oracle  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
IMAGE = "localhost/labkit:arm64"
ARTIFACTS = REPO / "test-artifacts" / "image-arm64-test"
TIMINGS = {}


@pytest.fixture(scope="module")
def binfmt():
    r = subprocess.run([str(REPO / "scripts/binfmt.sh"), "arm64"], check=True, capture_output=True, text=True)
    yield
    if r.stdout.strip() == "registered":
        subprocess.run([str(REPO / "scripts/binfmt.sh"), "--remove", "arm64"], check=True)


@pytest.fixture(scope="module")
def pm(binfmt):
    root = Path(os.environ.get("LABKIT_IMAGE_TEST_ROOT", "/var/tmp")) / f"image-arm64-test-{os.getpid()}"
    p = oracle.Podman(root)
    try:
        yield p
    finally:
        p.close()
        subprocess.run(["rm", "-rf", str(root)])
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "timings.json").write_text(json.dumps(TIMINGS, indent=1))
        print("\nimage-arm64-test timings:", json.dumps(TIMINGS))


@pytest.fixture(scope="module")
def image(pm):
    t = time.monotonic()
    tar = subprocess.run([str(REPO / "scripts/debian-base.sh")], env=dict(os.environ, LABKIT_ARCH="arm64"),
                         check=True, capture_output=True, text=True).stdout.strip()
    pm("import", "--arch", "arm64", tar, "debian:12")
    TIMINGS["base (s)"] = round(time.monotonic() - t)
    t = time.monotonic()
    r = pm("build", "--platform", "linux/arm64", "--network", "host", *hostconfig.podman_args(),
           "-f", REPO / "Containerfile", "-t", IMAGE, REPO, timeout=3 * 3600, check=False)
    TIMINGS["build under qemu-user (s)"] = round(time.monotonic() - t)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "build.txt").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, f"the arm64 build failed (test-artifacts/image-arm64-test/build.txt): {r.stderr[-1500:]}"
    TIMINGS["image MiB"] = int(pm("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout) >> 20
    return IMAGE


def test_the_image_is_arm64_and_runs_aarch64_binaries(pm, image):
    assert pm("image", "inspect", "--format", "{{.Architecture}}", image).stdout.strip() == "arm64"
    r = pm("run", "--rm", "--arch", "arm64", "--entrypoint", "uname", image, "-m")
    assert r.stdout.strip() == "aarch64"


def test_labkit_in_it_uses_the_arm64_system_call_numbers(pm, image):
    """asm-generic numbers (arm64): pivot_root 41 and capset 91 (x86_64: 155 and 126)."""
    r = pm("run", "--rm", "--arch", "arm64", "--entrypoint", "python", image, "-c",
           "from labkit import kernel; print(kernel.SYS_pivot_root, kernel.SYS_CAPSET)")
    assert r.stdout.split() == ["41", "91"], r.stdout + r.stderr


def test_preflight_drives_the_kernel_through_them(pm, image):
    """Through the image's entry point, privileged and with volumes, as a learner runs it;
    qemu-user passes each arm64 system call on to this kernel. The output is kept."""
    r = pm("run", "--rm", "--arch", "arm64", "--privileged", "--cgroupns=private", "-v", "lk-arm-home:/var/lib/labkit",
           "-v", "lk-arm-work:/work", image, "labkit", "preflight", check=False, timeout=900)
    (ARTIFACTS / "preflight.txt").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-1000:]
