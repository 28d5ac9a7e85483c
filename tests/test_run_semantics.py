"""`labkit run` as docker run and podman run behave (issue 17): arguments after the image
replace CMD and follow ENTRYPOINT; USER and --user resolved in the image with supplementary
groups; HOME from the image's /etc/passwd; 127 and 126 for a command that cannot run."""
import os
import signal
import subprocess
import sys

import pytest

from helpers import wait_until
from labkit import build, cli, container, lab, users
from labkit.tree import write_tree


@pytest.fixture
def entry_image(busybox):
    ctx = write_tree(lab.scratch("entry"), {"Dockerfile": (
        "FROM busybox\n"
        "RUN echo 'ann:x:1000:1000:Ann:/home/ann:/bin/sh' >> /etc/passwd "
        "&& printf 'ann:x:1000:\\nstaff2:x:2000:ann\\nextra:x:3000:root,ann\\n' >> /etc/group "
        "&& echo 'echo not executable' > /notexec && chmod 644 /notexec\n"
        'ENTRYPOINT ["echo", "entry"]\n'
        'CMD ["default"]\n')})
    build.build(ctx, "t/entry", quiet=True, store=busybox)
    return busybox


def _out(image, cmd=None, **opts):
    _, r = container.run(image, cmd, rm=True, **opts)
    return r


def test_arguments_replace_cmd_and_follow_the_entrypoint(entry_image):
    """Before: the arguments replaced the ENTRYPOINT too (`labkit run t/entry -- x` ran `x`)."""
    assert _out("t/entry").stdout == "entry default\n"
    assert _out("t/entry", ["given"]).stdout == "entry given\n"
    assert _out("t/entry", ["-c", "echo $0"], entrypoint=["/bin/sh"]).stdout == "/bin/sh\n"
    assert _out("t/entry", entrypoint=["/bin/true"]).exit_code == 0      # --entrypoint drops CMD too
    assert cli.main(["run", "--rm", "--entrypoint", "/bin/true", "t/entry"]) == 0


def test_user_name_uid_and_group_are_resolved_in_the_image_with_supplementary_groups(entry_image):
    """Before: a numeric USER got gid = uid, names with a group failed, groups were ignored."""
    sh = lambda user: _out("t/entry", ["-c", "id -u; id -g; id -G; echo $HOME"], entrypoint=["/bin/sh"],
                           user=user).stdout.split("\n")
    assert sh("ann")[:4] == ["1000", "1000", "1000 2000 3000", "/home/ann"]
    assert sh("1000")[:4] == ["1000", "1000", "1000 2000 3000", "/home/ann"]
    assert sh("ann:extra")[:2] == ["1000", "3000"]
    assert sh("4242")[:4] == ["4242", "0", "0", "/"]                  # not in passwd: gid 0, HOME /
    assert sh("")[3] == "/root"                                       # root's HOME from passwd


def test_an_unknown_user_is_refused_in_one_line(entry_image):
    with pytest.raises(container.ContainerError, match="unable to find user nobody-here"):
        _out("t/entry", ["true"], entrypoint=[], user="nobody-here")


def test_a_missing_command_exits_127_and_one_not_executable_126(entry_image):
    r = _out("t/entry", ["no-such-command"], entrypoint=[])
    assert r.exit_code == 127 and "executable file not found" in r.stderr
    r = _out("t/entry", ["/notexec"], entrypoint=[])
    assert r.exit_code == 126 and "Permission denied" in r.stderr


def test_users_resolve_reads_passwd_and_group_as_libcontainer_does():
    passwd = "root:x:0:0:root:/root:/bin/sh\nann:x:1000:100:Ann:/home/ann:/bin/sh\n"
    group = "root:x:0:\nusers:x:100:\nwheel:x:10:root,ann\nvideo:x:44:ann\n"
    assert users.resolve("ann", passwd, group) == users.Identity(1000, 100, [100, 10, 44], "/home/ann")
    assert users.resolve("1000:44", passwd, group) == users.Identity(1000, 44, [44], "/home/ann")   # runc: a
    # group given, no supplementary groups from /etc/group; the primary one always (before: [])
    assert users.resolve("5:5", passwd, group) == users.Identity(5, 5, [5], "/")
    assert users.resolve("root", passwd, group) == users.Identity(0, 0, [0, 10], "/root")
    with pytest.raises(users.UserError, match="unable to find group nope"):
        users.resolve("ann:nope", passwd, group)


