"""Namespaces, escapes, cgroups and containers on the real kernel; nothing left behind."""
import json
import os
import socket
import subprocess
import time

import pytest

from labkit import cgroups, container, kernel, lab, ns, procfs, roots, sandbox
from labkit.tree import read_tree

from helpers import need


# --- namespaces ---------------------------------------------------------------------------
def test_process_in_new_namespaces_and_joining_them(lab_root):
    with ns.Process(("mnt", "uts", "pid", "ipc", "net"), hostname="box") as p:
        mine, theirs = ns.links(), p.links()
        assert {t for t in ns.TYPES if mine[t] != theirs[t]} == {"mnt", "uts", "pid", "ipc", "net"}
        assert p.run(socket.gethostname) == "box"
        assert p.run(lambda: [n for _, n in socket.if_nameindex()]) == ["lo"]
        assert p.run(os.getpid) > 1          # a new child in that PID namespace
        pid = p.pid
    assert not procfs.alive(pid)
    assert lab.entries() == []


def test_user_namespace_maps_root_to_the_caller(lab_root, tmp_path):
    assert ns.in_user_ns(ns.identity)["uid_map"] == ["0", "0", "1"]

    def as_nobody():
        os.setgid(65534)
        os.setuid(65534)
        import ctypes
        ctypes.CDLL(None).prctl(4, 1)          # PR_SET_DUMPABLE, lost by setuid
        return ns.in_user_ns(ns.identity)
    from labkit import sandbox
    ident = sandbox.run(as_nobody, namespaces=())
    assert ident["uid"] == 0 and ident["uid_map"] == ["0", "65534", "1"]
    assert ident["CapEff"] != "0000000000000000"     # capabilities, but only inside


# --- chroot vs pivot_root ------------------------------------------------------------------
def test_escapes(busybox):
    rootfs = busybox.flatten("busybox", lab.scratch("rootfs"))
    result = {(a.root, a.pid_ns, a.close_fds, a.attack): a.escaped for a in roots.every_attempt(rootfs)}
    assert result[("chroot", False, False, "chroot-dotdot")] is True
    assert result[("pivot_root", False, False, "chroot-dotdot")] is False
    assert result[("pivot_root", False, False, "proc-host-root")] is True
    assert result[("pivot_root", True, False, "proc-host-root")] is False
    assert result[("pivot_root", False, False, "leaked-fd")] is True
    assert result[("pivot_root", False, True, "leaked-fd")] is False
    assert not any(v for (r, p, c, _), v in result.items() if r == "pivot_root" and p and c)


def test_escapes_with_the_lab_root_on_a_mount_of_its_own(busybox):
    """Found by `make image-test`: in the lab image the lab root is a volume, and the escape
    check looked for a marker file under it; the leaked fd reaches the old root, but not the
    volume the runtime's detach took off it, so a real escape was reported as contained.
    Escaped now means: "/" is the host's root directory again (same device and inode)."""
    rootfs = busybox.flatten("busybox", lab.scratch("rootfs2"))
    volume, root = lab.scratch("volume"), lab.scratch("mounted-root")

    def leaked_fd_on_a_mounted_root():
        kernel.mount(str(volume), str(root), None, kernel.MS_BIND)
        os.environ["LABKIT_HOME"] = str(root)
        lab._private.clear()
        (root / "rootfs").mkdir()
        kernel.mount(str(rootfs), str(root / "rootfs"), None, kernel.MS_BIND)
        return [roots.attempt(root / "rootfs", "pivot_root", "leaked-fd", close_fds=c).escaped for c in (False, True)]

    assert sandbox.run(leaked_fd_on_a_mounted_root, namespaces=("mnt",)) == [True, False]


# --- cgroups ---------------------------------------------------------------------------------
def test_controllers_are_discovered():
    ctl = cgroups.controllers()
    need(all(c in ctl for c in ("memory", "pids", "cpu")), "memory, pids and cpu cgroup controllers")
    for c in ctl.values():
        assert c.version in (1, 2) and c.mountpoint.is_dir()


def _in_group(group, fn):
    pid = os.fork()
    if pid == 0:
        try:
            group.add(os.getpid())
            fn()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return status


