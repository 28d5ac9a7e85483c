"""`make class-test`: a class on this machine, as class/README.md sets it up (not part of `make test`).

The hub (class/classctl.py, class/jupyterhub_config.py) starts with the dummy authenticator and
podman's Docker API under a root of its own; its images are built from the Containerfiles (the
Debian base from debootstrap, as in `make image-test`). Three students log in through the login
form, their servers spawn, and they run lesson 01 at the same time through the hub's proxy.
Then: none sees another's files, lab root or server; the memory and CPU limits are on their
containers; each lesson of the sizing table (02, 04, 07) is measured in one student's container;
the culler stops idle servers and a student's work survives it; stopping the class leaves no
container, volume, network, bridge, firewall chain, mount or process behind.
"""
import concurrent.futures as cf
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "class")]
import classctl  # noqa: E402
import hostconfig  # noqa: E402
from hubclient import Student  # noqa: E402

STUDENTS = ("alice", "bob", "carol")
PASSWORD = secrets.token_hex(8)
ARTIFACTS = REPO / "test-artifacts" / "class-test"
RECORD = {}


def _host_state() -> dict:
    """What a class could leave on the host: links, firewall chains, mounts, processes."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    return {"links": {l.split(":")[1].strip().split("@")[0] for l in links.splitlines()},
            "chains": {l.split()[1] for l in nat.splitlines() if l.startswith("-N")},
            "mounts": Path("/proc/self/mountinfo").read_text().count("class-test-")}


@pytest.fixture(scope="module")
def klass():
    root = Path(os.environ.get("LABKIT_CLASS_TEST_ROOT", "/var/tmp")) / f"class-test-{os.getpid()}"
    os.environ.update(CLASS_ROOT=str(root), CLASS_IP="127.0.0.1", CLASS_PORT=str(hostconfig.free_port()),
                      CLASS_AUTH="dummy", CLASS_PASSWORD=PASSWORD, CLASS_USERS=",".join(STUDENTS),
                      CLASS_MEM="2G", CLASS_CPUS="1", CLASS_IDLE_TIMEOUT="120", CLASS_CULL_EVERY="10",
                      CLASS_ACTIVITY_INTERVAL="10",
                      CLASS_BUILD_ARGS=" ".join(hostconfig.podman_args()))
    s = classctl.Settings()
    RECORD["before"] = _host_state()
    root.mkdir(parents=True)
    try:
        t = time.monotonic()
        classctl.start_engine(s)
        tar = subprocess.run([str(REPO / "scripts/debian-base.sh")], check=True, capture_output=True,
                             text=True).stdout.strip()
        classctl.engine(s, "import", tar, "debian:12")
        classctl.build_images(s)
        RECORD["images s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        classctl.start(s)
        RECORD["hub s"] = round(time.monotonic() - t, 1)
        yield s
    finally:
        classctl.stop(s)
        env = dict(os.environ, CONTAINERS_CONF=str(root / "containers.conf"),
                   CONTAINERS_STORAGE_CONF=str(root / "storage.conf"))
        subprocess.run(["podman", "system", "reset", "--force"], env=env, capture_output=True)
        subprocess.run(["rm", "-rf", str(root)])
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "record.json").write_text(json.dumps(RECORD, indent=1, default=sorted))
        print("\nclass-test:", json.dumps({k: v for k, v in RECORD.items() if k not in ("before",)},
                                          default=sorted))


@pytest.fixture(scope="module")
def students(klass):
    return {name: Student(klass.url, name, PASSWORD) for name in STUDENTS}


def test_three_students_log_in_spawn_and_run_lesson_01_at_once(klass, students):
    t = time.monotonic()
    with cf.ThreadPoolExecutor(len(students)) as pool:
        servers = list(pool.map(lambda st: st.start_server(), students.values()))
    RECORD["three spawns s"] = round(time.monotonic() - t, 1)
    assert all(s["ready"] for s in servers)
    t = time.monotonic()
    with cf.ThreadPoolExecutor(len(students)) as pool:
        results = dict(zip(students, pool.map(lambda st: st.run_notebook("01-overlayfs.ipynb"), students.values())))
    RECORD["lesson 01, three at once s"] = round(time.monotonic() - t, 1)
    assert results == {name: [] for name in students}, results


def test_a_failing_cell_is_reported(students):
    """The check above would see an error: the runner is not blind."""
    alice = students["alice"]
    alice.api.put(alice.url("api/contents/boom.ipynb"), json={"type": "notebook", "content": {
        "cells": [{"cell_type": "code", "source": "1/0", "metadata": {}, "outputs": [], "execution_count": None}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}}).raise_for_status()
    assert alice.run_notebook("boom.ipynb") == ["cell 0: ZeroDivisionError: division by zero"]


def _run(student: Student, code: str) -> str:
    """``code``'s printed output in a fresh kernel of ``student``'s server."""
    nb = {"cells": [{"cell_type": "code", "source": code, "metadata": {}, "outputs": [], "execution_count": None}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    student.api.put(student.url("api/contents/probe.ipynb"), json={"type": "notebook", "content": nb}).raise_for_status()
    return student.run_notebook("probe.ipynb", capture=True)


def test_no_student_sees_another_students_files_lab_root_or_server(klass, students):
    for name, st in students.items():
        _run(st, f"open('/work/mine-{name}.txt', 'w').write('{name}')\n"
                 f"open('/var/lib/labkit/mine-{name}', 'w').write('{name}')")
    for name, st in students.items():
        out = _run(st, "import os, json\nprint(json.dumps([sorted(os.listdir('/work')), "
                       "sorted(f for f in os.listdir('/var/lib/labkit') if f.startswith('mine-'))]))")
        work, home = json.loads(out)
        assert [f for f in work if f.startswith("mine-")] == [f"mine-{name}.txt"]
        assert home == [f"mine-{name}"]
    # a student's token opens only their own server, through the proxy
    alice, bob = students["alice"], students["bob"]
    r = bob.api.get(alice.url("api/contents"), follow_redirects=False)
    assert r.status_code in (302, 403, 404), r.status_code
    assert "mine-alice" not in r.text


def test_memory_and_cpu_limits_are_on_each_container(klass, students):
    for name, st in students.items():
        info = json.loads(classctl.engine(klass, "inspect", f"labkit-class-{name}").stdout)[0]["HostConfig"]
        assert (info["Memory"], info["CpuQuota"], info["CpuPeriod"]) == (2 << 30, 100_000, 100_000)
        assert info["Privileged"] is True
        seen = _run(st, "import pathlib\nfor f in ('memory/memory.limit_in_bytes', 'memory.max', "
                        "'cpu/cpu.cfs_quota_us', 'cpu.max'):\n"
                        "    p = pathlib.Path('/sys/fs/cgroup') / f\n"
                        "    print(p.read_text().strip() if p.exists() else '-')")
        assert str(2 << 30) in seen.split() and ("100000" in seen.split() or "100000 100000" in seen), seen


SIZING = "\n".join([
    "import pathlib, json",
    "cg = pathlib.Path('/sys/fs/cgroup')",
    "v1 = (cg / 'memory/memory.max_usage_in_bytes').exists()",
    "def read():",
    "    if v1:",
    "        return {'peak': int((cg / 'memory/memory.max_usage_in_bytes').read_text()),",
    "                'cpu_ns': int((cg / 'cpuacct/cpuacct.usage').read_text())}",
    "    stat = dict(l.split() for l in (cg / 'cpu.stat').read_text().splitlines())",
    "    peak = cg / 'memory.peak'",
    "    return {'peak': int(peak.read_text()) if peak.exists() else int((cg / 'memory.current').read_text()),",
    "            'cpu_ns': int(stat['usage_usec']) * 1000}",
    "print(json.dumps(read()))",
])


def test_sizing_every_lesson_in_one_students_container(klass, students):
    """Peak memory (the container's cgroup, page cache included: what the limit counts), CPU
    seconds and wall seconds per lesson, one lesson after another in carol's container, as a
    student would take them: the guide's sizing and timing tables. Recorded, not asserted."""
    carol = students["carol"]
    reset = "import pathlib\np = pathlib.Path('/sys/fs/cgroup/memory/memory.max_usage_in_bytes')\n" \
            "p.exists() and p.write_text('0')"
    sizing = RECORD["sizing"] = {}
    for lesson in sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb")):
        _run(carol, reset)
        before = json.loads(_run(carol, SIZING))
        t = time.monotonic()
        errors = carol.run_notebook(f"{lesson}.ipynb")
        wall = time.monotonic() - t
        after = json.loads(_run(carol, SIZING))
        assert errors == [], (lesson, errors)
        sizing[lesson] = {"wall s": round(wall, 1), "cpu s": round((after["cpu_ns"] - before["cpu_ns"]) / 1e9, 1),
                          "peak MiB": after["peak"] >> 20}



def test_the_culler_stops_idle_servers_and_work_survives(klass, students):
    """Idle timeout 120 s here; activity reaches the hub every 10 s (CLASS_ACTIVITY_INTERVAL)."""
    start = time.monotonic()
    while any(st.server() for st in students.values()):
        assert time.monotonic() < start + 400, "the idle culler did not stop the servers in 400 s"
        time.sleep(5)
    RECORD["culled after s"] = round(time.monotonic() - start, 1)
    assert RECORD["culled after s"] > 60, "servers were gone too early: culled while in use?"
    assert classctl.students(klass) == []                  # the containers went with the servers
    volumes = classctl.engine(klass, "volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert sorted(volumes) == sorted(f"labkit-class-{n}-{v}" for n in STUDENTS for v in ("home", "work"))
    alice = students["alice"]
    alice.start_server()
    assert _run(alice, "print(open('/work/mine-alice.txt').read())").strip() == "alice"


def test_stopping_the_class_leaves_nothing_behind(klass):
    classctl.stop(klass)
    assert not (klass.root / "hub.pid").exists() and not (klass.root / "podman.pid").exists()
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [p for p in procs.splitlines() if str(klass.root) in p or "class/jupyterhub_config.py" in p]
    assert not re.search(r"configurable-http-proxy.*--port %s" % klass.port, procs)
    after = _host_state()
    assert after["links"] <= RECORD["before"]["links"], after["links"] - RECORD["before"]["links"]
    assert after["chains"] <= RECORD["before"]["chains"], after["chains"] - RECORD["before"]["chains"]
    assert after["mounts"] == 0
    env = dict(os.environ, CONTAINERS_CONF=str(klass.root / "containers.conf"),
               CONTAINERS_STORAGE_CONF=str(klass.root / "storage.conf"))
    for what in (["ps", "-aq"], ["volume", "ls", "-q"], ["network", "ls", "-q", "--filter", "name=labkit-class"]):
        assert subprocess.run(["podman", *what], env=env, capture_output=True, text=True).stdout.strip() == "", what
    handed_in = sorted(p.name for p in (klass.root / "handin").iterdir())
    assert handed_in == [f"labkit-class-{n}-work.tar" for n in STUDENTS]
    RECORD["after"] = after
