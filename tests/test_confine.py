"""Containers that contain (issue 16): Docker's default confinement for `labkit run`,
`container.run` and build RUN steps; the attacks that worked before each fail; runc's default
spec and podman/docker's numbers (FACTS.md) as the oracle; --privileged and the options."""
import dataclasses
import json
import subprocess

import pytest

from labkit import build, confine, container, lab, procfs
from labkit.tree import write_tree

from helpers import need

DOCKER_CAPEFF = "00000000a80425fb"          # podman and docker inside busybox (FACTS.md)


def _sh(script: str, **opts) -> tuple[int, str]:
    c, r = container.run("busybox", ["/bin/sh", "-c", script], rm=True, **opts)
    return r.exit_code, r.stdout + r.stderr


def _status(**opts) -> dict:
    return procfs.parse_status(_sh("cat /proc/self/status", **opts)[1])


def test_the_default_container_has_dockers_capabilities_seccomp_and_no_new_privs(busybox):
    st = _status()
    here = confine.mask(confine.caps_in_force(confine.Confinement()))
    assert st["CapEff"] == st["CapBnd"] == here                      # before: 000001fffeffffff
    if confine.devices_cgroup():
        assert here == DOCKER_CAPEFF                                 # cgroup v2: docker's less MKNOD
    assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1"         # before: 0 and 0
    assert set(confine.cap_names(st["CapEff"])) <= confine.DOCKER_CAPS
    assert st["CapInh"] == st["CapAmb"] == "0000000000000000"       # before: CapInh as CapEff


def test_inheritable_capabilities_are_empty_whatever_the_options(busybox):
    """docker since 20.10.14 (CVE-2022-24769), podman and runc's default spec leave the
    inheritable set empty: with it filled, an exec of a file with inheritable file capabilities
    gets them. Before: labkit set it to the kept capabilities, --cap-add's too."""
    for opts in ({}, {"cap_add": ["SYS_ADMIN"]}, {"user": "1000"}, {"security_opt": ["no-new-privileges=false"]}):
        assert _status(**opts)["CapInh"] == "0000000000000000", opts


@pytest.mark.parametrize("attack, refused", [
    ("mknod /dev/vdx b 254 0 && head -c 1 /dev/vdx", "Operation not permitted"),        # the host's disk, raw
    ("mkdir -p /m && mount -t tmpfs none /m", "permission denied"),
    ("echo '|/tmp/x' > /proc/sys/kernel/core_pattern", "Read-only file system"),
    ("echo 3 > /proc/sys/vm/drop_caches", "Read-only file system"),
    ("mkdir -p /cg && mount -t cgroup -o memory none /cg", "permission denied"),
    ("unshare -U true", "Operation not permitted"),
    ("unshare -m true", "Operation not permitted"),
    ("touch /sys/kernel/x", "Read-only file system"),
])
def test_an_attack_from_inside_a_default_container_is_refused(busybox, attack, refused):
    code, out = _sh(attack)
    assert code != 0 and refused in out, out


def test_masked_paths_read_empty_and_dev_holds_only_the_default_devices(busybox):
    _, out = _sh("wc -c < /proc/timer_list; ls -A /sys/firmware | wc -l; ls /dev")
    lines = out.split()
    assert lines[0] == "0" and lines[1] == "0"                        # on the host: both hold something
    assert set(lines[2:]) == {"fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr",
                              "stdin", "stdout", "tty", "urandom", "zero"}     # before: no mqueue
    code, out = _sh("echo hi > /dev/null && head -c 4 /dev/zero | wc -c && ls -l /dev/null")
    assert code == 0 and out.split()[0] == "4" and out.split()[1].startswith("crw-rw-rw-")


def test_the_seccomp_filter_names_the_calls_dockers_profile_leaves_out(lab_root, tmp_path):
    pfc = tmp_path / "filter.pfc"
    with open(pfc, "w") as f:
        confine.seccomp_filter().export_pfc(f)
    text = pfc.read_text()
    for call in ("mount", "umount2", "pivot_root", "kexec_load", "init_module", "finit_module", "delete_module",
                 "open_by_handle_at", "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "reboot",
                 "swapon", "swapoff", "acct", "clock_settime", "settimeofday", "unshare", "setns", "clone", "clone3"):
        assert f"syscall \"{call}\"" in text, call