def test_memory_limit_ends_in_an_oom_kill(lab_root):
    with cgroups.Group("t-mem") as g:
        g.set_memory(32 << 20)

        def hog():
            chunks = [bytearray(1 << 20) for _ in range(128)]   # 128 MiB, touched
            for c in chunks:
                c[::4096] = b"x" * len(c[::4096])
        status = _in_group(g, hog)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
        assert g.oom_kills() == 1
        made = g.paths["memory"]
        assert made.is_dir() and made.name == "t-mem"
    assert not made.exists()


def test_pids_limit_stops_a_fork_bomb(lab_root):
    r, w = os.pipe()
    with cgroups.Group("t-pids") as g:
        g.set_pids(10)

        def bomb():
            kids, n = [], 0
            try:
                while True:
                    k = os.fork()
                    if k == 0:
                        time.sleep(10)
                        os._exit(0)
                    kids.append(k)
                    n += 1
            except BlockingIOError:
                os.write(w, str(n).encode())
            for k in kids:
                os.kill(k, 9)
        _in_group(g, bomb)
    assert int(os.read(r, 10)) == 9          # the bomb itself is the tenth process


def test_cpu_quota_throttles(lab_root):
    with cgroups.Group("t-cpu") as g:
        g.set_cpu(0.2, period_us=20_000)

        def spin():
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                pass
        t = time.monotonic()
        pid = os.fork()
        if pid == 0:
            g.add(os.getpid())
            spin()
            os._exit(0)
        _, _, usage = os.wait4(pid, 0)
        share = (usage.ru_utime + usage.ru_stime) / (time.monotonic() - t)
        assert share < 0.35 and g.cpu_stat().throttled > 5


def _spin(channel):
    while True:
        pass


def test_freeze_stops_every_process(lab_root):
    with cgroups.Group("t-frz") as g, sandbox.Child(_spin, cgroup=g) as child:
        pid = child.pid
        time.sleep(0.1)
        g.freeze()
        time.sleep(0.1)
        cpu1 = _cpu_ticks(pid)
        time.sleep(0.3)
        assert _cpu_ticks(pid) == cpu1
        g.thaw()
        time.sleep(0.3)
        assert _cpu_ticks(pid) > cpu1


def _cpu_ticks(pid):
    st = procfs.stat(pid)
    return st.utime + st.stime


def test_groups_are_removed_even_after_a_crash(lab_root):
    code = "from labkit import cgroups; g = cgroups.Group('t-crash'); import os; os._exit(1)"
    subprocess.run([os.sys.executable, "-c", code], env=dict(os.environ, LABKIT_HOME=str(lab_root)))
    mem = cgroups.controllers()["memory"].mountpoint / "labkit" / "t-crash"
    assert mem.exists()
    assert any("t-crash" in line for line in lab.reset())
    assert not mem.exists()


# --- containers ------------------------------------------------------------------------------
def test_run_is_isolated(busybox):
    c, r = container.run("busybox", ["/bin/sh", "-c", "echo $$; hostname; cat /etc/hostname; ls /proc | grep -c '^[0-9]'; ip -o link | wc -l"],
                         hostname="box")
    assert r.exit_code == 0, r.stderr
    pid, host, etc_host, nprocs, links = r.stdout.split()
    assert (pid, host, etc_host, links) == ("1", "box", "box", "1") and int(nprocs) <= 3
    assert lab.entries() == [] and not os.path.exists(f"/sys/fs/cgroup/memory/labkit/c-{c.id}")


def test_loopback_is_up_and_answers(busybox):
    """As under runc and podman (network none): lo is up, so 127.0.0.1 works inside. labkit sets
    IFF_UP with an ioctl (kernel.link_up) where it used to run `ip link set lo up`."""
    _, r = container.run("busybox", ["/bin/sh", "-c", "cat /sys/class/net/lo/flags; ping -c1 -W1 127.0.0.1 >/dev/null && echo ok"])
    assert r.exit_code == 0, r.stderr
    flags, ok = r.stdout.split()
    assert int(flags, 16) & 0x1 and ok == "ok"


