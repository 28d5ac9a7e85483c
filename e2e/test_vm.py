"""`make vm-test`: the course VM booted for real, with vagrant-libvirt and QEMU.

The box is made here with debootstrap (scripts/vm-box.sh: no box can be downloaded), libvirtd
and virtlogd are started by hand when they are not running (this machine has no systemd), and
the guest runs under QEMU's TCG (KVM guests hang here: FACTS.md). `vagrant up` uses the
repository's own Vagrantfile (through e2e/Vagrantfile.test, which adds this machine's pip
configuration). Checked: the provisioner finishes, `labkit preflight` passes in the guest (pure
cgroup v2 there), the labkit-lab service is active and JupyterLab answers through the forwarded
port on this machine's 127.0.0.1, lessons 00, 01 and 05 pass nbval in the guest, and `vagrant
destroy` leaves no qemu process, domain or libvirt network behind.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import hostconfig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LABKIT_CACHE", "/var/cache/labkit"))
BOX = "labkit-test/debian12"
ARTIFACTS = REPO / "test-artifacts" / "vm-test"
RECORD = {}
SERIAL = Path("/var/log/libvirt/qemu/labkit-vm-test-serial.log")     # where qemu may write


def _running(name: str) -> bool:
    return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0


def _virsh(*args) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def vm():
    for tool in ("vagrant", "virsh", "libvirtd", "qemu-system-x86_64"):
        assert shutil.which(tool), f"{tool} is missing: apt-get install vagrant-libvirt libvirt-daemon-system qemu-system-x86"
    started = []
    for daemon in ("virtlogd", "libvirtd"):      # no systemd here: start them ourselves
        if not _running(daemon):
            subprocess.run([daemon, "-d"], check=True)
            started.append(daemon)
    nets_before = set(_virsh("net-list", "--all", "--name").split())
    t = time.monotonic()
    box = subprocess.run([str(REPO / "scripts" / "vm-box.sh")], check=True, capture_output=True, text=True).stdout.strip()
    RECORD["box made or cached (s)"] = round(time.monotonic() - t)
    port = hostconfig.free_port()
    files = [str(p) for p in hostconfig.pip_files() if p.is_file()]
    env = dict(os.environ, VAGRANT_HOME=str(CACHE / "vagrant.d"), VAGRANT_CWD=str(REPO / "e2e"),
               VAGRANT_VAGRANTFILE="Vagrantfile.test", VAGRANT_EXPERIMENTAL="dependency_provisioners",
               VAGRANT_DEFAULT_PROVIDER="libvirt", LABKIT_BOX=BOX, LABKIT_LIBVIRT_DRIVER="qemu",
               LABKIT_PORT=str(port), LABKIT_GUEST_FILES=":".join(files), LABKIT_SERIAL_LOG=str(SERIAL))
    vagrant = lambda *a, timeout=600, check=True: subprocess.run(["vagrant", *a], env=env, capture_output=True,
                                                                  text=True, timeout=timeout, check=check)
    stamp = CACHE / "vagrant.d" / "labkit-test-box.added"
    if BOX not in vagrant("box", "list").stdout or not stamp.exists() or stamp.stat().st_mtime < os.stat(box).st_mtime:
        vagrant("box", "remove", "--force", BOX, check=False)
        for vol in _virsh("vol-list", "default", "--name").split():    # vagrant-libvirt's copy of the old box
            if vol.startswith(BOX.replace("/", "-VAGRANTSLASH-")):
                _virsh("vol-delete", "--pool", "default", vol)
        vagrant("box", "add", "--name", BOX, box, timeout=1200)
        stamp.touch()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        t = time.monotonic()
        up = vagrant("up", "--provider=libvirt", timeout=90 * 60, check=False)     # TCG: slow
        RECORD["vagrant up incl. provisioning (s)"] = round(time.monotonic() - t)
        (ARTIFACTS / "vagrant-up.txt").write_text(up.stdout + up.stderr)
        assert up.returncode == 0, f"vagrant up failed (test-artifacts/vm-test/vagrant-up.txt): {up.stderr[-1500:]}"
        yield vagrant, port
    finally:
        if os.environ.get("LABKIT_VM_KEEP"):    # debugging: leave the VM up, say how to reach it
            keep = {k: env[k] for k in env if k.startswith(("VAGRANT_", "LABKIT_"))}
            (ARTIFACTS / "vagrant-env.sh").write_text("".join(f"export {k}='{v}'\n" for k, v in keep.items()))
            print(f"\nvm-test: the VM is left running; . {ARTIFACTS}/vagrant-env.sh; vagrant ssh / vagrant destroy -f")
            return
        down = vagrant("destroy", "-f", timeout=600, check=False)
        (ARTIFACTS / "vagrant-destroy.txt").write_text(down.stdout + down.stderr)
        for net in set(_virsh("net-list", "--all", "--name").split()) - nets_before:
            _virsh("net-destroy", net)           # vagrant-libvirt's management network
            _virsh("net-undefine", net)
        RECORD["left running"] = {"qemu": _running("qemu-system-x86_64"),
                                  "domains": _virsh("list", "--all", "--name").split(),
                                  "networks made": sorted(set(_virsh("net-list", "--all", "--name").split()) - nets_before)}
        if SERIAL.exists():
            shutil.copy(SERIAL, ARTIFACTS / "serial.log")
            SERIAL.unlink()
        for daemon in reversed(started):
            subprocess.run(["pkill", "-x", daemon])
        (ARTIFACTS / "record.json").write_text(json.dumps(RECORD, indent=1))
        print("\nvm-test:", json.dumps(RECORD))


def _ssh(vagrant, cmd: str, timeout=600, check=True) -> subprocess.CompletedProcess:
    return vagrant("ssh", "-c", cmd, timeout=timeout, check=check)


def test_preflight_passes_in_the_vm_on_pure_cgroup_v2(vm):
    vagrant, _ = vm
    assert _ssh(vagrant, "stat -f -c %T /sys/fs/cgroup").stdout.strip() == "cgroup2fs"
    r = _ssh(vagrant, "sudo /opt/labkit/venv/bin/labkit preflight", check=False)
    (ARTIFACTS / "preflight.txt").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    RECORD["guest kernel"] = _ssh(vagrant, "uname -r").stdout.strip()


def test_the_service_serves_jupyterlab_on_the_hosts_loopback(vm):
    vagrant, port = vm
    # as root: the debootstrap box has no D-Bus, through which systemctl answers other users
    state = _ssh(vagrant, "sudo systemctl is-active labkit-lab", check=False).stdout.strip()
    journal = _ssh(vagrant, "sudo journalctl -u labkit-lab --no-pager -n 200", check=False)
    (ARTIFACTS / "labkit-lab.journal.txt").write_text(journal.stdout + journal.stderr)
    assert state == "active", f"labkit-lab is {state}: see test-artifacts/vm-test/labkit-lab.journal.txt"
    token = _ssh(vagrant, "sudo sed -n 's/^JUPYTER_TOKEN=//p' /etc/labkit/lab.env").stdout.strip()
    deadline = time.monotonic() + 300
    while True:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=10)
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "JupyterLab did not answer through the forwarded port"
        time.sleep(3)
    names = {c["name"] for c in httpx.get(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=10)
             .json()["content"]}
    assert "00-welcome.ipynb" in names


def test_lessons_00_01_05_pass_nbval_in_the_vm(vm):
    vagrant, _ = vm
    _ssh(vagrant, "sudo /opt/labkit/venv/bin/python -m pip install -q pytest nbval", timeout=1200)
    t = time.monotonic()
    r = _ssh(vagrant, "cd /vagrant && sudo /opt/labkit/venv/bin/python -m pytest -q -p no:cacheprovider -rf --nbval "
                      "--nbval-sanitize-with tests/nbval-sanitize.cfg --nbval-current-env --nbval-cell-timeout=900 "
                      "notebooks/00-welcome.ipynb notebooks/01-overlayfs.ipynb notebooks/05-container-process.ipynb",
             timeout=3600, check=False)
    RECORD["nbval 00, 01, 05 (s)"] = round(time.monotonic() - t)
    (ARTIFACTS / "nbval.txt").write_text(r.stdout + r.stderr)
    RECORD["guest memory used (MiB)"] = _ssh(vagrant, "free -m | awk '/^Mem:/ {print $3}'").stdout.strip()
    assert r.returncode == 0, r.stdout[-3000:]
