"""The class's files, checked without a cluster or a cloud (part of `make class-test`, run with
class/.venv's Python, which has JupyterHub, kubespawner and PyYAML).

The hub's own authenticator (FirstUseAuthenticator with a roster) logs the instructor and a
student in at a real hub started from class/jupyterhub_config.py, and keeps everyone else out.

class/z2jh-values.yaml, checked as far as it can be without a Kubernetes cluster: it loads
as YAML; every option it gives KubeSpawner (hub.config.KubeSpawner) exists in the installed
kubespawner and takes the value given; the pod KubeSpawner would ask for (its manifest, made
offline) is privileged, runs as root, has the memory and CPU limits and mounts the student's
claim at the lab root and the work dir; the commented Kata line, uncommented, gives the pod
runtimeClassName kata. Not checked here: the chart's own schema and templates (helm is not
installed), that a cluster's nodes allow privileged pods, and Kata itself."""
import asyncio
import os
import re
import tempfile
from pathlib import Path

import pytest

import hostconfig  # noqa: E402  (e2e/, on sys.path as the tests' directory)

# KubeSpawner loads a client configuration when it is made (the path is read when
# kubernetes_asyncio is imported); this one names no real cluster and is never contacted: the
# manifests are built offline.
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""
with tempfile.NamedTemporaryFile("w", prefix="kubeconfig-", delete=False) as f:
    f.write(KUBECONFIG)
os.environ["KUBECONFIG"] = f.name

import yaml  # noqa: E402  (class/.venv has both; make class-test runs this file there)
import kubespawner  # noqa: E402
from kubernetes_asyncio.client import ApiClient  # noqa: E402
from traitlets.config import Config  # noqa: E402

VALUES = Path(__file__).resolve().parent.parent / "class" / "z2jh-values.yaml"


def _spawner(extra: dict | None = None):
    """(values, the KubeSpawner options, the spawner, the pod manifest it would ask for)."""
    return asyncio.run(_made(extra))


async def _made(extra: dict | None):
    values = yaml.safe_load(VALUES.read_text())
    options = dict(values["hub"]["config"]["KubeSpawner"], **(extra or {}))
    cfg = Config({"KubeSpawner": options})
    cfg.KubeSpawner.image = f"{values['singleuser']['image']['name']}:{values['singleuser']['image']['tag']}"
    cfg.KubeSpawner.mem_limit = values["singleuser"]["memory"]["limit"]
    cfg.KubeSpawner.cpu_limit = float(values["singleuser"]["cpu"]["limit"])
    cfg.KubeSpawner.cmd = [values["singleuser"]["cmd"]]
    spawner = kubespawner.KubeSpawner(config=cfg, _mock=True)
    spawner.user.name = "alice"
    spawner.pvc_name = spawner._expand_user_properties(spawner.pvc_name_template)
    pod = await spawner.get_pod_manifest()
    return values, options, spawner, ApiClient().sanitize_for_serialization(pod)


def test_every_hub_config_section_names_real_options():
    """hub.config's sections are traitlets configuration of these classes (the chart passes them on)."""
    import firstuseauthenticator
    from jupyterhub.app import JupyterHub
    from jupyterhub.auth import Authenticator
    classes = {"JupyterHub": JupyterHub, "Authenticator": Authenticator, "KubeSpawner": kubespawner.KubeSpawner,
               "FirstUseAuthenticator": firstuseauthenticator.FirstUseAuthenticator}
    config = yaml.safe_load(VALUES.read_text())["hub"]["config"]
    assert set(config) <= set(classes)
    for section, options in config.items():
        assert sorted(set(options) - set(classes[section].class_trait_names(config=True))) == [], section
    assert config["JupyterHub"]["authenticator_class"] == "firstuseauthenticator.FirstUseAuthenticator"


def test_every_kubespawner_option_exists_and_takes_its_value():
    values, options, spawner, _ = _spawner()
    known = kubespawner.KubeSpawner.class_trait_names(config=True)
    assert sorted(set(options) - set(known)) == []
    for name, value in options.items():
        assert getattr(spawner, name) == value, name