def test_privileged_and_the_options_change_what_the_container_gets(busybox):
    st = _status(privileged=True)
    assert st["Seccomp"] == "0" and st["NoNewPrivs"] == "0" and int(st["CapEff"], 16) > int(DOCKER_CAPEFF, 16)
    code, out = _sh("mkdir -p /m && mount -t tmpfs none /m && echo mounted", privileged=True)
    assert code == 0 and "mounted" in out
    st = _status(cap_add=["SYS_ADMIN"], cap_drop=["NET_RAW"], security_opt=["seccomp=unconfined"])
    assert "SYS_ADMIN" in confine.cap_names(st["CapEff"]) and "NET_RAW" not in confine.cap_names(st["CapEff"])
    assert st["Seccomp"] == "0"
    assert _status(cap_drop=["ALL"])["CapEff"] == "0000000000000000"
    assert _status(user="1000")["CapEff"] == "0000000000000000"     # a non-root user gets none, as in docker
    for opts in ({"cap_drop": ["ALL"]}, {"cap_drop": ["ALL"], "user": "1000"},      # before: "becoming user
                 {"cap_drop": ["SETUID", "SETGID"], "user": "nobody"}):         # failed", as docker does not
        assert _sh("id -u", **opts)[0] == 0, opts
    with pytest.raises(confine.ConfinementError, match="is not a capability"):
        container.Container.create("busybox", ["true"], cap_add=["SYS_WIZARD"])
    with pytest.raises(confine.ConfinementError, match="unknown --security-opt"):
        container.Container.create("busybox", ["true"], security_opt=["apparmor=x"])


def test_labkit_run_takes_the_docker_flags(busybox):
    from labkit import cli
    import sys
    r = subprocess.run([sys.executable, "-m", "labkit", "run", "--rm", "--cap-add", "NOPE", "busybox", "--", "true"],
                       capture_output=True, text=True)
    assert r.returncode == 125 and "'NOPE' is not a capability" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert cli.main(["run", "--rm", "--privileged", "busybox", "--", "true"]) == 0


def test_compared_with_runcs_default_spec(busybox, tmp_path):
    """runc's `runc spec` for the same image: its capabilities are a subset of labkit's (it keeps
    3, docker 14), its NoNewPrivs the same (1); runc adds no seccomp filter, labkit docker's."""
    import shutil
    need(shutil.which("runc") is not None, "runc")
    bundle = lab.scratch("runc-bundle")
    busybox.flatten("busybox", bundle / "rootfs")
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["cat", "/proc/self/status"]
    (bundle / "config.json").write_text(json.dumps(spec))
    r = subprocess.run(["runc", "--root", str(tmp_path / "runc-state"), "run", "-b", str(bundle), "labkit-cmp"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    runc = procfs.parse_status(r.stdout)
    mine = _status()
    assert set(confine.cap_names(runc["CapEff"])) <= set(confine.cap_names(mine["CapEff"]))
    assert runc["NoNewPrivs"] == mine["NoNewPrivs"] == "1"
    assert runc["Seccomp"] == "0" and mine["Seccomp"] == "2"
    lab.remove_tree(bundle)


def test_a_build_run_step_has_limits_and_the_same_confinement(busybox):
    """Before: a fork bomb in RUN made 1,504 processes. Now a RUN step has at most ``pids``
    processes (512 by default, --pids to change) and docker's confinement."""
    ctx = write_tree(lab.scratch("forks"), {"Dockerfile": (
        "FROM busybox\n"
        "RUN n=0; for i in $(seq 100); do (sleep 3 &) 2>/dev/null && n=$((n+1)); done; echo $n > /forks; "
        "grep -E 'CapEff|Seccomp' /proc/self/status > /confined\n")})
    img = build.build(ctx, "t/forks", quiet=True, pids=32, store=busybox).image
    tree = busybox.flatten("t/forks", lab.scratch("forks-out"))
    assert int((tree / "forks").read_text()) < 40
    here = confine.mask(confine.caps_in_force(confine.Confinement()))
    assert here in (tree / "confined").read_text() and "Seccomp:\t2" in (tree / "confined").read_text()
    busybox.remove(img.name)


def test_the_container_reads_its_own_limits_in_a_read_only_cgroupfs(busybox):
    """/sys/fs/cgroup inside, as docker mounts it: in the container's cgroup namespace each
    hierarchy's root is the container's own group, read-only."""
    code, out = _sh("cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; "
                    "touch /sys/fs/cgroup/x", memory="64m")
    assert "67108864" in out and "Read-only file system" in out


def test_the_cgroup_v1_mount_attack_is_left_out_on_a_pure_cgroup_v2_host(monkeypatch):
    """make vm-test's Debian 12 guest (pure v2): `mount -t cgroup -o memory` is refused there
    even --privileged (v2 holds the controller), so lesson 05's first row could not 'escape' on
    every column. There is no release_agent to reach: the column is not offered."""
    from labkit import cgroups
    real = cgroups.controllers()
    v2 = {name: dataclasses.replace(c, version=2) for name, c in real.items()}
    monkeypatch.setattr(cgroups, "controllers", lambda: v2)
    assert "cgroupfs" not in confine.attacks() and "raw disk" in confine.attacks()
    monkeypatch.setattr(cgroups, "controllers", lambda: {name: dataclasses.replace(c, version=1) for name, c in real.items()})
    assert list(confine.attacks()) == list(confine.ATTACKS)
