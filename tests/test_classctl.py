"""class/classctl.py's own logic, without an engine or a hub (those are make class-test's)."""
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "class"))
import classctl  # noqa: E402


def test_students_are_read_from_podman_and_from_docker(monkeypatch, tmp_path):
    podman = [{"Names": ["labkit-class-alice"], "State": "running", "Labels": {"labkit.class.user": "alice"}}]
    docker = {"Names": "labkit-class-bob", "State": "exited", "Labels": "labkit.class=student,labkit.class.user=bob"}
    outputs = {"podman": json.dumps(podman), "docker": json.dumps(docker) + "\n"}
    for engine, out in outputs.items():
        monkeypatch.setenv("CLASS_ENGINE", engine)
        monkeypatch.setenv("CLASS_ROOT", str(tmp_path))
        s = classctl.Settings()
        monkeypatch.setattr(classctl, "engine", lambda s, *a, **k: subprocess.CompletedProcess(a, 0, out, ""))
        (row,) = classctl.students(s)
        assert row["user"] == {"podman": "alice", "docker": "bob"}[engine]


def test_a_bad_setting_is_one_line_and_status_2(monkeypatch, capsys):
    monkeypatch.setenv("CLASS_PORT", "eighty")
    assert classctl.main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CLASS_PORT" in err
    assert classctl.main(["begin"]) == 2


def test_stop_with_nothing_running_forgets_the_hubs_state(monkeypatch, tmp_path):
    monkeypatch.setenv("CLASS_ROOT", str(tmp_path))
    for f in ("jupyterhub.sqlite", "jupyterhub_cookie_secret", "passwords.dbm", "hub.pid"):
        (tmp_path / f).write_text("999999999")
    classctl.stop(classctl.Settings())
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_class_podman_gives_every_container_a_private_cgroup_namespace(tmp_path, monkeypatch):
    """podman 4.3's Docker API ignores DockerSpawner's CgroupnsMode: the configuration says it."""
    monkeypatch.setenv("CLASS_ROOT", str(tmp_path))
    classctl._write_podman_conf(classctl.Settings())
    conf = (tmp_path / "containers.conf").read_text()
    assert 'cgroupns = "private"' in conf and f'network_config_dir = "{tmp_path}/networks"' in conf
