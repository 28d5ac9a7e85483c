"""docker run -d, logs, stop, kill and exec (issue 17): a detached container runs under a
supervisor of its own and outlives the command that started it; exec joins it with setns(2)
and the same confinement; stop sends STOPSIGNAL then SIGKILL."""
import subprocess
import sys

import pytest

from helpers import wait_until
from labkit import confine, container, lab, procfs


def labkit(*args, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "labkit", *args], capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_run_detached_then_logs_exec_stop(busybox):
    cid = labkit("run", "-d", "--name", "bg", "busybox", "--", "/bin/sh", "-c",
                 "trap 'echo stopping; exit 5' TERM; echo started; echo oops >&2; "
                 "while true; do sleep 0.05; done").stdout.strip()
    c = container.Container.load(cid)
    assert c.running_pid1() and "running" in labkit("ps").stdout          # the labkit command has exited
    assert wait_until(lambda: c.logs()[0] == "started\n")
    r = labkit("logs", "bg")
    assert r.stdout == "started\n" and r.stderr == "oops\n"
    r = labkit("exec", "bg", "--", "/bin/sh", "-c", "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; "
               "grep -E 'Seccomp:|CapEff' /proc/self/status; exit 3", check=False)
    lines = r.stdout.splitlines()
    assert r.returncode == 3 and lines[0] == cid and lines[1].startswith("/bin/sh -c trap")   # its PID 1
    assert confine.mask(confine.caps_in_force(confine.Confinement())) in lines[2] and lines[3].split()[-1] == "2"
    assert c.exec(["id", "-u"], user="1000").stdout == "1000\n"
    r = labkit("exec", "-e", "A=1 2", "-e", "HOME=/x", "-w", "/tmp", "bg", "--", "/bin/sh", "-c",   # before: no
               'echo "$A|$HOME"; pwd', check=False)                                             # -e, no -w
    assert (r.returncode, r.stdout) == (0, "1 2|/x\n/tmp\n"), r.stderr
    for flags, out in (([], "0\n"), (["-i"], "6\n")):      # docker exec: stdin only with -i (before: always,
        r = subprocess.run([sys.executable, "-m", "labkit", "exec", *flags, "bg", "--", "wc", "-c"],   # and -i
                           input="hello\n", capture_output=True, text=True, timeout=60)               # refused)
        assert (r.returncode, r.stdout.split()[0] + "\n") == (0, out), r.stderr
    r = labkit("exec", "-w", "/no/such", "bg", "--", "true", check=False)       # docker exec: not made, 126
    assert r.returncode == 126 and "/no/such" in r.stderr and len(r.stderr.splitlines()) == 1
    r = labkit("exec", "-w", "rel", "bg", "--", "true", check=False)
    assert r.returncode == 125 and "not an absolute path" in r.stderr
    assert labkit("stop", "-t", "5", "bg").returncode == 0
    assert wait_until(lambda: (c.dir / "result.json").exists())
    assert c.logs()[0].endswith("stopping\n") and "exited 5" in labkit("ps").stdout
    with pytest.raises(container.ContainerError, match="is not running"):
        c.exec(["true"])
    labkit("rm", "bg")


def test_stop_kills_what_ignores_the_signal_and_kill_sends_one(busybox):
    c = container.run_detached("busybox", ["sleep", "300"])        # PID 1 ignores SIGTERM
    c.stop(timeout=0.5)                                             # so SIGKILL ends it
    assert wait_until(lambda: c.running_pid1() is None, 10)
    c.remove()
    c = container.run_detached("busybox", ["/bin/sh", "-c", "trap 'exit 9' USR1; while true; do sleep 0.05; done"],
                               rm=True)
    pid1 = c.running_pid1()
    assert pid1 and procfs.stat(pid1)
    labkit("kill", "-s", "USR1", c.id)
    assert wait_until(lambda: not c.dir.exists())                       # --rm: gone once it ended
    assert container.containers() == []


def test_rm_refuses_a_running_container_and_rm_f_ends_it_first(busybox):
    """docker rm and podman rm: a running container is refused, -f kills it, then removes it.
    Before: `labkit rm` deleted a running detached container's directory and left its
    processes running, out of `labkit ps`'s sight."""
    import os
    c = container.run_detached("busybox", ["sleep", "300"])
    pid1 = c.running_pid1()
    r = labkit("rm", c.id, check=False)
    assert r.returncode == 1 and "is running" in r.stderr and len(r.stderr.splitlines()) == 1
    assert c.dir.exists() and c.running_pid1() == pid1
    labkit("rm", "-f", c.id)
    assert not c.dir.exists() and wait_until(lambda: not os.path.exists(f"/proc/{pid1}"))
    assert container.containers() == []


def test_a_detached_containers_supervisor_is_in_the_ledger_and_reset_ends_it(busybox):
    c = container.run_detached("busybox", ["sleep", "300"])
    assert any("supervisor of container" in e.note for e in lab.entries())
    lab.reset()
    assert wait_until(lambda: c.running_pid1() is None)
