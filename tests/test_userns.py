"""--userns auto (issue 16): container root is an unprivileged host uid, the image's files keep
their owners through idmapped mounts, and even --privileged cannot reach the host."""
import os
import subprocess
import sys
import tarfile
import time

import pytest

from labkit import confine, container, lab, procfs, userns


def _sh(script: str, **opts) -> tuple[int, str]:
    c, r = container.run("busybox", ["/bin/sh", "-c", script], rm=True, timeout=60, **opts)
    return r.exit_code, r.stdout + r.stderr


def test_root_inside_is_an_unprivileged_host_uid_and_the_image_keeps_its_owners(busybox):
    code, out = _sh("id -u; cat /proc/self/uid_map; stat -c %u /bin/busybox /etc/passwd", userns="auto")
    lines = out.split()
    assert code == 0 and lines[0] == "0"
    inside, outside, count = map(int, lines[1:4])
    assert inside == 0 and outside >= userns.FIRST and count == userns.SIZE
    assert lines[4:6] == ["0", "0"]                   # without the idmapped layers: 65534 (nobody)
    code, out = _sh("id -u; cat /proc/self/uid_map")          # without --userns: the host's map
    assert out.split()[1:4] == ["0", "0", "4294967295"]


def test_the_host_sees_the_container_process_as_its_range_and_what_it_writes_as_uid_0(busybox):
    c = container.Container.create("busybox", ["/bin/sh", "-c", "echo hi > /etc/made; touch /tmp/ann; "
                                               "chown 1000 /tmp/ann; touch /tmp/done; sleep 30"], userns="auto")
    try:
        c.start()
        pid1 = c.pid1()
        for _ in range(200):
            if (c.upper / "tmp" / "done").exists():      # not ann: it exists before its chown
                break
            time.sleep(0.05)
        uids = procfs.status(pid1)["Uid"].split()
        assert uids[0] == str(c.cfg.userns) and c.cfg.userns >= userns.FIRST    # host root before
        assert os.stat(c.upper / "etc" / "made").st_uid == 0           # on disk: as any layer
        assert os.stat(c.upper / "tmp" / "ann").st_uid == 1000
    finally:
        c.remove()


def test_a_committed_layer_of_a_userns_container_has_the_owners_the_container_saw(busybox):
    c, r = container.run("busybox", ["/bin/sh", "-c", "mkdir /data && chown 33:33 /data && touch /data/f"],
                         userns="auto", store=busybox)
    assert r.exit_code == 0, r.stderr
    _commit_has_the_owners_seen_inside(c, busybox)


def _commit_has_the_owners_seen_inside(c, store) -> None:
    """c made /data (33:33) and /data/f (0:0): its committed layer says so, whatever is on disk."""
    img = c.commit("t/userns-commit", store=store)
    with tarfile.open(store.blob_path(img.layers[-1].digest)) as t:
        owners = {m.name: (m.uid, m.gid) for m in t.getmembers()}
    assert owners["data"] == (33, 33) and owners["data/f"] == (0, 0)
    c.remove()
    store.remove(img.name)


def test_even_privileged_cannot_reach_the_host_under_userns(busybox):
    """The attacks of lesson 05 from a --privileged container: with --userns every one that
    reaches the host is refused; unshare works, as in docker, but makes namespaces the
    container's user namespace owns."""
    with confine.DisposableDisk(lab.root() / "scratch" / "userns-disk.img") as disk:
        rung = confine.try_attacks("busybox", confine.Confinement.from_options(privileged=True, userns="auto"),
                                   disk, store=busybox)
        bare = confine.try_attacks("busybox", confine.Confinement.from_options(privileged=True), disk, store=busybox)
    assert bare.escaped["raw disk"] and bare.escaped.get("cgroupfs", True)     # the same attacks without it
    assert not rung.escaped["raw disk"] and not rung.escaped["/proc/sys"] and not rung.escaped.get("cgroupfs")
    assert rung.escaped["unshare"]
    assert int(rung.status["CapEff"], 16) >= int(bare.status["CapEff"], 16)   # every capability, in its namespace
    for attack in ("echo 3 > /proc/sys/vm/drop_caches", "echo never > /sys/kernel/mm/transparent_hugepage/enabled",
                   "f=/sys/fs/cgroup/pids/pids.max; [ -e $f ] || f=/sys/fs/cgroup/pids.max; echo 1 > $f"):
        code, out = _sh(attack, privileged=True, userns="auto")       # writable mounts, host-owned files
        assert code != 0 and "Permission denied" in out, (attack, out)


