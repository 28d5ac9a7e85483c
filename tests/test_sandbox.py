"""Functions and commands in a forked child with fresh namespaces."""
import os

import pytest

from labkit import kernel, sandbox
from labkit.errors import KernelError, LabError, SandboxError
from labkit.mountinfo import is_mountpoint


def test_returns_the_value_from_another_process(lab_root):
    assert sandbox.run(os.getpid) != os.getpid()
    assert sandbox.run(sum, [1, 2, 3]) == 6


def test_exceptions_come_back_with_their_type(lab_root):
    def boom():
        raise ValueError("no")
    with pytest.raises(ValueError, match="no"):
        sandbox.run(boom)
    with pytest.raises(KernelError) as e:
        sandbox.run(kernel.mount, "none", str(lab_root / "nope"), "tmpfs")
    assert e.value.errno == 2 and "create it first" in str(e.value)


def test_mounts_die_with_the_child(lab_root):
    target = lab_root / "m"
    target.mkdir()

    def mount_and_look():
        kernel.mount("none", str(target), "tmpfs")
        return is_mountpoint(target)
    assert sandbox.run(mount_and_look) is True
    assert not is_mountpoint(target)


def test_pid_namespace_makes_pid_1(lab_root):
    assert sandbox.run(os.getpid, namespaces=("mnt", "pid")) == 1


def test_uts_namespace_hostname_stays_inside(lab_root):
    import socket
    before = socket.gethostname()

    def rename():
        socket.sethostname("lab-child")
        return socket.gethostname()
    assert sandbox.run(rename, namespaces=("uts",)) == "lab-child"
    assert socket.gethostname() == before


def test_child_output_is_printed_by_the_parent(lab_root, capsys):
    sandbox.run(print, "hello from the child")
    assert "hello from the child" in capsys.readouterr().out


def test_command(lab_root):
    r = sandbox.run_command(["sh", "-c", "echo $$; exit 3"], namespaces=("mnt", "pid"))
    assert r.returncode == 3
    assert r.stdout.strip() == "2"   # PID 1 is the Python child that started sh


def test_timeout_kills_the_child(lab_root):
    import time
    with pytest.raises(SandboxError, match="longer than 0.5 s"):
        sandbox.run(time.sleep, 30, timeout=0.5)


def test_unpicklable_result_is_explained(lab_root):
    with pytest.raises(SandboxError, match="could not be sent back"):
        sandbox.run(lambda: (lambda: 1))


def test_child_killed_by_signal(lab_root):
    with pytest.raises(SandboxError, match="SIGKILL"):
        sandbox.run(lambda: os.kill(os.getpid(), 9))


def test_unknown_namespace(lab_root):
    with pytest.raises(LabError, match="unknown namespace"):
        sandbox.run(os.getpid, namespaces=("time-travel",))


def test_a_time_namespace_moves_boottime_and_monotonic_but_not_the_wall_clock(lab_root):
    """time_namespaces(7): offsets for CLOCK_BOOTTIME and CLOCK_MONOTONIC; CLOCK_REALTIME has none.
    The new namespace is the children's, so sandbox forks once more, as for a PID namespace."""
    import time
    from pathlib import Path
    from labkit import ns
    from helpers import need
    need(Path("/proc/self/ns/time").exists(), "time namespaces (Linux 5.6)")
    uptime = lambda: float(Path("/proc/uptime").read_text().split()[0])
    assert abs(ns.in_time_ns(uptime, boottime=86400) - uptime() - 86400) < 5
    assert abs(ns.in_time_ns(time.monotonic, monotonic=3600) - time.monotonic() - 3600) < 5
    assert abs(ns.in_time_ns(time.time, boottime=86400, monotonic=3600) - time.time()) < 5
    mine = ns.links()
    with ns.Process(("time",)) as p:
        assert {t for t in ns.TYPES if p.links()[t] != mine[t]} == {"time"}