def test_exit_status_output_and_exec_errors(busybox):
    _, r = container.run("busybox", ["/bin/sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (r.exit_code, r.stdout, r.stderr) == (7, "out\n", "err\n")
    _, r = container.run("busybox", ["/nope"])                 # as docker run: 127 and a message
    assert r.exit_code == 127 and "exec '/nope'" in r.stderr


def test_oom_is_named(busybox):
    _, r = container.run("busybox", ["/bin/sh", "-c", "a=x; while true; do a=$a$a$a$a; done"], memory="16m")
    assert r.oom_killed and r.exit_code == 137 and "OOM killer" in r.message


def test_pids_limit_in_a_container(busybox):
    _, r = container.run("busybox", ["/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait"],
                         pids=4, timeout=30)
    assert "can't fork" in r.stderr or "Resource temporarily unavailable" in r.stderr


def test_commit_keeps_the_rw_layer_only(busybox, lab_root):
    c, r = container.run("busybox", ["/bin/sh", "-c", "echo hi > /etc/motd; rm /bin/vi; echo v > /data/in-volume"],
                         hostname="box", volumes=[f"{lab_root}/vol:/data"])
    assert r.exit_code == 0, r.stderr
    kinds = {ch.path: ch.kind for ch in c.diff()}
    assert kinds["etc/motd"] == "new" and kinds["bin/vi"] == "whiteout" and kinds["data"] == "new"
    assert (lab_root / "vol" / "in-volume").read_text() == "v\n"    # the volume lives on the host
    img = c.commit("committed")
    flat = busybox.flatten("committed", lab.scratch("flat"))
    tree = read_tree(flat)
    assert tree["etc/motd"] == "hi\n" and "bin/vi" not in tree
    assert "etc/hostname" not in tree                     # the init layer is not committed
    assert tree["data"] is None and "data/in-volume" not in tree   # nor the volume's contents
    assert img.history[-1]["created_by"].startswith("labkit commit")
    c.remove()
    assert (lab_root / "vol" / "in-volume").exists()      # the volume outlives the container


def test_anonymous_volume(busybox):
    c, r = container.run("busybox", ["/bin/sh", "-c", "echo x > /scratch/f"], volumes=["/scratch"])
    host = c.cfg.volumes[0].split(":")[0]
    assert r.exit_code == 0 and open(f"{host}/f").read() == "x\n" and host.startswith(str(lab.root() / "volumes"))


def test_volume_outside_the_lab_root_is_refused(busybox, tmp_path):
    with pytest.raises(lab.OutsideLabRoot):
        container.Container.create("busybox", ["true"], volumes=[f"{tmp_path}:/data"])


def test_labkit_image_runs_the_same_under_runc(busybox):
    """The same image, saved as OCI, unpacked by umoci and run by runc, prints the same."""
    script = "echo $$; cat /etc/passwd | head -1; ls /bin | wc -l"
    _, mine = container.run("busybox", ["/bin/sh", "-c", script])
    out = lab.scratch("runc")
    busybox.save(out / "layout", "v1", "busybox")
    subprocess.run(["umoci", "unpack", "--image", f"{out / 'layout'}:v1", str(out / "bundle")], check=True,
                   capture_output=True)
    spec = json.loads((out / "bundle" / "config.json").read_text())
    spec["process"]["args"] = ["/bin/sh", "-c", script]
    spec["process"]["terminal"] = False
    (out / "bundle" / "config.json").write_text(json.dumps(spec))
    runc = subprocess.run(["runc", "--root", str(out / "runc-state"), "run", "--bundle", str(out / "bundle"),
                           f"labkit-test-{os.getpid()}"], capture_output=True, text=True, timeout=60)
    assert runc.returncode == 0, runc.stderr
    assert runc.stdout == mine.stdout


def test_memory_and_cpu_traces_for_the_lesson(lab_root):
    mem = cgroups.memory_trace(limit=32 << 20, step=4 << 20, interval=0)
    assert mem.killed_by == "SIGKILL" and mem.oom_kills == 1 and mem.samples
    ok = cgroups.memory_trace(limit=64 << 20, step=4 << 20, interval=0, most=16 << 20)
    assert ok.killed_by == "" and ok.oom_kills == 0
    cpu = cgroups.cpu_trace(cpus=0.2, seconds=0.5)
    assert cpu.samples and cpu.samples[-1][2] > 5


def test_run_rm_removes_the_container_also_after_an_error(busybox):
    _, r = container.run("busybox", ["/bin/sh", "-c", "echo hi"], rm=True)
    assert r.stdout == "hi\n" and container.containers() == []
    with pytest.raises(container.ContainerError):
        container.run("busybox", ["true"], rm=True, user="no-such-user")
    assert container.containers() == []


def test_groups_made_and_removed_by_several_processes_at_once(lab_root):
    """Every process shares /sys/fs/cgroup/*/labkit; one removing that parent when its last group
    went must never make another's group creation fail."""
    import sys
    code = ("from labkit import cgroups\n"
            "import os\n"
            "for i in range(60):\n"
            "    with cgroups.Group(f't-race-{os.getpid()}-{i}', want=('memory', 'pids')):\n"
            "        pass\n")
    env = dict(os.environ, LABKIT_HOME=str(lab_root))
    runs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(4)]
    errors = [r.communicate(timeout=120)[1] for r in runs]
    assert [r.returncode for r in runs] == [0, 0, 0, 0], errors


def test_a_volume_under_an_image_symlink_never_creates_host_dirs(busybox, tmp_path):
    """The image's /data is a symlink to a host path; -v HOST:/data/new must not mkdir on the host."""
    from labkit.image import mutate
    outside = tmp_path / "host-dir"
    outside.mkdir()
    d = lab.scratch("symlinked")
    (d / "layer").mkdir()
    (d / "layer" / "data").symlink_to(outside)
    (d / "layer" / "inside").symlink_to("/tmp")                 # a symlink that stays in the image
    mutate.add_layer("busybox", d / "layer", "lab/symlinked", "ln -s", store=busybox)
    vol = lab.scratch("vol")
    try:
        container.run("lab/symlinked", ["/bin/true"], volumes=[f"{vol}:/data/new"], rm=True)
    except container.ContainerError as e:
        assert "volume" in str(e)
    assert list(outside.iterdir()) == []
    (vol / "hello").write_text("hi\n")
    _, r = container.run("lab/symlinked", ["/bin/cat", "/tmp/v/hello"], volumes=[f"{vol}:/inside/v"], rm=True)
    assert r.stdout == "hi\n"                                   # resolved inside the image: /tmp/v


def test_a_named_container_left_by_a_dead_kernel_is_replaced(busybox, lab_root):
    """A learner's kernel died mid-lesson with container "lesson06-web" made; running the lesson
    again makes it anew instead of failing on the name. A live session's container still blocks."""
    import json
    from labkit import container
    c = container.Container.create("busybox", ["true"], name="web", store=busybox)
    cfg = c.dir / "config.json"
    data = json.loads(cfg.read_text())
    data["session"] = "999999999-1"            # a kernel that is gone
    cfg.write_text(json.dumps(data))
    again = container.Container.create("busybox", ["true"], name="web", store=busybox)
    assert [x.id for x in container.containers()] == [again.id]
    with pytest.raises(container.ContainerError, match="a container called 'web' exists"):
        container.Container.create("busybox", ["true"], name="web", store=busybox)
    again.remove()


def test_an_edit_of_etc_hosts_is_not_committed(busybox):
    """Docker bind-mounts hostname, hosts and resolv.conf from the container's directory, so an
    edit of /etc/hosts stays out of the read-write layer and out of commit. labkit does too."""
    from labkit.image import waste
    c, r = container.run("busybox", ["/bin/sh", "-c", "echo '10.0.0.9 db' >> /etc/hosts; echo x > /kept; tail -1 /etc/hosts"])
    assert r.exit_code == 0 and r.stdout.strip() == "10.0.0.9 db"
    c.commit("edited/hosts")
    names = [m.name for m in waste.layer_entries(busybox, "edited/hosts")[-1]]
    assert "kept" in names and not any(n.startswith("etc/") for n in names), names
    assert "10.0.0.9 db" in (c.init / "etc" / "hosts").read_text()
    c.remove()
    busybox.remove("edited/hosts")