def test_the_pod_is_privileged_limited_and_mounts_the_students_claim():
    _, _, spawner, pod = _spawner()
    spec = pod["spec"]
    c = spec["containers"][0]
    assert c["securityContext"]["privileged"] is True and c["securityContext"]["runAsUser"] == 0
    assert c["resources"]["limits"] == {"memory": 2 << 30, "cpu": 1.0}       # 2G means GiB, as in docker
    assert c["args"] == ["/opt/labkit/class/singleuser.sh"]
    mounts = {m["mountPath"]: m.get("subPath") for m in c["volumeMounts"] if m["name"] == "lab"}
    assert mounts == {"/var/lib/labkit": "labkit", "/work": "work"}
    lab = [v for v in spec["volumes"] if v["name"] == "lab"]
    assert lab == [{"name": "lab", "persistentVolumeClaim": {"claimName": "labkit-alice"}}]
    assert spawner.get_pvc_manifest().metadata.name == "labkit-alice"
    assert pod["metadata"]["labels"]["labkit.class"] == "student"
    assert "runtimeClassName" not in spec


def test_the_commented_kata_line_gives_a_vm_isolated_pod():
    text = VALUES.read_text()
    kata = re.search(r"# extra_pod_config:\n\s+#\s+runtimeClassName: (\w+)", text)
    assert kata, "the values file lost its commented runtimeClassName line"
    _, _, _, pod = _spawner({"extra_pod_config": {"runtimeClassName": kata.group(1)}})
    assert pod["spec"]["runtimeClassName"] == "kata"


def test_cloud_init_user_data_provisions_as_the_vagrant_box_does():
    """class/cloud-init.yaml: valid YAML with the #cloud-config header, the scripts it runs exist
    in the repository, JupyterLab on the VM's loopback only, and its placeholders are the ones
    class/README.md tells the instructor to replace. (cloud-init itself is not installed here to
    run `cloud-init schema`; no VM boots in this test.)"""
    path = VALUES.parent / "cloud-init.yaml"
    text = path.read_text()
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    repo = VALUES.parent.parent
    scripts = [arg for cmd in data["runcmd"] for arg in cmd if arg.startswith("/opt/labkit/scripts/")]
    assert scripts == ["/opt/labkit/scripts/provision.sh", "/opt/labkit/scripts/lab-service.sh"]
    assert all((repo / s.removeprefix("/opt/labkit/")).exists() for s in scripts)
    assert "LABKIT_IP=127.0.0.1" in data["runcmd"][-1]
    assert "/etc/labkit/lab.env" in {f["path"] for f in data["write_files"]}
    assert sorted(set(re.findall(r"CHANGE-ME[-\w]*", text))) == [
        "CHANGE-ME", "CHANGE-ME-a-token-for-this-student", "CHANGE-ME-the-students-ssh-public-key",
        "CHANGE-ME-the-url-of-your-copy-of-this-repository"]


@pytest.fixture
def hub(tmp_path):
    """The class's hub with its real authenticator (FirstUseAuthenticator) and the roster "dana",
    no engine behind it: logging in never spawns a server."""
    import signal
    import subprocess
    import sys
    import time
    import httpx
    here = VALUES.parent
    port = hostconfig.free_port()
    env = dict(os.environ, CLASS_ROOT=str(tmp_path), CLASS_IP="127.0.0.1", CLASS_USERS="dana",
               CLASS_PORT=str(port), CLASS_HUB_PORT=str(hostconfig.free_port()), CLASS_PROXY_API_PORT=str(hostconfig.free_port()),
               CLASS_PROXY=str(here / "node_modules/.bin/configurable-http-proxy"),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("CLASS_AUTH", None)
    log = open(tmp_path / "hub.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "jupyterhub"), "-f", str(here / "jupyterhub_config.py")],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if httpx.get(f"{url}/hub/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "hub.log").read_text()[-2000:]
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert "Traceback" not in (tmp_path / "hub.log").read_text(), (tmp_path / "hub.log").read_text()[-3000:]


def test_first_login_sets_the_password_and_only_the_roster_gets_in(hub):
    import httpx

    def login(name, password):
        with httpx.Client(base_url=hub, timeout=30) as c:
            page = c.get("/hub/login")
            xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
            r = c.post("/hub/login", data={"username": name, "password": password, "_xsrf": xsrf})
            assert r.status_code in (200, 302, 403), (r.status_code, r.text[:300])
            return r.status_code == 302

    assert login("instructor", "instructor-Lab-2026")          # the instructor first, right after make class
    assert not login("instructor", "someone-elses-guess")       # from then on only with that password
    assert not login("dana", "short")                           # 8 characters at least
    assert login("dana", "dana-Lab-2026")                       # on the roster: her first login sets it
    assert not login("dana", "wrong-password-1")
    assert login("dana", "dana-Lab-2026")
    assert not login("mallory", "mallory-Lab-2026")             # not on the roster: no account