def test_the_callers_supplementary_groups_stay_outside(busybox):
    """The container's process has the supplementary groups of its user in the image (the
    primary group first, as docker since 20.10.18, CVE-2022-36109), never those of the process
    that started it. Before: root in a container kept the caller's list."""
    before = os.getgroups()
    os.setgroups([0, 4242])
    try:
        _, r = container.run("busybox", ["id", "-G"], rm=True)
    finally:
        os.setgroups(before)
    assert r.stdout.split() == ["0"]


def _labkit_run(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "labkit", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_to_labkit_run_reaches_the_container(busybox, sig):
    """As docker run's --sig-proxy: the shell inside traps it and exits with its own status."""
    p = _labkit_run("--rm", "busybox", "--", "/bin/sh", "-c",
                    f"trap 'echo got {sig.name}; exit 7' {sig.name[3:]}; touch /tmp/ready; "
                    "while true; do sleep 0.05; done")
    assert wait_until(lambda: any((c.upper / "tmp" / "ready").exists() for c in container.containers()))
    p.send_signal(sig)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 7 and f"got {sig.name}" in out, err
    assert container.containers() == []


def test_a_killed_labkit_run_leaves_no_container_running(busybox):
    """Before: SIGKILL of `labkit run` left the container's processes running. Only this
    container's processes are watched (those in its cgroup): a `sleep 300` of another test or
    lab on the machine is not ours."""
    p = _labkit_run("busybox", "--", "/bin/sh", "-c", "touch /tmp/ready; exec sleep 300")
    assert wait_until(lambda: any((c.upper / "tmp" / "ready").exists() for c in container.containers()))
    ours = next(c for c in container.containers() if (c.upper / "tmp" / "ready").exists())
    sleepers = lambda: [pid for pid in _in_cgroup(f"c-{ours.id}") if _cmd(pid) == "sleep300"]
    assert wait_until(sleepers)
    p.kill()
    p.wait()
    assert wait_until(lambda: not _in_cgroup(f"c-{ours.id}"), 10), "the container outlived its runtime"
    for c in container.containers():
        c.remove()


def _in_cgroup(name: str) -> list[str]:
    """The PIDs whose cgroup (any hierarchy, /proc/PID/cgroup) ends in ``name``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            lines = open(f"/proc/{pid}/cgroup").read().splitlines()
        except OSError:
            continue
        if any(line.rstrip("/").endswith("/" + name) for line in lines):
            found.append(pid)
    return found


def _cmd(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b"").decode()
    except OSError:
        return ""


def test_stdin_is_null_without_i_and_ours_with_it(busybox):
    run = lambda *a: subprocess.run([sys.executable, "-m", "labkit", "run", "--rm", *a, "busybox", "--", "cat"],
                                    input="hello\n", capture_output=True, text=True, timeout=60)
    assert run().stdout == ""                           # docker run without -i: stdin is /dev/null
    assert run("-i").stdout == "hello\n"


def test_t_gives_the_command_a_terminal_and_term(busybox):
    """Before: no -t at all; the command's stdout was never a terminal."""
    r = subprocess.run([sys.executable, "-m", "labkit", "run", "--rm", "-t", "busybox", "--", "/bin/sh", "-c",
                        "test -t 0 && test -t 1 && echo both-terminals; echo $TERM; tty"],
                       capture_output=True, text=True, timeout=60)
    lines = r.stdout.replace("\r", "").splitlines()
    assert r.returncode == 0 and lines[:2] == ["both-terminals", "xterm"] and lines[2].startswith("/dev/pts/"), r.stderr
    r = subprocess.run([sys.executable, "-m", "labkit", "run", "--rm", "-i", "-t", "busybox", "--", "/bin/sh", "-c",
                        "read line; echo got $line"], input="typed\n", capture_output=True, text=True, timeout=60)
    assert "got typed" in r.stdout, r.stderr
