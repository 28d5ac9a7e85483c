"""`make image-test`: the lab as a container image, built and used as a learner would.

No registry here can give `debian:12`, so the base is made with debootstrap from this machine's
apt mirror (scripts/debian-base.sh) and imported under that name. Then: build the Containerfile
(the build reaches the package registries as this machine does: host network, pip's
configuration passed in), run it privileged with the lab root and work dir on volumes,
JupyterLab answers on the published port, `labkit preflight` passes inside, every lesson passes
nbval inside, and the container refuses to start without --privileged or without volumes.
podman runs with its storage under a directory of its own (labkit.oracle), all removed at the end.
"""
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import hostconfig  # noqa: E402

from labkit import oracle  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NAME = "labkit-image-test"
ARTIFACTS = REPO / "test-artifacts" / "image-test"
TIMINGS = {}


@pytest.fixture(scope="module")
def pm(tmp_path_factory):
    # no "labkit" in the name: the test sessions' leftover check looks for that word in mounts
    root = Path(os.environ.get("LABKIT_IMAGE_TEST_ROOT", "/var/tmp")) / f"image-test-{os.getpid()}"
    p = oracle.Podman(root)
    try:
        yield p
    finally:
        p("rm", "-f", "-t", "0", NAME, check=False)
        p.close()
        subprocess.run(["rm", "-rf", str(root)])
        print("\nimage-test timings:", json.dumps(TIMINGS))


@pytest.fixture(scope="module")
def image(pm):
    t = time.monotonic()
    tar = subprocess.run([str(REPO / "scripts/debian-base.sh")], check=True, capture_output=True, text=True).stdout.strip()
    pm("import", tar, "debian:12")
    TIMINGS["base"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    pm("build", "--network", "host", *hostconfig.podman_args(), "-f", REPO / "Containerfile",
       "-t", "localhost/labkit", REPO, timeout=3600)
    TIMINGS["build"] = round(time.monotonic() - t, 1)
    size = pm("image", "inspect", "--format", "{{.Size}}", "localhost/labkit").stdout.strip()
    TIMINGS["image MiB"] = int(size) >> 20
    return "localhost/labkit"


@pytest.fixture(scope="module")
def lab(pm, image):
    port, token = hostconfig.free_port(), secrets.token_hex(8)
    t = time.monotonic()
    pm("run", "-d", "--name", NAME, "--privileged", "--cgroupns=private", "--network", "slirp4netns",
       "-p", f"127.0.0.1:{port}:8888", "-v", "lk-home:/var/lib/labkit", "-v", "lk-work:/work",
       "-v", "lk-tmp:/tmp",      # the test session's own lab root goes in /tmp: a real fs, as on a host
       *hostconfig.podman_args(), "-e", f"JUPYTER_TOKEN={token}", image)
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            logs = pm("logs", NAME, check=False)
            pytest.fail(f"JupyterLab did not answer on the published port: {logs.stdout[-1500:]}{logs.stderr[-1500:]}")
        time.sleep(1)
    TIMINGS["JupyterLab answers"] = round(time.monotonic() - t, 1)
    return port, token


def test_jupyterlab_answers_on_the_published_port_with_the_lessons(lab):
    port, token = lab
    r = httpx.get(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=10)
    names = {c["name"] for c in r.json()["content"] if c["name"].endswith(".ipynb")}
    assert names == {p.name for p in (REPO / "notebooks").glob("*.ipynb")}        # copied to /work
    assert httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=10).status_code == 403   # no token, no lab


def test_preflight_passes_inside(pm, lab):
    r = pm("exec", NAME, "labkit", "preflight", check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_lesson_passes_nbval_inside(pm, lab):
    """pytest and nbval are test tools, added to the running container for this check only."""
    pm("exec", NAME, "python", "-m", "pip", "install", "-q", "pytest", "nbval", timeout=900)
    t = time.monotonic()
    r = pm("exec", "-w", "/opt/labkit", NAME, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
           "notebooks", "--nbval", "--nbval-sanitize-with", "tests/nbval-sanitize.cfg", "--nbval-current-env",
           "--nbval-cell-timeout=600", check=False, timeout=3600)
    TIMINGS["nbval, every lesson"] = round(time.monotonic() - t, 1)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "nbval.txt").write_text(r.stdout + r.stderr)
    summary = [line for line in r.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    assert r.returncode == 0, f"see {ARTIFACTS / 'nbval.txt'}: " + "; ".join(summary[:10]) + r.stdout[-1500:]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(pm.root) not in loops, f"a lesson left a loop device attached: {loops}"


def test_unprivileged_it_says_what_to_add_and_without_v_the_lab_root_is_still_a_volume(pm, image):
    """Without --privileged the entry point stops with the flag to add. Without -v the image's
    VOLUMEs give the lab root and work dir anonymous volumes (as docker does), never the overlay."""
    r = pm("run", "--rm", "-v", "lk-home2:/var/lib/labkit", "-v", "lk-work2:/work", image, check=False)
    assert r.returncode == 2 and "--privileged" in r.stderr, r.stderr
    r = pm("run", "--rm", "--privileged", image, "stat", "-f", "-c", "%T", "/var/lib/labkit", "/work")
    assert "overlayfs" not in r.stdout and len(r.stdout.split()) == 2, r.stdout


DEVCONTAINER_CLI = "@devcontainers/cli@0.89.0"


def test_the_dev_containers_cli_builds_and_starts_the_devcontainer(pm, image):
    """.devcontainer/devcontainer.json through the Dev Containers CLI (from npm, cached), against
    podman: `devcontainer up` builds the Containerfile and starts it with the file's privileges and
    volumes; `devcontainer exec` runs preflight in it."""
    prefix = Path(os.environ.get("LABKIT_CACHE", "/var/cache/labkit")) / "node"
    cli = prefix / "node_modules" / ".bin" / "devcontainer"
    if not cli.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(prefix),
                        DEVCONTAINER_CLI], check=True, timeout=600)
    # its build reaches the package registries as `make image` does: the host's network
    conf = pm.root / "containers-host-net.conf"
    conf.write_text((pm.root / "containers.conf").read_text().replace('netns = "none"', 'netns = "host"'))
    env = dict(pm.env, CONTAINERS_CONF=str(conf))
    run = lambda sub, *cmd: subprocess.run([str(cli), sub, "--workspace-folder", str(REPO), "--docker-path", "podman",
                                            *cmd], env=env, capture_output=True, text=True, timeout=1800)
    t = time.monotonic()
    up = run("up")
    TIMINGS["devcontainer up"] = round(time.monotonic() - t, 1)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "devcontainer-up.txt").write_text(up.stdout + up.stderr)
    assert up.returncode == 0 and '"outcome":"success"' in up.stdout, f"see {ARTIFACTS / 'devcontainer-up.txt'}"
    r = run("exec", "labkit", "preflight")
    assert r.returncode == 0, r.stdout + r.stderr
    ids = pm("ps", "-q", "--filter", f"label=devcontainer.local_folder={REPO}").stdout.split()
    assert ids
    inspect = json.loads(pm("inspect", ids[0]).stdout)[0]
    assert inspect["HostConfig"]["Privileged"] and {m["Destination"] for m in inspect["Mounts"]} >= {"/var/lib/labkit", "/work"}
    pm("rm", "-f", "-t", "0", *ids)
