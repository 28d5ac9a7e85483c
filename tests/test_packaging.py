"""The install story stays consistent: one dependency list, one install script, one test command."""
import re
import tomllib
from pathlib import Path

import yaml

from labkit import preflight

REPO = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted |= set(extra)
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {p for p in pip if not p.startswith("-e")}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"


def test_provision_installs_every_tool_preflight_checks():
    script = (REPO / "scripts" / "provision.sh").read_text()
    lines = script.split("deb_packages=(", 1)[1].splitlines()
    code = [re.sub(r"#.*", "", line) for line in lines]
    block = " ".join(code[:next(i for i, c in enumerate(code) if ")" in c) + 1]).replace(")", " ")
    packages = set(block.split())
    for tool, (pkg, _) in preflight.TOOLS.items():
        assert pkg in packages, f"preflight checks {tool} but provision.sh does not install {pkg}"


def test_ci_runs_make_test_as_the_readme_says():
    assert "make test" in (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme


def test_every_lesson_in_the_readme_exists():
    readme = (REPO / "README.md").read_text()
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        assert nb.name in readme, f"README.md does not list {nb.name}"


# --- the Vagrant VM: no VM boots on this machine kind, so the Vagrantfile is checked statically
def _vagrant(tmp_path, *args, env=None):
    import os
    import shutil
    import subprocess
    shutil.copy(REPO / "Vagrantfile", tmp_path / "Vagrantfile")
    e = {**os.environ, "VAGRANT_CWD": str(tmp_path), "VAGRANT_HOME": str(tmp_path / ".vagrant.d"),
         "VAGRANT_CHECKPOINT_DISABLE": "1", **(env or {})}
    return subprocess.run(["vagrant", *args], capture_output=True, text=True, env=e, timeout=120)


def test_vagrant_validates_the_vagrantfile(tmp_path):
    r = _vagrant(tmp_path, "validate", "--ignore-provider")
    assert r.returncode == 0 and "validated successfully" in r.stdout, r.stdout + r.stderr
    bad = _vagrant(tmp_path, "validate", "--ignore-provider", env={"LABKIT_PORT": "not-a-port"})
    assert bad.returncode != 0


def test_vagrantfile_debian12_port_on_host_loopback_provisioned_by_the_same_script():
    text = (REPO / "Vagrantfile").read_text()
    code = "\n".join(re.sub(r"#.*", "", line) for line in text.splitlines())
    assert '"debian/bookworm64"' in code                                   # Debian 12
    fwd = re.search(r'forwarded_port".*?guest: (\d+).*?host_ip: "([\d.]+)"', code, re.S)
    assert fwd and fwd.groups() == ("8888", "127.0.0.1")
    assert "scripts/provision.sh" in code and "scripts/lab-service.sh" in code
    assert int(re.search(r'LABKIT_MEMORY", "(\d+)"', code).group(1)) >= 4096
    assert int(re.search(r'LABKIT_CPUS", "(\d+)"', code).group(1)) >= 2


def test_lab_service_unit_is_valid_and_serves_make_lab(tmp_path):
    import subprocess
    unit = subprocess.run([REPO / "scripts" / "lab-service.sh", "--print"], capture_output=True, text=True,
                          check=True).stdout
    assert f"ExecStart=/usr/bin/make -C {REPO} lab" in unit and "IP=0.0.0.0" in unit and "PORT=8888" in unit
    (tmp_path / "labkit-lab.service").write_text(unit)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "labkit-lab.service")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_widget_state_is_saved_for_every_user_of_the_venv():
    import json
    import sys
    overrides = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    assert json.loads(overrides.read_text())["@jupyter-widgets/jupyterlab-manager:plugin"]["saveState"] is True


def test_make_lab_with_another_venv_provisions_that_venv():
    """The service runs `make lab VENV=/opt/labkit/venv`: provision.sh must fill that venv,
    not create a second one in the repository."""
    import subprocess
    out = subprocess.run(["make", "-n", "-C", str(REPO), "provision", "VENV=/opt/elsewhere/venv"],
                         capture_output=True, text=True, check=True).stdout
    assert "LABKIT_VENV=/opt/elsewhere/venv scripts/provision.sh" in out


def test_make_lab_serves_with_the_venv_on_path_and_signs_nothing_itself(lab_root, tmp_path, monkeypatch):
    """Lessons tell learners to run `labkit reset` in a JupyterLab terminal: the server (and so
    its terminals) must have the venv's bin on PATH. `make lab` no longer runs `jupyter trust`
    on every start (1.4 s of a 3.4 s start, issue 20): the learner's copies have no outputs, and
    a cell without output is trusted (nbformat.sign.NotebookNotary.check_cells), so Jupyter
    opens them trusted and signs them itself at their first save."""
    from nbformat import read
    from nbformat.sign import NotebookNotary
    from labkit import exercises
    text = (REPO / "Makefile").read_text()
    lab = text[text.index("\nlab:"):text.index("\ntest:")]
    assert "PATH=$(abspath $(VENV))/bin:$$PATH" in lab and "jupyter lab" in lab and "trust" not in lab
    # nor does a class's student server (what DockerSpawner runs) before each start
    assert "jupyter trust" not in (REPO / "class" / "singleuser.sh").read_text()
    monkeypatch.setenv("LABKIT_WORKDIR", str(tmp_path))
    copies = exercises.sync_notebooks()
    assert len(copies) >= 10
    notary = NotebookNotary(data_dir=str(tmp_path / "jupyter-data"))
    for name in copies:
        assert notary.check_cells(read(tmp_path / name, as_version=4)), name