def test_volumes_are_idmapped_too(busybox):
    vol = lab.root() / "scratch" / "uvol"
    vol.mkdir(parents=True)
    (vol / "host-file").write_text("from the host\n")
    code, out = _sh("stat -c %u /v/host-file && echo made > /v/inside", userns="auto", volumes=[f"{vol}:/v"])
    assert code == 0 and out.split()[0] == "0", out
    assert os.stat(vol / "inside").st_uid == 0                    # not 1000000000 on the host
    lab.remove_tree(vol)


def test_each_running_container_gets_its_own_range_and_a_removed_ones_is_reused(busybox):
    a = container.Container.create("busybox", ["true"], userns="auto")
    b = container.Container.create("busybox", ["true"], userns="auto")
    assert a.cfg.userns != b.cfg.userns and {a.cfg.userns, b.cfg.userns} <= {
        userns.FIRST + i * userns.SIZE for i in range(userns.SLOTS)}
    first = a.cfg.userns
    a.remove()
    c = container.Container.create("busybox", ["true"], userns="auto")
    assert c.cfg.userns == first
    for x in (b, c):
        x.remove()


def test_a_user_of_the_image_keeps_its_uid_inside(busybox):
    code, out = _sh("id -u; grep Uid /proc/self/status", userns="auto", user="1000")
    assert out.split()[0] == "1000" and out.split()[2] == "1000"


def test_bad_userns_values_and_the_cli_flag(busybox):
    with pytest.raises(confine.ConfinementError, match="unknown --userns"):
        container.Container.create("busybox", ["true"], userns="keep-id")
    r = subprocess.run([sys.executable, "-m", "labkit", "run", "--rm", "--userns", "auto", "busybox", "--",
                        "cat", "/proc/self/uid_map"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and int(r.stdout.split()[1]) >= userns.FIRST, r.stderr


def test_preflight_says_whether_the_lab_root_takes_idmapped_mounts(lab_root):
    from labkit import preflight
    check = preflight.idmap_check()
    assert check.ok, check.detail


def test_a_kernel_that_refuses_idmapped_mounts_gets_chowned_copies(busybox, monkeypatch):
    """mount_setattr(2) refused (as on tmpfs before Linux 6.3): the probe says so, and the
    container runs on chowned copies, never with the image's files owned by nobody."""
    import errno
    from labkit import kernel
    from labkit.errors import KernelError

    def refuse(mount_fd, userns_fd):
        raise KernelError("mount_setattr(MOUNT_ATTR_IDMAP)", errno.EINVAL, "",
                          "this file system or kernel cannot make idmapped mounts", "see mount_setattr(2)")
    monkeypatch.setattr(kernel, "mount_setattr_idmap", refuse)
    assert not userns.can_idmap(lab.root())
    c, r = container.run("busybox", ["stat", "-c", "%u", "/bin/busybox"], userns="auto", rm=True)
    assert r.exit_code == 0 and r.stdout == "0\n" and c.cfg.shifted


def test_where_the_kernel_cannot_idmap_the_layers_are_chowned_copies(busybox, monkeypatch):
    """tmpfs before Linux 6.3, or an older kernel: the image's layers are copied with their
    owners shifted into the range (once per range), the container's directory chowned; inside
    it looks the same, and a commit has the owners the container saw."""
    monkeypatch.setattr(userns, "_CAN_IDMAP", {str(lab.root()): False})
    c, r = container.run("busybox", ["/bin/sh", "-c", "id -u; stat -c %u /bin/busybox; cat /proc/self/uid_map; "
                                     "mkdir /data && chown 33:33 /data && touch /data/f"], userns="auto", store=busybox)
    lines = r.stdout.split()
    assert r.exit_code == 0 and lines[:2] == ["0", "0"] and int(lines[3]) == c.cfg.userns, r.stderr
    assert c.cfg.shifted and os.stat(c.upper / "data").st_uid == c.cfg.userns + 33
    _commit_has_the_owners_seen_inside(c, busybox)


def test_reset_forgets_the_id_ranges(busybox):
    container.Container.create("busybox", ["true"], userns="auto")
    assert list((lab.root() / "userns").glob("1*"))
    lab.reset()
    assert not (lab.root() / "userns").exists()