def test_a_learners_machine_gets_no_test_tools():
    """Issue 18: chromium, podman, vagrant and the test extra are test tools; `make lab` (and the
    Vagrant VM, which runs provision.sh as it is) installs without them, `make test` with them."""
    import subprocess
    script = (REPO / "scripts" / "provision.sh").read_text()
    code = re.sub(r"#.*", "", script)
    lab_block = code.split("deb_packages=(", 1)[1].split(")", 1)[0]
    test_block = code.split("test_packages=(", 1)[1].split(")", 1)[0]
    for pkg in ("chromium", "podman", "vagrant"):
        assert re.search(rf"\b{pkg}\b", test_block) and not re.search(rf"\b{pkg}\b", lab_block)
    assert 'if [ "${LABKIT_TEST_TOOLS:-0}" = 1 ]' in script and '[$extras]' in script
    dry = lambda target: subprocess.run(["make", "-n", "-C", str(REPO), target], capture_output=True,
                                        text=True).stdout
    assert "LABKIT_TEST_TOOLS=1" in dry("test") and "LABKIT_TEST_TOOLS=1" in dry("bench")
    assert "LABKIT_TEST_TOOLS" not in dry("provision")


# --- the lab as a container image, and lesson CI for instructors' forks (issue 18) -------------
def _jsonc(path: Path) -> dict:
    """devcontainer.json is JSON with // comments (JSONC)."""
    import json
    return json.loads(re.sub(r"^\s*//.*$", "", path.read_text(), flags=re.M))


def test_the_lab_image_keeps_the_lab_root_and_work_dir_on_volumes():
    """Containerfile, its entry point and devcontainer.json agree: base debian:12 by default
    (BASE overrides it), provisioned by provision.sh as `make lab` is, /var/lib/labkit and
    /work as volumes, privileged with a private cgroup namespace, JupyterLab on 8888. (The image
    itself is built and run by `make image-test`.)"""
    cf = (REPO / "Containerfile").read_text()
    assert "ARG BASE=debian:12\nFROM ${BASE}" in cf and "scripts/provision.sh" in cf
    volumes = set(re.findall(r'"(/[^"]+)"', re.search(r"^VOLUME (.*)$", cf, re.M).group(1)))
    assert volumes == {"/var/lib/labkit", "/work"} and "EXPOSE 8888" in cf
    assert "LABKIT_HOME=/var/lib/labkit LABKIT_WORKDIR=/work" in cf
    entry = REPO / "scripts" / "container-entry.sh"
    assert entry.stat().st_mode & 0o111 and f'"/opt/labkit/{entry.relative_to(REPO)}"' in cf
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "work", "test-artifacts"} <= set(ignored)
    dc = _jsonc(REPO / ".devcontainer" / "devcontainer.json")
    assert (REPO / ".devcontainer" / dc["build"]["dockerfile"]).resolve() == REPO / "Containerfile"
    assert (REPO / ".devcontainer" / dc["build"]["context"]).resolve() == REPO
    assert dc["privileged"] is True and "--cgroupns=private" in dc["runArgs"]
    assert {m["target"] for m in dc["mounts"] if m["type"] == "volume"} == volumes
    assert dc["overrideCommand"] is False and 8888 in dc["forwardPorts"]


def test_the_lesson_ci_workflow_is_valid_and_runs_make_test_as_root():
    """The workflow for instructors' forks (GitHub's Ubuntu 24.04 runner) validates against
    GitHub's workflow schema (check-jsonschema's vendored copy: no network) and runs what .ci/run
    runs, as root, within CI's 90 minutes, with a browser that is not a snap."""
    import shutil
    import subprocess
    import sys
    wf = REPO / ".github" / "workflows" / "lessons.yml"
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert tool, "check-jsonschema (the test extra) is missing: make provision-test"
    r = subprocess.run([tool, "--builtin-schema", "vendor.github-workflows", str(wf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    job = yaml.safe_load(wf.read_text())["jobs"]["make-test"]
    assert job["runs-on"] == "ubuntu-24.04" and job["timeout-minutes"] <= 90
    runs = [s.get("run", "") for s in job["steps"]]
    assert any(r.startswith("sudo") and r.endswith("make test") for r in runs)
    assert job["env"]["LABKIT_BROWSER"] and job["env"]["CI"] == "true"


def test_provision_on_ubuntu_wants_the_same_tools_but_not_the_snap_chromium():
    import subprocess
    want = lambda os_id: subprocess.run([str(REPO / "scripts" / "provision.sh"), "--list"], check=True,
                                        capture_output=True, text=True,
                                        env={"PATH": "/usr/bin:/bin", "LABKIT_OS_ID": os_id,
                                             "LABKIT_TEST_TOOLS": "1"}).stdout.split()
    debian, ubuntu = want("debian"), want("ubuntu")
    assert set(debian) - set(ubuntu) == {"chromium"} and "docker-registry" in ubuntu
